"""The organisation's directory and policy, as they travel between devices and their server
(DESIGN §4, §7; docs/protocol/DIRECTORY.md).

Everything here rides in envelopes of type :attr:`~.envelope.PayloadType.DIRECTORY` (queries,
answers, prekey publication) or :attr:`~.envelope.PayloadType.CONTROL`, and inside the
activation answer (:class:`ActivationDirectory`, :class:`SignedPolicy`). Bodies are
``[code, body]`` members of :data:`DIRECTORY_MESSAGES`.

Answers are signed by the server's identity key on top of the envelope signature, so a device
may keep them (its directory cache) and check them again later, and a signature made for one
query cannot answer another: the signed body carries the query's random ``request_id``.

Labels: ``directory-answer`` (a :class:`DirectoryAnswer` body), ``policy`` (a :class:`Policy`).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from sealwire.errors import DecodeError, InvalidSignature
from sealwire.protocol.codec import Struct, Variants, wire
from sealwire.protocol.envelope import MAX_BODY_SIZE
from sealwire.protocol.identity import (
    ADDRESS_SIZE,
    MAX_CERTIFICATE_SIZE,
    MAX_CHAIN,
    MAX_TIME,
    SignedPrekey,
)
from sealwire.protocol.suite import (
    ED25519_SIGNATURE_SIZE,
    SigningKey,
    verify_signature,
)

__all__ = [
    "DIRECTORY_MESSAGES",
    "MAX_DEVICES_PER_USER",
    "MAX_FAILED_ATTEMPTS",
    "MAX_OFFLINE_GRACE_S",
    "MAX_POLICY_NAME",
    "MAX_USERS_PER_QUERY",
    "MIN_FAILED_ATTEMPTS",
    "REQUEST_ID_SIZE",
    "ActivationDirectory",
    "CertificateRenewed",
    "DeviceEntry",
    "DirectoryAnswer",
    "DirectoryChanged",
    "DirectoryQuery",
    "Policy",
    "PrekeysPublished",
    "PublishPrekeys",
    "RenewCertificate",
    "ServerRefusal",
    "ServerRefusalCode",
    "SignedDirectoryAnswer",
    "SignedPolicy",
    "UserEntry",
    "check_username",
    "decode_directory_message",
    "encode_directory_message",
    "verify_prekey",
]

REQUEST_ID_SIZE = 16
MAX_USERS_PER_QUERY = 6
"""Most people one query names: an answer at every field's bound (6 people x 10 devices x
(two 512-byte certificates + a 1,400-byte prekey)) still fits in one envelope body."""
MAX_DEVICES_PER_USER = 10
"""Most active devices a person may have: every message is sealed to each of them."""
MAX_USERNAME = 64
MAX_DISPLAY_NAME = 128
MAX_PREKEY_SIZE = 1400
"""An encoded :class:`~.identity.SignedPrekey` (X-Wing public key, id, expiry, signature)."""
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_username(name: str) -> str:
    """Return ``name`` if it is a valid user name: 1-64 of ``a-z 0-9 . _ -``, starting with a
    letter or digit. User names are what people type; they are never secret.

    Raises:
        ValueError: with a message for the person who typed it.
    """
    if not _USERNAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid user name: use 1-64 lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return name


# --- Directory entries -----------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceEntry(Struct):
    """One active device of a person: where and how to seal to it."""

    chain: tuple[bytes, ...] = wire(0, max_items=MAX_CHAIN, max_size=MAX_CERTIFICATE_SIZE)
    """The device's certificate chain, leaf first (its address is the leaf's subject)."""
    prekey: bytes = wire(1, max_size=MAX_PREKEY_SIZE)
    """Its current encoded :class:`~.identity.SignedPrekey`."""

    def signed_prekey(self) -> SignedPrekey:
        """Decode :attr:`prekey` (verify it with the leaf's identity key before use)."""
        return SignedPrekey.decode(self.prekey, max_size=MAX_PREKEY_SIZE)


@dataclass(frozen=True)
class UserEntry(Struct):
    """A person of the organisation and their active devices."""

    user: str = wire(0, max_size=MAX_USERNAME)
    display_name: str = wire(1, max_size=MAX_DISPLAY_NAME)
    devices: tuple[DeviceEntry, ...] = wire(2, max_items=MAX_DEVICES_PER_USER)


# --- Directory messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class DirectoryQuery(Struct):
    """Device → server: who are these people, and where are their devices?"""

    request_id: bytes = wire(0, size=REQUEST_ID_SIZE)
    """Random; the answer repeats it under the server's signature."""
    users: tuple[str, ...] = wire(1, max_items=MAX_USERS_PER_QUERY, max_size=MAX_USERNAME)


@dataclass(frozen=True)
class DirectoryAnswer(Struct):
    """The signed part of an answer."""

    request_id: bytes = wire(0, size=REQUEST_ID_SIZE)
    organisation: bytes = wire(1, size=ADDRESS_SIZE)
    issued_at: int = wire(2, min_value=0, max_value=MAX_TIME)
    """Unix seconds."""
    expires_at: int = wire(3, min_value=0, max_value=MAX_TIME)
    """Unix seconds: cache the entries until then, no longer."""
    entries: tuple[UserEntry, ...] = wire(4, max_items=MAX_USERS_PER_QUERY)
    """Every queried person who exists and is active (possibly with no device yet)."""
    unknown: tuple[str, ...] = wire(5, max_items=MAX_USERS_PER_QUERY, max_size=MAX_USERNAME)
    """Queried names that are not (or no longer) people of the organisation."""


@dataclass(frozen=True)
class SignedDirectoryAnswer(Struct):
    """Server → device: a :class:`DirectoryAnswer` and the server's signature over it."""

    answer: DirectoryAnswer = wire(0)
    signature: bytes = wire(1, size=ED25519_SIGNATURE_SIZE)

    @classmethod
    def sign(cls, answer: DirectoryAnswer, server: SigningKey) -> SignedDirectoryAnswer:
        return cls(answer=answer, signature=server.sign("directory-answer", answer.encode()))

    def verify(self, server_key: bytes) -> DirectoryAnswer:
        """Check the signature with the server's identity key; return the answer.

        Raises:
            InvalidSignature: if it does not verify.
        """
        verify_signature(server_key, "directory-answer", self.answer.encode(), self.signature)
        return self.answer


@dataclass(frozen=True)
class PublishPrekeys(Struct):
    """Device → server: its current signed prekeys (replacing those published before)."""

    request_id: bytes = wire(0, size=REQUEST_ID_SIZE)
    prekeys: tuple[bytes, ...] = wire(1, max_items=4, max_size=MAX_PREKEY_SIZE)


@dataclass(frozen=True)
class PrekeysPublished(Struct):
    """Server → device: the prekeys of that request are stored and handed out from now on."""

    request_id: bytes = wire(0, size=REQUEST_ID_SIZE)


@dataclass(frozen=True)
class RenewCertificate(Struct):
    """Device → server: issue me a fresh certificate for the same identity key (sent while
    the current one is still valid, which is what authenticates the request)."""

    request_id: bytes = wire(0, size=REQUEST_ID_SIZE)


@dataclass(frozen=True)
class CertificateRenewed(Struct):
    """Server → device: the new certificate chain, leaf first."""

    request_id: bytes = wire(0, size=REQUEST_ID_SIZE)
    chain: tuple[bytes, ...] = wire(1, max_items=MAX_CHAIN, max_size=MAX_CERTIFICATE_SIZE)


MAX_CHANGED_USERS = 64


@dataclass(frozen=True)
class DirectoryChanged(Struct):
    """Server → device, pushed: these people's entries changed (deprovisioned, a device added
    or ended). The device drops them from its directory cache at once and asks again when it
    next needs them; the server sends it to every device that holds one of them in its cache
    (it remembers whom it answered until the answer's ``expires_at``)."""

    users: tuple[str, ...] = wire(0, max_items=MAX_CHANGED_USERS, max_size=MAX_USERNAME)


class ServerRefusalCode(enum.IntEnum):
    """Why the server refused a request. Wire codes, never reused."""

    MALFORMED = 1
    """The request did not decode (an older or broken device)."""
    INVALID = 2
    """It decoded but does not check out (e.g. a prekey whose signature does not verify)."""
    NOT_PERMITTED = 3
    """This device may not ask for that."""


@dataclass(frozen=True)
class ServerRefusal(Struct):
    """Server → device: the request with this id is refused. Every request that carries a
    ``request_id`` gets an answer: its result, or this (so a device never waits in vain)."""

    request_id: bytes = wire(0, size=REQUEST_ID_SIZE)
    code: ServerRefusalCode = wire(1)
    reason: str = wire(2, max_size=200)
    """For the person at the device: what was wrong (never secret)."""


DIRECTORY_MESSAGES = Variants(
    "directory message",
    {
        1: DirectoryQuery,
        2: SignedDirectoryAnswer,
        3: PublishPrekeys,
        4: PrekeysPublished,
        5: RenewCertificate,
        6: CertificateRenewed,
        7: DirectoryChanged,
        8: ServerRefusal,
    },
)
"""The bodies of ``DIRECTORY`` envelopes: ``[code, body]``, codes never reused."""


def encode_directory_message(message: Struct) -> bytes:
    """Encode one directory message as ``[code, body]``."""
    return DIRECTORY_MESSAGES.encode(message)


def decode_directory_message(data: bytes) -> Struct:
    """Decode one directory message strictly.

    Raises:
        DecodeError: if ``data`` is not exactly one valid directory message.
    """
    return DIRECTORY_MESSAGES.decode(data, max_size=MAX_BODY_SIZE)


# --- Policy ----------------------------------------------------------------------------------


MAX_POLICY_NAME = 64
MIN_FAILED_ATTEMPTS = 3
MAX_FAILED_ATTEMPTS = 10
MAX_OFFLINE_GRACE_S = 30 * 86400


@dataclass(frozen=True)
class Policy(Struct):
    """The organisation's rules for its devices (IT policy, DESIGN §8). A device applies the
    newest policy its server signed and reports whether it complies; it cannot ignore a rule it
    does not understand, because unknown keys fail decoding."""

    version: int = wire(0, min_value=1, max_value=(1 << 31) - 1)
    """The version of the named policy: increases with every change of it."""
    issued_at: int = wire(1, min_value=0, max_value=MAX_TIME)
    """Unix seconds. A device never goes back to a policy issued before the one it has."""
    prekey_rotation_s: int = wire(2, min_value=3600, max_value=90 * 86400)
    """How often a device makes a new prekey; old private prekeys are deleted one envelope
    lifetime after they were replaced."""
    directory_cache_s: int = wire(3, min_value=0, max_value=86400)
    """How long devices may use a directory answer (the server also says so per answer)."""
    name: str = wire(4, max_size=MAX_POLICY_NAME, default="default")
    """The policy's name (policies are assigned to groups of people)."""
    passcode_min_length: int = wire(5, min_value=6, max_value=64, default=6)
    passcode_classes: int = wire(6, min_value=1, max_value=4, default=1)
    """How many of the classes lower-case, upper-case, digit, other a passcode must mix."""
    max_failed_attempts: int = wire(
        7, min_value=MIN_FAILED_ATTEMPTS, max_value=MAX_FAILED_ATTEMPTS, default=10
    )
    """Wrong passcodes in a row after which the device erases itself."""
    auto_lock_s: int = wire(8, min_value=0, max_value=86400, default=900)
    """Idle time after which the device locks (0: never)."""
    offline_grace_s: int = wire(9, min_value=0, max_value=MAX_OFFLINE_GRACE_S, default=72 * 3600)
    """How long the device may keep its server's remote secret and stay unlockable without
    reaching the server (0: it must reach the server at every unlock)."""
    retention_days: int = wire(10, min_value=0, max_value=3650, default=0)
    """Messages older than this are deleted (0: kept until the person deletes them)."""
    export_allowed: bool = wire(11, default=True)
    """Whether the person may export their messages from the device."""


@dataclass(frozen=True)
class SignedPolicy(Struct):
    """A :class:`Policy` signed by the server (label ``policy``)."""

    policy: Policy = wire(0)
    signature: bytes = wire(1, size=ED25519_SIGNATURE_SIZE)

    @classmethod
    def sign(cls, policy: Policy, server: SigningKey) -> SignedPolicy:
        return cls(policy=policy, signature=server.sign("policy", policy.encode()))

    def verify(self, server_key: bytes) -> Policy:
        """Raises: InvalidSignature if the signature does not verify."""
        verify_signature(server_key, "policy", self.policy.encode(), self.signature)
        return self.policy


# --- First directory data, in the activation answer ------------------------------------------


@dataclass(frozen=True)
class ActivationDirectory(Struct):
    """What a newly activated device learns about its place (``ServerAnswer.directory``)."""

    organisation_name: str = wire(0, max_size=128)
    user: str = wire(1, max_size=MAX_USERNAME)
    """The person this device belongs to."""
    display_name: str = wire(2, max_size=MAX_DISPLAY_NAME)
    server_prekey: bytes = wire(3, max_size=MAX_PREKEY_SIZE)
    """The server's encoded :class:`~.identity.SignedPrekey`: devices seal to it (its chain is
    the second certificate of the device's own chain)."""
    relay: str = wire(4, max_size=255)
    """The relay URL the organisation uses."""


def verify_prekey(entry_prekey: bytes, identity_key: bytes, *, now: int) -> SignedPrekey:
    """Decode a signed prekey and check it belongs to ``identity_key`` and is valid at ``now``.

    Raises:
        InvalidSignature, InvalidCertificate: if it does not check out.
    """
    try:
        signed = SignedPrekey.decode(entry_prekey, max_size=MAX_PREKEY_SIZE)
    except DecodeError:
        raise InvalidSignature("undecodable prekey") from None
    signed.verify(identity_key, now=now)
    return signed
