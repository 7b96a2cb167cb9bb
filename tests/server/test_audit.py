"""The enterprise server's audit log (``sealwire.server.audit``) on both backends: entries
round-trip and chain, the documented hash construction, every kind of tampering is named at the
entry where it happened, concurrent appenders keep one chain, secrets are refused, and an
export verifies offline."""

from __future__ import annotations

import enum
import itertools
import json
import threading
import types
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealwire.errors import StorageError
from sealwire.protocol.suite import SigningKey, verify_signature
from sealwire.server.audit import (
    GENESIS_HASH,
    MAX_ACTION,
    MAX_ACTOR,
    MAX_DETAILS_DEPTH,
    MAX_TARGET,
    AuditEntry,
    AuditLog,
    AuditVerdict,
    audit_log,
    create_tables,
    verify_exported,
)
from sealwire.storage import Database, Migration

MIGRATIONS = (Migration(1, "audit", create_tables),)
SIGNER = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(32, 64)))
T0 = 1_800_000_000_000
ACTIONS = ("user.add", "device.activate", "command.wipe", "account.role")


def _clock() -> Callable[[], int]:
    counter = itertools.count(T0, 1000)
    return lambda: next(counter)


def _open(url: str) -> Database:
    return Database.open(url, component="audit-test", migrations=MIGRATIONS)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = _open(database_url)
    yield database
    database.close()


@pytest.fixture
def log(db: Database) -> AuditLog:
    return AuditLog(db, SIGNER, clock=_clock())


def _fill(log: AuditLog, db: Database, count: int) -> None:
    """``count`` entries in one transaction (the caller's-transaction path)."""
    with db.transaction() as conn:
        for i in range(count):
            log.append(
                "alice",
                ACTIONS[i % len(ACTIONS)],
                f"user{i}",
                {"index": i, "note": "é ✓ 𝄞"},
                conn=conn,
            )


def _update(db: Database, seq: int, **values: Any) -> None:
    """Tamper through SQL, as someone with access to the database could."""
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    with db.transaction() as conn:
        done = conn.execute(
            sa.text(f"UPDATE audit_log SET {assignments} WHERE seq = :seq"), {**values, "seq": seq}
        )
        assert done.rowcount == 1


def _row(db: Database, seq: int) -> sa.Row[Any]:
    with db.transaction() as conn:
        return conn.execute(sa.select(audit_log).where(audit_log.c.seq == seq)).one()


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def _documented_hash(
    seq: int, at: int, actor: str, action: str, target: str, details: str, prev: bytes
) -> bytes:
    """The construction in the module documentation, written out independently."""
    import hashlib

    encoded = cbor2.dumps([seq, at, actor, action, target, details, prev], canonical=True)
    return hashlib.sha256(b"sealwire/v1/audit-entry\x00" + encoded).digest()


def _broken(verdict: AuditVerdict, seq: int, reason: str) -> None:
    assert verdict == AuditVerdict(ok=False, checked=seq - 1, first_broken=seq, reason=reason)


# --- appending and reading -----------------------------------------------------------------


def test_append_and_list_round_trip(log: AuditLog) -> None:
    first = log.append("alice", "user.add", "bob", {"display_name": "Bob", "groups": ("a", "b")})
    second = log.append("system", "device.activate", "bob", None)
    third = log.append("device:3f9a", "command.wipe", "", {"nested": {"ok": True, "n": None}})

    assert first.seq == 1 and first.prev_hash == GENESIS_HASH and first.at == T0
    assert first.details == {"display_name": "Bob", "groups": ["a", "b"]}
    assert second.prev_hash == first.entry_hash and third.prev_hash == second.entry_hash
    assert second.details == {} and third.target == ""
    for entry in (first, second, third):
        verify_signature(SIGNER.public_key, "audit-entry", entry.entry_hash, entry.signature)
        assert len(entry.entry_hash) == 32 and len(entry.signature) == 64

    assert log.entries() == [first, second, third]
    assert log.entries(after=1) == [second, third]
    assert log.entries(after=1, limit=1) == [second]
    assert log.entries(actor="system") == [second]
    assert log.entries(action="command.wipe") == [third]
    assert log.entries(actor="alice", action="command.wipe") == []
    assert list(log.iter_all(page=2)) == [first, second, third]
    assert log.verify_key == SIGNER.public_key
    assert first.to_json() == {
        "seq": 1,
        "at": T0,
        "actor": "alice",
        "action": "user.add",
        "target": "bob",
        "details": {"display_name": "Bob", "groups": ["a", "b"]},
        "prev_hash": "00" * 32,
        "entry_hash": first.entry_hash.hex(),
        "signature": first.signature.hex(),
    }
    with pytest.raises(ValueError, match="limit"):
        log.entries(limit=0)


