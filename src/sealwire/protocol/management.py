"""Device management on the wire (DESIGN §8; docs/protocol/MANAGEMENT.md): IT policy, commands,
compliance reports and the remote secret behind crypto-backed wipe.

Everything here travels in envelopes between a device and its own server, as ``[code, body]``
members of :data:`MANAGEMENT_MESSAGES`, with the payload type :func:`payload_type_of` names
(``POLICY`` for a pushed policy, ``COMMAND`` for commands and their results, ``CONTROL`` for the
rest). The envelope already authenticates the server; commands and policies carry the
server's signature besides (labels ``command`` and ``policy``), so a device can keep them and
check them again, and a command names the one device it is for.

Conversation, in short::

    device → server   DeviceReport        on every connection and after applying a policy
    server → device   ManagementAnswer    the newest policy if the device's is not it, and
                                          every command not yet acknowledged
    server → device   SignedPolicy        pushed when the policy of the person changes
    server → device   SignedCommand       pushed when an administrator gives one
    device → server   CommandResult       once a command is carried out (again if repeated)
    device → server   FetchRemoteSecret   on unlock, when the cached secret has run out
    server → device   RemoteSecretAnswer  sealed to the one-time key of the request
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sealwire.errors import DecodeError, InvalidSignature
from sealwire.protocol.codec import Struct, Variants, wire
from sealwire.protocol.directory import (
    MAX_FAILED_ATTEMPTS,
    MAX_POLICY_NAME,
    REQUEST_ID_SIZE,
    Policy,
    SignedPolicy,
)
from sealwire.protocol.envelope import MAX_BODY_SIZE, PayloadType
from sealwire.protocol.identity import ADDRESS_SIZE, MAX_TIME
from sealwire.protocol.suite import (
    ED25519_SIGNATURE_SIZE,
    XWING_PUBLIC_KEY_SIZE,
    SigningKey,
    verify_signature,
)

__all__ = [
    "COMMAND_ID_SIZE",
    "MANAGEMENT_MESSAGES",
    "MAX_PENDING_COMMANDS",
    "REMOTE_SECRET_SIZE",
    "Command",
    "CommandKind",
    "CommandResult",
    "CommandStatus",
    "ComplianceIssue",
    "DeviceErased",
    "DeviceReport",
    "FetchRemoteSecret",
    "ManagementAnswer",
    "RemoteSecretAnswer",
    "SecretStatus",
    "SignedCommand",
    "check_passcode",
    "decode_management_message",
    "encode_management_message",
    "passcode_classes",
    "payload_type_of",
]

COMMAND_ID_SIZE = 16
REMOTE_SECRET_SIZE = 32
MAX_PENDING_COMMANDS = 16
"""Most commands one answer carries (a device acknowledges them and asks again)."""
MAX_PASSCODE = 128
MIN_PASSCODE = 6


class CommandKind(enum.IntEnum):
    """What an administrator asks a device to do. Wire codes, never reused."""

    LOCK = 1
    """Lock now (optionally after setting the passcode the administrator chose)."""
    WIPE = 2
    """Erase everything on the device."""
    RENEW_KEYS = 3
    """Make a new prekey and get a fresh certificate now."""


class CommandStatus(enum.IntEnum):
    DONE = 1
    FAILED = 2


class ComplianceIssue(enum.IntEnum):
    """Why a device does not comply with its policy. Wire codes, never reused."""

    PASSCODE_TOO_SHORT = 1
    PASSCODE_TOO_SIMPLE = 2
    """Fewer character classes than the policy asks for."""
    PASSCODE_NOT_CHECKED = 3
    """The policy changed while the device was locked: checked at the next unlock."""


class SecretStatus(enum.IntEnum):
    GRANTED = 1
    WIPE = 2
    """The device was wiped or its person deprovisioned: it must erase itself."""
    UNAVAILABLE = 3
    """The server has no secret for this active device (its database was restored from before
    the activation, or damaged): the device stays locked and erases nothing."""


# --- Commands --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command(Struct):
    """One command for one device."""

    command_id: bytes = wire(0, size=COMMAND_ID_SIZE)
    """Random. Carrying out the same command again changes nothing (commands are idempotent)."""
    device: bytes = wire(1, size=ADDRESS_SIZE)
    """The address of the device it is for; any other device refuses it."""
    kind: CommandKind = wire(2)
    issued_at: int = wire(3, min_value=0, max_value=MAX_TIME)
    """Unix seconds."""
    new_passcode: str | None = wire(4, max_size=MAX_PASSCODE, default=None)
    """``LOCK`` only: the passcode the administrator set (the person is told it out of band)."""

    def __post_init__(self) -> None:
        if self.new_passcode is not None:
            if self.kind is not CommandKind.LOCK:
                raise ValueError("only a lock command carries a new passcode")
            if len(self.new_passcode) < MIN_PASSCODE:
                raise ValueError(f"a passcode has at least {MIN_PASSCODE} characters")

    def __repr__(self) -> str:  # never print the passcode
        return f"Command(kind={self.kind.name}, id={self.command_id.hex()[:8]})"


@dataclass(frozen=True)
class SignedCommand(Struct):
    """A :class:`Command` signed by the server (label ``command``)."""

    command: Command = wire(0)
    signature: bytes = wire(1, size=ED25519_SIGNATURE_SIZE)

    @classmethod
    def sign(cls, command: Command, server: SigningKey) -> SignedCommand:
        return cls(command=command, signature=server.sign("command", command.encode()))

    def verify(self, server_key: bytes, device: bytes) -> Command:
        """Check the signature and that the command is for ``device``; return it.

        Raises:
            InvalidSignature: the signature does not verify or the command is for another
                device.
        """
        verify_signature(server_key, "command", self.command.encode(), self.signature)
        if self.command.device != device:
            raise InvalidSignature("the command is for another device")
        return self.command


@dataclass(frozen=True)
class CommandResult(Struct):
    """Device → server: a command was carried out (or could not be)."""

    command_id: bytes = wire(0, size=COMMAND_ID_SIZE)
    status: CommandStatus = wire(1)
    detail: str = wire(2, max_size=200, default="")
    """For the administrator; never a secret."""


@dataclass(frozen=True)
class DeviceErased(Struct):
    """Device → server: the device erased its keys and messages on its own, after the
    policy's limit of wrong passcodes in a row. Sent once, best effort, when the device still
    can (it holds its identity key from an earlier unlock); nothing is answered. The server
    marks the device wiped and stops directing messages to it."""

    failed_attempts: int = wire(0, min_value=1, max_value=MAX_FAILED_ATTEMPTS)
    """The wrong passcodes in a row that made it erase itself."""


# --- Check-in and policy ---------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceReport(Struct):
    """Device → server: which policy it applies and whether it complies."""

    request_id: bytes = wire(0, size=REQUEST_ID_SIZE)
    policy_name: str = wire(1, max_size=MAX_POLICY_NAME)
    policy_version: int = wire(2, min_value=0, max_value=(1 << 31) - 1)
    policy_issued_at: int = wire(3, min_value=0, max_value=MAX_TIME)
    issues: tuple[ComplianceIssue, ...] = wire(4, max_items=8)
    """Empty when the device complies."""


@dataclass(frozen=True)
class ManagementAnswer(Struct):
    """Server → device, answering a :class:`DeviceReport`."""

    request_id: bytes = wire(0, size=REQUEST_ID_SIZE)
    policy: SignedPolicy | None = wire(1, default=None)
    """The policy the device should apply, when it is not the one the device reported."""
    commands: tuple[SignedCommand, ...] = wire(2, max_items=MAX_PENDING_COMMANDS, default=())
    """Commands for this device not yet acknowledged, oldest first."""


# --- The remote secret -----------------------------------------------------------------------


@dataclass(frozen=True)
class FetchRemoteSecret(Struct):
    """Device → server: give me my remote secret (to unlock). The answer is sealed to the
    one-time X-Wing key named here, so opening it needs no key kept on the device's disk."""

    request_id: bytes = wire(0, size=REQUEST_ID_SIZE)
    reply_prekey_id: int = wire(1, min_value=0, max_value=(1 << 32) - 1)
    reply_key: bytes = wire(2, size=XWING_PUBLIC_KEY_SIZE)


