"""The cluster relay backend: any number of relay nodes share one NATS JetStream.

Every node runs its own :class:`NatsBackend` on the same ``prefix``; any node serves any
address. Layout (``P`` is the prefix, ``X`` is ``x`` followed by the hex of the bytes, so no
subject token or KV key is ever empty)::

    stream P_QUEUE      subjects P.q.X(recipient)   one message per queued envelope
    stream P_NOTICES    subjects P.n.X(organisation) one message per expiry notice
    KV P_bytes          X(recipient).in  -> envelope bytes ever reserved (decimal ASCII)
                        X(recipient).out -> envelope bytes ever given back (decimal ASCII)
    KV P_orgs           X(organisation) -> root key
    KV P_servers        X(server) -> X(organisation)
    KV P_revoked        X(organisation).X(address) -> b"1"
    core P.sig.q.X(recipient)   "an envelope was queued", carrying it (to nodes that watch)
    core P.sig.n                "a notice was queued" (payload: the organisation)
    core P.act.X(key)           activation routing requests (request/reply)

Decisions and what they guarantee:

* **Durability.** :meth:`NatsBackend.enqueue` returns once JetStream sent its PubAck, i.e. the
  message is written to the stream's file store (and, with ``replicas`` > 1 on a clustered
  server, to a quorum of replicas, so it survives the loss of a server). Losing a *relay node*
  loses nothing: relay nodes keep no durable state. JetStream's file store does not fsync each
  message by default (``sync_interval``, 2 minutes); a server crash (not a relay crash) can
  lose the last writes of a single-replica stream, exactly as NATS documents. Use R3 in
  production. Publishes (envelopes and byte-counter updates) are pipelined over one reply
  subscription (:class:`_Publisher`), not one request each.
* **The enqueue path** is two JetStream round trips in a row, reserve bytes then publish
  (running them concurrently would store envelopes the quota then refuses), plus one core
  publish of the signal that waits for nothing. Concurrent reservations of one address on
  one node are one compare-and-set.
* **Delivery ids** are the stream sequence as 8 bytes big-endian: stable, never reused (the
  stream's last sequence survives deletions and restarts), and in acceptance order.
* **Direct hand-over.** The node that stored an envelope calls ``envelope_queued(recipient,
  stored)`` with it at once (in delivery-id order: PubAcks arrive in stream order), and
  publishes the same to the nodes watching the recipient: ``P.sig.q.X(recipient)`` carries
  version (1 byte), sequence (8), accepted_at (8, signed) and the envelope; an envelope too
  large to fit beside them in ``max_payload`` goes as an empty signal ("read pending"). A
  watching node decodes it strictly (:func:`_decode_signal`: exact layout, version 1, a
  non-zero sequence, no more than ``max_bytes`` of envelope) and passes it on with
  ``stored``; anything else is logged without details and passed on *without* ``stored``,
  so the session reads :meth:`pending`. A signal is trusted only to deliver its bytes under
  its id (which the client drops if it is a duplicate): acknowledging an id learnt from a
  signal still checks with the stream that it belongs to the acknowledging address.
  Most envelopes therefore never need a read; :meth:`pending` remains for reconnects,
  backlogs and lost signals.
* **Signals are at most once and may be reordered** between nodes: core NATS, published
  after the store succeeded. A signal is lost if the publishing node dies after its PubAck,
  while a node is disconnected from NATS, or when a watching node is a slow consumer. For
  the last two the node then tells every affected watched address bare
  ``envelope_queued(recipient)`` (after the reconnect / on the slow-consumer error); the
  first is only caught by the next read. Signals from different nodes interleave in any
  order. Subscribing to the queue subjects instead would also signal envelopes the stream
  refused (core subscribers see every publish). A node skips its own signals (header
  ``Sealwire-Node``) because it already delivered them locally. ``notice_queued`` is
  signalled once per organisation per :meth:`expire` call.
* **Reads are stateless**: :meth:`pending`, :meth:`notices` and :meth:`expire` walk a subject
  without consumer state kept between calls, so any node reads any queue and acknowledging
  is deleting. A walk takes its first :data:`WALK_FIRST` messages with *direct* gets ("next
  message on subject", any replica answers: cheapest when a queue holds one or two), then
  reads on in batches of up to its limit through a throw-away consumer (ephemeral, filtered,
  starting at the next sequence, no acks, in memory, one fetch, deleted right after
  without waiting and by the server after :data:`CONSUMER_IDLE_S` if that is lost). A
  replica may lag the leader, but it holds a prefix of the leader's log, so only the end of
  a walk can be short: a walk that reaches the end asks the leader once more, and so sees
  every envelope whose enqueue returned, on any node, before the walk began. A lagging
  replica can also still show an envelope the leader already deleted: the client drops it
  as a duplicate by id, and acknowledging it again is a no-op.
* **Acknowledging.** When the ids acknowledged together (three or more) are exactly the
  oldest envelopes of the queue, which one read of that many confirms, one purge of the
  subject below the newest of them deletes them all (nothing can appear later below a
  sequence that exists). Otherwise each is deleted by sequence, after checking that it is
  this queue's (a node remembers, bounded, the queue and size of sequences it stored or
  read, so that check is usually free; otherwise a direct get). Deletes are the JetStream
  server's bottleneck (~4,000/s on one test server), which the purge avoids. A delete
  overwrites the envelope on disk ("erase"); a purge only drops it, the bytes stay in the
  block file until JetStream compacts or removes it (envelopes are sealed end to end).
* **Count quota** is exact cluster-wide: ``max_msgs_per_subject`` with ``discard=new`` and
  ``discard_new_per_subject`` makes the stream refuse the publish (API error 10077), which
  becomes :class:`~sealwire.errors.QueueFull`.
* **Byte quota.** JetStream has no per-subject byte limit, so each recipient has two
  monotonic counters in the ``P_bytes`` bucket: ``in``, the bytes ever reserved for it, and
  ``out``, the bytes ever given back; the bytes it uses are ``in - out``. Both only grow
  (Python integers; a 64-bit range would last centuries at 1 GB/s), each is changed only by
  compare-and-set on its KV revision, and concurrent changes to one counter on one node are
  coalesced into one compare-and-set (group commit). An enqueue reserves its bytes on ``in``
  *before* it publishes, and gives them back on ``out`` if the publish is refused;
  acknowledge and expire give them back on ``out`` after their delete succeeded (the delete
  is the claim, so each envelope is given back once; a purge whose count falls short,
  because another node deleted some of them meanwhile, gives back only the smallest of
  them, so the usage errs high). Reserving and giving back write different keys, so the
  enqueuing node and the acknowledging node never conflict; only nodes enqueuing to (or
  only nodes giving back for) the same address at the same moment do, and they retry on the
  revision conflict. A reservation is decided on this node's mirrors (``in`` is current
  unless another node reserved meanwhile, which the compare-and-set then catches; the
  mirror of ``out``, kept by the KV watch, can only lag *below* the truth, which errs towards
  refusing) and confirmed by the compare-and-set on ``in``: no KV read on the enqueue path.
  A refusal is decided only after reading ``out`` fresh, so a lagging mirror never refuses.
  Guarantee: the bytes queued for an address never exceed ``max_bytes`` (reservations
  precede storage, and ``out`` grows only after a delete). A relay node that dies between
  reserving and publishing, or between deleting and giving back, leaves the usage too high
  by that envelope (the quota errs towards refusing); a publish that times out, or an
  enqueue cancelled while it publishes, keeps its reservation for the same reason (the
  envelope may have been stored). Nothing yet corrects such a drift. Concurrent
  reservations that later fail on the count quota may briefly refuse others. Counters of
  the earlier single-key layout (``X(recipient)`` -> bytes) are ignored: do not mix node
  versions on one prefix.
* **Depth** is the stream's message count and the sum of ``in - out``, which every node
  mirrors through a KV watch: exact on one node when idle, eventually exact in a cluster, and
  including reservations in flight.
* **Expiry** walks the stream from its first message while envelopes are old (the stream is
  in acceptance order; an envelope accepted out of order by a skewed clock waits behind a
  younger one until that one expires too, and :meth:`pending` hides it meanwhile). For each,
  the *delete is the claim*: only the node whose delete succeeded (not another node's expire,
  not an acknowledge) publishes the notice, so an envelope is reported at most once and, with
  the retries under one ``Nats-Msg-Id`` (the stream deduplicates within an hour), exactly once
  unless that node dies between delete and publish (then the notice is lost, never doubled).
  The server's ``max_age`` (lifetime plus a day) is only a backstop that reports nothing.
* **Organisations, servers, revocations** live in KV buckets, mirrored in memory on every node
  and kept current by KV watches, so lookups need no request. A node signals a change it did
  itself at once; other nodes' changes are signalled when their watch sees a key that is new
  to the mirror (a revocation of several addresses reaches other nodes as one signal per
  address). An organisation's root is set once (KV create); a different root for the same
  organisation raises :class:`~sealwire.errors.StorageError`.
* **Activation routing**: each attached key is also a core subscription; a node that routed a
  request successfully replies, others stay silent, so the requester gets ``False`` on "no
  responders" at once or after a short timeout. If two nodes have attached the same key,
  the first to answer wins (not necessarily the most recent attachment).
* **Errors**: every NATS error or timeout becomes :class:`~sealwire.errors.StorageError`
  (every request has a timeout, so a disconnected cluster fails calls rather than hanging);
  nats-py reconnects by itself. A publish made while disconnected waits in nats-py's buffer
  and may still be stored after its call failed with StorageError: the sender's retry then
  queues the same envelope twice, which the recipient drops as a replay. Every wait on NATS
  is bounded: requests, PubAcks and batch reads by ``timeout``, a publish into a full
  outbound buffer by ``flush_timeout``, and a byte-counter change by its bounded
  compare-and-set loop; no lock is held across an await.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import json
import logging
import os
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RawStreamMsg,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from sealwire.errors import QueueFull, StorageError
from sealwire.relay.backends.base import (
    ActivationRoute,
    BackendListener,
    ExpiryNotice,
    QueueLimits,
    RelayBackend,
    StoredEnvelope,
)

__all__ = ["NatsBackend"]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
"""Default seconds any request (or the first connection) may take before the call fails with
StorageError."""
ROUTE_TIMEOUT = 1.0
"""Seconds to wait for another node to take an activation message."""
CLOSE_TIMEOUT = 10.0
"""Seconds :meth:`NatsBackend.close` waits for calls in flight."""
MAX_AGE_MARGIN_S = 24 * 3600
"""The stream's own age limit is the lifetime plus this: a backstop, never the expiry path."""
NOTICE_DEDUPE_WINDOW_S = 3600
NOTICE_MAX_AGE_S = 30 * 24 * 3600
"""Notices no server of the organisation fetched within 30 days are dropped."""
CAS_ATTEMPTS = 50
MIN_SERVER_VERSION = (2, 9)
SEEN_CACHE = 100_000
"""Queue sequences whose queue and size this node remembers from reading them."""
EXPIRE_BATCH = 256
SIGNAL_VERSION = 1
WALK_FIRST = 2
"""A walk reads this many messages with direct gets before it switches to a consumer."""
WALK_BATCH = 256
"""Most messages a walk reads through one consumer request."""
CONSUMER_IDLE_S = 5.0
"""The server deletes a walk's ephemeral consumer after this long if its delete was lost."""
JS_API = "$JS.API"
BATCH_EXPIRES_NS = 250_000_000
"""A batch read ends after 0.25 s at the latest (normally as soon as its messages came)."""
PURGE_MIN = 3
"""Acknowledging this many ids at once first tries one purge (:meth:`NatsBackend.
_acknowledge_prefix`) rather than a delete each."""
SIGNAL_HEADROOM = 512
"""Bytes kept free of a signal's payload for the subject and headers within max_payload."""

