"""The link interface between a device or enterprise server and its relay, and the frame
channel every implementation drives.

A *link* (:class:`RelayLink`) is one authenticated relay session as the device and the server
use it: send envelopes, acknowledge deliveries, exchange activation messages, revoke
addresses, close. There is one implementation of the session logic,
:class:`~sealwire.transport.connection.RelayConnection`, which drives the sans-IO
:class:`~sealwire.protocol.session.ClientSession` over a :class:`FrameChannel`: a WebSocket
(:mod:`.websocket`, the default) or an in-process pipe to an in-process relay (:mod:`.memory`,
for tests: no socket, no port, no subprocess). A
:class:`~sealwire.transport.connection.Connector` opens links; the device and the server are
given one (the WebSocket one unless a test injects another).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from sealwire.errors import RemoteProtocolError, TransportError
from sealwire.protocol.session import ActivationReceived, EnvelopeDelivered, EnvelopeExpired

__all__ = [
    "ChannelClosed",
    "FrameChannel",
    "RelayLink",
    "RequestRefused",
    "SessionEnded",
]


class RequestRefused(RemoteProtocolError):
    """The relay refused one request (``code`` is ``queue-full``, ``rate-limited``,
    ``unknown-server`` or ``unavailable``); the session goes on."""


class SessionEnded(TransportError):
    """The relay session is over: ``code`` says why (a wire code, or ``connection-lost``)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"relay session ended: {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason


class ChannelClosed(TransportError):
    """A frame could not be sent: the channel is closed."""


class FrameChannel(Protocol):
    """A connection that carries whole binary frames both ways (a WebSocket, or an
    in-memory pipe)."""

    async def receive(self) -> bytes | str | None:
        """The next message from the peer; ``None`` once the channel is closed (either side).
        A ``str`` is a text message, which the protocol does not use."""
        ...

    async def send(self, frame: bytes) -> None:
        """Send one binary frame.

        Raises:
            ChannelClosed: the channel is closed.
        """
        ...

    async def close(self) -> None:
        """Close cleanly (never raises; closing twice is harmless)."""
        ...


class RelayLink(Protocol):
    """One relay session, as the device and the enterprise server use it.

    Deliveries, activation messages and expiry notices arrive on the queues; ``ended``
    resolves (never raises) with why the session ended.
    """

    deliveries: asyncio.Queue[EnvelopeDelivered]
    activations: asyncio.Queue[ActivationReceived]
    expiries: asyncio.Queue[EnvelopeExpired]
    ended: asyncio.Future[SessionEnded]

    @property
    def address(self) -> bytes | None:
        """Our address as the relay admitted it (``None`` in activation mode)."""
        ...

    @property
    def relay_time(self) -> int:
        """The relay's clock when it opened the session (Unix ms)."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the session is over."""
        ...

    async def send(self, envelope: bytes) -> None:
        """Hand an envelope to the relay; return once it is durably queued there.

        Raises:
            RequestRefused: the relay refused it.
            SessionEnded: the session ended before the answer came.
        """
        ...

    def ack(self, delivery_ids: Sequence[bytes]) -> None:
        """Acknowledge deliveries that are safely stored (the relay deletes them)."""
        ...

    async def send_activation(
        self, session: bytes, payload: bytes, server: bytes | None = None
    ) -> None:
        """Send an activation message (devices in activation mode name the ``server``)."""
        ...

    async def revoke(self, addresses: Sequence[bytes]) -> None:
        """Servers: have the relay refuse these addresses of our organisation."""
        ...

    async def close(self) -> None:
        """Close the session after sending what is queued."""
        ...