def test_entry_hash_is_the_documented_construction(log: AuditLog, db: Database) -> None:
    entry = log.append("alice", "user.add", "bob", {"b": 1, "a": "ü"})
    stored = _row(db, 1)
    assert stored.details == '{"a":"ü","b":1}'  # canonical JSON text, not ASCII-escaped
    assert entry.entry_hash == _documented_hash(
        1, T0, "alice", "user.add", "bob", '{"a":"ü","b":1}', GENESIS_HASH
    )


def test_iter_all_reads_in_pages(log: AuditLog, db: Database) -> None:
    _fill(log, db, 23)
    assert [entry.seq for entry in log.iter_all(page=5)] == list(range(1, 24))
    assert [entry.seq for entry in log.iter_all(page=23)] == list(range(1, 24))


def test_entry_commits_and_rolls_back_with_the_callers_transaction(
    log: AuditLog, db: Database
) -> None:
    with pytest.raises(RuntimeError), db.transaction() as conn:
        log.append("alice", "user.add", "bob", conn=conn)
        raise RuntimeError("the administrative change failed")
    assert log.entries() == []
    with db.transaction() as conn:
        entry = log.append("alice", "user.add", "bob", conn=conn)
    assert log.entries() == [entry] and entry.seq == 1


# --- verification ----------------------------------------------------------------------------


def test_verify_accepts_an_untouched_log(log: AuditLog) -> None:
    assert log.verify() == AuditVerdict(
        ok=True, checked=0, first_broken=None, reason="the log is empty"
    )
    for i in range(50):
        log.append("alice", ACTIONS[i % len(ACTIONS)], f"user{i}", {"index": i})
    assert log.verify() == AuditVerdict(
        ok=True, checked=50, first_broken=None, reason="all 50 entries verify"
    )


HASH_MISMATCH = "entry 25: hash does not match its contents"

TAMPERING: list[tuple[str, Callable[[sa.Row[Any]], Any], str]] = [
    ("at", lambda row: row.at + 1, HASH_MISMATCH),
    ("actor", lambda row: "mallory", HASH_MISMATCH),
    ("action", lambda row: "user.remove", HASH_MISMATCH),
    ("target", lambda row: "someone-else", HASH_MISMATCH),
    ("details", lambda row: '{"index":999,"note":"é ✓ 𝄞"}', HASH_MISMATCH),
    ("details", lambda row: "{not json", HASH_MISMATCH),
    ("details", lambda row: '{"index": 24, "note": "é ✓ 𝄞"}', HASH_MISMATCH),  # same object
    ("prev_hash", lambda row: _flip(row.prev_hash), HASH_MISMATCH),
    ("entry_hash", lambda row: _flip(row.entry_hash), HASH_MISMATCH),
    ("signature", lambda row: _flip(row.signature), "entry 25: signature does not verify"),
]


@pytest.mark.parametrize(
    ("column", "tamper", "reason"),
    TAMPERING,
    ids=[f"{column}-{i}" for i, (column, _, _) in enumerate(TAMPERING)],
)
def test_tampering_with_a_column_names_the_entry(
    log: AuditLog, db: Database, column: str, tamper: Callable[[sa.Row[Any]], Any], reason: str
) -> None:
    _fill(log, db, 50)
    _update(db, 25, **{column: tamper(_row(db, 25))})
    _broken(log.verify(), 25, reason)


def test_deleted_entry_is_missing(log: AuditLog, db: Database) -> None:
    _fill(log, db, 50)
    with db.transaction() as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq = 30"))
    _broken(log.verify(), 30, "entry 30 is missing")


def test_deleted_first_entry_is_missing(log: AuditLog, db: Database) -> None:
    _fill(log, db, 5)
    with db.transaction() as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq = 1"))
    _broken(log.verify(), 1, "entry 1 is missing")


