"""The relay service: client connections in (:class:`~.link.Wire`: WebSockets from
:mod:`.edge`, or in-process pipes), one sans-IO :class:`RelaySession` each, sealed envelopes
routed through a :class:`~sealwire.relay.backends.base.RelayBackend`.

The edge is thin (STYLE: aioquic's asyncio protocol): read a message → feed the session → act on
its events → write what it queued → re-arm its timer. Policy lives in the relay package and
nowhere else: admission, revocations and rate limits (:mod:`.admission`), whether an
activation names a registered server (:mod:`.routing`), delivery windows and back-pressure
(here).

Per connection there are exactly two coroutines: the reader (:meth:`Relay.serve_link`) and
one writer, which also pulls deliveries from the backend. Memory per connection is bounded: at
most a few received messages wait in the wire, the session's outbox is drained by the writer,
deliveries are pulled only while less than :data:`~.link.OUTBOX_SOFT_LIMIT` bytes wait to be
written, and the reader stops reading while the writer is behind (TCP pushes back on the peer).

The relay is blind by construction: it reads an envelope's outer header (recipient, prekey id)
and nothing else, and it logs and measures no address in full and no envelope bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from websockets.asyncio.server import Server

from sealwire._system import now_ms
from sealwire.errors import ConfigError, QueueFull, StorageError
from sealwire.protocol.frames import ERROR_CODES, ErrorCode, relay_id_for
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

from . import edge
from .admission import Admission, SourceTable, TokenBucket
from .backends.base import RelayBackend, StoredEnvelope
from .config import RelayServiceConfig
from .delivery import Deliveries
from .link import Link, Wire, WireClosed
from .metrics import RelayMetrics
from .routing import ActivationRouter, ExpiryNotices

__all__ = ["Relay", "make_backend"]

_log = logging.getLogger("sealwire.relay")

_KNOWN_CODES = ERROR_CODES | {CONNECTION_LOST}
_RESYNC_S = 30.0
"""How often sessions re-read their queue from the start when signals may be lost."""
_CLOSE_GRACE_S = 2.0
"""How long a session we ended may take to flush its error frame before the socket is cut."""


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
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.config = config
        self.backend = backend if backend is not None else make_backend(config)
        self.metrics = RelayMetrics()
        self._clock = clock
        self._session_config = config.session_config
        self._verifier = ChainVerifier({})
        self._admission = Admission(config, self.backend, self._verifier)
        self._sources = SourceTable(config)
        self._relay_id = b""
        self._server: Server | None = None
        self._links: set[Link] = set()
        self._by_address: dict[bytes, set[Link]] = {}
        self._servers_by_org: dict[bytes, set[Link]] = {}
        self._activations = ActivationRouter(self.backend, self._end)
        self._notices = ExpiryNotices(self.backend, self._servers_by_org)
        self._deliveries = Deliveries(self.backend, self.metrics, clock, self._spawn)
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

    async def start(self, *, listen: bool = True) -> None:
        """Open the backend, load registered organisations, listen, start the sweeper.

        Args:
            listen: ``False``: no socket; connections come only through :meth:`serve_link`
                (an in-process relay: :mod:`sealwire.transport.memory`). The origin is then
                the configured one.

        Raises:
            StorageError: the backend cannot be opened.
            ConfigError: TLS files unreadable.
            TransportError: the address cannot be bound.
        """
        await self.backend.start(self)
        await self._admission.load()
        ssl_context = None
        if self.config.tls and listen:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ssl_context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
            except (OSError, ssl.SSLError) as exc:
                await self.backend.close()
                raise ConfigError(f"relay TLS certificate or key unusable: {exc}") from None
        if listen:
            try:
                self._server = await edge.listen(
                    self.config,
                    ssl_context,
                    serve_link=self.serve_link,
                    refusal=self.connection_refusal,
                )
            except BaseException:
                await self.backend.close()
                raise
        sockets = list(self._server.sockets) if self._server is not None else []
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
                if self._server is not None:
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
        if self._server is None:
            await asyncio.Event().wait()  # in-process: connections come via serve_link
        else:
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

    # --- per-source limits before any session exists ------------------------------------

    def connection_refusal(self, source: str) -> str | None:
        """Why a new connection from ``source`` is refused now (``shutdown``,
        ``max-connections``, ``source-connections``, ``source-rate``), or ``None``. Every edge
        asks before it hands a connection to :meth:`serve_link` (the WebSocket edge at the
        HTTP upgrade)."""
        reason = self._sources.refusal(
            source,
            asyncio.get_running_loop().time(),
            stopping=self._stopping,
            connections=len(self._links),
        )
        if reason is not None:
            self.metrics.refused_connections.labels(reason).inc()
        return reason

    # --- one connection -----------------------------------------------------------------

    async def serve_link(self, wire: Wire) -> None:
        """Serve one client connection until it ends (the edges call this for every
        connection they accepted; see :meth:`connection_refusal`)."""
        source = wire.source
        now = self._clock()
        link = Link(
            wire=wire,
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
        link.frames = TokenBucket(self.config.frame_rate, self.config.frame_burst, loop.time())
        link.drained.set()
        self._sources.opened(source)
        self._links.add(link)
        self.metrics.connections.labels(link.role).inc()
        link.writer = asyncio.create_task(self._write(link))
        self._arm_timer(link)
        try:
            while (message := await wire.receive()) is not None:
                if isinstance(message, str):
                    self._end(link, ErrorCode.MALFORMED, "text message; frames are binary")
                    break
                self._receive(link, message, loop.time())
                if link.session.closed:
                    break
                # Back-pressure: a peer that does not read what we queue for it is not read
                # from either, so its answers (Pongs, Accepteds) cannot pile up here.
                while link.backlogged and not link.session.closed:
                    link.drained.clear()
                    await link.drained.wait()
        finally:
            await self._finish(link)

    def _receive(self, link: Link, message: bytes, loop_now: float) -> None:
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
        link: Link,
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
                self._deliveries.acknowledged(link, event.delivery_ids)
            elif isinstance(event, ActivationRequested):
                self._answer_activation_request(link, loop_now)
            elif isinstance(event, ClientVerified):
                link.peer = event
                self._spawn(self._admit(link, event))
            elif isinstance(event, RevocationRequested):
                self._spawn(self._revoke(link, event))
            elif isinstance(event, ActivationSubmitted):
                self._spawn(self._activations.submitted(link, event))
            elif isinstance(event, SessionTerminated):
                if not event.by_peer:
                    self._closed_by_us(link, event.code)
                else:
                    # A peer's code is free text: only known codes become metric labels.
                    code = event.code if event.code in _KNOWN_CODES else "other"
                    self.metrics.closed.labels(code).inc()

    def _answer_activation_request(self, link: Link, loop_now: float | None) -> None:
        """Admit an activation-only session unless its source is over its activation rate."""
        self._set_role(link, "activation")
        if loop_now is None:
            loop_now = asyncio.get_running_loop().time()
        if not self._sources.allow_activation(link.source, loop_now):
            self._refuse(link, ErrorCode.RATE_LIMITED, "too many activations from this address")
            return
        self._on_events(link, link.session.admit(self._clock()))

    def _end(self, link: Link, code: ErrorCode, reason: str) -> None:
        """End an open (or activating) session from the service's side."""
        if not link.session.closed:
            link.session.close(code, reason)
            self._closed_by_us(link, code.value)
            link.wake.set()

    def _refuse_request(self, link: Link, ref: int, code: ErrorCode, reason: str) -> None:
        link.session.reject(ref, code, reason)
        self.metrics.rejected.labels(code.value).inc()

    def _closed_by_us(self, link: Link, code: str) -> None:
        self.metrics.closed.labels(code).inc()
        # The error frame and a clean close get a short grace; a peer that does not read
        # (its socket full, our writer blocked) is cut off then, so it cannot hold a slot.
        asyncio.get_running_loop().call_later(_CLOSE_GRACE_S, link.wire.abort)
        _log.info(
            "session closed",
            extra={"code": code, "role": link.role, "address": _short(link.address)},
        )

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("relay task failed", exc_info=task.exception())

    def _set_role(self, link: Link, role: str) -> None:
        """Move the connection to another ``connections`` gauge label."""
        if link.role != role:
            self.metrics.connections.labels(link.role).dec()
            self.metrics.connections.labels(role).inc()
            link.role = role

    # --- the writer: flush the outbox, pull deliveries ------------------------------------

    async def _write(self, link: Link) -> None:
        session = link.session
        try:
            while True:
                await link.wake.wait()
                link.wake.clear()
                if self._deliveries.may_pull(link):
                    await self._deliveries.pull(link)
                frames = session.frames_to_send()
                if frames:
                    size = sum(map(len, frames))
                    link.outbox_bytes += size
                    # Every frame queued since the last round in one write and one drain.
                    await link.wire.send(frames)
                    link.outbox_bytes -= size
                link.drained.set()
                if session.closed:
                    break
                if self._deliveries.may_pull(link):
                    link.wake.set()  # a full pull: there may be more behind it
        except WireClosed:
            pass
        finally:
            link.drained.set()
            await link.wire.close()

    # --- timers -------------------------------------------------------------------------

    def _arm_timer(self, link: Link) -> None:
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

    def _on_timer(self, link: Link) -> None:
        link.timer = None
        link.timer_at = None
        events = link.session.handle_timer(self._clock())
        self._on_events(link, events)
        link.wake.set()
        self._arm_timer(link)

    # --- requests -----------------------------------------------------------------------

    def _stored(self, link: Link, ref: int, stored: asyncio.Future[StoredEnvelope]) -> None:
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

    def _answer(self, link: Link, ref: int, code: ErrorCode | None, reason: str) -> None:
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

    async def _admit(self, link: Link, peer: ClientVerified) -> None:
        session = link.session
        refusal = await self._admission.refusal(peer)
        if refusal is not None:
            self._refuse(link, *refusal)
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
                    await self._activations.attach_server(link, address)
                    self._spawn(self._notices.send(peer.organisation))
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

    def _refuse(self, link: Link, code: ErrorCode, reason: str) -> None:
        if link.session.state in (RelayState.VERIFIED, RelayState.ACTIVATION_REQUESTED):
            link.session.refuse(code, reason)
            self._closed_by_us(link, code.value)
            link.wake.set()

    async def _revoke(self, link: Link, event: RevocationRequested) -> None:
        if not await self._admission.revoke(event.organisation, event.addresses):
            self._answer(link, event.ref, ErrorCode.UNAVAILABLE, "cannot store now; retry")
            return
        self.metrics.revocations.inc(len(event.addresses))
        self._answer(link, event.ref, None, "")

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

    async def _finish(self, link: Link) -> None:
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
        self._sources.closed(link.source)
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
                self._deliveries.hand_over(link, stored)
            else:
                # No envelope at hand: signals may have been missed (a backend reconnected,
                # an envelope too large for a signal), so read the queue from its start.
                link.cursor = None
                link.more = True
                link.wake.set()

    def addresses_revoked(self, organisation: bytes, addresses: Iterable[bytes]) -> None:
        for address in addresses:
            for link in list(self._by_address.get(address, ())):
                peer = link.peer
                # Scoped: only certificates of the revoking organisation (FRAMES.md, Revoke).
                if peer is not None and peer.organisation == organisation:
                    self._end(link, ErrorCode.REVOKED, "address revoked by its organisation")

    def organisation_registered(self, organisation: bytes, root: bytes) -> None:
        self._admission.trust(organisation, root)

    def notice_queued(self, organisation: bytes) -> None:
        if organisation in self._servers_by_org:
            self._spawn(self._notices.send(organisation))