ERR_MAX_MSGS_PER_SUBJECT = 10077
"""JetStream API error: ``maximum messages per subject exceeded`` (discard new per subject)."""
ERR_NO_MESSAGE = 10057
"""JetStream API error from a message delete: ``no message found``."""

HDR_ACCEPTED_AT = "Sealwire-Accepted-At"
HDR_ORGANISATION = "Sealwire-Organisation"
HDR_NODE = "Sealwire-Node"
HDR_MSG_ID = "Nats-Msg-Id"
HDR_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
ERR_WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream API errors for a failed compare-and-set on the subject's last sequence."""

_ID = struct.Struct(">Q")
_NOTICE_HEAD = struct.Struct(">q32sH")  # accepted_at, digest, recipient length
_ROUTE_HEAD = struct.Struct(">HIH")  # session, payload, server lengths (0xFFFF: no server)
_SIGNAL_HEAD = struct.Struct(">BQq")  # version, stream sequence, accepted_at
_NO_SERVER = 0xFFFF
_MAX_ROUTE_MESSAGE = 1 << 20
_MAX_SEQ = 0xFFFF_FFFF_FFFF_FFFF


def _token(value: bytes) -> str:
    """A subject token / KV key for arbitrary bytes, never empty."""
    return "x" + value.hex()