def test_swapped_entries_are_detected(log: AuditLog, db: Database) -> None:
    _fill(log, db, 50)
    with db.transaction() as conn:  # three steps: seq is the primary key
        conn.execute(sa.text("UPDATE audit_log SET seq = 0 WHERE seq = 10"))
        conn.execute(sa.text("UPDATE audit_log SET seq = 10 WHERE seq = 20"))
        conn.execute(sa.text("UPDATE audit_log SET seq = 20 WHERE seq = 0"))
    _broken(log.verify(), 10, "entry 10: hash does not match its contents")


def test_entry_inserted_in_the_middle_is_detected(log: AuditLog, db: Database) -> None:
    _fill(log, db, 50)
    row = _row(db, 20)
    with db.transaction() as conn:
        # Make room after entry 20 (two steps, so no primary key clashes on the way).
        conn.execute(sa.text("UPDATE audit_log SET seq = -seq WHERE seq > 20"))
        conn.execute(sa.text("UPDATE audit_log SET seq = 1 - seq WHERE seq < 0"))
        at = row.at + 1
        forged_hash = _documented_hash(21, at, "alice", "user.add", "eve", "{}", row.entry_hash)
        conn.execute(
            audit_log.insert().values(
                seq=21,
                at=at,
                actor="alice",
                action="user.add",
                target="eve",
                details="{}",
                prev_hash=row.entry_hash,
                entry_hash=forged_hash,
                signature=OTHER.sign("audit-entry", forged_hash),
            )
        )
    _broken(log.verify(), 21, "entry 21: signature does not verify")


def test_entry_forged_with_another_key_is_detected(log: AuditLog, db: Database) -> None:
    _fill(log, db, 10)
    forger = AuditLog(db, OTHER, clock=_clock())
    forger.append("alice", "device.activate", "eve-laptop")
    log.append("alice", "user.add", "carol")  # the chain goes on, valid again
    _broken(log.verify(), 11, "entry 11: signature does not verify")


def test_rehashing_a_tampered_entry_without_the_key_fails(log: AuditLog, db: Database) -> None:
    _fill(log, db, 50)
    row = _row(db, 25)
    rehashed = _documented_hash(
        25, row.at, "mallory", row.action, row.target, row.details, row.prev_hash
    )
    _update(db, 25, actor="mallory", entry_hash=rehashed)
    _broken(log.verify(), 25, "entry 25: signature does not verify")
    # Relinking the next entry as well only moves the failure: entry 26's hash covers it.
    _update(db, 26, prev_hash=rehashed)
    _broken(log.verify(), 25, "entry 25: signature does not verify")


def _signed_row(seq: int, prev_hash: bytes, target: str) -> dict[str, Any]:
    """An entry validly hashed and signed with the server's key (as a diverged copy of the
    database, say a restored backup, would hold) but linked to ``prev_hash``."""
    at = T0 + 5
    entry_hash = _documented_hash(seq, at, "alice", "user.add", target, "{}", prev_hash)
    return {
        "seq": seq,
        "at": at,
        "actor": "alice",
        "action": "user.add",
        "target": target,
        "details": "{}",
        "prev_hash": prev_hash,
        "entry_hash": entry_hash,
        "signature": SIGNER.sign("audit-entry", entry_hash),
    }


@pytest.mark.parametrize(
    ("seq", "reason"),
    [(3, "entry 3: does not follow entry 2"), (1, "entry 1: does not start the chain")],
)
def test_signed_entry_spliced_from_elsewhere_does_not_follow(
    log: AuditLog, db: Database, seq: int, reason: str
) -> None:
    _fill(log, db, 5)
    with db.transaction() as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq = :seq"), {"seq": seq})
        conn.execute(audit_log.insert().values(_signed_row(seq, b"\x07" * 32, "eve")))
    _broken(log.verify(), seq, reason)


def test_reading_garbled_details_is_a_storage_error(log: AuditLog, db: Database) -> None:
    _fill(log, db, 3)
    _update(db, 2, details="{not json")
    with pytest.raises(StorageError, match="audit entry 2: the stored details are not JSON"):
        log.entries()
    _update(db, 2, details="[1]")
    with pytest.raises(StorageError, match="audit entry 2: the stored details are not a JSON"):
        list(log.iter_all())
    _broken(log.verify(), 2, "entry 2: hash does not match its contents")


