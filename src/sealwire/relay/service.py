"""The relay service: WebSocket connections in, one sans-IO :class:`RelaySession` each, sealed
envelopes routed through a :class:`~sealwire.relay.backends.base.RelayBackend`.

The edge is thin (STYLE: aioquic's asyncio protocol): read a message → feed the session → act on
its events → write what it queued → re-arm its timer. Policy lives here and nowhere else:
admission (open or allow-list), revocations, rate limits per connection and per source,
whether an activation names a registered server, delivery windows and back-pressure.

Per connection there are exactly two coroutines: the reader (websockets' handler) and one
writer, which also pulls deliveries from the backend. Memory per connection is bounded: at most
``max_queue`` received messages wait in websockets, the session's outbox is drained by the
writer, deliveries are pulled only while less than :data:`_OUTBOX_SOFT_LIMIT` bytes wait to be
written, and the reader stops reading while the writer is behind (TCP pushes back on the peer).

The relay is blind by construction: it reads an envelope's outer header (recipient, prekey id)
and nothing else, and it logs and measures no address in full and no envelope bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from sealwire.errors import ConfigError, QueueFull, StorageError, TransportError
from sealwire.protocol.frames import ERROR_CODES, MAX_FRAME_SIZE, ErrorCode, relay_id_for
from sealwire.protocol.identity import ChainVerifier, Role, short_address
from sealwire.protocol.session import (
    CONNECTION_LOST,
    ActivationRequested,
    ActivationSubmitted,
    ClientVerified,
    DeliveriesAcknowledged,
    EnvelopeSubmitted,
    Event,
    RelaySession,
    RelayState,
    RevocationRequested,
    SessionTerminated,
)

from .backends.base import RelayBackend, StoredEnvelope
from .config import RelayServiceConfig
from .metrics import RelayMetrics

__all__ = ["Relay", "make_backend"]

_log = logging.getLogger("sealwire.relay")

_OUTBOX_SOFT_LIMIT = 1 << 20
"""Bytes waiting to be written to one connection above which no more deliveries are pulled
and its reader pauses (a slow reader gets back-pressure, not a growing buffer)."""
_RECV_QUEUE = 8
"""Received WebSocket messages websockets buffers per connection before it stops reading."""
_WRITE_LIMIT = 64 * 1024
"""websockets' write buffer high-water mark per connection."""
_KNOWN_CODES = ERROR_CODES | {CONNECTION_LOST}
_NOTICE_BATCH = 256
_QUEUED_FRAMES_MAX = 1024
"""Frames (small ones: Pongs, Accepteds) queued for a peer above which its reader pauses."""
_RESYNC_S = 30.0
"""How often sessions re-read their queue from the start when signals may be lost."""
_ACK_DELAY_S = 0.01
"""Acknowledgements of one session are gathered this long and deleted in one call."""
_PULL_MAX = 32
"""Most envelopes read from the backend at once (at most 8 MiB of 256 KiB envelopes)."""
_CLOSE_GRACE_S = 2.0
"""How long a session we ended may take to flush its error frame before the socket is cut."""
_SOURCE_TABLE_MAX = 100_000
"""Most per-source rate-limit entries kept (the idlest are dropped first)."""


