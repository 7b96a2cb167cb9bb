"""The :class:`~sealwire.relay.backends.base.RelayBackend` contract, run against every backend in
``conftest.BACKENDS`` (see the docstring of :mod:`sealwire.relay.backends.base`).

The repository runs pytest without an asyncio plugin: each test is a plain function that runs
one coroutine with :func:`tests.relay.conftest.run`.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from sealwire.errors import QueueFull, StorageError
from sealwire.relay.backends.base import QueueLimits, RelayBackend, StoredEnvelope
from tests.relay.conftest import BackendFactory, RecordingListener, run

ALICE = b"A" * 32
BOB = b"B" * 32
CAROL = b"C" * 32
ORG_1 = b"organisation-1"
ORG_2 = b"organisation-2"
T0 = 1_700_000_000_000
LIFETIME = 60_000


async def put(
    backend: RelayBackend,
    recipient: bytes,
    envelope: bytes,
    *,
    at: int = T0,
    organisation: bytes = ORG_1,
) -> StoredEnvelope:
    return await backend.enqueue(
        recipient, envelope, accepted_at=at, sender_organisation=organisation
    )


async def everything(
    backend: RelayBackend, recipient: bytes, now: int = T0
) -> list[StoredEnvelope]:
    return await backend.pending(recipient, after=None, limit=1_000_000, now=now)


def check_id(delivery_id: bytes) -> None:
    assert isinstance(delivery_id, bytes)
    assert 1 <= len(delivery_id) <= 32


# --- queues -----------------------------------------------------------------------------------


def test_enqueue_pending_acknowledge_round_trip(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        async with backend_factory.open() as (backend, _):
            stored = await put(backend, ALICE, b"sealed-1", at=T0 + 5)
            check_id(stored.delivery_id)
            assert (stored.recipient, stored.envelope, stored.accepted_at) == (
                ALICE,
                b"sealed-1",
                T0 + 5,
            )
            assert await everything(backend, ALICE) == [stored]
            assert await everything(backend, BOB) == []
            await backend.acknowledge(ALICE, [stored.delivery_id])
            assert await everything(backend, ALICE) == []

    run(body())


def test_pending_is_in_acceptance_order_with_cursor_and_limit(
    backend_factory: BackendFactory,
) -> None:
    async def body() -> None:
        async with backend_factory.open() as (backend, _):
            stored = []
            for i in range(10):
                stored.append(await put(backend, ALICE, b"m%d" % i))
                await put(backend, BOB, b"other %d" % i)
            ids = [s.delivery_id for s in stored]
            assert ids == sorted(ids)
            assert len(set(ids)) == 10
            assert await everything(backend, ALICE) == stored

            first = await backend.pending(ALICE, after=None, limit=3, now=T0)
            assert first == stored[:3]
            second = await backend.pending(ALICE, after=first[-1].delivery_id, limit=3, now=T0)
            assert second == stored[3:6]
            rest = await backend.pending(ALICE, after=second[-1].delivery_id, limit=100, now=T0)
            assert rest == stored[6:]
            assert await backend.pending(ALICE, after=ids[-1], limit=100, now=T0) == []
            assert await backend.pending(ALICE, after=None, limit=0, now=T0) == []

            # The cursor is compared as bytes, whatever a client sends.
            assert await backend.pending(ALICE, after=b"", limit=100, now=T0) == stored
            assert await backend.pending(ALICE, after=b"\xff" * 32, limit=100, now=T0) == []
            middle = ids[4]
            assert (
                await backend.pending(ALICE, after=middle + b"\x00", limit=100, now=T0)
                == stored[5:]
            )

            # Acknowledging in the middle keeps the order of the rest.
            await backend.acknowledge(ALICE, [ids[2], ids[7]])
            left = [s for s in stored if s.delivery_id not in (ids[2], ids[7])]
            assert await everything(backend, ALICE) == left

    run(body())


def test_delivery_ids_are_stable_across_calls_and_restarts(
    backend_factory: BackendFactory,
) -> None:
    async def body() -> None:
        async with backend_factory.open() as (backend, _):
            stored = [await put(backend, ALICE, b"m%d" % i) for i in range(5)]
            assert await everything(backend, ALICE) == stored
            assert await everything(backend, ALICE) == stored
        async with backend_factory.open() as (backend, _):
            assert await everything(backend, ALICE) == stored
        async with backend_factory.open() as (backend, _):
            assert await everything(backend, ALICE) == stored

    run(body())


def test_acknowledged_envelopes_stay_gone_after_restart_and_ids_are_not_reused(
    backend_factory: BackendFactory,
) -> None:
    async def body() -> None:
        async with backend_factory.open() as (backend, _):
            stored = [await put(backend, ALICE, b"m%d" % i) for i in range(4)]
            # Acknowledge the newest too: its id must never name another envelope, or a
            # client that drops duplicates by id would drop a new message.
            await backend.acknowledge(ALICE, [stored[1].delivery_id, stored[3].delivery_id])
        async with backend_factory.open() as (backend, _):
            assert await everything(backend, ALICE) == [stored[0], stored[2]]
            newer = await put(backend, ALICE, b"after restart")
            assert newer.delivery_id > stored[3].delivery_id
            assert await everything(backend, ALICE) == [stored[0], stored[2], newer]

    run(body())


def test_acknowledge_ignores_unknown_and_foreign_ids(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        async with backend_factory.open() as (backend, _):
            mine = await put(backend, ALICE, b"for alice")
            theirs = await put(backend, BOB, b"for bob")
            await backend.acknowledge(ALICE, [])
            await backend.acknowledge(ALICE, [b"", b"\x00", b"\xff" * 8, b"nonsense" * 4])
            # Bob's id in Alice's queue is unknown there.
            await backend.acknowledge(ALICE, [theirs.delivery_id])
            assert await everything(backend, ALICE) == [mine]
            assert await everything(backend, BOB) == [theirs]
            await backend.acknowledge(ALICE, [mine.delivery_id, mine.delivery_id])
            await backend.acknowledge(ALICE, [mine.delivery_id])
            assert await everything(backend, ALICE) == []
            assert await everything(backend, BOB) == [theirs]

    run(body())


def test_count_quota_is_exact(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        async with backend_factory.open(QueueLimits(max_count=3)) as (backend, _):
            stored = [await put(backend, ALICE, b"m%d" % i) for i in range(3)]
            with pytest.raises(QueueFull):
                await put(backend, ALICE, b"one too many")
            await put(backend, BOB, b"another queue is not affected")
            await backend.acknowledge(ALICE, [stored[0].delivery_id])
            await put(backend, ALICE, b"room again")
            with pytest.raises(QueueFull):
                await put(backend, ALICE, b"full again")
            assert len(await everything(backend, ALICE)) == 3
        # The quota holds across a restart.
        async with backend_factory.open(QueueLimits(max_count=3)) as (backend, _):
            with pytest.raises(QueueFull):
                await put(backend, ALICE, b"still full")

    run(body())


def test_byte_quota_is_exact(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        async with backend_factory.open(QueueLimits(max_bytes=100)) as (backend, _):
            first = await put(backend, ALICE, b"x" * 60)
            with pytest.raises(QueueFull):
                await put(backend, ALICE, b"y" * 41)
            await put(backend, ALICE, b"y" * 40)  # exactly at the limit
            with pytest.raises(QueueFull):
                await put(backend, ALICE, b"z")
            with pytest.raises(QueueFull):
                await put(backend, BOB, b"w" * 101)  # larger than any queue may hold
            await backend.acknowledge(ALICE, [first.delivery_id])
            await put(backend, ALICE, b"v" * 60)
            assert sum(len(s.envelope) for s in await everything(backend, ALICE)) == 100

    run(body())


@pytest.mark.parametrize("quota", ["count", "bytes"])
def test_concurrent_enqueues_racing_for_the_last_slots(
    backend_factory: BackendFactory, quota: str
) -> None:
    limits = QueueLimits(max_count=50) if quota == "count" else QueueLimits(max_bytes=50 * 10)

    async def body() -> None:
        async with backend_factory.open(limits) as (backend, _):
            for i in range(40):
                await put(backend, ALICE, b"%010d" % i)
            results = await asyncio.gather(
                *(put(backend, ALICE, b"%010d" % (1000 + i)) for i in range(200)),
                return_exceptions=True,
            )
            accepted = [r for r in results if isinstance(r, StoredEnvelope)]
            refused = [r for r in results if isinstance(r, QueueFull)]
            assert len(accepted) == 10
            assert len(refused) == 190
            queued = await everything(backend, ALICE)
            assert len(queued) == 50
            assert set(accepted) <= set(queued)

    run(body())


def test_depth_counts_envelopes_and_bytes(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        async with backend_factory.open() as (backend, _):
            assert await backend.depth() == (0, 0)
            a = await put(backend, ALICE, b"x" * 10)
            await put(backend, BOB, b"y" * 5)
            assert await backend.depth() == (2, 15)
            await backend.acknowledge(ALICE, [a.delivery_id])
            assert await backend.depth() == (1, 5)
        async with backend_factory.open() as (backend, _):
            assert await backend.depth() == (1, 5)

    run(body())


def test_many_concurrent_enqueues_are_all_durable_and_distinct(
    backend_factory: BackendFactory,
) -> None:
    recipients = [bytes([i]) * 32 for i in range(10)]

    async def body() -> None:
        async def sender(task: int) -> list[StoredEnvelope]:
            out = []
            for i in range(40):
                recipient = recipients[(task + i) % len(recipients)]
                envelope = b"task %d envelope %d" % (task, i)
                out.append(await put(backend, recipient, envelope))
            return out

        async with backend_factory.open() as (backend, _):
            batches = await asyncio.gather(*(sender(task) for task in range(50)))
            stored = [s for batch in batches for s in batch]
            assert len(stored) == 2000
            assert len({(s.recipient, s.delivery_id) for s in stored}) == 2000
            assert len({s.envelope for s in stored}) == 2000
        async with backend_factory.open() as (backend, _):
            queued = []
            for recipient in recipients:
                mine = await everything(backend, recipient)
                ids = [s.delivery_id for s in mine]
                assert ids == sorted(ids)
                queued.extend(mine)
            assert sorted(queued, key=lambda s: s.envelope) == sorted(
                stored, key=lambda s: s.envelope
            )
            assert await backend.depth() == (2000, sum(len(s.envelope) for s in stored))

    run(body())


def test_enqueue_during_close_completes_or_raises(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        backend = await backend_factory.create()
        await backend.start(RecordingListener())
        tasks = [
            asyncio.ensure_future(put(backend, ALICE, b"in flight %d" % i)) for i in range(100)
        ]
        await asyncio.sleep(0)  # the tasks have submitted their envelopes
        await backend.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        done = [r for r in results if isinstance(r, StoredEnvelope)]
        for r in results:
            assert isinstance(r, StoredEnvelope | StorageError), r
        async with backend_factory.open() as (reopened, _):
            queued = await everything(reopened, ALICE)
            assert set(done) <= set(queued)

    run(body())


def test_calls_after_close_raise_storage_error(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        async with backend_factory.open() as (backend, _):
            await put(backend, ALICE, b"before")
        await backend.close()  # closing twice is harmless
        with pytest.raises(StorageError):
            await put(backend, ALICE, b"after close")
        with pytest.raises(StorageError):
            await everything(backend, ALICE)

    run(body())


# --- expiry -----------------------------------------------------------------------------------


def test_expire_removes_envelopes_and_keeps_notices(backend_factory: BackendFactory) -> None:
    limits = QueueLimits(lifetime_ms=LIFETIME)

    async def body() -> None:
        async with backend_factory.open(limits) as (backend, listener):
            old_1 = await put(backend, ALICE, b"old one", at=T0, organisation=ORG_1)
            old_2 = await put(backend, BOB, b"old two", at=T0 + 10, organisation=ORG_2)
            old_3 = await put(backend, ALICE, b"old three", at=T0 + 20, organisation=ORG_1)
            young = await put(backend, ALICE, b"young", at=T0 + 21, organisation=ORG_1)

            # pending() already hides what expired by ``now``, before expire() runs.
            assert await everything(backend, ALICE, now=T0 + LIFETIME - 1) == [
                old_1,
                old_3,
                young,
            ]
            assert await everything(backend, ALICE, now=T0 + LIFETIME + 20) == [young]

            assert await backend.expire(T0 + LIFETIME - 1) == 0
            assert listener.notices == []
            assert await backend.expire(T0 + LIFETIME + 20) == 3
            assert sorted(listener.notices) == [ORG_1, ORG_2]  # once per organisation
            assert await backend.expire(T0 + LIFETIME + 20) == 0
            assert await everything(backend, ALICE, now=0) == [young]
            assert await everything(backend, BOB, now=0) == []
            assert await backend.depth() == (1, len(b"young"))

            notices_1 = await backend.notices(ORG_1, limit=10)
            assert [(n.recipient, n.digest, n.accepted_at) for n in notices_1] == [
                (ALICE, hashlib.sha256(old_1.envelope).digest(), T0),
                (ALICE, hashlib.sha256(old_3.envelope).digest(), T0 + 20),
            ]
            assert all(n.organisation == ORG_1 for n in notices_1)
            for n in notices_1:
                check_id(n.notice_id)
            assert len({n.notice_id for n in notices_1}) == 2
            notices_2 = await backend.notices(ORG_2, limit=10)
            assert [(n.organisation, n.recipient, n.digest, n.accepted_at) for n in notices_2] == [
                (ORG_2, BOB, hashlib.sha256(old_2.envelope).digest(), T0 + 10)
            ]
            assert await backend.notices(b"nobody", limit=10) == []
        async with backend_factory.open(limits) as (backend, _):
            assert await backend.notices(ORG_1, limit=10) == notices_1

    run(body())


def test_expire_frees_quota(backend_factory: BackendFactory) -> None:
    limits = QueueLimits(max_count=2, max_bytes=10, lifetime_ms=LIFETIME)

    async def body() -> None:
        async with backend_factory.open(limits) as (backend, _):
            await put(backend, ALICE, b"12345", at=T0)
            await put(backend, ALICE, b"67890", at=T0)
            with pytest.raises(QueueFull):
                await put(backend, ALICE, b"x", at=T0 + LIFETIME)
            assert await backend.expire(T0 + LIFETIME) == 2
            await put(backend, ALICE, b"12345", at=T0 + LIFETIME)
            await put(backend, ALICE, b"67890", at=T0 + LIFETIME)

    run(body())


def test_expire_many(backend_factory: BackendFactory) -> None:
    limits = QueueLimits(lifetime_ms=LIFETIME)

    async def body() -> None:
        async with backend_factory.open(limits) as (backend, listener):
            await asyncio.gather(
                *(put(backend, ALICE, b"%d" % i, at=T0 + i % 7) for i in range(1000))
            )
            assert await backend.expire(T0 + LIFETIME + 10) == 1000
            assert listener.notices == [ORG_1]
            notices = await backend.notices(ORG_1, limit=5000)
            assert len(notices) == 1000
            assert len({n.notice_id for n in notices}) == 1000
            assert await backend.depth() == (0, 0)

    run(body())


def test_notices_order_limit_and_clear(backend_factory: BackendFactory) -> None:
    limits = QueueLimits(lifetime_ms=LIFETIME)

    async def body() -> None:
        async with backend_factory.open(limits) as (backend, _):
            for i in range(5):
                await put(backend, ALICE, b"m%d" % i, at=T0 + i, organisation=ORG_1)
            await put(backend, BOB, b"other", at=T0, organisation=ORG_2)
            await backend.expire(T0 + LIFETIME + 10)
            notices = await backend.notices(ORG_1, limit=10)
            assert [n.accepted_at for n in notices] == [T0 + i for i in range(5)]
            assert await backend.notices(ORG_1, limit=2) == notices[:2]
            assert await backend.notices(ORG_1, limit=0) == []

            # Clearing is scoped to the organisation; unknown ids are ignored.
            other = await backend.notices(ORG_2, limit=10)
            await backend.clear_notices(ORG_1, [other[0].notice_id, b"junk"])
            assert await backend.notices(ORG_2, limit=10) == other
            await backend.clear_notices(ORG_1, [notices[0].notice_id, notices[3].notice_id])
            assert await backend.notices(ORG_1, limit=10) == [
                notices[1],
                notices[2],
                notices[4],
            ]
        async with backend_factory.open(limits) as (backend, _):
            assert await backend.notices(ORG_1, limit=10) == [
                notices[1],
                notices[2],
                notices[4],
            ]
            await backend.clear_notices(ORG_1, [n.notice_id for n in notices])
            assert await backend.notices(ORG_1, limit=10) == []
            assert await backend.notices(ORG_2, limit=10) == other

    run(body())


# --- organisations and revocations -----------------------------------------------------------


def test_register_persists_and_signals(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        async with backend_factory.open() as (backend, listener):
            assert await backend.organisations() == {}
            assert not await backend.is_registered_server(ALICE)
            await backend.register(ORG_1, b"root-1", ALICE)
            assert await backend.organisations() == {ORG_1: b"root-1"}
            assert await backend.is_registered_server(ALICE)
            assert listener.registered == [(ORG_1, b"root-1")]
            # Again: harmless. A second server of the same organisation.
            await backend.register(ORG_1, b"root-1", ALICE)
            await backend.register(ORG_1, b"root-1", BOB)
            await backend.register(ORG_2, b"root-2", CAROL)
            assert await backend.organisations() == {ORG_1: b"root-1", ORG_2: b"root-2"}
            assert (ORG_2, b"root-2") in listener.registered
        async with backend_factory.open() as (backend, _):
            assert await backend.organisations() == {ORG_1: b"root-1", ORG_2: b"root-2"}
            for server in (ALICE, BOB, CAROL):
                assert await backend.is_registered_server(server)
            assert not await backend.is_registered_server(b"D" * 32)

    run(body())


def test_revoke_is_scoped_persisted_and_signalled(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        async with backend_factory.open() as (backend, listener):
            assert not await backend.is_revoked(ORG_1, ALICE)
            await backend.revoke(ORG_1, [ALICE, BOB])
            assert listener.revoked == [(ORG_1, [ALICE, BOB])]
            assert await backend.is_revoked(ORG_1, ALICE)
            assert await backend.is_revoked(ORG_1, BOB)
            assert not await backend.is_revoked(ORG_1, CAROL)
            # Another organisation's revocation does not touch ORG_1's certificates.
            assert not await backend.is_revoked(ORG_2, ALICE)
            await backend.revoke(ORG_1, [ALICE])  # again: harmless
            assert await backend.is_revoked(ORG_1, ALICE)
        async with backend_factory.open() as (backend, _):
            assert await backend.is_revoked(ORG_1, ALICE)
            assert await backend.is_revoked(ORG_1, BOB)
            assert not await backend.is_revoked(ORG_2, ALICE)
            assert not await backend.is_revoked(ORG_1, CAROL)

    run(body())


# --- signals ----------------------------------------------------------------------------------


def test_enqueue_signals_envelope_queued(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        async with backend_factory.open() as (backend, listener):
            await put(backend, ALICE, b"one")
            assert ALICE in listener.queued
            assert BOB not in listener.queued
            await asyncio.gather(*(put(backend, BOB, b"%d" % i) for i in range(20)))
            assert BOB in listener.queued
            assert set(listener.queued) == {ALICE, BOB}
            # The envelopes themselves come along, in delivery-id order, once each, so the
            # service can hand them over without reading them back.
            for_bob = [s for s in listener.stored if s.recipient == BOB]
            assert sorted(s.envelope for s in for_bob) == sorted(b"%d" % i for i in range(20))
            ids = [s.delivery_id for s in for_bob]
            assert ids == sorted(ids) and len(set(ids)) == 20
            pending = await backend.pending(BOB, after=None, limit=100, now=T0)
            assert [p.delivery_id for p in pending] == ids

    run(body())


def test_refused_enqueue_does_not_signal(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        async with backend_factory.open(QueueLimits(max_count=1)) as (backend, listener):
            await put(backend, ALICE, b"one")
            listener.queued.clear()
            with pytest.raises(QueueFull):
                await put(backend, ALICE, b"two")
            await asyncio.sleep(0.05)
            assert listener.queued == []

    run(body())


def test_enqueue_later_is_enqueue_as_a_future(backend_factory: BackendFactory) -> None:
    async def body() -> None:
        async with backend_factory.open(QueueLimits(max_count=1)) as (backend, _):
            first = backend.enqueue_later(ALICE, b"one", accepted_at=T0, sender_organisation=ORG_1)
            stored = await first
            assert stored.envelope == b"one"
            assert [p.delivery_id for p in await everything(backend, ALICE)] == [stored.delivery_id]
            second = backend.enqueue_later(ALICE, b"two", accepted_at=T0, sender_organisation=ORG_1)
            with pytest.raises(QueueFull):
                await second

    run(body())
