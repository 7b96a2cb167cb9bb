"""Pipelined JetStream publishes (:class:`_Publisher`) and the per-address byte counters
that make quotas exact across nodes (:class:`_ByteLedger`)."""

from __future__ import annotations

import asyncio
import logging

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from sealwire.errors import QueueFull, StorageError

from ._wire import (
    CAS_ATTEMPTS,
    ERR_WRONG_LAST_SEQUENCE,
    HDR_EXPECTED_LAST,
    _api_answer,
    _status,
)

log = logging.getLogger(__name__)


class _Publisher:
    """JetStream publishes pipelined over one reply subscription: the PubAck resolves a future
    (no request/``wait_for`` per call, ~30% less CPU than ``js.publish``). Unlike nats-py's
    ``publish_async``, a refusal resolves as the APIError ``js.publish`` would raise."""

    def __init__(self, nc: Client, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout
        self._prefix = ""
        self._count = 0
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """Publish and return the stream sequence once JetStream acknowledged it."""
        reply = await self.request(subject, payload, headers)
        if _status(reply) is not None:  # 503 "no responders": no stream for the subject
            raise nats.js.errors.NoStreamResponseError()
        answer = _api_answer(reply)
        seq = answer.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
            raise nats.js.errors.APIError(description="PubAck without seq")
        return seq

    async def request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Msg:
        """Send ``payload`` and return the reply (raises nats TimeoutError)."""
        self._count += 1
        token = f"{self._count:x}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        timer = loop.call_later(self._timeout, self._time_out, future)
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}.{token}", headers=headers
            )
            return await future
        finally:
            timer.cancel()
            self._waiting.pop(token, None)

    @staticmethod
    def _time_out(future: asyncio.Future[Msg]) -> None:
        if not future.done():
            future.set_exception(nats.errors.TimeoutError())

    def cancel(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(StorageError("NATS relay backend closed"))
        self._waiting.clear()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) + 1 :])
        if future is not None and not future.done():
            future.set_result(msg)


IN_SUFFIX = ".in"
OUT_SUFFIX = ".out"
"""A recipient's two byte counters in ``P_bytes``: ``X(recipient).in`` (bytes ever reserved)
and ``X(recipient).out`` (bytes ever given back). Keys of any other form are ignored."""