def test_a_different_verify_key_fails_at_the_first_entry(log: AuditLog, db: Database) -> None:
    _fill(log, db, 3)
    _broken(log.verify(verify_key=OTHER.public_key), 1, "entry 1: signature does not verify")
    _broken(log.verify(verify_key=b"short"), 1, "entry 1: signature does not verify")
    assert log.verify(verify_key=SIGNER.public_key).ok


def test_truncation_is_invisible_to_verify_but_not_to_an_export(
    log: AuditLog, db: Database
) -> None:
    """The documented limit: cutting the newest entries leaves a valid chain; only a copy kept
    elsewhere shows what was cut."""
    _fill(log, db, 10)
    kept = list(log.export_lines())
    with db.transaction() as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq > 7"))
    assert log.verify().ok and log.verify().checked == 7
    assert verify_exported(kept, SIGNER.public_key).checked == 10
    assert list(log.export_lines()) == kept[:7]


def test_concurrent_appenders_keep_one_chain(database_url: str) -> None:
    databases = [_open(database_url) for _ in range(4)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(index: int, db: Database) -> None:
        log = AuditLog(db, SIGNER, clock=_clock())
        try:
            barrier.wait()
            for i in range(50):
                log.append(f"admin{index}", "user.add", f"user{index}-{i}", {"i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(databases)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        log = AuditLog(databases[0], SIGNER, clock=_clock())
        assert log.verify() == AuditVerdict(
            ok=True, checked=200, first_broken=None, reason="all 200 entries verify"
        )
        entries = list(log.iter_all())
        assert [entry.seq for entry in entries] == list(range(1, 201))
        for index in range(4):
            mine = [e.details["i"] for e in entries if e.actor == f"admin{index}"]
            assert mine == list(range(50))  # each appender's entries in its own order
    finally:
        for db in databases:
            db.close()


# --- what append refuses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "details",
    [
        {"password": "hunter2"},
        {"new_Password": "x"},
        {"PASSCODE": "1234"},
        {"client_secret": "x"},
        {"api_token": "x"},
        {"privateKey": "x"},
        {"ｋｅｙ": "full-width look-alike"},
        {"device": {"settings": [{"Token": 1}]}},
    ],
)
def test_details_naming_a_secret_are_refused(log: AuditLog, details: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="looks like a secret"):
        log.append("alice", "user.add", "bob", details)
    assert log.entries() == []


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({"ratio": 0.5}, "float values are not allowed"),
        ({"raw": b"\x00"}, "bytes values are not allowed"),
        ({"set": {1, 2}}, "set values are not allowed"),
        ({1: "int key"}, "keys must be strings"),
        ({"big": 1 << 63}, "64-bit"),
        ({"text": "\ud800"}, "lone surrogate"),
        ({"a": [[[[[[[[[1]]]]]]]]]}, f"deeper than {MAX_DETAILS_DEPTH}"),
        ({"blob": "x" * 20_000}, "larger than"),
        (["not", "a", "mapping"], "must be a mapping"),
    ],
)
def test_details_that_are_not_plain_json_are_refused(
    log: AuditLog, details: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        log.append("alice", "user.add", "bob", details)
    assert log.entries() == []


@pytest.mark.parametrize(
    ("actor", "action", "target", "message"),
    [
        ("", "user.add", "bob", "actor must not be empty"),
        ("a" * (MAX_ACTOR + 1), "user.add", "bob", "actor is longer"),
        ("alice", "", "bob", "action must not be empty"),
        ("alice", "x" * (MAX_ACTION + 1), "bob", "action is longer"),
        ("alice", "user.add", "b" * (MAX_TARGET + 1), "target is longer"),
        ("alice\nsystem", "user.add", "bob", "actor holds non-printable"),
        ("alice", "user.add", "bob\x00", "target holds non-printable"),
        ("alice", "user.add\u202e", "bob", "action holds non-printable"),
    ],
)
def test_fields_out_of_bounds_are_refused(
    log: AuditLog, actor: str, action: str, target: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        log.append(actor, action, target)
    assert log.entries() == []


def test_mappings_and_enums_are_stored_as_plain_json(log: AuditLog, db: Database) -> None:
    class Role(enum.StrEnum):
        AUDITOR = "auditor"

    class Level(enum.IntEnum):
        HIGH = 3

    details = types.MappingProxyType({"role": Role.AUDITOR, "level": Level.HIGH, "on": (1, 2)})
    entry = log.append("alice", "account.role", "carol", details)
    assert entry.details == {"level": 3, "on": [1, 2], "role": "auditor"}
    assert _row(db, 1).details == '{"level":3,"on":[1,2],"role":"auditor"}'


def test_longest_fields_are_accepted(log: AuditLog) -> None:
    entry = log.append("a" * MAX_ACTOR, "b" * MAX_ACTION, "ç" * MAX_TARGET)
    assert log.entries() == [entry] and log.verify().ok


# --- export -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """An export of ten entries (SQLite; exports do not depend on the backend)."""
    db = _open(str(tmp_path_factory.mktemp("export") / "audit.db"))
    try:
        log = AuditLog(db, SIGNER, clock=_clock())
        _fill(log, db, 10)
        return list(log.export_lines())
    finally:
        db.close()


def test_export_round_trip(log: AuditLog, db: Database, tmp_path: Path) -> None:
    _fill(log, db, 12)
    lines = list(log.export_lines())
    assert [json.loads(line) for line in lines] == [e.to_json() for e in log.iter_all()]
    assert all(line.isascii() and "\n" not in line for line in lines)
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with path.open(encoding="utf-8") as kept:
        assert verify_exported(kept, SIGNER.public_key) == AuditVerdict(
            ok=True, checked=12, first_broken=None, reason="all 12 entries verify"
        )
    assert verify_exported([], SIGNER.public_key).ok


def _edit(line: str, **changes: Any) -> str:
    obj = json.loads(line)
    obj.update(changes)
    return json.dumps(obj)


def test_tampered_export_line_is_detected(exported: list[str]) -> None:
    assert verify_exported(exported, SIGNER.public_key).ok
    lines = list(exported)
    lines[4] = _edit(lines[4], actor="mallory")
    _broken(
        verify_exported(lines, SIGNER.public_key), 5, "entry 5: hash does not match its contents"
    )
    lines = list(exported)
    lines[4] = _edit(lines[4], details={"index": 4, "note": "changed"})
    _broken(
        verify_exported(lines, SIGNER.public_key), 5, "entry 5: hash does not match its contents"
    )
    _broken(verify_exported(exported, OTHER.public_key), 1, "entry 1: signature does not verify")


def test_dropped_duplicated_and_reordered_export_lines_are_detected(exported: list[str]) -> None:
    key = SIGNER.public_key
    _broken(verify_exported(exported[:3] + exported[4:], key), 4, "entry 4 is missing")
    _broken(
        verify_exported(exported[:4] + exported[3:], key),
        5,
        "line 5: entry 4 is out of order (expected entry 5)",
    )
    swapped = [*exported[:2], exported[3], exported[2], *exported[4:]]
    _broken(verify_exported(swapped, key), 3, "entry 3 is missing")
    # Blank lines (a trailing newline, a split on "\n") are not entries.
    assert verify_exported(["", *exported, "   ", ""], key).checked == 10


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        ("not json at all", "line 3: not valid JSON (Expecting value)"),
        ("[1, 2, 3]", "line 3: not a JSON object"),
        ('{"seq": 3}', "line 3: not an audit entry (missing action, actor, at, details"),
        ("DUPLICATE", "line 3: not valid JSON (duplicate field 'actor')"),
        ("EXTRA", "line 3: not an audit entry (unknown extra)"),
        ("SEQ-STRING", "line 3: seq is not an integer"),
        ("SEQ-BOOL", "line 3: seq is not an integer"),
        ("DETAILS-LIST", "line 3: details is not a JSON object"),
        ("UPPER-HEX", "line 3: entry_hash is not lower-case hex"),
        ("ODD-HEX", "line 3: signature is not lower-case hex"),
        ("[" * 100_000, "line 3: not valid JSON"),
    ],
)
def test_malformed_export_line_is_named(exported: list[str], garbage: str, reason: str) -> None:
    line = exported[2]
    made = {
        "DUPLICATE": line[:-1] + ',"actor":"mallory"}',
        "EXTRA": _edit(line, extra=1),
        "SEQ-STRING": _edit(line, seq="3"),
        "SEQ-BOOL": _edit(line, seq=True),
        "DETAILS-LIST": _edit(line, details=[]),
        "UPPER-HEX": _edit(line, entry_hash=json.loads(line)["entry_hash"].upper()),
        "ODD-HEX": _edit(line, signature=json.loads(line)["signature"] + "0"),
    }
    lines = [*exported[:2], made.get(garbage, garbage), *exported[3:]]
    verdict = verify_exported(lines, SIGNER.public_key)
    assert (verdict.ok, verdict.checked, verdict.first_broken) == (False, 2, 3)
    assert verdict.reason.startswith(reason)