@dataclass(frozen=True)
class RemoteSecretAnswer(Struct):
    """Server → device."""

    request_id: bytes = wire(0, size=REQUEST_ID_SIZE)
    status: SecretStatus = wire(1)
    secret: bytes | None = wire(2, size=REMOTE_SECRET_SIZE, default=None)
    """Present when ``GRANTED``."""
    policy: SignedPolicy | None = wire(3, default=None)
    """The device's current policy (how long it may cache the secret, among others)."""

    def __post_init__(self) -> None:
        if (self.status is SecretStatus.GRANTED) != (self.secret is not None):
            raise ValueError("a secret comes with GRANTED, and only with it")

    def __repr__(self) -> str:  # never print the secret
        return f"RemoteSecretAnswer(status={self.status.name})"


MANAGEMENT_MESSAGES = Variants(
    "management message",
    {
        1: DeviceReport,
        2: ManagementAnswer,
        3: SignedPolicy,
        4: SignedCommand,
        5: CommandResult,
        6: FetchRemoteSecret,
        7: RemoteSecretAnswer,
        8: DeviceErased,
    },
)
"""Bodies of ``POLICY``, ``COMMAND`` and ``CONTROL`` envelopes: ``[code, body]``."""

_PAYLOAD_TYPES: dict[type[Struct], PayloadType] = {
    SignedPolicy: PayloadType.POLICY,
    SignedCommand: PayloadType.COMMAND,
    CommandResult: PayloadType.COMMAND,
}