class _NoFrameDumps(logging.Filter):
    """websockets logs the first and last bytes of every frame at DEBUG: envelope and address
    bytes, which the relay never logs. Its INFO and above (connections, errors) pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_WEBSOCKETS_LOG = logging.getLogger("sealwire.relay.websockets")
_WEBSOCKETS_LOG.addFilter(_NoFrameDumps())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _short(address: bytes | None) -> str:
    return short_address(address) if address is not None and len(address) == 32 else "-"


def make_backend(config: RelayServiceConfig) -> RelayBackend:
    """The backend a configuration names (imported lazily: NATS is an optional extra)."""
    if config.backend == "nats":
        from .backends.nats import NatsBackend

        servers = [s.strip() for s in config.nats_url.split(",") if s.strip()]
        return NatsBackend(
            servers,
            config.queue_limits,
            prefix=config.nats_prefix,
            replicas=config.nats_replicas,
        )
    from .backends.sqlite import SqliteBackend

    config.data_path.mkdir(parents=True, exist_ok=True)
    return SqliteBackend(config.data_path / "relay.db", config.queue_limits)


class _Bucket:
    """A token bucket (rate per second, burst) on the loop's monotonic clock."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens even if there are none; return what is left (negative: over
        the limit, and the debt must be paid back: for floods of frames on one connection)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - cost
        self.stamp = now
        return self.tokens

    def allow(self, now: float) -> bool:
        """Spend a token if one is there. A refused attempt costs nothing, so a source that
        retried a lot is served again as soon as the rate allows (not locked out for as long
        as it flooded)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class _Source:
    """What the relay tracks per client IP address."""

    connect: _Bucket
    activate: _Bucket
    open: int = 0


@dataclass(eq=False)
class _Link:
    """One client connection: its socket, its session and the relay's bookkeeping."""

    ws: ServerConnection
    session: RelaySession
    source: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    frames: _Bucket | None = None
    role: str = "handshake"
    peer: ClientVerified | None = None
    more: bool = True
    """The backend may hold deliveries this session has not been given yet."""
    cursor: bytes | None = None
    """Delivery id of the last envelope pulled; the next pull starts after it (``None``: from
    the start of the queue)."""
    inflight: set[bytes] = field(default_factory=set)
    """Delivered in this session and not yet deleted (acknowledged ones stay until the backend
    confirms the deletion), so a pull from the start never delivers one twice."""
    acks: list[bytes] = field(default_factory=list)
    """Acknowledged delivery ids gathered for one backend call (see ``_ACK_DELAY_S``)."""
    pulling: bool = False
    deleted_during_pull: set[bytes] = field(default_factory=set)
    """Acknowledged ids whose deletion completed while a pull was reading: that read may
    still hold them."""
    outbox_bytes: int = 0
    """Bytes taken from the session by the writer and not yet written to the socket."""
    timer: asyncio.TimerHandle | None = None
    timer_at: int | None = None
    detach: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    activation_id: bytes | None = None
    """Activation mode: the relay's session id for this device's run."""
    activation_server: bytes | None = None
    submitted_at: dict[int, float] = field(default_factory=dict)
    writer: asyncio.Task[None] | None = None
    finished: bool = False
    """The connection is gone and _finish has undone the bookkeeping."""


