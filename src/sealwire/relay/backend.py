"""Old import path of :mod:`sealwire.relay.backends.base` (kept for code that imports it)."""

from .backends.base import (
    DEFAULT_LIFETIME_MS,
    ActivationRoute,
    BackendListener,
    ExpiryNotice,
    QueueLimits,
    RelayBackend,
    StoredEnvelope,
)

__all__ = [
    "DEFAULT_LIFETIME_MS",
    "ActivationRoute",
    "BackendListener",
    "ExpiryNotice",
    "QueueLimits",
    "RelayBackend",
    "StoredEnvelope",
]
