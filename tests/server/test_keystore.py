"""The enterprise server's sealed key file (``sealwire.server.keystore``): both protections
round-trip, a wrong key file or passphrase is a ConfigError naming which, a damaged file a
StorageError, and the file on disk holds no key in the clear."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sealwire.errors import ConfigError, StorageError
from sealwire.server.keystore import (
    Protection,
    ServerKeys,
    create_key_file,
    key_protection,
    load_keys,
    save_keys,
)
from sealwire.server.server import _new_keys

PASSPHRASE = "operator passphrase 42"


@pytest.fixture(scope="module")
def keys() -> ServerKeys:
    return _new_keys(1_800_000_000)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _secrets(keys: ServerKeys) -> list[bytes]:
    """Every secret in the file, raw and in hex (either form in the file would leak it)."""
    raw = [keys.root_seed, keys.server_seed, keys.prekey_seed, keys.ticket_key]
    return raw + [s.hex().encode() for s in raw]


def test_key_file_round_trip_and_file_modes(tmp_path: Path, keys: ServerKeys) -> None:
    key_file = tmp_path / "secret" / "master.key"
    create_key_file(key_file)
    sealed = tmp_path / "keys.sealed"
    save_keys(sealed, keys, key_file=key_file)
    assert load_keys(sealed, key_file=key_file) == keys
    assert key_protection(sealed) is Protection.KEY_FILE
    assert _mode(key_file) == 0o600
    assert _mode(sealed) == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32
    data = sealed.read_bytes()
    for secret in _secrets(keys):
        assert secret not in data
    # Saving again replaces the file atomically and keeps its mode.
    save_keys(sealed, keys, key_file=key_file)
    assert _mode(sealed) == 0o600 and load_keys(sealed, key_file=key_file) == keys
    assert not sealed.with_suffix(".tmp").exists()


def test_key_file_is_never_overwritten(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    create_key_file(key_file)
    before = key_file.read_text()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        create_key_file(key_file)
    assert key_file.read_text() == before


def test_passphrase_round_trip(tmp_path: Path, keys: ServerKeys) -> None:
    sealed = tmp_path / "keys.sealed"
    save_keys(sealed, keys, passphrase=PASSPHRASE)
    assert key_protection(sealed) is Protection.PASSPHRASE
    assert _mode(sealed) == 0o600
    assert load_keys(sealed, passphrase=PASSPHRASE) == keys
    data = sealed.read_bytes()
    for secret in [*_secrets(keys), PASSPHRASE.encode()]:
        assert secret not in data
    with pytest.raises(ConfigError, match="wrong passphrase"):
        load_keys(sealed, passphrase=PASSPHRASE + "!")
    with pytest.raises(ConfigError, match="protected by a passphrase"):
        load_keys(sealed, key_file=tmp_path / "whatever.key")


def test_wrong_or_unusable_key_file(tmp_path: Path, keys: ServerKeys) -> None:
    right, wrong = tmp_path / "right.key", tmp_path / "wrong.key"
    create_key_file(right)
    create_key_file(wrong)
    sealed = tmp_path / "keys.sealed"
    save_keys(sealed, keys, key_file=right)
    with pytest.raises(ConfigError, match="wrong key file"):
        load_keys(sealed, key_file=wrong)
    with pytest.raises(ConfigError, match="protected by a key file"):
        load_keys(sealed, passphrase=PASSPHRASE)
    with pytest.raises(ConfigError, match="cannot read the key file"):
        load_keys(sealed, key_file=tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    bad.write_text("not hex at all\n")
    with pytest.raises(ConfigError, match="not 64 hex digits"):
        load_keys(sealed, key_file=bad)
    bad.write_text("ab" * 16 + "\n")  # hex, but 16 bytes
    with pytest.raises(ConfigError, match="not 64 hex digits"):
        load_keys(sealed, key_file=bad)
    assert load_keys(sealed, key_file=right) == keys


def test_damaged_or_missing_file_is_a_storage_error(tmp_path: Path, keys: ServerKeys) -> None:
    key_file = tmp_path / "master.key"
    create_key_file(key_file)
    sealed = tmp_path / "keys.sealed"
    save_keys(sealed, keys, key_file=key_file)
    data = sealed.read_bytes()
    damaged = tmp_path / "damaged.sealed"
    for broken in (b"", data[: len(data) // 2], os.urandom(len(data)), b"\xff" * 20_000):
        damaged.write_bytes(broken)
        with pytest.raises(StorageError, match="not a Sealwire server key file"):
            load_keys(damaged, key_file=key_file)
    with pytest.raises(StorageError, match="cannot read"):
        load_keys(tmp_path / "absent.sealed", key_file=key_file)
    # One flipped byte in the ciphertext: authenticated encryption cannot tell damage from a
    # wrong key, so the operator hears "wrong key file" -- and the keys never load.
    flipped = bytearray(data)
    flipped[-5] ^= 0x01
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(ConfigError, match="wrong key file"):
        load_keys(damaged, key_file=key_file)


def test_keys_repr_shows_no_secret(keys: ServerKeys) -> None:
    shown = repr(keys) + str(keys)
    for secret in _secrets(keys):
        assert secret.decode("latin-1") not in shown
    assert "secret" in shown
