"""Deliveries to one session: reading its queue from the backend after a cursor (a pull),
handing a just-stored envelope straight over, and deleting what the client acknowledged.

The invariants: a session is never given one envelope twice (``inflight``), never skips one
(the cursor only passes what was delivered or is gone), and is given no more than its window
and the memory bound (:data:`~.link.OUTBOX_SOFT_LIMIT`) allow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from sealwire.errors import StorageError
from sealwire.protocol.session import RelayState

from .backends.base import RelayBackend, StoredEnvelope
from .link import OUTBOX_SOFT_LIMIT, Link
from .metrics import RelayMetrics

__all__ = ["Deliveries"]

_log = logging.getLogger("sealwire.relay")

_ACK_DELAY_S: Final = 0.01
"""Acknowledgements of one session are gathered this long and deleted in one call."""
_PULL_MAX: Final = 32
"""Most envelopes read from the backend at once (at most 8 MiB of 256 KiB envelopes)."""


class Deliveries:
    """Moves envelopes from the backend to sessions.

    Args:
        backend: the queues.
        metrics: ``delivered``, ``queue_wait``.
        clock: Unix milliseconds.
        spawn: runs a background task of the service (its failures are logged there).
    """

    def __init__(
        self,
        backend: RelayBackend,
        metrics: RelayMetrics,
        clock: Callable[[], int],
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self._clock = clock
        self._spawn = spawn

    @staticmethod
    def may_deliver(link: Link) -> bool:
        """Whether the session may be given another envelope now."""
        return (
            link.peer is not None
            and link.session.state is RelayState.OPEN
            and link.session.delivery_window > 0
            and link.outbox_bytes + link.session.queued_bytes < OUTBOX_SOFT_LIMIT
        )

    @classmethod
    def may_pull(cls, link: Link) -> bool:
        """Whether the writer should read the backend for this session now."""
        return link.more and cls.may_deliver(link)

    async def pull(self, link: Link) -> None:
        """Give the session what the backend holds for it after the cursor, as far as its
        window and the memory bound allow."""
        session = link.session
        assert link.peer is not None
        limit = min(session.delivery_window, _PULL_MAX)
        link.more = False
        link.pulling = True
        try:
            items = await self._backend.pending(
                link.peer.address, after=link.cursor, limit=limit, now=self._clock()
            )
        except StorageError as exc:
            _log.warning("backend read failed; will retry", extra={"error": str(exc)})
            # Retry in a second, not at once (``more`` set now would make the writer spin).
            asyncio.get_running_loop().call_later(1.0, link.pull_again)
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
            if not self.may_deliver(link):
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
            self._metrics.queue_wait.observe(max(0, now - item.accepted_at) / 1000)
        self._metrics.delivered.inc(delivered)

    def acknowledged(self, link: Link, delivery_ids: Sequence[bytes]) -> None:
        """The client acknowledged these deliveries: delete them (gathered for
        :data:`_ACK_DELAY_S`, one backend call). The window opens again; a pull follows only
        if something is waiting (``more`` was set when a delivery could not be handed
        over)."""
        if not link.acks:
            asyncio.get_running_loop().call_later(_ACK_DELAY_S, self._flush_acks, link)
        link.acks.extend(delivery_ids)

    def _flush_acks(self, link: Link) -> None:
        ids, link.acks = tuple(link.acks), []
        if ids:
            self._spawn(self._acknowledge(link, ids))

    async def _acknowledge(self, link: Link, ids: tuple[bytes, ...]) -> None:
        assert link.peer is not None
        try:
            await self._backend.acknowledge(link.peer.address, ids)
        except StorageError as exc:
            # Not lost: the envelopes stay queued and are delivered again next session.
            _log.warning("acknowledge failed", extra={"error": str(exc)})
        else:
            link.inflight.difference_update(ids)
            if link.pulling:
                link.deleted_during_pull.update(ids)

    def hand_over(self, link: Link, stored: StoredEnvelope) -> None:
        """Deliver a just-stored envelope straight to a session that has nothing older
        waiting, without reading it back from the backend; otherwise let it pull."""
        if stored.delivery_id in link.inflight:
            return  # a repeated signal for one it has
        if link.cursor is not None and stored.delivery_id <= link.cursor:
            # A late or repeated signal (another node's, or for one already acknowledged):
            # only a pull from the start can tell whether it is still to be delivered.
            link.cursor = None
            link.more = True
        elif not link.more and not link.pulling and self.may_deliver(link):
            # Not during a pull: the pull may return older envelopes it has not reached yet,
            # and a cursor moved past them here would skip them for the rest of the session.
            link.session.deliver(stored.delivery_id, stored.envelope)
            link.inflight.add(stored.delivery_id)
            link.cursor = stored.delivery_id
            self._metrics.delivered.inc()
            self._metrics.queue_wait.observe(max(0, self._clock() - stored.accepted_at) / 1000)
        else:
            link.more = True  # a backlog, a full window or a slow reader: it pulls
        link.wake.set()


def _later(cursor: bytes | None, delivery_id: bytes) -> bytes:
    """The cursor never moves back (delivery ids sort in acceptance order)."""
    return delivery_id if cursor is None or delivery_id > cursor else cursor
