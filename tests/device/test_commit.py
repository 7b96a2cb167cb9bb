"""The device's group commit: typed steps, run together in one transaction, each answered with
its own result (sealwire/device/commit.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sealwire.device.commit import (
    GroupCommit,
    MarkSeen,
    MarkSent,
    StoreCall,
    StoreIncoming,
    StoreOutgoing,
)
from sealwire.device.store import DeviceStore, MessageRecord, MessageState
from sealwire.device.tasks import Background
from sealwire.errors import StorageError

from .test_store import make


@pytest.fixture(autouse=True)
def _session_in_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEALWIRE_SESSION_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)


def record(message_id: bytes, *, outgoing: bool = False) -> MessageRecord:
    return MessageRecord(
        seq=0,
        message_id=message_id,
        outgoing=outgoing,
        state=MessageState.QUEUED if outgoing else MessageState.RECEIVED,
        sent_at=1,
        sender="bob" if outgoing else "alice",
        recipient="alice" if outgoing else "bob",
        text="hi",
        sender_device=bytes(32),
    )


def test_steps_queued_together_share_one_commit_and_get_their_own_results(
    tmp_path: Path,
) -> None:
    store: DeviceStore = make(tmp_path / "home")
    background = Background()
    engine = GroupCommit(store, background.spawn)
    commits = 0
    real_batch = store.batch

    def counting_batch():  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1
        return real_batch()

    store.batch = counting_batch  # type: ignore[method-assign]
    first, again, sent = os.urandom(16), os.urandom(16), os.urandom(16)
    envelope = os.urandom(16)

    async def scenario() -> list[object]:
        steps = [
            StoreIncoming(record(first), (envelope, 1, 0), 2),
            StoreIncoming(record(again), (envelope, 1, 0), 2),  # the same envelope again
            StoreOutgoing(record(sent, outgoing=True), (b"sealed",), 2),
            MarkSent(sent),
            MarkSeen((os.urandom(16), 1, 0)),
            StoreCall(lambda: "any store work"),
        ]
        return await engine.write_all(steps)

    results = asyncio.run(scenario())
    assert results[0] is not None and results[0].message_id == first  # type: ignore[attr-defined]
    assert results[1:] == [None, None, None, None, "any store work"]
    assert commits == 1
    stored = {r.message_id: r for r in store.messages()}
    assert set(stored) == {first, sent}
    assert stored[sent].state is MessageState.SENT
    assert store.unsent_messages() == []


def test_a_failed_commit_fails_every_step_in_it(tmp_path: Path) -> None:
    store = make(tmp_path / "home")
    engine = GroupCommit(store, Background().spawn)

    def broken() -> None:
        raise StorageError("the disk is full")

    async def scenario() -> None:
        with pytest.raises(StorageError):
            await engine.write_all([MarkSeen((os.urandom(16), 1, 0)), StoreCall(broken)])
        assert await engine.write(StoreCall(lambda: 7)) == 7  # the next commit goes on

    asyncio.run(scenario())