def _untoken(token: str) -> bytes:
    if not token.startswith("x"):
        raise ValueError(f"not a Sealwire token: {token!r}")
    return bytes.fromhex(token[1:])


def _encode_id(seq: int) -> bytes:
    return _ID.pack(seq)


def _decode_id(delivery_id: bytes) -> int | None:
    return _ID.unpack(delivery_id)[0] if len(delivery_id) == _ID.size else None


def _first_seq_after(after: bytes | None) -> int:
    """The smallest stream sequence whose 8-byte id sorts (as bytes) after ``after``."""
    if after is None:
        return 1
    if len(after) < _ID.size:
        # ``after`` padded with zeros is the smallest 8-byte string above it.
        return max(1, int.from_bytes(after.ljust(_ID.size, b"\0"), "big"))
    # Ids equal to the first 8 bytes sort at or below ``after``.
    return int.from_bytes(after[: _ID.size], "big") + 1


def _encode_route(session: bytes, payload: bytes, server: bytes | None) -> bytes:
    server_len = _NO_SERVER if server is None else len(server)
    if len(session) >= _NO_SERVER or (server is not None and len(server) >= _NO_SERVER):
        raise StorageError("activation routing: session or server too long")
    return (
        _ROUTE_HEAD.pack(len(session), len(payload), server_len)
        + session
        + payload
        + (server or b"")
    )


def _decode_route(data: bytes) -> tuple[bytes, bytes, bytes | None]:
    """Strict inverse of :func:`_encode_route`; raises ValueError on anything else."""
    if len(data) < _ROUTE_HEAD.size or len(data) > _MAX_ROUTE_MESSAGE:
        raise ValueError("activation routing message: bad size")
    session_len, payload_len, server_len = _ROUTE_HEAD.unpack_from(data)
    body = data[_ROUTE_HEAD.size :]
    has_server = server_len != _NO_SERVER
    expected = session_len + payload_len + (server_len if has_server else 0)
    if len(body) != expected:
        raise ValueError("activation routing message: bad lengths")
    session = body[:session_len]
    payload = body[session_len : session_len + payload_len]
    server = body[session_len + payload_len :] if has_server else None
    return session, payload, server


