"""The device's encrypted store: passcode, lock and unlock, what its files hold."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sealwire.device.store import DeviceStore, MessageRecord, MessageState
from sealwire.errors import (
    ConfigError,
    DeviceLocked,
    DeviceWiped,
    StorageError,
    WrongPasscode,
)
from sealwire.protocol.suite import Argon2Params

# Small Argon2id parameters: these tests are about the store, not the KDF's cost.
FAST = Argon2Params(salt=bytes(16), memory_kib=64, iterations=1, lanes=1)
TEXT = "the quarterly numbers are attached"


@pytest.fixture(autouse=True)
def _session_in_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEALWIRE_SESSION_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)


REMOTE = b"R" * 32
"""The server's remote secret for these stores."""


def make(home: Path, passcode: str = "123456-abc", **kwargs: object) -> DeviceStore:
    return DeviceStore.create(home, passcode, REMOTE, params=FAST, **kwargs)  # type: ignore[arg-type]


def unlock(store: DeviceStore, passcode: str, secret: bytes = REMOTE) -> None:
    store.unlock_boot(passcode)
    store.unlock_data(secret)


def add(store: DeviceStore, text: str = TEXT, message_id: bytes | None = None) -> bool:
    """Store one incoming message; ``True`` if it was new."""
    record = MessageRecord(
        seq=0,
        message_id=message_id or os.urandom(16),
        outgoing=False,
        state=MessageState.RECEIVED,
        sent_at=1,
        sender="alice",
        recipient="bob",
        text=text,
        sender_device=bytes(32),
    )
    [new] = store.add_incoming([(record, (os.urandom(16), 1, 0), 2)])
    return new


def test_a_message_round_trips_and_is_stored_once(tmp_path: Path) -> None:
    store = make(tmp_path / "home")
    message_id = os.urandom(16)
    assert add(store, message_id=message_id)
    assert not add(store, message_id=message_id)
    [record] = store.messages()
    assert (record.sender, record.text, record.state) == ("alice", TEXT, MessageState.RECEIVED)
    assert TEXT not in repr(record)


