"""The storage layer on both backends (the ``database_url`` fixture): migrations, concurrent
opening, transactions, types, errors; then what only SQLite or only PostgreSQL promises."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

import sealwire.storage
from sealwire.errors import ConfigError, StorageError
from sealwire.storage import Database, Migration
from sealwire.storage import database as database_module
from tests.conftest import postgres_schema_url

metadata = sa.MetaData()
log = sa.Table(
    "log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("step", sa.String(32), nullable=False),
)
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
)
children = sa.Table(
    "children",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item", sa.Integer, sa.ForeignKey("items.id"), nullable=False),
)


class Steps:
    """Migrations that record every run, in Python and in the ``log`` table."""

    def __init__(self) -> None:
        self.runs: list[int] = []
        self._lock = threading.Lock()

    def step(self, version: int) -> Migration:
        def apply(conn: sa.Connection) -> None:
            with self._lock:
                self.runs.append(version)
            if version == 1:
                metadata.create_all(conn)
            conn.execute(log.insert().values(step=f"v{version}"))

        return Migration(version, f"step {version}", apply)

    def upto(self, n: int) -> list[Migration]:
        return [self.step(v) for v in range(1, n + 1)]


def logged(db: Database) -> list[str]:
    with db.transaction() as conn:
        return list(conn.execute(sa.select(log.c.step).order_by(log.c.id)).scalars())


def opened(url: str, migrations: Sequence[Migration], **kwargs: bool) -> Database:
    return Database.open(url, component="test", migrations=migrations, **kwargs)


def test_exported_members() -> None:
    assert set(sealwire.storage.__all__) == {"Database", "Migration", "MigrationStatus"}
    assert set(database_module.__all__) == {
        "BUSY_TIMEOUT_MS",
        "CONNECT_TIMEOUT_S",
        "SCHEMA_TABLE",
        "Database",
        "Migration",
    }


# --- migrations -----------------------------------------------------------------------------


def test_migrations_apply_in_order(database_url: str) -> None:
    steps = Steps()
    db = opened(database_url, steps.upto(3))
    try:
        assert db.schema_version == 3
        assert steps.runs == [1, 2, 3]
        assert logged(db) == ["v1", "v2", "v3"]
        with db.transaction() as conn:
            row = conn.execute(
                sa.text("SELECT component, version, updated_at FROM sealwire_schema")
            )
            (component, version, updated_at), *rest = row.all()
        assert (component, version, rest) == ("test", 3, [])
        assert updated_at > 1_700_000_000_000  # Unix milliseconds
    finally:
        db.close()


def test_dialect_and_url(database_url: str) -> None:
    db = opened(database_url, Steps().upto(1))
    db.close()
    assert db.url == database_url
    expected = "sqlite" if database_url.startswith("/") else "postgresql"
    assert db.dialect == expected


def test_reopening_applies_nothing_twice(database_url: str) -> None:
    steps = Steps()
    opened(database_url, steps.upto(2)).close()
    db = opened(database_url, steps.upto(2))
    try:
        assert db.schema_version == 2
        assert steps.runs == [1, 2]
        assert logged(db) == ["v1", "v2"]
    finally:
        db.close()


def test_a_later_migration_applies_alone(database_url: str) -> None:
    steps = Steps()
    opened(database_url, steps.upto(2)).close()
    db = opened(database_url, steps.upto(4))
    try:
        assert db.schema_version == 4
        assert steps.runs == [1, 2, 3, 4]
        assert logged(db) == ["v1", "v2", "v3", "v4"]
    finally:
        db.close()


def test_components_keep_separate_versions(database_url: str) -> None:
    steps = Steps()
    opened(database_url, steps.upto(2)).close()

    def other(conn: sa.Connection) -> None:
        conn.execute(log.insert().values(step="other"))

    db = Database.open(database_url, component="other", migrations=[Migration(1, "x", other)])
    try:
        assert db.schema_version == 1
        assert logged(db) == ["v1", "v2", "other"]
    finally:
        db.close()


def test_a_failed_migration_changes_nothing(database_url: str) -> None:
    steps = Steps()
    opened(database_url, steps.upto(1)).close()

    def broken(conn: sa.Connection) -> None:
        conn.execute(sa.text("CREATE TABLE half (id INTEGER PRIMARY KEY)"))
        conn.execute(log.insert().values(step="broken"))
        conn.execute(sa.text("SELECT * FROM no_such_table"))

    with pytest.raises(StorageError, match=r"the test database at .* failed: .*no_such_table"):
        opened(database_url, [steps.step(1), Migration(2, "broken", broken)])
    db = opened(database_url, steps.upto(2))  # the step's DDL was rolled back with it
    try:
        assert logged(db) == ["v1", "v2"]
        with db.transaction() as conn:
            conn.execute(sa.text("CREATE TABLE half (id INTEGER PRIMARY KEY)"))
    finally:
        db.close()


def test_a_newer_database_is_refused(database_url: str) -> None:
    steps = Steps()
    opened(database_url, steps.upto(3)).close()
    message = (
        "the test database is at schema version 3, newer than this Sealwire knows (2): "
        "upgrade Sealwire"
    )
    with pytest.raises(StorageError) as caught:
        opened(database_url, steps.upto(2))
    assert str(caught.value) == message
    assert steps.runs == [1, 2, 3]


@pytest.mark.parametrize(
    "versions", [[], [2], [1, 3], [1, 1], [2, 1]], ids=["empty", "2", "1,3", "1,1", "2,1"]
)
def test_a_bad_migration_list_is_refused(database_url: str, versions: list[int]) -> None:
    steps = Steps()
    with pytest.raises(ValueError, match="migration"):
        opened(database_url, [steps.step(v) for v in versions])
    assert steps.runs == []


def test_concurrent_opening_migrates_once(database_url: str) -> None:
    """Two processes starting together on a fresh database: one migrates, the other waits and
    finds the work done (PostgreSQL: the advisory lock; SQLite: BEGIN IMMEDIATE)."""
    steps = Steps()
    barrier = threading.Barrier(2)
    results: list[Database | BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(opened(database_url, steps.upto(3)))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    databases = [r for r in results if isinstance(r, Database)]
    try:
        assert len(databases) == 2, results
        assert [db.schema_version for db in databases] == [3, 3]
        assert sorted(steps.runs) == [1, 2, 3]
        assert logged(databases[0]) == ["v1", "v2", "v3"]
    finally:
        for db in databases:
            db.close()


# --- transactions and types -----------------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = opened(database_url, Steps().upto(1))
    yield database
    database.close()


def test_a_transaction_commits(db: Database) -> None:
    with db.transaction() as conn:
        conn.execute(items.insert().values(id=1, data=b"x", at=1))
    with db.transaction() as conn:
        assert conn.execute(sa.select(items.c.id)).scalars().all() == [1]


def test_a_transaction_that_raises_rolls_back(db: Database) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.transaction() as conn:
        conn.execute(items.insert().values(id=1, data=b"x", at=1))
        raise Boom
    with db.transaction() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(items)).scalar() == 0


def test_an_sql_error_is_a_storage_error(db: Database) -> None:
    secret = b"do-not-print-me"
    with db.transaction() as conn:
        conn.execute(items.insert().values(id=1, data=b"x", at=1))
    with pytest.raises(StorageError) as caught, db.transaction() as conn:
        conn.execute(items.insert().values(id=2, data=b"y", at=2))
        conn.execute(items.insert().values(id=1, data=secret, at=3))
    assert isinstance(caught.value.__cause__, sa.exc.SQLAlchemyError)
    assert str(caught.value).startswith(f"the test database at {db.redacted_url} failed: ")
    assert "do-not-print-me" not in str(caught.value)
    assert "646f2d6e6f74" not in str(caught.value)  # nor in hex
    with db.transaction() as conn:
        assert conn.execute(sa.select(items.c.id)).scalars().all() == [1]


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(StorageError), db.transaction() as conn:
        conn.execute(children.insert().values(id=1, item=42))


def test_a_closed_database_refuses_transactions(db: Database) -> None:
    db.close()
    db.close()
    with pytest.raises(StorageError, match="closed"), db.transaction():
        pass


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\x00\xff\x00", bytes(range(256)), os.urandom(64 * 1024)],
    ids=["empty", "nul", "nul-ff-nul", "all-bytes", "64KiB"],
)
def test_bytes_round_trip(db: Database, data: bytes) -> None:
    with db.transaction() as conn:
        conn.execute(items.insert().values(id=1, data=data, at=0))
    with db.transaction() as conn:
        value = conn.execute(sa.select(items.c.data)).scalar_one()
    assert type(value) is bytes
    assert value == data


@pytest.mark.parametrize("at", [2**53, 2**53 + 1, 2**63 - 1, -(2**63)])
def test_big_integers_round_trip(db: Database, at: int) -> None:
    with db.transaction() as conn:
        conn.execute(items.insert().values(id=1, data=b"", at=at))
    with db.transaction() as conn:
        assert conn.execute(sa.select(items.c.at)).scalar_one() == at


# --- URLs and configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["mysql://u@localhost/db", "http://example.com/x", "sqlite://", "sqlite:///:memory:", ""],
)
def test_an_unknown_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match=r"sqlite:///path|postgresql://"):
        opened(url, Steps().upto(1))


def test_sqlite_url_form(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.db"
    db = opened(f"sqlite:///{path}", Steps().upto(1))
    db.close()
    assert db.dialect == "sqlite"
    assert path.is_file()


def test_postgres_scheme_alias() -> None:
    with postgres_schema_url() as url:
        assert url.startswith("postgresql://")
        db = opened("postgres://" + url.removeprefix("postgresql://"), Steps().upto(1))
        db.close()
        assert db.dialect == "postgresql"
        assert db.schema_version == 1


@pytest.mark.timeout(15)
def test_unreachable_postgres_names_it_without_password() -> None:
    with pytest.raises(StorageError) as caught:
        opened("postgresql://u:secretpw@127.0.0.1:1/x", Steps().upto(1))
    message = str(caught.value)
    assert message.startswith("cannot reach the database at postgresql://u:***@127.0.0.1:1/x: ")
    assert "secretpw" not in message
    assert isinstance(caught.value.__cause__, sa.exc.SQLAlchemyError)


def test_a_password_never_reaches_repr() -> None:
    engine_url = "postgresql://u:secretpw@127.0.0.1:1/x"
    db = Database(
        sa.create_engine(sa.make_url(engine_url).set(drivername="postgresql+psycopg")),
        url=engine_url,
        component="test",
    )
    assert "secretpw" not in repr(db)
    assert "secretpw" not in db.redacted_url
    db.close()


# --- SQLite only ----------------------------------------------------------------------------


def pragma(db: Database, name: str) -> object:
    with db.transaction() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


@pytest.mark.parametrize(("durable", "synchronous"), [(True, 2), (False, 1)])
def test_sqlite_pragmas(tmp_path: Path, durable: bool, synchronous: int) -> None:
    db = opened(str(tmp_path / "test.db"), Steps().upto(1), durable=durable)
    try:
        assert pragma(db, "journal_mode") == "wal"
        assert pragma(db, "foreign_keys") == 1
        assert pragma(db, "synchronous") == synchronous
        assert pragma(db, "busy_timeout") == 10_000
    finally:
        db.close()


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "test.db"
    db = opened(str(path), Steps().upto(1))
    try:
        with db.transaction() as conn:
            conn.execute(items.insert().values(id=1, data=b"x", at=1))
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        for file in (path, path.with_name("test.db-wal")):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    finally:
        db.close()


def test_sqlite_uncreatable_file_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError, match="cannot create the database file"):
        opened(str(blocker / "test.db"), Steps().upto(1))


def test_sqlite_writers_serialise(tmp_path: Path) -> None:
    """Read-then-write transactions from several threads lose no update and never fail with
    "database is locked": BEGIN IMMEDIATE takes the write lock before the read."""
    db = opened(str(tmp_path / "test.db"), Steps().upto(1))
    with db.transaction() as conn:
        conn.execute(items.insert().values(id=1, data=b"", at=0))
    errors: list[BaseException] = []

    def increment(times: int) -> Callable[[], None]:
        def run() -> None:
            try:
                for _ in range(times):
                    with db.transaction() as conn:
                        at = conn.execute(sa.select(items.c.at)).scalar_one()
                        conn.execute(items.update().values(at=at + 1))
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=increment(25)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        with db.transaction() as conn:
            assert conn.execute(sa.select(items.c.at)).scalar_one() == 100
    finally:
        db.close()
