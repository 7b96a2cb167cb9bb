"""The WebSocket channel to a relay (``websockets``): binary frames, no compression, no
WebSocket-level pings (the relay protocol pings itself)."""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from sealwire.errors import TransportError
from sealwire.protocol.frames import MAX_FRAME_SIZE

from .base import ChannelClosed

__all__ = ["WebSocketChannel", "dial"]


class WebSocketChannel:
    """A :class:`~sealwire.transport.base.FrameChannel` over a ``websockets`` client
    connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    async def receive(self) -> bytes | str | None:
        """The next message; ``None`` once the connection is closed."""
        try:
            return await self._ws.recv()
        except ConnectionClosed:
            return None

    async def send(self, frame: bytes) -> None:
        """Send one binary message.

        Raises:
            ChannelClosed: the connection is closed.
        """
        try:
            await self._ws.send(frame)
        except (ConnectionClosed, OSError) as exc:
            raise ChannelClosed("the relay connection is closed") from exc

    async def close(self) -> None:
        """A clean WebSocket close (bounded by the close timeout); never raises."""
        with contextlib.suppress(Exception):
            await self._ws.close()


async def dial(url: str, ssl_context: ssl.SSLContext | None, timeout: float) -> WebSocketChannel:
    """Open a WebSocket to the relay at ``url``.

    Raises:
        TransportError: the relay is unreachable or refused the upgrade (within ``timeout``).
    """
    kwargs: dict[str, Any] = {}
    if ssl_context is not None:
        kwargs["ssl"] = ssl_context
    try:
        ws = await connect(
            url,
            compression=None,
            max_size=MAX_FRAME_SIZE,
            max_queue=16,
            open_timeout=timeout,
            ping_interval=None,
            close_timeout=2,
            **kwargs,
        )
    except (TimeoutError, OSError, InvalidHandshake, InvalidURI) as exc:
        raise TransportError(f"cannot reach the relay at {url}: {exc}") from exc
    return WebSocketChannel(ws)