def test_lock_then_unlock_with_the_passcode(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = make(home)
    add(store)
    store.lock()
    assert store.locked
    with pytest.raises(DeviceLocked):
        store.messages()
    reopened = DeviceStore.open(home)
    assert reopened.locked
    with pytest.raises(WrongPasscode):
        unlock(reopened, "123456-abd")
    unlock(reopened, "123456-abc")
    assert [m.text for m in reopened.messages()] == [TEXT]
    # A session survives reopening (the next command), until lock.
    assert not DeviceStore.open(home).locked


def test_files_hold_no_plaintext_and_no_passcode(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = make(home, "passcode-7781")
    add(store)
    store.put_secret("identity", b"IDENTITY-SEED-MARKER-0123456789a")
    store.cache_entry("zebediah", b"directory entry of zebediah", 10**12)
    store.lock()
    blob = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    for marker in (TEXT.encode(), b"passcode-7781", b"IDENTITY-SEED", b"zebediah"):
        assert marker not in blob


def test_a_tampered_row_is_refused(tmp_path: Path) -> None:
    store = make(tmp_path / "home")
    store.put_secret("identity", b"x" * 32)
    store.put_secret("root", b"y" * 32)
    import sqlalchemy as sa

    from sealwire.device.store import secrets_table

    with store.db.transaction() as conn:  # swap two rows' ciphertexts
        rows = dict(conn.execute(sa.select(secrets_table.c.name, secrets_table.c.blob)).all())
        conn.execute(
            secrets_table.update()
            .where(secrets_table.c.name == "identity")
            .values(blob=rows["root"])
        )
    with pytest.raises(StorageError):
        store.secret("identity")


def test_short_passcodes_and_second_devices_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        DeviceStore.create(tmp_path / "a", "12345", REMOTE, params=FAST)
    make(tmp_path / "b")
    with pytest.raises(ConfigError):
        make(tmp_path / "b")


def test_change_passcode(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = make(home)
    store.change_passcode("another-passcode")
    store.lock()
    with pytest.raises(WrongPasscode):
        unlock(store, "123456-abc")
    unlock(store, "another-passcode")


def test_incoming_batches_store_each_message_once(tmp_path: Path) -> None:
    store = make(tmp_path / "home")

    def record(message_id: bytes, text: str) -> MessageRecord:
        return MessageRecord(
            seq=0,
            message_id=message_id,
            outgoing=False,
            state=MessageState.RECEIVED,
            sent_at=1,
            sender="alice",
            recipient="bob",
            text=text,
            sender_device=bytes(32),
        )

    a, b = os.urandom(16), os.urandom(16)
    env = [os.urandom(16) for _ in range(4)]
    first = store.add_incoming(
        [
            (record(a, "one"), (env[0], 1, 0), 2),
            (record(b, "two"), (env[1], 1, 0), 2),
            (record(a, "one again, another envelope"), (env[2], 1, 0), 2),
            (record(os.urandom(16), "replayed envelope"), (env[1], 1, 0), 2),
        ]
    )
    assert first == [True, True, False, False]
    assert store.add_incoming([(record(b, "two"), (env[3], 1, 0), 2)]) == [False]
    assert store.add_incoming([(record(os.urandom(16), "x"), (env[0], 1, 0), 2)]) == [False]
    assert [m.text for m in store.messages()] == ["one", "two"]


# --- crypto-backed wipe (issue 5) ------------------------------------------------------------


def test_the_passcode_alone_opens_only_the_boot_secrets(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = make(home)
    add(store)
    store.put_secret("identity", b"i" * 32)
    store.lock()
    store.unlock_boot("123456-abc")
    assert store.secret("identity") == b"i" * 32  # enough to reach the server
    with pytest.raises(DeviceLocked):
        store.messages()
    with pytest.raises(StorageError, match="remote secret does not open"):
        store.unlock_data(b"W" * 32)  # the right passcode and a wrong (or deleted) secret
    assert store.locked
    store.unlock_data(REMOTE)
    assert [m.text for m in store.messages()] == [TEXT]


def test_wrong_passcodes_up_to_the_limit_erase_the_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = make(home, attempt_limit=3)
    add(store)
    store.lock()
    with pytest.raises(WrongPasscode, match="2 attempts left"):
        store.unlock_boot("wrong-one")
    store.unlock_boot("123456-abc")  # the right one starts the count again
    store.lock()
    for left in ("2 attempts", "1 attempt "):
        with pytest.raises(WrongPasscode, match=left):
            store.unlock_boot("wrong-one")
    with pytest.raises(DeviceWiped):
        store.unlock_boot("wrong-one")
    assert sorted(p.name for p in home.iterdir()) == []
    with pytest.raises(ConfigError, match="no activated device"):
        DeviceStore.open(home)


def test_the_remote_secret_is_cached_only_outside_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    store = make(home)
    store.cache_remote_secret(REMOTE, 10**13)
    assert store.cached_remote_secret() is None  # no runtime directory: no cache at all
    assert REMOTE not in b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("SEALWIRE_SESSION_DIR", str(runtime))
    now = [1_700_000_000_000]
    timed = DeviceStore.open(home, clock=lambda: now[0])
    timed.cache_remote_secret(REMOTE, now[0] + 60_000)
    assert timed.cached_remote_secret() == REMOTE
    now[0] += 60_000
    assert timed.cached_remote_secret() is None  # the grace has ended: erased
    assert list(runtime.glob("sealwire-grace-*")) == []


def test_an_idle_session_locks_itself(tmp_path: Path) -> None:
    home = tmp_path / "home"
    now = [1_700_000_000_000]
    store = make(home, clock=lambda: now[0])
    store.set_policy_limits(attempt_limit=10, auto_lock_s=60)
    now[0] += 30_000
    assert not DeviceStore.open(home, clock=lambda: now[0]).locked
    store.touch()
    now[0] += 59_000
    assert not DeviceStore.open(home, clock=lambda: now[0]).locked
    now[0] += 2_000
    assert DeviceStore.open(home, clock=lambda: now[0]).locked
    assert DeviceStore.open(home, clock=lambda: now[0]).locked  # the session is gone


def test_erase_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("SEALWIRE_SESSION_DIR", str(runtime))
    home = tmp_path / "home"
    store = make(home)
    add(store)
    store.cache_remote_secret(REMOTE, 10**13)
    store.erase()
    assert list(home.iterdir()) == [] and list(runtime.iterdir()) == []