def payload_type_of(message: Struct) -> PayloadType:
    """The envelope payload type a management message travels under."""
    MANAGEMENT_MESSAGES.code_of(message)  # raises TypeError for a non-member
    return _PAYLOAD_TYPES.get(type(message), PayloadType.CONTROL)


def encode_management_message(message: Struct) -> bytes:
    return MANAGEMENT_MESSAGES.encode(message)


def decode_management_message(payload_type: PayloadType, data: bytes) -> Struct:
    """Decode one management message strictly, and check it came under its payload type.

    Raises:
        DecodeError: malformed, or under the wrong payload type.
    """
    message = MANAGEMENT_MESSAGES.decode(data, max_size=MAX_BODY_SIZE)
    expected = payload_type_of(message)
    if expected != payload_type:
        raise DecodeError(f"a {type(message).__name__} does not travel as {payload_type!r}")
    return message


# --- Passcode rules --------------------------------------------------------------------------


def passcode_classes(passcode: str) -> int:
    """How many of lower-case, upper-case, digit, other the passcode uses ("other" is every
    character that is none of the first three: symbols, spaces, letters without case)."""
    return sum(
        (
            any(c.islower() for c in passcode),
            any(c.isupper() for c in passcode),
            any(c.isdigit() for c in passcode),
            any(not (c.islower() or c.isupper() or c.isdigit()) for c in passcode),
        )
    )


def check_passcode(passcode: str, policy: Policy) -> tuple[ComplianceIssue, ...]:
    """What is wrong with ``passcode`` under ``policy`` (empty: nothing)."""
    issues = []
    if len(passcode) < policy.passcode_min_length:
        issues.append(ComplianceIssue.PASSCODE_TOO_SHORT)
    if passcode_classes(passcode) < policy.passcode_classes:
        issues.append(ComplianceIssue.PASSCODE_TOO_SIMPLE)
    return tuple(issues)
