"""The error hierarchy of ``sealwire.mls`` (RFC 9420 messaging layer security).

``sealwire.mls`` is a self-contained sans-IO library; it keeps its own tree, and services
translate it at their boundary with ``raise ... from``::

    MLSError                      root: every exception this package raises on purpose
    ├── DecodeError               bytes that are not a valid TLS-presentation structure
    │                             (short read, overlong or non-minimal length, trailing bytes)
    ├── CryptoError               an AEAD open, signature check or HPKE open failed
    │                             (one opaque error: it never says which check failed)
    ├── ValidationError           a well-formed message, proposal or commit that RFC 9420
    │   │                         says to reject (wrong epoch, bad confirmation tag, ...)
    │   └── SecretReuseError      a key/nonce generation already consumed, deleted, or
    │                             beyond the look-ahead window (RFC 9420 §9.2)
    ├── UnsupportedError          a cipher suite, extension or credential we do not implement
    └── LocalError                the API was misused (value out of range, wrong state)

Peer-controlled input only ever produces ``DecodeError``, ``CryptoError``, ``ValidationError``
or ``UnsupportedError``; ``LocalError`` signals a bug in the caller.
"""

from __future__ import annotations

__all__ = [
    "CryptoError",
    "DecodeError",
    "LocalError",
    "MLSError",
    "SecretReuseError",
    "UnsupportedError",
    "ValidationError",
]


class MLSError(Exception):
    """Root of every exception raised on purpose by ``sealwire.mls``."""


class DecodeError(MLSError):
    """Bytes are not a valid TLS-presentation encoding of the expected structure.

    Raised for short reads, lengths beyond the allowed maximum, non-minimal or reserved
    variable-length integers (RFC 9420 §2.1.2), invalid enum/presence values and trailing bytes.
    """


class CryptoError(MLSError):
    """A cryptographic check failed: AEAD open, signature verification or HPKE open.

    Deliberately opaque (no detail about which check failed), like pyca's ``InvalidTag``.
    """


class ValidationError(MLSError):
    """A well-formed message, proposal or commit that RFC 9420 requires us to reject."""


class SecretReuseError(ValidationError):
    """A secret-tree generation was already used or deleted, or lies too far ahead.

    RFC 9420 §9.2 requires deleting consumed keys; reuse would mean nonce reuse.
    """


class UnsupportedError(MLSError):
    """A cipher suite, extension, credential or other feature we do not implement."""


class LocalError(MLSError):
    """The API was used wrongly (a value out of range, a call in the wrong state)."""