def _encode_signal(seq: int, accepted_at: int, envelope: bytes) -> bytes:
    return _SIGNAL_HEAD.pack(SIGNAL_VERSION, seq, accepted_at) + envelope


def _decode_signal(recipient: bytes, data: bytes, max_envelope: int) -> StoredEnvelope:
    """Strict inverse of :func:`_encode_signal`; raises ValueError on anything else."""
    if len(data) < _SIGNAL_HEAD.size or len(data) - _SIGNAL_HEAD.size > max_envelope:
        raise ValueError("queue signal: bad size")
    version, seq, accepted_at = _SIGNAL_HEAD.unpack_from(data)
    if version != SIGNAL_VERSION or seq == 0:
        raise ValueError("queue signal: bad header")
    return StoredEnvelope(
        delivery_id=_encode_id(seq),
        recipient=recipient,
        envelope=bytes(data[_SIGNAL_HEAD.size :]),
        accepted_at=accepted_at,
    )


def _encode_notice(recipient: bytes, digest: bytes, accepted_at: int) -> bytes:
    return _NOTICE_HEAD.pack(accepted_at, digest, len(recipient)) + recipient


def _decode_notice(data: bytes) -> tuple[bytes, bytes, int]:
    accepted_at, digest, recipient_len = _NOTICE_HEAD.unpack_from(data)
    recipient = data[_NOTICE_HEAD.size :]
    if len(recipient) != recipient_len:
        raise ValueError("expiry notice: bad length")
    return recipient, digest, accepted_at


def _header(msg: RawStreamMsg, name: str) -> str:
    headers = msg.headers or {}
    value = headers.get(name)
    if not isinstance(value, str):
        raise StorageError(f"NATS: stored message {msg.seq} lacks header {name}")
    return value


def _is_no_message(exc: nats.js.errors.APIError) -> bool:
    return exc.err_code == ERR_NO_MESSAGE


def _api_error(error: object) -> nats.js.errors.APIError:
    """The exception nats-py would raise for a JetStream API error (``from_error`` raises)."""
    unreadable = nats.js.errors.APIError(description="unreadable JetStream error")
    if not isinstance(error, dict):
        return unreadable
    try:
        nats.js.errors.APIError.from_error(error)
    except nats.js.errors.APIError as exc:
        return exc
    except TypeError:  # fields this nats-py does not know
        return nats.js.errors.APIError(
            code=error.get("code"), err_code=error.get("err_code"), description=None
        )
    return unreadable


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


def _status(msg: Msg) -> str | None:
    """The status of a NATS status message (``"404"``, ``"503"``...), else None."""
    status = (msg.headers or {}).get("Status")
    return status if isinstance(status, str) else None