class Relay:
    """A relay process's service. ``await start()``, then ``await serve_forever()`` or
    ``await stop()``.

    Args:
        config: the settings (:mod:`.config`).
        backend: the queue backend; default: the one ``config`` names.
        clock: Unix milliseconds (tests inject one to test expiry).
    """

    def __init__(
        self,
        config: RelayServiceConfig,
        *,
        backend: RelayBackend | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.config = config
        self.backend = backend if backend is not None else make_backend(config)
        self.metrics = RelayMetrics()
        self._clock = clock
        self._session_config = config.session_config
        self._allowed = config.allowed_organisations
        self._verifier = ChainVerifier({})
        self._relay_id = b""
        self._server: Server | None = None
        self._links: set[_Link] = set()
        self._by_address: dict[bytes, set[_Link]] = {}
        self._servers_by_org: dict[bytes, set[_Link]] = {}
        self._sources: dict[str, _Source] = {}
        self._notices_running: set[bytes] = set()
        self._notices_again: set[bytes] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stores: set[asyncio.Future[StoredEnvelope]] = set()
        """Stores in flight (answered by :meth:`_stored`)."""
        self._background: list[asyncio.Task[None]] = []
        self._stopping = False
        self._metrics_server: Any = None
        self.port = 0
        """The port listened on, known once started."""
        self.origin = ""
        """The canonical origin clients dial, known once started (with the chosen port)."""

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the backend, load registered organisations, listen, start the sweeper.

        Raises:
            StorageError: the backend cannot be opened.
            ConfigError: TLS files unreadable.
            TransportError: the address cannot be bound.
        """
        await self.backend.start(self)
        for organisation, root in (await self.backend.organisations()).items():
            # Under an allow-list, an organisation registered while the relay was open is
            # not trusted any more: neither its server nor its devices get in.
            if self._serves(organisation):
                self._verifier.add_root(root)
        ssl_context = None
        if self.config.tls:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ssl_context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
            except (OSError, ssl.SSLError) as exc:
                await self.backend.close()
                raise ConfigError(f"relay TLS certificate or key unusable: {exc}") from None
        try:
            self._server = await serve(
                self._handle,
                self.config.host,
                self.config.port,
                ssl=ssl_context,
                process_request=self._process_request,
                compression=None,
                max_size=MAX_FRAME_SIZE,
                max_queue=_RECV_QUEUE,
                write_limit=_WRITE_LIMIT,
                open_timeout=self.config.handshake_timeout_s,
                ping_interval=None,
                close_timeout=2,
                server_header=None,
                logger=_WEBSOCKETS_LOG,
            )
        except OSError as exc:
            await self.backend.close()
            raise TransportError(
                f"relay cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}"
            ) from None
        sockets = list(self._server.sockets)
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        origin_config = self.config
        if not self.config.public_origin and self.config.port == 0:
            # The origin includes the port the kernel chose.
            origin_config = dataclasses.replace(self.config, port=self.port)
        self.origin = origin_config.origin
        self._relay_id = relay_id_for(self.origin)
        self._background.append(asyncio.create_task(self._sweep_expired()))
        self._background.append(asyncio.create_task(self._sample_depth()))
        if self.backend.signals_may_be_lost:
            self._background.append(asyncio.create_task(self._resync_periodically()))
        if self.config.metrics:
            try:
                self._start_metrics()
            except ConfigError:
                self._server.close()
                await self.backend.close()
                raise
        _log.info(
            "relay listening",
            extra={"origin": self.origin, "backend": self.config.backend},
        )

    def _start_metrics(self) -> None:
        from prometheus_client import start_http_server

        host, _, port = self.config.metrics.rpartition(":")
        try:
            self._metrics_server, _ = start_http_server(
                int(port), host or "127.0.0.1", self.metrics.registry
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"relay metrics {self.config.metrics!r}: {exc}") from None

    @property
    def relay_id(self) -> bytes:
        """This relay's id (``relay_id_for`` its origin), known once started."""
        return self._relay_id

    @property
    def metrics_port(self) -> int | None:
        server = self._metrics_server
        return int(server.server_address[1]) if server is not None else None

    async def serve_forever(self) -> None:
        """Serve until cancelled (or :meth:`stop` from another task)."""
        assert self._server is not None
        await self._server.serve_forever()

    async def stop(self) -> None:
        """Stop listening, close every session with ``shutdown``, finish pending stores, close
        the backend."""
        self._stopping = True  # from now on new Sends are refused with ``unavailable``
        if self._server is not None:
            self._server.close(close_connections=False)
        for task in self._background:
            task.cancel()
        # Finish and answer the stores in flight before the sessions end, so that a client
        # is not left guessing (and resending) what was stored.
        if self._tasks or self._stores:
            await asyncio.wait([*self._tasks, *self._stores], timeout=5)
        for link in list(self._links):
            link.session.close(ErrorCode.SHUTDOWN, "relay restarting")
            link.wake.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        await self.backend.close()

    # --- HTTP upgrade: per-source limits before any session exists -----------------------

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return self._plain(http.HTTPStatus.OK, "ok\n")
        source = _source_of(ws)
        now = asyncio.get_running_loop().time()
        entry = self._sources.get(source)
        if entry is None:
            if len(self._sources) >= _SOURCE_TABLE_MAX:
                self._forget_idle_sources()
            cfg = self.config
            entry = _Source(
                connect=_Bucket(cfg.source_connect_rate, cfg.source_connect_burst, now),
                activate=_Bucket(cfg.activation_rate_per_minute / 60, cfg.activation_burst, now),
            )
            self._sources[source] = entry
        reason = None
        if self._stopping:
            reason = "shutdown"
        elif len(self._links) >= self.config.max_connections:
            reason = "max-connections"
        elif entry.open >= self.config.max_connections_per_source:
            reason = "source-connections"
        elif not entry.connect.allow(now):
            reason = "source-rate"
        if reason is not None:
            self.metrics.refused_connections.labels(reason).inc()
            status = (
                http.HTTPStatus.TOO_MANY_REQUESTS
                if reason.startswith("source")
                else http.HTTPStatus.SERVICE_UNAVAILABLE
            )
            return self._plain(status, f"{reason}\n")
        return None

    def _plain(self, status: http.HTTPStatus, body: str) -> Response:
        headers = Headers([("Content-Type", "text/plain"), ("Connection", "close")])
        return Response(status.value, status.phrase, headers, body.encode())

    def _forget_idle_sources(self) -> None:
        idle = [s for s, e in self._sources.items() if e.open == 0]
        for source in idle[: max(1, len(idle) // 2)]:
            del self._sources[source]

    # --- one connection -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        source = _source_of(ws)
        now = self._clock()
        link = _Link(
            ws=ws,
            session=RelaySession(
                relay_id=self._relay_id,
                nonce=os.urandom(32),
                verifier=self._verifier,
                now=now,
                config=self._session_config,
            ),
            source=source,
        )
        loop = asyncio.get_running_loop()
        link.frames = _Bucket(self.config.frame_rate, self.config.frame_burst, loop.time())
        link.drained.set()
        entry = self._sources.get(source)
        if entry is not None:
            entry.open += 1
        self._links.add(link)
        self.metrics.connections.labels(link.role).inc()
        link.writer = asyncio.create_task(self._write(link))
        self._arm_timer(link)
        try:
            async for message in ws:
                if isinstance(message, str):
                    self._end(link, ErrorCode.MALFORMED, "text message; frames are binary")
                    break
                self._receive(link, message, loop.time())
                if link.session.closed:
                    break
                # Back-pressure: a peer that does not read what we queue for it is not read
                # from either, so its answers (Pongs, Accepteds) cannot pile up here.
                while _backlogged(link) and not link.session.closed:
                    link.drained.clear()
                    await link.drained.wait()
        except ConnectionClosed:
            pass
        finally:
            await self._finish(link)

    def _receive(self, link: _Link, message: bytes, loop_now: float) -> None:
        assert link.frames is not None
        left = link.frames.take(loop_now)
        session = link.session
        events = session.receive_frame(message, self._clock())
        if left < -self.config.frame_burst and not session.closed:
            session.close(ErrorCode.RATE_LIMITED, "too many frames")
            events.append(SessionTerminated(ErrorCode.RATE_LIMITED.value, "flood", False))
        self._on_events(link, events, rate_limited=left < 0, loop_now=loop_now)
        link.wake.set()
        self._arm_timer(link)

    def _on_events(
        self,
        link: _Link,
        events: Iterable[Event],
        *,
        rate_limited: bool = False,
        loop_now: float | None = None,
    ) -> None:
        for event in events:
            if isinstance(event, EnvelopeSubmitted):
                if link.session.state is not RelayState.OPEN:
                    continue  # the same frame ended the session (a flood)
                if self._stopping:
                    self._refuse_request(link, event.ref, ErrorCode.UNAVAILABLE, "relay stopping")
                    continue
                if rate_limited:
                    self._refuse_request(link, event.ref, ErrorCode.RATE_LIMITED, "slow down")
                    continue
                assert link.peer is not None
                if self.backend.revoked_now(link.peer.organisation, event.recipient):
                    # The sender's own organisation ended that device: say so, queue nothing.
                    self._refuse_request(
                        link, event.ref, ErrorCode.RECIPIENT_REVOKED, "recipient revoked"
                    )
                    continue
                link.submitted_at[event.ref] = time.perf_counter()
                try:
                    stored = self.backend.enqueue_later(
                        event.recipient,
                        event.envelope,
                        accepted_at=self._clock(),
                        sender_organisation=link.peer.organisation,
                    )
                except StorageError as exc:
                    stored = asyncio.get_running_loop().create_future()
                    stored.set_exception(exc)
                self._stores.add(stored)
                stored.add_done_callback(functools.partial(self._stored, link, event.ref))
            elif isinstance(event, DeliveriesAcknowledged):
                assert link.peer is not None
                self.metrics.acknowledged.inc(len(event.delivery_ids))
                # The window opens again; a pull follows only if something is waiting
                # (``more`` was set when a delivery could not be handed over).
                if not link.acks:
                    asyncio.get_running_loop().call_later(_ACK_DELAY_S, self._flush_acks, link)
                link.acks.extend(event.delivery_ids)
            elif isinstance(event, ActivationRequested):
                self._answer_activation_request(link, loop_now)
            elif isinstance(event, ClientVerified):
                link.peer = event
                self._spawn(self._admit(link, event))
            elif isinstance(event, RevocationRequested):
                self._spawn(self._revoke(link, event))
            elif isinstance(event, ActivationSubmitted):
                self._spawn(self._activate(link, event))
            elif isinstance(event, SessionTerminated):
                if not event.by_peer:
                    self._closed_by_us(link, event.code)
                else:
                    # A peer's code is free text: only known codes become metric labels.
                    code = event.code if event.code in _KNOWN_CODES else "other"
                    self.metrics.closed.labels(code).inc()

    def _answer_activation_request(self, link: _Link, loop_now: float | None) -> None:
        """Admit an activation-only session unless its source is over its activation rate."""
        self._set_role(link, "activation")
        if loop_now is None:
            loop_now = asyncio.get_running_loop().time()
        entry = self._sources.get(link.source)
        if entry is not None and not entry.activate.allow(loop_now):
            self._refuse(link, ErrorCode.RATE_LIMITED, "too many activations from this address")
            return
        self._on_events(link, link.session.admit(self._clock()))

    def _end(self, link: _Link, code: ErrorCode, reason: str) -> None:
        """End an open (or activating) session from the service's side."""
        if not link.session.closed:
            link.session.close(code, reason)
            self._closed_by_us(link, code.value)
            link.wake.set()

    def _refuse_request(self, link: _Link, ref: int, code: ErrorCode, reason: str) -> None:
        link.session.reject(ref, code, reason)
        self.metrics.rejected.labels(code.value).inc()

    def _closed_by_us(self, link: _Link, code: str) -> None:
        self.metrics.closed.labels(code).inc()
        # The error frame and a clean close get a short grace; a peer that does not read
        # (its socket full, our writer blocked) is cut off then, so it cannot hold a slot.
        asyncio.get_running_loop().call_later(_CLOSE_GRACE_S, _abort, link.ws)
        _log.info(
            "session closed",
            extra={"code": code, "role": link.role, "address": _short(_address(link))},
        )

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("relay task failed", exc_info=task.exception())

    def _set_role(self, link: _Link, role: str) -> None:
        """Move the connection to another ``connections`` gauge label."""
        if link.role != role:
            self.metrics.connections.labels(link.role).dec()
            self.metrics.connections.labels(role).inc()
            link.role = role

    # --- the writer: flush the outbox, pull deliveries ------------------------------------

    async def _write(self, link: _Link) -> None:
        session = link.session
        ws = link.ws
        try:
            while True:
                await link.wake.wait()
                link.wake.clear()
                if self._may_pull(link):
                    await self._pull(link)
                frames = session.frames_to_send()
                if frames:
                    size = sum(map(len, frames))
                    link.outbox_bytes += size
                    # Every frame queued since the last round in one socket write and one
                    # drain (websockets' own send() writes and drains once per message).
                    async with ws.send_context():
                        for frame in frames:
                            ws.protocol.send_binary(frame)
                    link.outbox_bytes -= size
                link.drained.set()
                if session.closed:
                    break
                if self._may_pull(link):
                    link.wake.set()  # a full pull: there may be more behind it
        except ConnectionClosed:
            pass
        finally:
            link.drained.set()
            if ws.state is State.OPEN:
                with contextlib.suppress(ConnectionClosed, OSError):
                    await ws.close()

    @staticmethod
    def _may_deliver(link: _Link) -> bool:
        return (
            link.peer is not None
            and link.session.state is RelayState.OPEN
            and link.session.delivery_window > 0
            and link.outbox_bytes + link.session.queued_bytes < _OUTBOX_SOFT_LIMIT
        )

    @classmethod
    def _may_pull(cls, link: _Link) -> bool:
        return link.more and cls._may_deliver(link)

    async def _pull(self, link: _Link) -> None:
        """Give the session what the backend holds for it after the cursor, as far as its
        window and the memory bound allow."""
        session = link.session
        assert link.peer is not None
        limit = min(session.delivery_window, _PULL_MAX)
        link.more = False
        link.pulling = True
        try:
            items = await self.backend.pending(
                link.peer.address, after=link.cursor, limit=limit, now=self._clock()
            )
        except StorageError as exc:
            _log.warning("backend read failed; will retry", extra={"error": str(exc)})
            # Retry in a second, not at once (``more`` set now would make the writer spin).
            asyncio.get_running_loop().call_later(1.0, _pull_again, link)
            return
        finally:
            link.pulling = False
            deleted, link.deleted_during_pull = link.deleted_during_pull, set()
        if session.state is not RelayState.OPEN:
            return
        if len(items) == limit:
            link.more = True  # there may be more behind these
        now = self._clock()
        delivered = 0
        for item in items:
            if item.delivery_id in link.inflight or item.delivery_id in deleted:
                # Handed over while we read, or acknowledged and deleted while we read.
                link.cursor = _later(link.cursor, item.delivery_id)
                continue
            if not self._may_deliver(link):
                # The window filled (hand-overs during the read) or the memory bound: the
                # rest next round. If the cursor already passed this one, start over.
                link.more = True
                if link.cursor is not None and item.delivery_id <= link.cursor:
                    link.cursor = None
                break
            session.deliver(item.delivery_id, item.envelope)
            link.inflight.add(item.delivery_id)
            link.cursor = _later(link.cursor, item.delivery_id)
            delivered += 1
            self.metrics.queue_wait.observe(max(0, now - item.accepted_at) / 1000)
        self.metrics.delivered.inc(delivered)

    # --- timers -------------------------------------------------------------------------

    def _arm_timer(self, link: _Link) -> None:
        at = link.session.get_timer()
        if at is None:
            if link.timer is not None:
                link.timer.cancel()
                link.timer = None
            return
        if link.timer is not None and link.timer_at is not None and link.timer_at <= at:
            return  # the armed timer fires first; it re-arms for the later deadline
        if link.timer is not None:
            link.timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, (at - self._clock()) / 1000)
        link.timer_at = at
        link.timer = loop.call_later(delay, self._on_timer, link)

    def _on_timer(self, link: _Link) -> None:
        link.timer = None
        link.timer_at = None
        events = link.session.handle_timer(self._clock())
        self._on_events(link, events)
        link.wake.set()
        self._arm_timer(link)

    # --- requests -----------------------------------------------------------------------

    def _stored(self, link: _Link, ref: int, stored: asyncio.Future[StoredEnvelope]) -> None:
        """A store finished: answer the request (Accepted only now that it is durable)."""
        self._stores.discard(stored)
        error = stored.exception() if not stored.cancelled() else StorageError("cancelled")
        if isinstance(error, QueueFull):
            self._answer(link, ref, ErrorCode.QUEUE_FULL, "recipient's queue is full")
        elif error is not None:
            if not isinstance(error, StorageError):
                _log.error("enqueue failed unexpectedly", exc_info=error)
            else:
                _log.warning("enqueue failed", extra={"error": str(error)})
            self._answer(link, ref, ErrorCode.UNAVAILABLE, "cannot store now; retry")
        else:
            self.metrics.accepted.inc()
            self._answer(link, ref, None, "")

    def _answer(self, link: _Link, ref: int, code: ErrorCode | None, reason: str) -> None:
        started = link.submitted_at.pop(ref, None)
        if link.session.state is not RelayState.OPEN:
            return  # the connection went away; a stored envelope is delivered all the same
        if code is None:
            link.session.accept(ref)
            if started is not None:
                self.metrics.accept_latency.observe(time.perf_counter() - started)
        else:
            self._refuse_request(link, ref, code, reason)
        link.wake.set()

    def _flush_acks(self, link: _Link) -> None:
        ids, link.acks = tuple(link.acks), []
        if ids:
            self._spawn(self._acknowledge(link, ids))

    async def _acknowledge(self, link: _Link, ids: tuple[bytes, ...]) -> None:
        assert link.peer is not None
        try:
            await self.backend.acknowledge(link.peer.address, ids)
        except StorageError as exc:
            # Not lost: the envelopes stay queued and are delivered again next session.
            _log.warning("acknowledge failed", extra={"error": str(exc)})
        else:
            link.inflight.difference_update(ids)
            if link.pulling:
                link.deleted_during_pull.update(ids)

    async def _admit(self, link: _Link, peer: ClientVerified) -> None:
        session = link.session
        try:
            if not self._serves(peer.organisation):
                self._refuse(link, ErrorCode.NOT_ADMITTED, "organisation not served here")
                return
            if peer.role is Role.SERVER:
                assert peer.root is not None
                await self.backend.register(peer.organisation, peer.root, peer.address)
            if await self.backend.is_revoked(peer.organisation, peer.address):
                self._refuse(link, ErrorCode.REVOKED, "address revoked by its organisation")
                return
        except StorageError as exc:
            _log.warning("admission check failed", extra={"error": str(exc)})
            self._refuse(link, ErrorCode.UNAVAILABLE, "relay storage unavailable; retry")
            return
        if session.state is not RelayState.VERIFIED:
            return
        events = session.admit(self._clock())
        self._on_events(link, events)
        if not session.closed:
            address = peer.address
            self._set_role(link, "server" if peer.role is Role.SERVER else "device")
            # Bookkeeping first, without an await, so that _finish always undoes it.
            links = self._by_address.setdefault(address, set())
            links.add(link)
            if peer.role is Role.SERVER:
                self._servers_by_org.setdefault(peer.organisation, set()).add(link)
            try:
                if len(links) == 1:
                    await self.backend.watch(address)
                if peer.role is Role.SERVER:
                    detach = await self.backend.attach(address, self._server_route(link))
                    await self._keep_route(link, detach)
                    self._spawn(self._send_notices(peer.organisation))
            except StorageError as exc:
                _log.warning("cannot follow the session's queue", extra={"error": str(exc)})
                self._end(link, ErrorCode.UNAVAILABLE, "relay storage unavailable; retry")
            if link.finished and address not in self._by_address:
                # The connection went away while we subscribed: do not keep watching.
                with contextlib.suppress(StorageError):
                    await self.backend.unwatch(address)
                return
            _log.info("session open", extra={"role": link.role, "address": _short(address)})
        link.wake.set()
        self._arm_timer(link)

    async def _keep_route(self, link: _Link, detach: Callable[[], Awaitable[None]]) -> None:
        """Keep an activation route until the connection ends (at once if it already has)."""
        if link.finished:
            with contextlib.suppress(StorageError):
                await detach()
        else:
            link.detach.append(detach)

    def _refuse(self, link: _Link, code: ErrorCode, reason: str) -> None:
        if link.session.state in (RelayState.VERIFIED, RelayState.ACTIVATION_REQUESTED):
            link.session.refuse(code, reason)
            self._closed_by_us(link, code.value)
            link.wake.set()

    async def _revoke(self, link: _Link, event: RevocationRequested) -> None:
        try:
            await self.backend.revoke(event.organisation, event.addresses)
        except StorageError as exc:
            _log.warning("revocation not stored", extra={"error": str(exc)})
            self._answer(link, event.ref, ErrorCode.UNAVAILABLE, "cannot store now; retry")
            return
        self.metrics.revocations.inc(len(event.addresses))
        self._answer(link, event.ref, None, "")

    # --- activation routing -------------------------------------------------------------

    def _server_route(self, link: _Link) -> Callable[[bytes, bytes, bytes | None], Awaitable[bool]]:
        async def route(session: bytes, payload: bytes, server: bytes | None) -> bool:
            if link.session.state is not RelayState.OPEN:
                return False
            link.session.send_activation(session, payload)
            link.wake.set()
            return True

        return route

    def _device_route(
        self, link: _Link, device_session: bytes
    ) -> Callable[[bytes, bytes, bytes | None], Awaitable[bool]]:
        async def route(session: bytes, payload: bytes, server: bytes | None) -> bool:
            # Only the server this device named may answer it.
            if server is None or server != link.activation_server:
                return False
            s = link.session
            if s.state is not RelayState.ACTIVATING or not s.awaiting_activation_answer:
                return False
            s.send_activation(device_session, payload)
            link.wake.set()
            return True

        return route

    async def _activate(self, link: _Link, event: ActivationSubmitted) -> None:
        if event.server is not None:  # from an activating device
            try:
                if link.activation_id is None:
                    if not await self.backend.is_registered_server(event.server):
                        self._end(link, ErrorCode.UNKNOWN_SERVER, "no such enterprise server here")
                        return
                    link.activation_id = os.urandom(16)
                    link.activation_server = event.server
                    detach = await self.backend.attach(
                        link.activation_id, self._device_route(link, event.session)
                    )
                    await self._keep_route(link, detach)
                delivered = await self.backend.route_activation(
                    event.server, link.activation_id, event.payload, None
                )
            except StorageError as exc:
                _log.warning("activation routing failed", extra={"error": str(exc)})
                delivered = False
            if not delivered:
                self._end(link, ErrorCode.UNAVAILABLE, "the enterprise server is not connected")
            return
        # From a server: an answer to the device whose run has the relay's id ``session``.
        assert link.peer is not None
        try:
            await self.backend.route_activation(
                event.session, event.session, event.payload, link.peer.address
            )
        except StorageError as exc:
            _log.warning("activation answer not routed", extra={"error": str(exc)})

    # --- expiry -------------------------------------------------------------------------

    async def _sweep_expired(self) -> None:
        while True:
            try:
                count = await self.backend.expire(self._clock())
                if count:
                    self.metrics.expired.inc(count)
                    _log.info("envelopes expired", extra={"count": count})
            except StorageError as exc:
                _log.warning("expiry sweep failed", extra={"error": str(exc)})
            await asyncio.sleep(self.config.expiry_interval_s)

    async def _send_notices(self, organisation: bytes) -> None:
        """Pass an organisation's expiry notices to one of its connected servers. One run per
        organisation at a time (a request during a run makes it go round once more); a
        notice is deleted only once its frame was written, so a server that drops off
        meanwhile gets it again from the next server (at least once)."""
        if organisation in self._notices_running:
            self._notices_again.add(organisation)
            return
        self._notices_running.add(organisation)
        try:
            while True:
                self._notices_again.discard(organisation)
                await self._pass_notices(organisation)
                if organisation not in self._notices_again:
                    return
        finally:
            self._notices_running.discard(organisation)

    async def _pass_notices(self, organisation: bytes) -> None:
        try:
            while True:
                links = [
                    link
                    for link in self._servers_by_org.get(organisation, ())
                    if link.session.state is RelayState.OPEN
                ]
                if not links:
                    return  # kept until a server of the organisation connects
                link = links[0]
                notices = await self.backend.notices(organisation, limit=_NOTICE_BATCH)
                if not notices or link.session.state is not RelayState.OPEN:
                    return
                for notice in notices:
                    link.session.notify_expired(notice.recipient, notice.digest, notice.accepted_at)
                link.wake.set()
                while link.session.queued_bytes or link.outbox_bytes:
                    if link.session.closed:
                        return  # not written: the next server gets them
                    link.drained.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(link.drained.wait(), 10)
                await self.backend.clear_notices(organisation, [n.notice_id for n in notices])
                if len(notices) < _NOTICE_BATCH:
                    return
        except StorageError as exc:
            _log.warning("expiry notices not sent", extra={"error": str(exc)})

    async def _resync_periodically(self) -> None:
        """Cluster backends: a lost signal (its node died after storing) must not leave an
        envelope waiting for the recipient's next connection; every open session re-reads
        its queue from the start every ``_RESYNC_S`` seconds."""
        while True:
            await asyncio.sleep(_RESYNC_S)
            for links in self._by_address.values():
                for link in links:
                    link.cursor = None
                    link.more = True
                    link.wake.set()

    async def _sample_depth(self) -> None:
        while True:
            try:
                count, size = await self.backend.depth()
                self.metrics.queue_envelopes.set(count)
                self.metrics.queue_bytes.set(size)
            except StorageError:
                pass
            await asyncio.sleep(5)

    # --- the end of a connection --------------------------------------------------------

    async def _finish(self, link: _Link) -> None:
        if not link.session.closed:
            # The peer went away: nothing more can be sent.
            self._on_events(link, link.session.connection_lost())
        link.wake.set()
        if link.writer is not None:
            # A session we closed still sends its error frame (bounded wait).
            try:
                await asyncio.wait_for(asyncio.shield(link.writer), timeout=2)
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                _log.exception("relay connection writer failed")
            link.writer.cancel()
        link.session.connection_lost()
        link.finished = True
        if link.timer is not None:
            link.timer.cancel()
        self._links.discard(link)
        self.metrics.connections.labels(link.role).dec()
        entry = self._sources.get(link.source)
        if entry is not None:
            entry.open = max(0, entry.open - 1)
        peer = link.peer
        if peer is not None:
            links = self._by_address.get(peer.address)
            if links is not None and link in links:
                links.discard(link)
                if not links:
                    del self._by_address[peer.address]
                    with contextlib.suppress(StorageError):
                        await self.backend.unwatch(peer.address)
            servers = self._servers_by_org.get(peer.organisation)
            if servers is not None:
                servers.discard(link)
                if not servers:
                    del self._servers_by_org[peer.organisation]
        for detach in link.detach:
            with contextlib.suppress(StorageError):
                await detach()

    # --- BackendListener ----------------------------------------------------------------

    def envelope_queued(self, recipient: bytes, stored: StoredEnvelope | None = None) -> None:
        for link in self._by_address.get(recipient, ()):
            if stored is not None:
                self._hand_over(link, stored)
            else:
                # No envelope at hand: signals may have been missed (a backend reconnected,
                # an envelope too large for a signal), so read the queue from its start.
                link.cursor = None
                link.more = True
                link.wake.set()

    def _hand_over(self, link: _Link, stored: StoredEnvelope) -> None:
        """Deliver a just-stored envelope straight to a session that has nothing older
        waiting, without reading it back from the backend; otherwise let it pull."""
        if stored.delivery_id in link.inflight:
            return  # a repeated signal for one it has
        if link.cursor is not None and stored.delivery_id <= link.cursor:
            # A late or repeated signal (another node's, or for one already acknowledged):
            # only a pull from the start can tell whether it is still to be delivered.
            link.cursor = None
            link.more = True
        elif not link.more and not link.pulling and self._may_deliver(link):
            # Not during a pull: the pull may return older envelopes it has not reached yet,
            # and a cursor moved past them here would skip them for the rest of the session.
            link.session.deliver(stored.delivery_id, stored.envelope)
            link.inflight.add(stored.delivery_id)
            link.cursor = stored.delivery_id
            self.metrics.delivered.inc()
            self.metrics.queue_wait.observe(max(0, self._clock() - stored.accepted_at) / 1000)
        else:
            link.more = True  # a backlog, a full window or a slow reader: it pulls
        link.wake.set()

    def addresses_revoked(self, organisation: bytes, addresses: Iterable[bytes]) -> None:
        for address in addresses:
            for link in list(self._by_address.get(address, ())):
                peer = link.peer
                # Scoped: only certificates of the revoking organisation (FRAMES.md, Revoke).
                if peer is not None and peer.organisation == organisation:
                    self._end(link, ErrorCode.REVOKED, "address revoked by its organisation")

    def organisation_registered(self, organisation: bytes, root: bytes) -> None:
        if self._serves(organisation):
            self._verifier.add_root(root)

    def notice_queued(self, organisation: bytes) -> None:
        if organisation in self._servers_by_org:
            self._spawn(self._send_notices(organisation))

    def _serves(self, organisation: bytes) -> bool:
        """Whether admission lets this organisation (its server and its devices) in."""
        return self.config.admission == "open" or organisation in self._allowed


def _source_of(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "unknown"


def _abort(ws: ServerConnection) -> None:
    """Cut a connection that did not finish closing in time (its peer stopped reading)."""
    if ws.state is not State.CLOSED and ws.transport is not None:
        ws.transport.abort()


def _pull_again(link: _Link) -> None:
    link.more = True
    link.wake.set()


def _backlogged(link: _Link) -> bool:
    """Whether the peer is behind in reading what we send it (then we stop reading from it)."""
    session = link.session
    return (
        link.outbox_bytes + session.queued_bytes > _OUTBOX_SOFT_LIMIT
        or session.queued_frames > _QUEUED_FRAMES_MAX
    )


def _later(cursor: bytes | None, delivery_id: bytes) -> bytes:
    """The cursor never moves back (delivery ids sort in acceptance order)."""
    return delivery_id if cursor is None or delivery_id > cursor else cursor


def _address(link: _Link) -> bytes | None:
    return link.peer.address if link.peer is not None else None
