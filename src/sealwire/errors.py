"""The one error hierarchy of Sealwire.

Every exception the package raises on purpose is a :class:`SealwireError`::

    SealwireError
    ├── LocalProtocolError        you used the API wrongly (an event the state does not allow)
    │   └── EncodeError           a value outside its wire bounds: the receiver would refuse it
    ├── RemoteProtocolError       the peer sent something we refuse; carries a stable wire code
    │   └── DecodeError           bytes that are not a valid Sealwire structure
    ├── CryptoError               a cryptographic check failed
    │   ├── InvalidEnvelope       an envelope could not be opened (one opaque error, no detail)
    │   ├── InvalidSignature      a signature over a labelled message did not verify
    │   ├── InvalidCertificate    a certificate chain did not verify (reason names the check)
    │   ├── ActivationFailed      the activation PAKE did not confirm (wrong password or attack)
    │   └── WrongPasscode         a device passcode (or server passphrase) did not open the store
    ├── TransportError            a connection could not be made or broke
    ├── StorageError              the database or a file store failed
    │   └── QueueFull             a relay queue is at its count or byte limit
    ├── DeviceLocked              the device's store is locked: unlock it with the passcode
    ├── DeviceWiped               the device was wiped (by command, policy or deprovisioning)
    ├── AdminError                an administrative request was refused
    │   ├── AuthenticationFailed  wrong administrator password, or a missing/expired token
    │   ├── AccessDenied          the administrator's role does not allow the action
    │   ├── NotFound              no such person, group, policy, device, command or account
    │   └── Conflict              it exists already, or the request contradicts the state
    └── ConfigError               a configuration value is missing or invalid

``sealwire.mls`` is a self-contained library (RFC 9420) and keeps its own tree rooted at
``sealwire.mls.errors.MLSError``; services translate it at their boundary with ``raise ... from``.

Wire codes (``RemoteProtocolError.code``) are short stable ASCII strings; they are part of the
protocol (docs/PROTOCOL.md lists them) and never change meaning.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "ActivationFailed",
    "AdminError",
    "AuthenticationFailed",
    "ConfigError",
    "Conflict",
    "CryptoError",
    "DecodeError",
    "DeviceLocked",
    "DeviceWiped",
    "EncodeError",
    "InvalidCertificate",
    "InvalidEnvelope",
    "InvalidSignature",
    "LocalProtocolError",
    "NotFound",
    "QueueFull",
    "RemoteProtocolError",
    "SealwireError",
    "StorageError",
    "TransportError",
    "WrongPasscode",
]


class SealwireError(Exception):
    """Base of every error Sealwire raises on purpose."""


class LocalProtocolError(SealwireError):
    """This side misused an API: for example it sent a frame its state machine does not allow.

    A bug in the caller, never something a peer can cause.
    """


class EncodeError(LocalProtocolError):
    """A structure could not be encoded: a field is outside the bounds its receiver's decoder
    enforces (too long, too many items, out of range, not valid Unicode). Raised on the
    sending side, before anything is sent; callers that take input from people check it
    first and say what the limit is.

    Attributes:
        reason: which field and which bound (never the value itself).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RemoteProtocolError(SealwireError):
    """The peer sent something we refuse.

    Attributes:
        code: stable short wire code sent to the peer in an error frame (docs/PROTOCOL.md).
        reason: human-readable detail for logs; never contains secrets or payload bytes.
    """

    code: str = "protocol"

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class DecodeError(RemoteProtocolError):
    """Bytes that are not a valid Sealwire structure: bad CBOR, unknown keys, wrong types,
    floats, tags, indefinite lengths, excess depth or size, or values out of range."""

    code = "malformed"


class CryptoError(SealwireError):
    """A cryptographic check failed."""


class InvalidEnvelope(CryptoError):
    """An envelope could not be opened.

    Deliberately opaque: decoding, decryption, padding, signature, certificate, freshness and
    replay failures all raise this same error with the same message, so that nothing observable
    tells an attacker which check failed.
    """

    def __init__(self) -> None:
        super().__init__("envelope rejected")


class InvalidSignature(CryptoError):
    """A signature did not verify under the given key and label."""


class InvalidCertificate(CryptoError):
    """A certificate or chain did not verify. ``str(exc)`` names the failed check; certificates
    are public, so this detail is safe to log."""


class ActivationFailed(CryptoError):
    """The activation PAKE did not confirm: a wrong password, or frames altered in transit.

    The two cases are indistinguishable by design.
    """


class WrongPasscode(CryptoError):
    """A passcode did not open the device's store (Argon2id-derived key, AEAD check)."""


class DeviceLocked(SealwireError):
    """The device's store is locked; the message says how to unlock it."""


class DeviceWiped(SealwireError):
    """The device was wiped: its keys and messages are erased (by an administrator's command,
    by too many wrong passcodes, or because its person was deprovisioned)."""


class AdminError(SealwireError):
    """An administrative request was refused; the message says why (the admin API answers
    with an HTTP status per subclass)."""


class AuthenticationFailed(AdminError):
    """Wrong administrator name or password, or a missing, unknown or expired token."""


class AccessDenied(AdminError):
    """The administrator's role does not have the permission the action needs."""


class NotFound(AdminError):
    """No such person, group, policy, device, command or administrator."""


class Conflict(AdminError):
    """It exists already, or the request contradicts the current state."""


class TransportError(SealwireError):
    """A network connection could not be made, or broke."""


class StorageError(SealwireError):
    """A database or file-store operation failed."""


class QueueFull(StorageError):
    """A recipient's relay queue is at its limit (count or bytes); the sender may retry later.

    On the wire this is the per-request code ``queue-full``.
    """


class ConfigError(SealwireError):
    """A configuration value is missing or invalid; the message says which and how to fix it."""