def test_export_marks_an_unreadable_entry_and_goes_on(log: AuditLog, db: Database) -> None:
    _fill(log, db, 5)
    _update(db, 3, details="{not json")
    _update(db, 4, details="[1]")
    lines = list(log.export_lines())
    assert all(line.isascii() and "\n" not in line for line in lines)
    objects = [json.loads(line) for line in lines]
    assert [o["seq"] for o in objects] == [1, 2, 3, 4, 5]
    assert objects[2] == {"seq": 3, "error": "the stored details are not JSON"}
    assert objects[3] == {"seq": 4, "error": "the stored details are not a JSON object"}
    assert objects[4] == log.entries(after=4)[0].to_json()
    _broken(
        verify_exported(lines, SIGNER.public_key),
        3,
        "line 3: entry 3 could not be read when exported (the stored details are not JSON)",
    )
    # The line as a reader of the file meets it: out of place, it is named as such.
    _broken(verify_exported([lines[0], lines[2]], SIGNER.public_key), 2, "entry 2 is missing")


def test_export_cut_short_by_the_database_ends_with_a_marker(
    log: AuditLog, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sealwire.server import audit

    _fill(log, db, 3)
    monkeypatch.setattr(audit, "_PAGE", 2)
    real = db.transaction
    calls = itertools.count()

    def failing() -> Any:
        if next(calls) == 1:
            raise StorageError("the database at test failed")
        return real()

    monkeypatch.setattr(db, "transaction", failing)
    lines = list(log.export_lines())
    assert [json.loads(line) for line in lines[:2]] == [e.to_json() for e in log.entries()[:2]]
    assert json.loads(lines[2]) == {"error": "the server could not read the log after entry 2"}
    assert len(lines) == 3
    _broken(
        verify_exported(lines, SIGNER.public_key),
        3,
        "line 3: the export was cut short (the server could not read the log after entry 2)",
    )


# --- property --------------------------------------------------------------------------------

_SECRET_WORDS = ("password", "passcode", "secret", "token", "key")


def _harmless(key: str) -> bool:
    folded = unicodedata.normalize("NFKC", key).casefold()
    return not any(word in folded for word in _SECRET_WORDS)


_keys = st.text(max_size=10).filter(_harmless)
_scalars: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) | st.text(max_size=16)
)


def _nested(levels: int) -> st.SearchStrategy[Any]:
    inner: st.SearchStrategy[Any] = _scalars
    for _ in range(levels):
        inner = _scalars | st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3)
    return inner


_details = st.dictionaries(_keys, _nested(3), max_size=4)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(details=_details, target=st.text(max_size=20).filter(str.isprintable))
def test_any_plain_json_details_round_trip_and_verify(
    log: AuditLog, details: dict[str, Any], target: str
) -> None:
    entry = log.append("alice", "policy.edit", target, details)
    assert entry.details == details and entry.target == target
    assert log.entries(after=entry.seq - 1) == [entry]
    verdict = log.verify()
    assert verdict.ok and verdict.checked == entry.seq
    assert verify_exported(log.export_lines(), SIGNER.public_key) == verdict


def test_entries_are_frozen() -> None:
    entry = AuditEntry(1, T0, "a", "b", "c", {}, GENESIS_HASH, bytes(32), bytes(64))
    with pytest.raises(AttributeError):
        entry.seq = 2  # type: ignore[misc]
