"""How the relay nodes sharing one JetStream tell each other what happened."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from sealwire.relay.backends.base import (
    ActivationRoute,
    BackendListener,
    QueueLimits,
    RelayBackend,
    StoredEnvelope,
)

from ._ledger import _ByteLedger
from ._wire import (
    HDR_NODE,
    ROUTE_TIMEOUT,
    _decode_route,
    _decode_signal,
    _encode_route,
    _token,
    _untoken,
)

log = logging.getLogger(__name__)


class _NodeSignals(RelayBackend):
    """Signals between relay nodes: queue watches, notice signals and activation routing
    (part of :class:`~.backend.NatsBackend`)."""

    limits: QueueLimits
    _prefix: str
    _node: str
    _timeout: float
    _nc: Client | None
    _listener: BackendListener | None
    _watch_subs: dict[bytes, Subscription]
    _route_subs: dict[bytes, Subscription]
    _lost_logged: float
    _kv: dict[str, KeyValue]
    _watch_tasks: list[asyncio.Task[None]]
    _stop_watchers: list[Callable[[], Awaitable[None]]]
    _ledger: _ByteLedger | None
    _orgs: dict[bytes, bytes]
    _registered_servers: set[bytes]
    _revoked: set[tuple[bytes, bytes]]

    if TYPE_CHECKING:

        def _require_nc(self) -> Client: ...

        def _require_ledger(self) -> _ByteLedger: ...

        def _operation(self, what: str) -> contextlib.AbstractContextManager[None]: ...

        def _signal(self, call: Callable[[], None]) -> None: ...

        def _foreign(self, msg: Msg) -> bool: ...

    async def watch(self, recipient: bytes) -> None:
        if recipient in self._watch_subs:
            return
        nc = self._require_nc()

        async def on_queued(msg: Msg) -> None:
            if not self._foreign(msg) or self._listener is None:
                return
            stored: StoredEnvelope | None = None
            if msg.data:
                try:
                    stored = _decode_signal(recipient, msg.data, self.limits.max_bytes)
                except ValueError:
                    # Our cluster's own subject, but checked all the same; no details (the
                    # payload is an envelope). The session reads pending() instead.
                    log.warning("NATS relay backend: dropped a malformed queue signal")
            self._signal(functools.partial(self._listener.envelope_queued, recipient, stored))

        with self._operation("watch"):
            sub = await nc.subscribe(f"{self._prefix}.sig.q.{_token(recipient)}", cb=on_queued)
            if recipient in self._watch_subs:  # a concurrent watch won
                await sub.unsubscribe()
                return
            self._watch_subs[recipient] = sub
            await nc.flush(timeout=max(1, int(self._timeout)))

    def _signals_lost(self, sub: Subscription | None) -> None:
        """Queue signals may have been lost (``sub`` was a slow consumer, or ``None``: the
        connection was down): tell the sessions of the recipients concerned, without an
        envelope, so they read :meth:`pending`."""
        now = asyncio.get_running_loop().time()
        if now - self._lost_logged > 10:
            self._lost_logged = now
            log.warning(
                "NATS relay backend: queue signals may have been lost (%s)",
                "slow consumer" if sub is not None else "reconnected",
            )
        if self._listener is None:
            return
        for recipient, watching in list(self._watch_subs.items()):
            if sub is None or watching is sub:
                self._signal(functools.partial(self._listener.envelope_queued, recipient))

    async def unwatch(self, recipient: bytes) -> None:
        sub = self._watch_subs.pop(recipient, None)
        if sub is not None and self._nc is not None:
            with self._operation("unwatch"):
                await sub.unsubscribe()

    async def _on_notice_signal(self, msg: Msg) -> None:
        if self._foreign(msg) and self._listener is not None:
            listener = self._listener
            organisation = msg.data
            self._signal(lambda: listener.notice_queued(organisation))

    # --- activation routing between nodes -----------------------------------------------

    async def attach(self, key: bytes, route: ActivationRoute) -> Callable[[], Awaitable[None]]:
        detach_local = await super().attach(key, route)
        if key not in self._route_subs:
            nc = self._require_nc()

            async def on_request(msg: Msg) -> None:
                if not self._foreign(msg) or not msg.reply:
                    return
                try:
                    session, payload, server = _decode_route(msg.data)
                except ValueError:
                    log.warning("dropped a malformed activation routing message")
                    return
                try:
                    routed = await self._route_locally(key, session, payload, server)
                except Exception:
                    log.exception("activation route raised")
                    return
                if routed:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.respond(b"\x01")

            try:
                with self._operation("attach"):
                    sub = await nc.subscribe(f"{self._prefix}.act.{_token(key)}", cb=on_request)
                    await nc.flush(timeout=max(1, int(self._timeout)))
            except BaseException:
                await detach_local()
                raise
            if key in self._route_subs:
                await sub.unsubscribe()
            else:
                self._route_subs[key] = sub

        async def detach() -> None:
            await detach_local()
            if key not in self._local_routes():
                sub = self._route_subs.pop(key, None)
                nc = self._nc
                if sub is not None and nc is not None:
                    with contextlib.suppress(nats.errors.Error):
                        await sub.unsubscribe()
                        # Once detach returns, no request reaches this node any more.
                        await nc.flush(timeout=max(1, int(self._timeout)))

        return detach

    async def route_activation(
        self, key: bytes, session: bytes, payload: bytes, server: bytes | None
    ) -> bool:
        if await self._route_locally(key, session, payload, server):
            return True
        with self._operation("route_activation"):
            nc = self._require_nc()
            try:
                reply = await nc.request(
                    f"{self._prefix}.act.{_token(key)}",
                    _encode_route(session, payload, server),
                    timeout=ROUTE_TIMEOUT,
                    headers={HDR_NODE: self._node},
                )
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                return False
            return reply.data == b"\x01"

    # --- KV watch handlers (other nodes' changes, and the initial load) ------------------

    def _on_bytes_entry(self, key: str, value: bytes, revision: int, initial: bool) -> None:
        self._require_ledger().observe(key, int(value), revision)

    def _on_org_entry(self, key: str, value: bytes, revision: int, initial: bool) -> None:
        organisation = _untoken(key)
        if self._orgs.get(organisation) == value:
            return
        self._orgs[organisation] = value
        if not initial and self._listener is not None:
            listener = self._listener
            self._signal(lambda: listener.organisation_registered(organisation, value))

    def _on_server_entry(self, key: str, value: bytes, revision: int, initial: bool) -> None:
        self._registered_servers.add(_untoken(key))

    def _on_revoked_entry(self, key: str, value: bytes, revision: int, initial: bool) -> None:
        org_token, address_token = key.split(".", 1)
        pair = (_untoken(org_token), _untoken(address_token))
        if pair in self._revoked:
            return
        self._revoked.add(pair)
        if not initial and self._listener is not None:
            listener = self._listener
            self._signal(lambda: listener.addresses_revoked(pair[0], [pair[1]]))

    async def _watch(self, name: str, handle: Callable[[str, bytes, int, bool], None]) -> None:
        """Load the bucket into memory, then keep applying its changes in the background."""
        watcher = await self._kv[name].watchall()
        loaded = asyncio.Event()

        async def follow() -> None:
            async for entry in watcher:
                if entry is None:  # the end of the values that existed at the start
                    loaded.set()
                    continue
                if entry.value is None or entry.operation is not None:
                    continue  # deletes and purges: we never delete these keys
                try:
                    handle(entry.key, entry.value, entry.revision or 0, not loaded.is_set())
                except Exception as exc:
                    # The key names an address: keep it (and messages quoting it) out of the log.
                    log.error("NATS relay backend: unreadable %s entry (%s)", name, type(exc))

        self._watch_tasks.append(asyncio.create_task(follow()))
        self._stop_watchers.append(watcher.stop)
        try:
            await asyncio.wait_for(loaded.wait(), self._timeout)
        except TimeoutError as exc:
            raise nats.errors.TimeoutError from exc