def _api_answer(msg: Msg) -> dict[str, object]:
    """A JetStream API reply as a dict; raises the APIError it carries."""
    try:
        answer = json.loads(msg.data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise nats.js.errors.APIError(description="unreadable JetStream reply")
    error = answer.get("error")
    if error is not None:
        raise _api_error(error)
    return answer


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


class NatsBackend(RelayBackend):
    """:class:`~sealwire.relay.backends.base.RelayBackend` on NATS JetStream, for a cluster of relay
    nodes. See the module docstring for the layout and the guarantees.

    Args:
        servers: NATS server URL(s).
        limits: per-address quotas and lifetime; the same on every node.
        prefix: namespaces every stream, bucket and subject (letters, digits, ``_``, ``-``).
        node: this node's name in signals (default: a random one).
        replicas: JetStream replicas for the streams and buckets (3 in a production cluster).
        timeout: seconds any request (and the first connection) may take before the call
            fails with StorageError.
    """

    signals_may_be_lost = True

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        limits: QueueLimits = QueueLimits(),  # noqa: B008 - frozen dataclass
        *,
        prefix: str = "sealwire",
        node: str | None = None,
        replicas: int = 1,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        if not prefix or not all(c.isascii() and (c.isalnum() or c in "_-") for c in prefix):
            raise ValueError(f"NatsBackend: prefix {prefix!r} must be letters, digits, _ or -")
        self.limits = limits
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        self._prefix = prefix
        self._node = node or os.urandom(8).hex()
        self._replicas = replicas
        self._timeout = timeout
        self._queue_stream = f"{prefix.upper()}_QUEUE"
        self._notice_stream = f"{prefix.upper()}_NOTICES"
        self._bucket_names = {
            name: f"{prefix}_{name}" for name in ("bytes", "orgs", "servers", "revoked")
        }

        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._listener: BackendListener | None = None
        self._ledger: _ByteLedger | None = None
        self._publisher: _Publisher | None = None
        self._kv: dict[str, KeyValue] = {}
        self._watch_tasks: list[asyncio.Task[None]] = []
        self._stop_watchers: list[Callable[[], Awaitable[None]]] = []
        self._watch_subs: dict[bytes, Subscription] = {}
        self._route_subs: dict[bytes, Subscription] = {}
        self._subs: list[Subscription] = []
        self._closing = False
        self._lost_logged = float("-inf")
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

        self._seen: collections.OrderedDict[int, tuple[str, int]] = collections.OrderedDict()
        self._orgs: dict[bytes, bytes] = {}
        self._registered_servers: set[bytes] = set()
        self._revoked: set[tuple[bytes, bytes]] = set()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, listener: BackendListener) -> None:
        self._listener = listener
        self._idle = asyncio.Event()
        self._idle.set()

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                # Its text names the subject (an address): not logged.
                self._signals_lost(exc.sub)
                return
            log.warning("NATS connection error: %r", exc)

        async def on_reconnect() -> None:
            self._signals_lost(None)

        nc = Client()
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=self._servers,
                    name=f"sealwire-relay-{self._node}",
                    connect_timeout=max(1, int(self._timeout)),
                    reconnect_time_wait=0.5,  # type: ignore[arg-type]  # float works
                    max_reconnect_attempts=-1,
                    error_cb=on_error,
                    reconnected_cb=on_reconnect,
                    # A full outbound buffer makes publish wait for the socket: bounded.
                    flush_timeout=self._timeout,
                ),
                self._timeout,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await nc.close()  # a connection attempt cut short may hold a socket
            raise StorageError(f"cannot reach NATS at {', '.join(self._servers)}: {exc!r}") from exc
        self._nc = nc
        version = self._nc.connected_server_version
        if (version.major, version.minor) < MIN_SERVER_VERSION:
            await self._shutdown()
            raise StorageError(
                f"nats-server {version} is too old: the relay needs 2.9 or newer "
                "(per-subject discard for the exact count quota)"
            )
        self._js = self._nc.jetstream(timeout=self._timeout)
        try:
            self._publisher = _Publisher(self._nc, self._timeout)
            await self._publisher.start()
            await self._create_streams()
            await self._open_buckets()
            self._subs.append(
                await self._nc.subscribe(f"{self._prefix}.sig.n", cb=self._on_notice_signal)
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            await self._shutdown()
            raise StorageError(f"NATS: cannot open the relay streams: {exc!r}") from exc

    async def _create_streams(self) -> None:
        js = self._require_js()
        nc = self._require_nc()
        queue = StreamConfig(
            name=self._queue_stream,
            subjects=[f"{self._prefix}.q.*"],
            storage=StorageType.FILE,
            num_replicas=self._replicas,
            max_age=self.limits.lifetime_ms / 1000 + MAX_AGE_MARGIN_S,
            max_msgs_per_subject=self.limits.max_count,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=True,
            max_msg_size=nc.max_payload,
            duplicate_window=120,
            allow_direct=True,
        )
        notices = StreamConfig(
            name=self._notice_stream,
            subjects=[f"{self._prefix}.n.*"],
            storage=StorageType.FILE,
            num_replicas=self._replicas,
            max_age=NOTICE_MAX_AGE_S,
            duplicate_window=NOTICE_DEDUPE_WINDOW_S,
            allow_direct=True,
        )
        for config in (queue, notices):
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                # Exists with another configuration (other limits): the limits are the same
                # on every node, so the newest start wins.
                await js.update_stream(config)

    async def _open_buckets(self) -> None:
        js = self._require_js()
        for name, bucket in self._bucket_names.items():
            self._kv[name] = await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    storage=StorageType.FILE,
                    replicas=self._replicas,
                )
            )
        self._ledger = _ByteLedger(
            self._kv["bytes"],
            self._bucket_names["bytes"],
            self._require_publisher(),
            self.limits.max_bytes,
        )
        await self._watch("bytes", self._on_bytes_entry)
        await self._watch("orgs", self._on_org_entry)
        await self._watch("servers", self._on_server_entry)
        await self._watch("revoked", self._on_revoked_entry)

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

    async def close(self) -> None:
        """Wait for calls in flight, then close the connection. Closing twice is harmless."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CLOSE_TIMEOUT)
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closing = True
        if self._ledger is not None:
            self._ledger.cancel()
        if self._publisher is not None:
            self._publisher.cancel()
        for stop in self._stop_watchers:
            with contextlib.suppress(Exception):
                await stop()
        for task in self._watch_tasks:
            task.cancel()
        self._stop_watchers.clear()
        self._watch_tasks.clear()
        nc = self._nc
        self._nc = None
        self._js = None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    async def destroy(self) -> None:
        """Delete this prefix's streams and buckets, closing this backend first if it is
        started (tests use it to clean up)."""
        await self.close()
        try:
            nc = await asyncio.wait_for(
                nats.connect(servers=self._servers, connect_timeout=2), self._timeout
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise StorageError(f"cannot reach NATS to delete {self._prefix}: {exc!r}") from exc
        try:
            js = nc.jetstream(timeout=self._timeout)
            streams = [self._queue_stream, self._notice_stream]
            streams += [f"KV_{bucket}" for bucket in self._bucket_names.values()]
            for stream in streams:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(stream)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise StorageError(f"NATS: cannot delete {self._prefix}: {exc!r}") from exc
        finally:
            await nc.close()

    # --- helpers ------------------------------------------------------------------------

    def _require_nc(self) -> Client:
        if self._nc is None:
            raise StorageError("NATS relay backend is not started or is closed")
        return self._nc

    def _require_js(self) -> JetStreamContext:
        if self._js is None:
            raise StorageError("NATS relay backend is not started or is closed")
        return self._js

    def _require_publisher(self) -> _Publisher:
        if self._publisher is None:
            raise StorageError("NATS relay backend is not started or is closed")
        return self._publisher

    def _require_ledger(self) -> _ByteLedger:
        if self._ledger is None:
            raise StorageError("NATS relay backend is not started or is closed")
        return self._ledger

    @contextlib.contextmanager
    def _operation(self, what: str) -> Iterator[None]:
        """Count a call in flight (for :meth:`close`) and turn NATS errors into
        StorageError."""
        if self._closing or self._nc is None:
            raise StorageError(f"NATS relay backend is closed ({what})")
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise StorageError(f"NATS: {what} failed: {exc!r}") from exc
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _queue_subject(self, recipient: bytes) -> str:
        return f"{self._prefix}.q.{_token(recipient)}"

    def _notice_subject(self, organisation: bytes) -> str:
        return f"{self._prefix}.n.{_token(organisation)}"

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

    def _signal(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception:
            log.exception("relay listener raised")

    def _foreign(self, msg: Msg) -> bool:
        return (msg.headers or {}).get(HDR_NODE) != self._node

    # --- queues -------------------------------------------------------------------------

    async def enqueue(
        self, recipient: bytes, envelope: bytes, *, accepted_at: int, sender_organisation: bytes
    ) -> StoredEnvelope:
        with self._operation("enqueue"):
            if len(envelope) > self.limits.max_bytes:
                raise QueueFull("envelope is larger than a queue may hold")
            ledger = self._require_ledger()
            key = _token(recipient)
            await ledger.reserve(key, len(envelope))
            subject = self._queue_subject(recipient)
            headers = {
                HDR_ACCEPTED_AT: str(accepted_at),
                HDR_ORGANISATION: _token(sender_organisation),
            }
            try:
                # Not nats-py's publish_async: in nats-py 2.16 a refused publish
                # (APIError.from_error raises) never resolves its future, so a full queue
                # would time out instead of answering QueueFull. _Publisher resolves it.
                seq = await self._require_publisher().publish(subject, envelope, headers)
            except nats.js.errors.APIError as exc:
                # The stream answered: nothing was stored, give the bytes back.
                await ledger.release(key, len(envelope))
                if exc.err_code == ERR_MAX_MSGS_PER_SUBJECT:
                    raise QueueFull("queue is at its count limit") from exc
                raise
            stored = StoredEnvelope(_encode_id(seq), recipient, envelope, accepted_at)
            self._seen_put(seq, subject, len(envelope))
            if self._listener is not None:
                # Before any await: concurrent enqueues resume in PubAck (= id) order.
                self._signal(functools.partial(self._listener.envelope_queued, recipient, stored))
            await self._publish_queued(key, stored)
        return stored

    async def _publish_queued(self, key: str, stored: StoredEnvelope) -> None:
        """Tell the nodes that watch the recipient, with the envelope itself (fire and forget:
        core NATS, no round trip). Never fails: the envelope is stored, and a node that
        misses the signal finds it with :meth:`pending`."""
        nc = self._nc
        if nc is None:
            return
        seq = _decode_id(stored.delivery_id)
        assert seq is not None
        payload = _encode_signal(seq, stored.accepted_at, stored.envelope)
        if len(payload) + SIGNAL_HEADROOM > nc.max_payload:
            payload = b""  # too large to carry: a bare signal, the node reads pending()
        try:
            await nc.publish(f"{self._prefix}.sig.q.{key}", payload, headers={HDR_NODE: self._node})
        except (nats.errors.Error, OSError) as exc:
            log.warning("NATS: queue signal not sent (%s)", type(exc).__name__)

    def _stored(self, recipient: bytes, msg: RawStreamMsg) -> StoredEnvelope:
        assert msg.seq is not None
        return StoredEnvelope(
            delivery_id=_encode_id(msg.seq),
            recipient=recipient,
            envelope=msg.data or b"",
            accepted_at=int(_header(msg, HDR_ACCEPTED_AT)),
        )

    async def pending(
        self, recipient: bytes, *, after: bytes | None, limit: int, now: int
    ) -> list[StoredEnvelope]:
        out: list[StoredEnvelope] = []
        if limit <= 0:
            return out
        cutoff = now - self.limits.lifetime_ms
        with self._operation("pending"):
            subject = self._queue_subject(recipient)
            start = _first_seq_after(after)
            if start > _MAX_SEQ:
                return out
            async with contextlib.aclosing(
                self._walk(self._queue_stream, subject, start, want=limit)
            ) as walk:
                async for msg in walk:
                    stored = self._stored(recipient, msg)
                    self._remember(msg, subject)
                    if stored.accepted_at > cutoff:
                        out.append(stored)
                        if len(out) >= limit:
                            break
        return out

    def _remember(self, msg: RawStreamMsg, subject: str) -> None:
        """Note which queue a sequence belongs to, so that acknowledging what this node read
        needs no read."""
        if msg.seq is not None:
            self._seen_put(msg.seq, subject, len(msg.data or b""))

    def _seen_put(self, seq: int, subject: str, size: int) -> None:
        """Remember a sequence's queue and size, as read from the stream or stored here (never
        from a signal: acknowledging deletes on the strength of this)."""
        self._seen[seq] = (subject, size)
        if len(self._seen) > SEEN_CACHE:
            self._seen.popitem(last=False)

    async def acknowledge(self, recipient: bytes, delivery_ids: Sequence[bytes]) -> None:
        with self._operation("acknowledge"):
            subject = self._queue_subject(recipient)
            ledger = self._require_ledger()
            seqs = sorted({seq for i in delivery_ids if (seq := _decode_id(i))})
            if len(seqs) >= PURGE_MIN and await self._acknowledge_prefix(recipient, seqs):
                return

            async def one(seq: int) -> None:
                known = self._seen.get(seq)
                if known is None:
                    known = await self._locate(self._queue_stream, seq)
                    if known is None:
                        return
                if known[0] != subject:
                    return  # another address's envelope: unknown in this queue
                deleted = await self._delete(self._queue_stream, seq)
                self._seen.pop(seq, None)
                if deleted:
                    await ledger.release(_token(recipient), known[1])

            await asyncio.gather(*(one(seq) for seq in seqs))

    async def _acknowledge_prefix(self, recipient: bytes, seqs: list[int]) -> bool:
        """Acknowledge ``seqs`` (ascending) with one purge if they are exactly the oldest
        envelopes of the queue, which is the usual case: a recipient acknowledges what it was
        given, oldest first. Returns False (nothing done) otherwise.

        The queue's first ``len(seqs)`` messages are read in one request (which also checks
        that the ids belong to this queue); if they are these ids, "purge the subject below
        the last one + 1" deletes exactly them: no message can later appear below a sequence
        that exists. Messages deleted meanwhile by someone else (another node's acknowledge
        or expire, which give back their own bytes) make the purge count short; then only
        the smallest envelopes are given back, so the byte counter errs high, never low."""
        subject = self._queue_subject(recipient)
        stream = self._queue_stream
        batch, _ = await self._batch(stream, subject, 1, len(seqs))
        if [m.seq for m in batch] != seqs:
            return False
        reply = await self._require_nc().request(
            f"{JS_API}.STREAM.PURGE.{stream}",
            json.dumps({"filter": subject, "seq": seqs[-1] + 1}).encode(),
            timeout=self._timeout,
        )
        try:
            answer = json.loads(reply.data)
            error = answer.get("error")
            purged = answer.get("purged", 0) if error is None else 0
        except (ValueError, AttributeError) as exc:
            raise StorageError("NATS: unreadable purge reply") from exc
        if error is not None:
            raise _api_error(error)
        if not isinstance(purged, int) or purged < 0:
            raise StorageError("NATS: unreadable purge reply")
        for seq in seqs:
            self._seen.pop(seq, None)
        sizes = sorted(len(m.data or b"") for m in batch)
        freed = sum(sizes[: min(purged, len(sizes))])
        if freed:
            await self._require_ledger().release(_token(recipient), freed)
        return True

    async def expire(self, now: int) -> int:
        cutoff = now - self.limits.lifetime_ms
        organisations: set[bytes] = set()
        count = 0
        with self._operation("expire"):
            wildcard = f"{self._prefix}.q.*"
            batch: list[RawStreamMsg] = []

            async def claim() -> None:
                nonlocal count
                results = await asyncio.gather(*(self._expire_one(m) for m in batch))
                batch.clear()
                for organisation in results:
                    if organisation is not None:
                        organisations.add(organisation)
                        count += 1

            async with contextlib.aclosing(
                self._walk(self._queue_stream, wildcard, 1, want=EXPIRE_BATCH)
            ) as walk:
                async for msg in walk:
                    if int(_header(msg, HDR_ACCEPTED_AT)) > cutoff:
                        break  # acceptance order: the rest are younger (module docstring)
                    batch.append(msg)
                    if len(batch) >= EXPIRE_BATCH:
                        await claim()
            if batch:
                await claim()
            nc = self._require_nc()
            for organisation in sorted(organisations):
                await nc.publish(
                    f"{self._prefix}.sig.n", organisation, headers={HDR_NODE: self._node}
                )
        if self._listener is not None:
            listener = self._listener
            for organisation in sorted(organisations):
                self._signal(functools.partial(listener.notice_queued, organisation))
        return count

    async def _expire_one(self, msg: RawStreamMsg) -> bytes | None:
        """Claim ``msg`` by deleting it; if ours, keep its notice. Returns the sender's
        organisation if this call reported it."""
        assert msg.seq is not None and msg.subject is not None
        if not await self._delete(self._queue_stream, msg.seq):
            return None  # acknowledged meanwhile, or another node's expire claimed it
        envelope = msg.data or b""
        recipient_token = msg.subject.rsplit(".", 1)[1]
        organisation = _untoken(_header(msg, HDR_ORGANISATION))
        await self._require_ledger().release(recipient_token, len(envelope))
        payload = _encode_notice(
            _untoken(recipient_token),
            hashlib.sha256(envelope).digest(),
            int(_header(msg, HDR_ACCEPTED_AT)),
        )
        headers = {HDR_MSG_ID: f"{self._prefix}-expired-{msg.seq}"}
        for attempt in range(3):
            try:
                await self._require_js().publish(
                    self._notice_subject(organisation), payload, headers=dict(headers)
                )
                break
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                if attempt == 2:
                    raise
        return organisation

    async def depth(self) -> tuple[int, int]:
        with self._operation("depth"):
            info = await self._require_js().stream_info(self._queue_stream)
            return info.state.messages, self._require_ledger().total

    # --- expiry notices -----------------------------------------------------------------

    async def notices(self, organisation: bytes, *, limit: int) -> list[ExpiryNotice]:
        out: list[ExpiryNotice] = []
        with self._operation("notices"):
            subject = self._notice_subject(organisation)
            if limit <= 0:
                return out
            async with contextlib.aclosing(
                self._walk(self._notice_stream, subject, 1, want=limit)
            ) as walk:
                async for msg in walk:
                    assert msg.seq is not None
                    try:
                        recipient, digest, accepted_at = _decode_notice(msg.data or b"")
                    except (ValueError, struct.error) as exc:
                        raise StorageError(f"NATS: corrupt expiry notice {msg.seq}") from exc
                    notice_id = _encode_id(msg.seq)
                    out.append(
                        ExpiryNotice(notice_id, organisation, recipient, digest, accepted_at)
                    )
                    if len(out) >= limit:
                        break
        return out

    async def clear_notices(self, organisation: bytes, notice_ids: Sequence[bytes]) -> None:
        with self._operation("clear_notices"):
            subject = self._notice_subject(organisation)

            async def one(notice_id: bytes) -> None:
                msg = await self._owned(self._notice_stream, subject, notice_id)
                if msg is not None and msg.seq is not None:
                    await self._delete(self._notice_stream, msg.seq)

            await asyncio.gather(*(one(i) for i in dict.fromkeys(notice_ids)))

    # --- organisations and revocations --------------------------------------------------

    async def register(self, organisation: bytes, root: bytes, server: bytes) -> None:
        with self._operation("register"):
            known = self._orgs.get(organisation)
            if known is not None and known != root:
                raise StorageError("organisation is already registered with another root key")
            key = _token(organisation)
            if known is None:
                self._orgs[organisation] = root  # before the watch can see it: one signal
                try:
                    await self._kv["orgs"].create(key, root)
                except nats.js.errors.KeyWrongLastSequenceError:
                    entry = await self._kv["orgs"].get(key)
                    if entry.value != root:
                        if self._orgs.get(organisation) == root:
                            if entry.value is not None:
                                self._orgs[organisation] = entry.value
                            else:
                                del self._orgs[organisation]
                        raise StorageError(
                            "organisation is already registered with another root key"
                        ) from None
                except BaseException:
                    if self._orgs.get(organisation) == root:
                        del self._orgs[organisation]
                    raise
            self._registered_servers.add(server)
            await self._kv["servers"].put(_token(server), key.encode())
        if self._listener is not None:
            listener = self._listener
            self._signal(lambda: listener.organisation_registered(organisation, root))

    async def organisations(self) -> dict[bytes, bytes]:
        self._require_nc()
        return dict(self._orgs)

    async def is_registered_server(self, server: bytes) -> bool:
        self._require_nc()
        return server in self._registered_servers

    async def revoke(self, organisation: bytes, addresses: Sequence[bytes]) -> None:
        with self._operation("revoke"):
            pairs = [(organisation, a) for a in dict.fromkeys(addresses)]
            added = [p for p in pairs if p not in self._revoked]
            self._revoked.update(added)  # before the watch can see them: one signal
            try:
                await asyncio.gather(
                    *(self._kv["revoked"].put(f"{_token(o)}.{_token(a)}", b"1") for o, a in pairs)
                )
            except BaseException:
                self._revoked.difference_update(added)
                raise
        if self._listener is not None:
            listener = self._listener
            self._signal(lambda: listener.addresses_revoked(organisation, list(addresses)))

    async def is_revoked(self, organisation: bytes, address: bytes) -> bool:
        self._require_nc()
        return (organisation, address) in self._revoked

    def revoked_now(self, organisation: bytes, address: bytes) -> bool:
        return (organisation, address) in self._revoked

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

    # --- signals between nodes ----------------------------------------------------------

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
