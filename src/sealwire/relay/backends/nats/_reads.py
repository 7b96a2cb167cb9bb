"""Stateless reads of the NATS backend's streams (any node reads any queue)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RawStreamMsg,
)
from nats.js.client import JetStreamContext

from sealwire.errors import StorageError

from ._ledger import _Publisher
from ._wire import (
    BATCH_EXPIRES_NS,
    CONSUMER_IDLE_S,
    JS_API,
    WALK_BATCH,
    WALK_FIRST,
    _api_answer,
    _decode_id,
    _encode_id,
    _is_no_message,
    _status,
)


class _StreamReads:
    """Reading a stream without consumer state between calls: walks, batches, deletes and
    look-ups by sequence (part of :class:`~.backend.NatsBackend`)."""

    _timeout: float

    if TYPE_CHECKING:

        def _require_js(self) -> JetStreamContext: ...

        def _require_nc(self) -> Client: ...

        def _require_publisher(self) -> _Publisher: ...

    async def _next(
        self, stream: str, subject: str, seq: int, *, leader: bool = False
    ) -> RawStreamMsg | None:
        """The first message on ``subject`` at or after ``seq``, or None.

        Direct gets (any replica answers) unless ``leader``; a replica may lag the leader, so
        a walk that ends confirms the end with the leader (:meth:`_walk`)."""
        try:
            return await self._require_js().get_msg(
                stream, seq=seq, next=True, subject=subject, direct=not leader
            )
        except nats.js.errors.NotFoundError:
            return None

    async def _walk(
        self, stream: str, subject: str, seq: int, *, want: int = WALK_BATCH
    ) -> AsyncGenerator[RawStreamMsg, None]:
        """The messages on ``subject`` from ``seq`` on, in sequence order.

        The first :data:`WALK_FIRST` come from direct gets (one request each: cheapest for
        the short queues that direct hand-over leaves); the rest from ephemeral consumers, up
        to ``want`` messages per request. A lagging replica holds a prefix of the leader's log
        (plus, briefly, messages the leader already deleted: a client drops those as
        duplicates by id), so only the end of a walk can be short: the leader confirms it,
        and a walk that found more there goes on with the leader."""
        leader = False
        walked = 0
        while True:
            if not leader and walked >= WALK_FIRST:
                batch, remaining = await self._batch(
                    stream, subject, seq, max(1, min(want, WALK_BATCH))
                )
                for read in batch:
                    assert read.seq is not None
                    yield read
                    seq = read.seq + 1
                if batch and remaining > 0:
                    continue
                leader = True  # at the end (as that server sees it): the leader confirms
            msg = await self._next(stream, subject, seq, leader=leader)
            if msg is None or msg.seq is None:
                if leader:
                    return
                leader = True
                continue
            yield msg
            walked += 1
            seq = msg.seq + 1

    async def _batch(
        self, stream: str, subject: str, seq: int, count: int
    ) -> tuple[list[RawStreamMsg], int]:
        """Up to ``count`` messages on ``subject`` from ``seq`` on, read in one request through
        an ephemeral consumer (no acks, in memory, deleted right after, and by the server
        after :data:`CONSUMER_IDLE_S` if that delete is lost). Returns them and how many more
        the consumer saw waiting."""
        js = self._require_js()
        nc = self._require_nc()
        info = await js.add_consumer(
            stream,
            ConsumerConfig(
                filter_subject=subject,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=seq,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=CONSUMER_IDLE_S,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        name = info.name
        assert name is not None
        out: list[RawStreamMsg] = []
        remaining = 0
        try:
            wanted = min(count, info.num_pending or 0)
            if wanted <= 0:
                return out, 0
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def collect(msg: Msg) -> None:
                nonlocal remaining
                if done.done():
                    return
                if not msg.reply:  # a status (404/408): nothing more now
                    done.set_result(None)
                    return
                try:
                    meta = msg.metadata
                except nats.errors.Error as exc:
                    done.set_exception(StorageError(f"NATS: unexpected consumer message: {exc!r}"))
                    return
                out.append(
                    RawStreamMsg(
                        subject=msg.subject,
                        seq=meta.sequence.stream,
                        data=msg.data,
                        headers=msg.headers,
                    )
                )
                remaining = meta.num_pending
                if len(out) >= wanted:
                    done.set_result(None)

            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, cb=collect)
            try:
                await nc.publish(
                    f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{name}",
                    # With "expires" the server always ends the request (a 408 status), even
                    # when messages it counted were deleted meanwhile (2.9 then never sends
                    # no_wait's 404): a short batch is fine, the caller reads on.
                    json.dumps(
                        {"batch": wanted, "no_wait": True, "expires": BATCH_EXPIRES_NS}
                    ).encode(),
                    reply=inbox,
                )
                await asyncio.wait_for(done, self._timeout)
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        finally:
            with contextlib.suppress(nats.errors.Error, OSError):
                # Fire and forget: the server drops it after CONSUMER_IDLE_S anyway.
                await nc.publish(f"{JS_API}.CONSUMER.DELETE.{stream}.{name}", b"")
        return out, remaining

    async def _delete(self, stream: str, seq: int) -> bool:
        """Delete one message; False if it was already gone (someone else's claim)."""
        reply = await self._require_publisher().request(
            f"{JS_API}.STREAM.MSG.DELETE.{stream}", b'{"seq":%d}' % seq
        )
        if _status(reply) is not None:
            raise nats.errors.NoRespondersError()
        try:
            _api_answer(reply)
        except nats.js.errors.APIError as exc:
            if _is_no_message(exc):
                return False
            raise
        return True

    async def _locate(self, stream: str, seq: int) -> tuple[str, int] | None:
        """The subject and size of message ``seq``, or None if it does not exist.

        A direct get first (any replica: the cheap request); a sequence's subject never
        changes, so a replica's answer is right, but one that lags may not have it yet: then
        the leader is asked."""
        reply = await self._require_publisher().request(
            f"{JS_API}.DIRECT.GET.{stream}", b'{"seq":%d}' % seq
        )
        status = _status(reply)
        if status is None:
            subject = (reply.headers or {}).get("Nats-Subject")
            if isinstance(subject, str):
                return subject, len(reply.data)
        msg = await self._owned(stream, None, _encode_id(seq))
        if msg is None or msg.subject is None:
            return None
        return msg.subject, len(msg.data or b"")

    async def _owned(self, stream: str, subject: str | None, ident: bytes) -> RawStreamMsg | None:
        """The message named by ``ident`` if it exists and is on ``subject`` (None: any),
        asking the stream's leader."""
        seq = _decode_id(ident)
        if not seq:
            return None
        try:
            msg = await self._require_js().get_msg(stream, seq=seq)
        except nats.js.errors.NotFoundError:
            return None
        except nats.js.errors.APIError as exc:
            if _is_no_message(exc):
                return None
            raise
        return msg if subject is None or msg.subject == subject else None
