"""Group commit of the device's store writes: steps queued while a commit runs share the next
transaction (one fsync for all of them), in a worker thread, so the event loop goes on with
crypto and the network meanwhile.

A step is a value that says what to write (:class:`StoreIncoming`, :class:`StoreOutgoing`,
:class:`MarkSent`, :class:`MarkSeen`), or :class:`StoreCall` for any other store work. The
engine batches steps of the same kind into one store call (incoming messages: a few
statements per batch rather than per message).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from .store import DeviceStore, MessageRecord

__all__ = [
    "GroupCommit",
    "MarkSeen",
    "MarkSent",
    "SeenEnvelope",
    "Step",
    "StoreCall",
    "StoreIncoming",
    "StoreOutgoing",
]

T = TypeVar("T")

SeenEnvelope = tuple[bytes, int, int]
"""An opened envelope to record as seen: ``(envelope id, sent_at, horizon)``."""


@dataclass(frozen=True)
class StoreIncoming:
    """Store an incoming message; its result is the record if it is new, else ``None``."""

    record: MessageRecord
    envelope: SeenEnvelope
    now: int


@dataclass(frozen=True)
class StoreOutgoing:
    """Store a message we send and its sealed copies (the outbox)."""

    record: MessageRecord
    envelopes: tuple[bytes, ...]
    now: int


@dataclass(frozen=True)
class MarkSent:
    """The relay holds every copy of this message."""

    message_id: bytes


@dataclass(frozen=True)
class MarkSeen:
    """Record an envelope as seen and nothing else (dropped, or not a message)."""

    envelope: SeenEnvelope


@dataclass(frozen=True)
class StoreCall(Generic[T]):
    """Any other store work; its result is what ``run`` returns."""

    run: Callable[[], T]


Step = StoreIncoming | StoreOutgoing | MarkSent | MarkSeen | StoreCall[Any]


class GroupCommit:
    """Runs store steps in shared transactions.

    Args:
        store: the store written to.
        spawn: runs the committer in the background.
    """

    def __init__(
        self, store: DeviceStore, spawn: Callable[[Coroutine[Any, Any, None]], None]
    ) -> None:
        self._store = store
        self._spawn = spawn
        self._writes: list[tuple[Step, asyncio.Future[Any]]] = []
        self._committing = False

    @overload
    async def write(self, step: StoreIncoming) -> MessageRecord | None: ...
    @overload
    async def write(self, step: StoreCall[T]) -> T: ...
    @overload
    async def write(self, step: StoreOutgoing | MarkSent | MarkSeen) -> None: ...

    async def write(self, step: Step) -> Any:
        """Run ``step`` in the next group commit and return its result.

        Raises:
            StorageError: the transaction failed (every step in it fails).
        """
        return await self._queue([step])[0]

    async def write_all(self, steps: list[Step]) -> list[Any]:
        """Run ``steps`` in the next group commit (together); return their results in order.

        Raises:
            StorageError: the transaction failed.
        """
        return list(await asyncio.gather(*self._queue(steps)))

    def _queue(self, steps: list[Step]) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in steps]
        self._writes.extend(zip(steps, futures, strict=True))
        if not self._committing:
            self._committing = True
            self._spawn(self._committer())
        return futures

    async def _committer(self) -> None:
        try:
            while self._writes:
                writes, self._writes = self._writes, []
                try:
                    results = await asyncio.to_thread(self.run, [s for s, _ in writes])
                except Exception as exc:
                    for _, future in writes:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(writes, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._committing = False

    def run(self, steps: list[Step]) -> list[Any]:
        """Run ``steps`` in one transaction, now (synchronously); return their results."""
        store = self._store
        with store.batch():
            incoming = [step for step in steps if isinstance(step, StoreIncoming)]
            added = iter(
                store.add_incoming([(step.record, step.envelope, step.now) for step in incoming])
                if incoming
                else []
            )
            outgoing = [step for step in steps if isinstance(step, StoreOutgoing)]
            if outgoing:
                store.add_outgoing([(step.record, step.envelopes, step.now) for step in outgoing])
            sent = [step.message_id for step in steps if isinstance(step, MarkSent)]
            if sent:
                store.messages_sent(sent)
            results: list[Any] = []
            for step in steps:
                match step:
                    case StoreIncoming():
                        results.append(step.record if next(added) else None)
                    case StoreOutgoing() | MarkSent():
                        results.append(None)
                    case MarkSeen(envelope):
                        store.first_seen(*envelope)
                        results.append(None)
                    case StoreCall(run):
                        results.append(run())
            return results
