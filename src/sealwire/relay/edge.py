"""The relay's WebSocket edge: listen, refuse over-limit connections at the HTTP upgrade, and
hand every accepted connection to the service as a :class:`~.link.Wire`.

Only this module knows ``websockets``; the per-connection loop (:mod:`.service`) reads and
writes through the :class:`~.link.Wire` interface, so an in-process pipe can stand in for a
socket (:mod:`sealwire.transport.memory`).
"""

from __future__ import annotations

import contextlib
import http
import logging
import ssl
from collections.abc import Awaitable, Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from sealwire.errors import TransportError
from sealwire.protocol.frames import MAX_FRAME_SIZE

from .config import RelayServiceConfig
from .link import Wire, WireClosed

__all__ = ["WebSocketWire", "listen"]

_RECV_QUEUE = 8
"""Received WebSocket messages websockets buffers per connection before it stops reading."""
_WRITE_LIMIT = 64 * 1024
"""websockets' write buffer high-water mark per connection."""


class _NoFrameDumps(logging.Filter):
    """websockets logs the first and last bytes of every frame at DEBUG: envelope and address
    bytes, which the relay never logs. Its INFO and above (connections, errors) pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_WEBSOCKETS_LOG = logging.getLogger("sealwire.relay.websockets")
_WEBSOCKETS_LOG.addFilter(_NoFrameDumps())


class WebSocketWire:
    """A :class:`~.link.Wire` over one accepted ``websockets`` connection."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    @property
    def source(self) -> str:
        """The client's IP address."""
        return _source_of(self.ws)

    async def receive(self) -> bytes | str | None:
        """The next message; ``None`` once the connection is closed."""
        try:
            return await self.ws.recv()
        except ConnectionClosed:
            return None

    async def send(self, frames: list[bytes]) -> None:
        """Every frame in one socket write and one drain (websockets' own ``send()`` writes
        and drains once per message)."""
        ws = self.ws
        try:
            async with ws.send_context():
                for frame in frames:
                    ws.protocol.send_binary(frame)
        except ConnectionClosed as exc:
            raise WireClosed from exc

    async def close(self) -> None:
        """A clean WebSocket close if the connection is still open."""
        if self.ws.state is State.OPEN:
            with contextlib.suppress(ConnectionClosed, OSError):
                await self.ws.close()

    def abort(self) -> None:
        """Cut the TCP connection (a peer that stopped reading cannot hold a slot)."""
        if self.ws.state is not State.CLOSED and self.ws.transport is not None:
            self.ws.transport.abort()


async def listen(
    config: RelayServiceConfig,
    ssl_context: ssl.SSLContext | None,
    *,
    serve_link: Callable[[Wire], Awaitable[None]],
    refusal: Callable[[str], str | None],
) -> Server:
    """Listen on ``config.host:config.port``; each connection runs ``serve_link``.

    Args:
        serve_link: the service's per-connection loop.
        refusal: why a new connection from a source is refused (a short reason answered as
            429 for per-source limits, 503 otherwise), or ``None``.

    Raises:
        TransportError: the address cannot be bound.
    """

    def process_request(ws: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return _plain(http.HTTPStatus.OK, "ok\n")
        reason = refusal(_source_of(ws))
        if reason is None:
            return None
        status = (
            http.HTTPStatus.TOO_MANY_REQUESTS
            if reason.startswith("source")
            else http.HTTPStatus.SERVICE_UNAVAILABLE
        )
        return _plain(status, f"{reason}\n")

    async def handle(ws: ServerConnection) -> None:
        await serve_link(WebSocketWire(ws))

    try:
        return await serve(
            handle,
            config.host,
            config.port,
            ssl=ssl_context,
            process_request=process_request,
            compression=None,
            max_size=MAX_FRAME_SIZE,
            max_queue=_RECV_QUEUE,
            write_limit=_WRITE_LIMIT,
            open_timeout=config.handshake_timeout_s,
            ping_interval=None,
            close_timeout=2,
            server_header=None,
            logger=_WEBSOCKETS_LOG,
        )
    except OSError as exc:
        raise TransportError(
            f"relay cannot listen on {config.host}:{config.port}: {exc.strerror}"
        ) from None


def _plain(status: http.HTTPStatus, body: str) -> Response:
    headers = Headers([("Content-Type", "text/plain"), ("Connection", "close")])
    return Response(status.value, status.phrase, headers, body.encode())


def _source_of(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "unknown"
