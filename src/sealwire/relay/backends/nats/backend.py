"""The NATS JetStream relay backend (:class:`NatsBackend`); the layout and the guarantees
are described in :mod:`sealwire.relay.backends.nats`."""

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
from collections.abc import Awaitable, Callable, Iterator, Sequence

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import (
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
    BackendListener,
    ExpiryNotice,
    QueueLimits,
    StoredEnvelope,
)

from ._ledger import _ByteLedger, _Publisher
from ._reads import _StreamReads
from ._signals import _NodeSignals
from ._wire import (
    _MAX_SEQ,
    CLOSE_TIMEOUT,
    ERR_MAX_MSGS_PER_SUBJECT,
    EXPIRE_BATCH,
    HDR_ACCEPTED_AT,
    HDR_MSG_ID,
    HDR_NODE,
    HDR_ORGANISATION,
    JS_API,
    MAX_AGE_MARGIN_S,
    MIN_SERVER_VERSION,
    NOTICE_DEDUPE_WINDOW_S,
    NOTICE_MAX_AGE_S,
    PURGE_MIN,
    REQUEST_TIMEOUT,
    SEEN_CACHE,
    SIGNAL_HEADROOM,
    _api_error,
    _decode_id,
    _decode_notice,
    _encode_id,
    _encode_notice,
    _encode_signal,
    _first_seq_after,
    _header,
    _token,
    _untoken,
)

__all__ = ["NatsBackend"]

log = logging.getLogger(__name__)


class NatsBackend(_NodeSignals, _StreamReads):
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
