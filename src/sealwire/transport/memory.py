"""An in-process relay for tests: the real relay service (its sans-IO sessions, admission,
rate limits, routing and a real queue backend) reached through in-memory pipes instead of
sockets. No port, no subprocess: a device and an enterprise server in one process talk
through it as they would through a relay on the network.

Use :class:`MemoryRelay` as the :class:`~sealwire.transport.connection.Connector` of the
device (``Device.activate(..., connector=relay)``, ``device.connector = relay``) and of the
server (``server.connector = relay``), with :attr:`MemoryRelay.url` as the relay URL::

    async with MemoryRelay.running(tmp_path) as relay:
        server.connector = relay
        ...

This module imports the relay service: production code never imports it (the package's
``__init__`` does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from sealwire._system import now_ms
from sealwire.errors import ConfigError, TransportError
from sealwire.protocol.frames import canonical_origin, relay_id_for
from sealwire.protocol.session import ClientConfig, ClientSession
from sealwire.protocol.suite import SigningKey
from sealwire.relay.config import RelayServiceConfig
from sealwire.relay.link import WireClosed
from sealwire.relay.service import Relay

from .base import ChannelClosed
from .connection import RelayConnection

__all__ = ["MEMORY_ORIGIN", "MemoryRelay"]

MEMORY_ORIGIN = "wss://relay.in-memory.test"
"""The origin an in-process relay answers to (``.test`` never resolves: code that dials it
over the network instead of through the injected connector fails at once)."""

_SOURCE = "in-memory"


class _Pipe:
    """Both directions of one in-memory connection. Closing either end closes both (as a
    WebSocket close does); messages sent before the close are still received."""

    def __init__(self) -> None:
        self.closed = False
        self.to_relay: asyncio.Queue[bytes | str | None] = asyncio.Queue()
        self.to_client: asyncio.Queue[bytes | str | None] = asyncio.Queue()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.to_relay.put_nowait(None)
            self.to_client.put_nowait(None)


class _ClientEnd:
    """The client's end: a :class:`~sealwire.transport.base.FrameChannel`."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe

    async def receive(self) -> bytes | str | None:
        return await _receive(self._pipe.to_client)

    async def send(self, frame: bytes) -> None:
        if self._pipe.closed:
            raise ChannelClosed("the in-memory relay connection is closed")
        self._pipe.to_relay.put_nowait(frame)

    async def close(self) -> None:
        self._pipe.close()


class _RelayEnd:
    """The relay's end: a :class:`~sealwire.relay.link.Wire`."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe

    @property
    def source(self) -> str:
        return _SOURCE

    async def receive(self) -> bytes | str | None:
        return await _receive(self._pipe.to_relay)

    async def send(self, frames: list[bytes]) -> None:
        if self._pipe.closed:
            raise WireClosed
        for frame in frames:
            self._pipe.to_client.put_nowait(frame)
        await asyncio.sleep(0)  # a write yields to the loop, as a socket drain does

    async def close(self) -> None:
        self._pipe.close()

    def abort(self) -> None:
        self._pipe.close()


async def _receive(inbox: asyncio.Queue[bytes | str | None]) -> bytes | str | None:
    message = await inbox.get()
    if message is None:
        inbox.put_nowait(None)  # every later receive sees the close too
    return message


class MemoryRelay:
    """A relay service in this process, reached without sockets (a
    :class:`~sealwire.transport.connection.Connector`).

    Args:
        relay: a relay service, not started; :meth:`start` starts it without listening.
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._links: set[asyncio.Task[None]] = set()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, data: Path, *, clock: Callable[[], int] = now_ms, **settings: Any
    ) -> AsyncIterator[MemoryRelay]:
        """A started in-process relay with its SQLite queue in ``data``, stopped at the end.

        Args:
            settings: :class:`~sealwire.relay.config.RelayServiceConfig` fields (limits,
                lifetimes); the origin is :data:`MEMORY_ORIGIN` unless ``public_origin`` is
                given. Metrics are off.
        """
        config = RelayServiceConfig(
            **{"public_origin": MEMORY_ORIGIN, "data": str(data), "metrics": "", **settings}
        )
        hub = cls(Relay(config, clock=clock))
        await hub.start()
        try:
            yield hub
        finally:
            await hub.stop()

    @property
    def url(self) -> str:
        """The URL to give servers and devices (the relay's canonical origin)."""
        return self.relay.origin

    async def start(self) -> None:
        """Start the relay service (its backend and sweepers; no socket)."""
        await self.relay.start(listen=False)

    async def stop(self) -> None:
        """Stop the relay (every session ends with ``shutdown``) and its connections."""
        await self.relay.stop()
        for task in list(self._links):
            task.cancel()
        if self._links:
            await asyncio.wait(list(self._links), timeout=5)

    async def open(
        self,
        url: str,
        *,
        identity: SigningKey,
        chain: Sequence[bytes],
        root: bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 15.0,
        clock: Callable[[], int] = now_ms,
    ) -> RelayConnection:
        """See :meth:`RelayConnection.open`: the same session, over an in-memory pipe.

        Raises:
            TransportError: ``url`` is not this relay, or the relay refused the connection.
            SessionEnded: the relay ended the session during the handshake.
        """
        channel = self._connect(url)
        session = ClientSession(
            identity, chain, root=root, config=ClientConfig(relay_id=relay_id_for(url))
        )
        return await RelayConnection.start(channel, session, timeout=timeout, clock=clock)

    async def open_for_activation(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 15.0,
        clock: Callable[[], int] = now_ms,
    ) -> RelayConnection:
        """See :meth:`RelayConnection.open_for_activation`."""
        channel = self._connect(url)
        session = ClientSession(config=ClientConfig(relay_id=relay_id_for(url)))
        return await RelayConnection.start(
            channel, session, activation=True, timeout=timeout, clock=clock
        )

    def _connect(self, url: str) -> _ClientEnd:
        try:
            origin = canonical_origin(url)
        except ConfigError as exc:
            raise TransportError(f"cannot reach the relay at {url}: {exc}") from exc
        if origin != self.relay.origin:
            raise TransportError(f"cannot reach the relay at {url}: not this in-process relay")
        reason = self.relay.connection_refusal(_SOURCE)
        if reason is not None:
            raise TransportError(f"cannot reach the relay at {url}: refused ({reason})")
        pipe = _Pipe()
        task = asyncio.create_task(self.relay.serve_link(_RelayEnd(pipe)))
        self._links.add(task)
        task.add_done_callback(self._links.discard)
        return _ClientEnd(pipe)
