"""RFC 9420 Messaging Layer Security, sans-IO.

This package imports nothing from the rest of ``sealwire`` and performs no I/O: it reads no
clock and no randomness; time and random bytes are passed in by the caller. Errors are rooted
at :class:`sealwire.mls.errors.MLSError`.
"""

from __future__ import annotations

from .errors import (
    CryptoError,
    DecodeError,
    LocalError,
    MLSError,
    SecretReuseError,
    UnsupportedError,
    ValidationError,
)

__all__ = [
    "CryptoError",
    "DecodeError",
    "LocalError",
    "MLSError",
    "SecretReuseError",
    "UnsupportedError",
    "ValidationError",
]
