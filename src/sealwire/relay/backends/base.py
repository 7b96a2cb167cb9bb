"""The relay's durable state behind one interface: queues, expiry notices, registered
organisations, revocations, and the signals that tie several relay nodes together.

Two implementations:

* :class:`~sealwire.relay.backends.sqlite.SqliteBackend` — embedded, one relay process, SQLite in
  WAL mode with group commit;
* :class:`~sealwire.relay.backends.nats.NatsBackend` — a cluster: any number of relay nodes share
  NATS JetStream, any node serves any address.

The relay service (:mod:`sealwire.relay.service`) owns the connections and speaks only to this
interface. Contract (every backend passes ``tests/relay/test_backend_contract.py``):

* :meth:`RelayBackend.enqueue` returns only once the envelope is durable (it survives
  ``kill -9`` of the relay process, and in a cluster the loss of any relay node). Concurrent
  calls are batched so durability does not cost throughput.
* An envelope stays queued until :meth:`RelayBackend.acknowledge` deletes it or
  :meth:`RelayBackend.expire` removes it (then an :class:`ExpiryNotice` is kept for the sender's
  organisation). :meth:`RelayBackend.pending` returns the same delivery id for the same
  envelope every time, so a client that reconnects gets unacknowledged envelopes again under
  the same ids, and can drop duplicates.
* Signals (:class:`BackendListener`) reach every node's service, including the node that caused
  them; a cluster backend delivers them from the other nodes too.

All times are Unix milliseconds passed in by the caller; no backend reads the clock for
decisions (a cluster backend may for its own timeouts).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DEFAULT_LIFETIME_MS",
    "ActivationRoute",
    "BackendListener",
    "ExpiryNotice",
    "QueueLimits",
    "RelayBackend",
    "StoredEnvelope",
]

DEFAULT_LIFETIME_MS = 7 * 24 * 3600 * 1000
"""How long an envelope waits for its recipient (7 days, as BES's network kept messages)."""


@dataclass(frozen=True)
class QueueLimits:
    """Per-address quotas and lifetime, the same on every node of a cluster."""

    max_count: int = 10_000
    """Most envelopes queued for one address; one more is refused with ``queue-full``."""
    max_bytes: int = 256 * 1024 * 1024
    """Most envelope bytes queued for one address (sum of envelope sizes)."""
    lifetime_ms: int = DEFAULT_LIFETIME_MS
    """An envelope not acknowledged this long after it was accepted expires."""

    def __post_init__(self) -> None:
        if self.max_count < 1 or self.max_bytes < 1 or self.lifetime_ms < 1:
            raise ValueError("QueueLimits: every limit must be positive")


@dataclass(frozen=True)
class StoredEnvelope:
    """An envelope waiting in a recipient's queue."""

    delivery_id: bytes
    """Chosen by the backend, 1 to 32 bytes, unique within the recipient's queue, stable: the
    same envelope always has the same id. Ids sort (as bytes) in acceptance order within a
    queue, so they double as the :meth:`RelayBackend.pending` cursor."""
    recipient: bytes
    envelope: bytes
    accepted_at: int


@dataclass(frozen=True)
class ExpiryNotice:
    """An envelope expired unread; tell a server of ``organisation`` (the sender's)."""

    notice_id: bytes
    """Chosen by the backend, 1 to 32 bytes, unique per organisation."""
    organisation: bytes
    recipient: bytes
    digest: bytes
    """SHA-256 of the envelope bytes."""
    accepted_at: int


ActivationRoute = Callable[[bytes, bytes, bytes | None], Awaitable[bool]]
"""``route(session, payload, server)`` as registered with :meth:`RelayBackend.attach`:
returns ``True`` once the message was handed to the connection, ``False`` if that
connection is gone."""


class BackendListener(Protocol):
    """What a backend tells the relay service. Called on the event loop; must not block."""

    def envelope_queued(self, recipient: bytes, stored: StoredEnvelope | None = None) -> None:
        """An envelope for ``recipient`` was queued (on this node or another).

        With ``stored`` (the backend has the envelope at hand, as it just wrote it or received
        it in the signal) a session of that address may deliver it straight away; without,
        the session looks at :meth:`RelayBackend.pending` again. Backends call it in
        delivery-id order for envelopes they stored themselves; signals from other nodes may
        arrive out of order, and the service copes with that. Called at least once per
        envelope, on this node, and on every node that watches (:meth:`RelayBackend.watch`) the
        recipient."""

    def addresses_revoked(self, organisation: bytes, addresses: Sequence[bytes]) -> None:
        """``organisation`` revoked these addresses: close their sessions whose certificate
        names that organisation."""

    def organisation_registered(self, organisation: bytes, root: bytes) -> None:
        """A server of ``organisation`` registered with this root key: trust it for that
        organisation's devices."""

    def notice_queued(self, organisation: bytes) -> None:
        """An expiry notice for ``organisation`` is waiting: a connected server of it should
        fetch :meth:`RelayBackend.notices`."""


class RelayBackend(abc.ABC):
    """Durable relay state. See the module docstring for the contract.

    Errors: :class:`~sealwire.errors.QueueFull` when a queue is at a limit,
    :class:`~sealwire.errors.StorageError` when the store cannot answer (the service answers
    ``unavailable`` and the client retries). Nothing else escapes.
    """

    limits: QueueLimits
    _routes: dict[bytes, list[ActivationRoute]]

    signals_may_be_lost: bool = False
    """Whether an ``envelope_queued`` signal can go missing (a cluster: the node that stored
    the envelope may die before it signals). The service then re-reads every session's queue
    from its start now and then, so nothing waits for the recipient's next connection."""

    @abc.abstractmethod
    async def start(self, listener: BackendListener) -> None:
        """Open the store (creating it if needed) and start delivering signals to
        ``listener``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and close; pending :meth:`enqueue` calls either complete or raise."""

    # --- queues -----------------------------------------------------------------------

    @abc.abstractmethod
    async def enqueue(
        self, recipient: bytes, envelope: bytes, *, accepted_at: int, sender_organisation: bytes
    ) -> StoredEnvelope:
        """Store ``envelope`` for ``recipient``; return once it is durable.

        Args:
            sender_organisation: the organisation of the connection that sent it, so that an
                expiry can be reported to that organisation's servers.

        Raises:
            QueueFull: the recipient's queue is at ``limits.max_count`` or would exceed
                ``limits.max_bytes``.
            StorageError: the store is unavailable; nothing was stored.
        """

    def enqueue_later(
        self, recipient: bytes, envelope: bytes, *, accepted_at: int, sender_organisation: bytes
    ) -> asyncio.Future[StoredEnvelope]:
        """:meth:`enqueue` as a future that resolves once the envelope is durable, with the
        same errors (``QueueFull``, ``StorageError``). The service's hot path: a backend that
        queues work for a writer of its own returns that future directly instead of a task
        per envelope. Call it on the event loop."""
        return asyncio.ensure_future(
            self.enqueue(
                recipient,
                envelope,
                accepted_at=accepted_at,
                sender_organisation=sender_organisation,
            )
        )

    @abc.abstractmethod
    async def pending(
        self, recipient: bytes, *, after: bytes | None, limit: int, now: int
    ) -> list[StoredEnvelope]:
        """Up to ``limit`` queued envelopes for ``recipient``, oldest first, with delivery id
        greater than ``after`` (``None``: from the start), skipping any that expired by
        ``now``."""

    @abc.abstractmethod
    async def acknowledge(self, recipient: bytes, delivery_ids: Sequence[bytes]) -> None:
        """Delete these envelopes from ``recipient``'s queue; unknown ids are ignored."""

    @abc.abstractmethod
    async def expire(self, now: int) -> int:
        """Remove every envelope accepted at or before ``now - limits.lifetime_ms``, keep an
        :class:`ExpiryNotice` for each (and signal ``notice_queued``); return how many.

        In a cluster any node may call it at any time; an envelope is reported once."""

    @abc.abstractmethod
    async def depth(self) -> tuple[int, int]:
        """Envelopes and envelope bytes queued in total (for metrics; may be approximate in a
        cluster)."""

    # --- expiry notices -----------------------------------------------------------------

    @abc.abstractmethod
    async def notices(self, organisation: bytes, *, limit: int) -> list[ExpiryNotice]:
        """Up to ``limit`` waiting notices for ``organisation``, oldest first."""

    @abc.abstractmethod
    async def clear_notices(self, organisation: bytes, notice_ids: Sequence[bytes]) -> None:
        """Delete notices that were passed on to a server."""

    # --- organisations and revocations --------------------------------------------------

    @abc.abstractmethod
    async def register(self, organisation: bytes, root: bytes, server: bytes) -> None:
        """Record that ``server`` (an address) of ``organisation`` registered with ``root``,
        and signal ``organisation_registered`` everywhere. Registering again is harmless."""

    @abc.abstractmethod
    async def organisations(self) -> dict[bytes, bytes]:
        """Every registered organisation id and its root key."""

    @abc.abstractmethod
    async def is_registered_server(self, server: bytes) -> bool:
        """Whether ``server`` is the address of a registered enterprise server."""

    @abc.abstractmethod
    async def revoke(self, organisation: bytes, addresses: Sequence[bytes]) -> None:
        """Durably refuse ``addresses`` for ``organisation`` and signal ``addresses_revoked``
        everywhere. Scoped: it affects only certificates of that organisation."""

    @abc.abstractmethod
    async def is_revoked(self, organisation: bytes, address: bytes) -> bool:
        """Whether ``organisation`` revoked ``address``."""

    @abc.abstractmethod
    def revoked_now(self, organisation: bytes, address: bytes) -> bool:
        """Whether ``organisation`` revoked ``address``, as this node knows it now: no I/O,
        for the send path (an envelope to a revoked address is refused, not queued)."""

    # --- activation routing between nodes -----------------------------------------------

    async def attach(self, key: bytes, route: ActivationRoute) -> Callable[[], Awaitable[None]]:
        """Make this node the route for activation messages to ``key`` (a server address, or
        the relay's session id of an activating device) until the returned function is
        awaited. This default keeps routes in this process; a cluster backend extends it so
        that other nodes reach them too (calling ``super().attach`` first)."""
        routes = self._local_routes()
        routes.setdefault(key, []).append(route)

        async def detach() -> None:
            entries = routes.get(key, [])
            if route in entries:
                entries.remove(route)
            if not entries:
                routes.pop(key, None)

        return detach

    async def route_activation(
        self, key: bytes, session: bytes, payload: bytes, server: bytes | None
    ) -> bool:
        """Hand an activation message to whichever node attached ``key`` (the most recent
        attachment wins); ``False`` if none has (the server or device is not connected). This
        default looks only in this process."""
        return await self._route_locally(key, session, payload, server)

    async def _route_locally(
        self, key: bytes, session: bytes, payload: bytes, server: bytes | None
    ) -> bool:
        for route in reversed(list(self._local_routes().get(key, ()))):
            if await route(session, payload, server):
                return True
        return False

    def _local_routes(self) -> dict[bytes, list[ActivationRoute]]:
        if not hasattr(self, "_routes"):
            self._routes = {}
        return self._routes

    # --- watching queues between nodes -------------------------------------------------

    async def watch(self, recipient: bytes) -> None:  # noqa: B027 - optional hook
        """A session of ``recipient`` is open on this node: deliver ``envelope_queued`` for
        it even when another node queues (a cluster subscribes; embedded needs nothing)."""

    async def unwatch(self, recipient: bytes) -> None:  # noqa: B027 - optional hook
        """The last session of ``recipient`` on this node closed."""
