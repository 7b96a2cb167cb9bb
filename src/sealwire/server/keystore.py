"""The enterprise server's keys, sealed in one file (``DATA/server/keys.sealed``).

The file holds the organisation's root key, the server's identity key and certificate, the
server's prekey and the ticket key (which encrypts activation-password scalars in the
database), all AES-256-GCM-sealed (:func:`~sealwire.protocol.suite.seal_at_rest`) under a
wrapping key that comes from one of:

* a **key file** (``DATA/server/master.key`` by default, 32 random bytes in hex, mode 0600):
  unattended restarts; keep the key file off the disk that holds the data and its backups
  (OPERATIONS.md, "Server keys"), or it protects nothing;
* an **operator passphrase** (Argon2id, parameters stored in the file): the server asks for
  it, or reads ``SEALWIRE_SERVER_PASSPHRASE``, at every start.

Which one protects the file is recorded in it; a wrong key file or passphrase gives a clear
error and never a half-started server.
"""

from __future__ import annotations

import enum
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sealwire.errors import ConfigError, CryptoError, DecodeError, StorageError
from sealwire.protocol.codec import Struct, wire
from sealwire.protocol.identity import MAX_CERTIFICATE_SIZE, Certificate
from sealwire.protocol.suite import (
    Argon2Params,
    SigningKey,
    XWingPrivateKey,
    derive_passcode_key,
    hkdf,
    open_at_rest,
    seal_at_rest,
)

__all__ = [
    "Protection",
    "ServerKeys",
    "create_key_file",
    "key_protection",
    "load_keys",
    "save_keys",
]

_PURPOSE = "server/keys"
_FORMAT = 1
_MAX_FILE = 16 * 1024


class Protection(enum.IntEnum):
    """What the wrapping key of the key file comes from."""

    KEY_FILE = 1
    PASSPHRASE = 2


@dataclass(frozen=True)
class ServerKeys(Struct):
    """The server's secrets (never logged; ``repr`` shows no key)."""

    root_seed: bytes = wire(0, size=32)
    """Seed of the organisation root Ed25519 key."""
    server_seed: bytes = wire(1, size=32)
    """Seed of the server's identity key."""
    server_certificate: bytes = wire(2, max_size=MAX_CERTIFICATE_SIZE)
    """The server's root-issued certificate (encoded)."""
    prekey_seed: bytes = wire(3, size=32)
    """Seed of the server's X-Wing prekey."""
    prekey_id: int = wire(4, min_value=0, max_value=(1 << 32) - 1)
    signed_prekey: bytes = wire(5, max_size=2048)
    """The server's encoded signed prekey (handed to devices at activation)."""
    ticket_key: bytes = wire(6, size=32)
    """Encrypts activation-password scalars in the database."""

    def __repr__(self) -> str:
        return "ServerKeys(<secret>)"

    @property
    def root(self) -> SigningKey:
        return SigningKey.from_seed(self.root_seed)

    @property
    def identity(self) -> SigningKey:
        return SigningKey.from_seed(self.server_seed)

    @property
    def certificate(self) -> Certificate:
        return Certificate.parse(self.server_certificate)

    @property
    def prekey(self) -> XWingPrivateKey:
        return XWingPrivateKey(self.prekey_seed)


@dataclass(frozen=True)
class _SealedFile(Struct):
    version: int = wire(0, min_value=_FORMAT, max_value=_FORMAT)
    protection: Protection = wire(1)
    params: Argon2Params | None = wire(2, default=None)
    sealed: bytes = wire(3, max_size=_MAX_FILE, default=b"")


def _wrapping_key(
    protection: Protection,
    params: Argon2Params | None,
    *,
    key_file: Path | None,
    passphrase: str | None,
) -> bytes:
    if protection is Protection.PASSPHRASE:
        if passphrase is None:
            raise ConfigError(
                "the server's keys are protected by a passphrase: give it on the terminal or "
                "in SEALWIRE_SERVER_PASSPHRASE"
            )
        assert params is not None
        return derive_passcode_key(passphrase, params, purpose="server/passphrase")
    if key_file is None:
        raise ConfigError("the server's keys are protected by a key file: give --key-file")
    try:
        text = key_file.read_text().strip()
        raw = bytes.fromhex(text)
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {key_file}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"the key file {key_file} is not 64 hex digits") from None
    if len(raw) != 32:
        raise ConfigError(f"the key file {key_file} is not 64 hex digits")
    return hkdf(raw, purpose="server/key-file")


def create_key_file(path: Path) -> None:
    """Write a new random key file (mode 0600); refuse to overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists already; refusing to overwrite a key file") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")


def save_keys(
    path: Path,
    keys: ServerKeys,
    *,
    key_file: Path | None = None,
    passphrase: str | None = None,
) -> None:
    """Seal ``keys`` into ``path`` (created with mode 0600, atomically replaced).

    Exactly one of ``key_file`` and ``passphrase`` is given.
    """
    if (key_file is None) == (passphrase is None):
        raise ValueError("give a key file or a passphrase")
    protection = Protection.KEY_FILE if key_file is not None else Protection.PASSPHRASE
    params = Argon2Params.default(os.urandom) if passphrase is not None else None
    wrapping = _wrapping_key(protection, params, key_file=key_file, passphrase=passphrase)
    header = _SealedFile(version=_FORMAT, protection=protection, params=params)
    sealed = seal_at_rest(
        wrapping, keys.encode(), purpose=_PURPOSE, context=header.encode(), random=os.urandom
    )
    data = _SealedFile(
        version=_FORMAT, protection=protection, params=params, sealed=sealed
    ).encode()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def key_protection(path: Path) -> Protection:
    """Which protection the sealed key file at ``path`` uses."""
    return _read(path).protection


def _read(path: Path) -> _SealedFile:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read the server key file {path}: {exc.strerror}") from None
    try:
        return _SealedFile.decode(data, max_size=_MAX_FILE)
    except DecodeError as exc:
        raise StorageError(f"{path} is not a Sealwire server key file ({exc.reason})") from None


def load_keys(
    path: Path, *, key_file: Path | None = None, passphrase: str | None = None
) -> ServerKeys:
    """Open the sealed key file.

    Raises:
        ConfigError: wrong passphrase or key file, or the one needed was not given.
        StorageError: the file is missing or damaged.
    """
    sealed = _read(path)
    wrapping = _wrapping_key(
        sealed.protection, sealed.params, key_file=key_file, passphrase=passphrase
    )
    header = _SealedFile(version=sealed.version, protection=sealed.protection, params=sealed.params)
    try:
        plain = open_at_rest(wrapping, sealed.sealed, purpose=_PURPOSE, context=header.encode())
    except CryptoError:
        what = "passphrase" if sealed.protection is Protection.PASSPHRASE else "key file"
        raise ConfigError(f"wrong {what}: the server's keys in {path} do not open") from None
    return ServerKeys.decode(plain, max_size=_MAX_FILE)
