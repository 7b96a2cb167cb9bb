"""A client's connection to a relay: one sans-IO :class:`ClientSession` driven over a
:class:`~sealwire.transport.base.FrameChannel` (a WebSocket by default, :mod:`.websocket`; or
an in-process pipe, :mod:`.memory`). Devices and enterprise servers use it; so do the relay's
tests and benchmarks.

The edge is thin: a reader feeds received messages to the session and dispatches its events, a
writer sends what the session queued, a timer handles pings and deadlines. Requests
(:meth:`RelayConnection.send`, :meth:`RelayConnection.revoke`) wait for their answer; the
session's window bounds how many are in flight and callers beyond it wait their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sealwire._system import now_ms
from sealwire.errors import TransportError
from sealwire.protocol.frames import MAX_REVOKE_ADDRESSES, relay_id_for
from sealwire.protocol.session import (
    ActivationReceived,
    ClientConfig,
    ClientSession,
    ClientState,
    EnvelopeDelivered,
    EnvelopeExpired,
    Event,
    RequestAccepted,
    RequestRejected,
    SessionReady,
    SessionTerminated,
)
from sealwire.protocol.suite import SigningKey

from .base import ChannelClosed, FrameChannel, RequestRefused, SessionEnded
from .websocket import dial

__all__ = ["Connector", "RelayConnection", "RequestRefused", "SessionEnded"]


class RelayConnection:
    """A connected relay session (it implements :class:`~sealwire.transport.base.RelayLink`).
    Make one with :meth:`open` or :meth:`open_for_activation` (over a WebSocket: the class is
    the default :class:`Connector`), or with :meth:`start` over any channel.

    Deliveries, activation messages and expiry notices arrive on queues (``deliveries``,
    ``activations``, ``expiries``). The relay's delivery window bounds what an honest relay
    puts there; the client does not enforce it.
    """

    def __init__(
        self, channel: FrameChannel, session: ClientSession, clock: Callable[[], int]
    ) -> None:
        self._channel = channel
        self._session = session
        self._clock = clock
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._slot = asyncio.Event()
        """Set when a request slot may have freed up (or the session ended)."""
        self._wake = asyncio.Event()
        self._ready: asyncio.Future[SessionReady] = asyncio.get_running_loop().create_future()
        self.ended: asyncio.Future[SessionEnded] = asyncio.get_running_loop().create_future()
        """Resolves (never raises) with why the session ended."""
        self.deliveries: asyncio.Queue[EnvelopeDelivered] = asyncio.Queue()
        self.activations: asyncio.Queue[ActivationReceived] = asyncio.Queue()
        self.expiries: asyncio.Queue[EnvelopeExpired] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._reader = asyncio.create_task(self._read())
        self._writer = asyncio.create_task(self._write())

    # --- opening ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        identity: SigningKey,
        chain: Sequence[bytes],
        root: bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 15.0,
        clock: Callable[[], int] = now_ms,
    ) -> RelayConnection:
        """Connect to the relay at ``url`` and authenticate.

        Args:
            url: ``wss://host:port`` (or ``ws://`` on loopback); the relay id is derived from it.
            identity, chain: our key and certificate chain (leaf first).
            root: enterprise servers: the organisation root key (registers the organisation).

        Raises:
            TransportError: the relay is unreachable or refused the connection.
            SessionEnded: the relay ended the session during the handshake (``code`` says why:
                ``not-admitted``, ``revoked``, ``auth-failed``...).
        """
        session = ClientSession(
            identity, chain, root=root, config=ClientConfig(relay_id=relay_id_for(url))
        )
        channel = await dial(url, ssl_context, timeout)
        return await cls.start(channel, session, timeout=timeout, clock=clock)

    @classmethod
    async def open_for_activation(
        cls,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 15.0,
        clock: Callable[[], int] = now_ms,
    ) -> RelayConnection:
        """Connect in activation mode (a device without a certificate yet)."""
        session = ClientSession(config=ClientConfig(relay_id=relay_id_for(url)))
        channel = await dial(url, ssl_context, timeout)
        return await cls.start(channel, session, activation=True, timeout=timeout, clock=clock)

    @classmethod
    async def start(
        cls,
        channel: FrameChannel,
        session: ClientSession,
        *,
        activation: bool = False,
        timeout: float = 15.0,
        clock: Callable[[], int] = now_ms,
    ) -> RelayConnection:
        """Connect ``session`` (new) over an open ``channel``, in activation mode or not, and
        wait until the relay opens it (the connectors call this once they have a channel).

        Raises:
            SessionEnded: the relay ended the session during the handshake.
            TransportError: the relay did not open the session within ``timeout``.
        """
        conn = cls(channel, session, clock)
        if activation:
            session.connect_for_activation(clock())
        else:
            session.connect(clock())
        return await conn._await_ready(timeout)

    async def _await_ready(self, timeout: float) -> RelayConnection:
        self._wake.set()
        self._arm_timer()
        waiters: list[asyncio.Future[Any]] = [self._ready, self.ended]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # Cancelled while opening: the caller has no object to close, so close here.
            await asyncio.shield(self.close())
            raise
        if self._ready.done():
            return self
        await self.close()
        if self.ended.done():
            raise self.ended.result()
        raise TransportError("the relay did not open the session in time")

    # --- properties ---------------------------------------------------------------------

    @property
    def address(self) -> bytes | None:
        return self._session.address

    @property
    def relay_time(self) -> int:
        """The relay's clock when it opened the session (Unix ms)."""
        return self._ready.result().relay_time

    @property
    def closed(self) -> bool:
        return self.ended.done()

    # --- requests -----------------------------------------------------------------------

    async def send(self, envelope: bytes) -> None:
        """Hand ``envelope`` to the relay; return once it is durably queued there.

        Raises:
            RequestRefused: the relay refused it (``code``: ``queue-full`` ...).
            SessionEnded: the session ended before the answer came (the envelope may or may
                not have been stored: send it again on a new session; recipients drop
                duplicates by message id).
            LocalProtocolError: ``envelope`` is not a valid envelope of at most 256 KiB.
        """
        await self._request(lambda: [self._session.send_envelope(envelope)])

    async def revoke(self, addresses: Sequence[bytes]) -> None:
        """Servers: tell the relay to refuse these addresses of our organisation (any number:
        they go in requests of at most 256, one request slot each)."""
        unique = list(dict.fromkeys(addresses))
        for start in range(0, len(unique), MAX_REVOKE_ADDRESSES):
            chunk = unique[start : start + MAX_REVOKE_ADDRESSES]
            await self._request(functools.partial(self._session.revoke, chunk))

    async def _request(self, start: Callable[[], list[int]]) -> None:
        while self._session.send_window <= 0 and not self.closed:
            self._slot.clear()
            await self._slot.wait()
        self._raise_if_ended()
        refs = start()  # no await between the window check and taking the slot
        futures = []
        loop = asyncio.get_running_loop()
        for ref in refs:
            future: asyncio.Future[None] = loop.create_future()
            self._waiting[ref] = future
            futures.append(future)
        self._wake.set()
        for future in futures:
            await future

    def ack(self, delivery_ids: Sequence[bytes]) -> None:
        """Acknowledge deliveries that are safely stored (the relay deletes them)."""
        if not delivery_ids or self._session.state is not ClientState.OPEN:
            return
        for start in range(0, len(delivery_ids), 256):
            self._session.ack(delivery_ids[start : start + 256])
        self._wake.set()

    async def send_activation(
        self, session: bytes, payload: bytes, server: bytes | None = None
    ) -> None:
        """Send an activation message (devices name the ``server``)."""
        self._raise_if_ended()
        self._session.send_activation(session, payload, server)
        self._wake.set()

    async def close(self) -> None:
        """Close the connection (a clean WebSocket close), after sending what is queued (an
        acknowledgement just given is not lost)."""
        if self._session.state is not ClientState.CLOSED:
            with contextlib.suppress(ChannelClosed):
                for frame in self._session.frames_to_send():
                    await self._channel.send(frame)
            self._session.connection_lost()
        self._finish(SessionEnded("closed", "closed by us"))
        await self._channel.close()
        for task in (self._reader, self._writer):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> RelayConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _raise_if_ended(self) -> None:
        if self.ended.done():
            raise self.ended.result()

    # --- the edge -----------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while (message := await self._channel.receive()) is not None:
                if isinstance(message, str):
                    continue
                self._dispatch(self._session.receive_frame(message, self._clock()))
                self._wake.set()
                self._arm_timer()
        finally:
            self._dispatch(self._session.connection_lost())

    async def _write(self) -> None:
        with contextlib.suppress(ChannelClosed):
            while True:
                await self._wake.wait()
                self._wake.clear()
                for frame in self._session.frames_to_send():
                    await self._channel.send(frame)
                if self._session.state is ClientState.CLOSED:
                    await self._channel.close()
                    return

    def _dispatch(self, events: list[Event]) -> None:
        freed = False
        for event in events:
            if isinstance(event, RequestAccepted):
                future = self._waiting.pop(event.ref, None)
                if future is not None and not future.done():
                    future.set_result(None)
                freed = True
            elif isinstance(event, RequestRejected):
                future = self._waiting.pop(event.ref, None)
                if future is not None and not future.done():
                    future.set_exception(RequestRefused(event.reason, code=event.code))
                freed = True
            elif isinstance(event, EnvelopeDelivered):
                self.deliveries.put_nowait(event)
            elif isinstance(event, ActivationReceived):
                self.activations.put_nowait(event)
            elif isinstance(event, EnvelopeExpired):
                self.expiries.put_nowait(event)
            elif isinstance(event, SessionReady):
                if not self._ready.done():
                    self._ready.set_result(event)
            elif isinstance(event, SessionTerminated):
                self._finish(SessionEnded(event.code, event.reason))
        if freed:
            self._slot.set()

    def _finish(self, why: SessionEnded) -> None:
        if not self.ended.done():
            self.ended.set_result(why)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(why)
        self._waiting.clear()
        if self._timer is not None:
            self._timer.cancel()
        self._wake.set()
        self._slot.set()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self._session.get_timer()
        if at is None:
            return
        delay = max(0.0, (at - self._clock()) / 1000)
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch(self._session.handle_timer(self._clock()))
        self._wake.set()
        self._arm_timer()


class Connector(Protocol):
    """Opens relay links: :class:`RelayConnection` itself (over a WebSocket, the default) or
    :class:`~sealwire.transport.memory.MemoryRelay` (an in-process relay, for tests)."""

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
        """See :meth:`RelayConnection.open`."""
        ...

    async def open_for_activation(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 15.0,
        clock: Callable[[], int] = now_ms,
    ) -> RelayConnection:
        """See :meth:`RelayConnection.open_for_activation`."""
        ...
