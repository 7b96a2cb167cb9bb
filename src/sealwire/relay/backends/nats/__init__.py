"""The cluster relay backend on NATS JetStream (see :mod:`.backend`)."""

from .backend import (
    NatsBackend,
    _decode_route,
    _decode_signal,
    _encode_route,
    _encode_signal,
    _token,
)

__all__ = ["NatsBackend"]