class _ByteLedger:
    """Per-recipient byte quota as two monotonic counters in a KV bucket (module docstring,
    "Byte quota"): ``in`` only grows by reservations, ``out`` only by releases, and the bytes
    used are ``in - out``. Each counter changes by compare-and-set on its KV revision,
    changes to one counter on one node coalesced into one compare-and-set; every counter is
    mirrored in memory (also from other nodes, through :meth:`observe`).

    Reservations and releases write different keys, so an enqueuing node and an
    acknowledging node never conflict. A reservation decides on ``in`` (its mirror, exact
    unless another node reserved meanwhile, which the compare-and-set catches) and on the
    mirror of ``out``, which can only lag below the truth, i.e. err towards refusing; a
    refusal is therefore only made after reading ``out`` fresh."""

    def __init__(self, kv: KeyValue, bucket: str, publisher: _Publisher, max_bytes: int) -> None:
        self._kv = kv
        self._subject = f"$KV.{bucket}."
        self._publisher = publisher
        self._max = max_bytes
        self._known: dict[str, tuple[int, int]] = {}  # KV key -> (counter, KV revision)
        self.total = 0
        """Sum over the mirrored recipients of ``in - out``."""
        self._waiting: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}

    def observe(self, key: str, value: int, revision: int) -> None:
        if key.endswith(IN_SUFFIX):
            sign = 1
        elif key.endswith(OUT_SUFFIX):
            sign = -1
        else:
            return  # not a counter of this layout
        old = self._known.get(key)
        if old is not None and old[1] >= revision:
            return
        self.total += sign * (value - (old[0] if old is not None else 0))
        self._known[key] = (value, revision)

    async def reserve(self, recipient: str, amount: int) -> None:
        """Add ``amount`` to ``recipient``'s bytes; raises QueueFull if they would pass the
        limit (nothing is then reserved)."""
        await self._change(recipient + IN_SUFFIX, amount)

    async def release(self, recipient: str, amount: int) -> None:
        """Give ``amount`` bytes of ``recipient`` back."""
        if amount > 0:
            await self._change(recipient + OUT_SUFFIX, amount)

    async def _change(self, key: str, amount: int) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((amount, future))
        if key not in self._flushers:
            self._flushers[key] = asyncio.create_task(self._flush(key))
        await future

    def cancel(self) -> None:
        for task in self._flushers.values():
            task.cancel()
        for batch in self._waiting.values():
            for _, future in batch:
                if not future.done():
                    future.set_exception(StorageError("NATS relay backend closed"))
        self._waiting.clear()

    async def _flush(self, key: str) -> None:
        try:
            while batch := self._waiting.pop(key, None):
                try:
                    if key.endswith(IN_SUFFIX):
                        await self._apply_in(key, batch)
                    else:
                        await self._apply_out(key, batch)
                except Exception as exc:
                    error = (
                        exc
                        if isinstance(exc, StorageError)
                        else StorageError(f"NATS: byte counter update failed: {exc!r}")
                    )
                    if error is not exc:
                        error.__cause__ = exc
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
        finally:
            self._flushers.pop(key, None)

    async def _read(self, key: str) -> tuple[int, int]:
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return 0, 0
        if entry.value is None or entry.revision is None:
            return 0, entry.revision or 0
        return int(entry.value), entry.revision

    async def _refresh(self, key: str) -> tuple[int, int]:
        """Read ``key`` from the bucket into the mirror; returns the mirror's (newest) value."""
        self.observe(key, *await self._read(key))
        return self._known.get(key, (0, 0))

    async def _write(self, key: str, value: int, revision: int) -> bool:
        """Compare-and-set ``key`` to ``value`` if its revision is still ``revision`` (0: the
        key must not exist). Returns False on a conflict, after reading the key again."""
        try:
            new_revision = await self._publisher.publish(
                self._subject + key, b"%d" % value, {HDR_EXPECTED_LAST: str(revision)}
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code not in ERR_WRONG_LAST_SEQUENCE:
                raise
            await self._refresh(key)  # another node changed it: read it again
            return False
        self.observe(key, value, new_revision)
        return True

    async def _apply_in(self, key: str, batch: list[tuple[int, asyncio.Future[None]]]) -> None:
        out_key = key[: -len(IN_SUFFIX)] + OUT_SUFFIX
        out_fresh = False
        for _ in range(CAS_ATTEMPTS):
            # Not mirrored: assume the key does not exist yet; the compare-and-set checks it.
            value, revision = self._known.get(key, (0, 0))
            used = value - self._known.get(out_key, (0, 0))[0]
            new = value
            accepted: list[bool] = []
            for amount, _future in batch:
                if amount > 0 and used + amount > self._max:
                    accepted.append(False)
                else:
                    used += max(0, amount)
                    new += max(0, amount)
                    accepted.append(True)
            if not all(accepted) and not out_fresh:
                # Refuse only on a fresh ``out``: our mirror of it may lag behind releases.
                await self._refresh(out_key)
                out_fresh = True
                continue
            # The compare-and-set on ``in`` confirms that no other reservation came in
            # between; ``out`` only grows, so the true usage is at most what we decided on.
            if new != value and not await self._write(key, new, revision):
                continue
            for (_amount, future), ok in zip(batch, accepted, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(None)
                else:
                    future.set_exception(QueueFull("queue is at its byte limit"))
            return
        raise StorageError("NATS: byte counter too contended, try again")

    async def _apply_out(self, key: str, batch: list[tuple[int, asyncio.Future[None]]]) -> None:
        for _ in range(CAS_ATTEMPTS):
            # Not mirrored: assume the key does not exist yet; the compare-and-set checks it.
            value, revision = self._known.get(key, (0, 0))
            if await self._write(key, value + sum(amount for amount, _ in batch), revision):
                for _amount, future in batch:
                    if not future.done():
                        future.set_result(None)
                return
        raise StorageError("NATS: byte counter too contended, try again")
