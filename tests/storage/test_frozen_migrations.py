"""Frozen migrations (issue 15): for the server and the device, a database built at every past
schema version and upgraded has the schema of a fresh one, on SQLite and PostgreSQL; today's
table definitions match the migrated schema; the steps never read today's tables."""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import pkgutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa

from sealwire.device import migrations as device_migrations
from sealwire.errors import StorageError
from sealwire.server import migrations as server_migrations
from sealwire.storage import Database, Migration
from sealwire.storage.migrations import add_column, create_tables, render_sql, stub
from tests.conftest import postgres_schema_url
from tests.storage.schema import Schema, describe_database, differences

COMPONENTS: dict[str, tuple[Sequence[Migration], str]] = {
    "server": (server_migrations.MIGRATIONS, "sealwire.server"),
    "device": (device_migrations.MIGRATIONS, "sealwire.device"),
}

NewUrl = Callable[[], str]


@pytest.fixture(params=["sqlite", "postgresql"])
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NewUrl]:
    """Makes URLs of empty databases on one backend, as many as a test needs."""
    counter = itertools.count()
    with contextlib.ExitStack() as stack:

        def make() -> str:
            if request.param == "sqlite":
                return str(tmp_path / f"db{next(counter)}" / "test.db")
            return stack.enter_context(postgres_schema_url())

        yield make


def built(url: str, component: str, migrations: Sequence[Migration]) -> Schema:
    db = Database.open(url, component=component, migrations=migrations)
    try:
        return describe_database(db)
    finally:
        db.close()


def todays_metadata(package: str) -> list[sa.MetaData]:
    """Every module-level ``MetaData`` of the package's modules: today's table definitions,
    wherever a module declares them."""
    found: dict[int, sa.MetaData] = {}
    for module in _modules(package):
        for value in vars(module).values():
            if isinstance(value, sa.MetaData) and value.tables:
                found[id(value)] = value
    return list(found.values())


def _modules(package: str) -> list[ModuleType]:
    root = importlib.import_module(package)
    modules = [root]
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        modules.append(importlib.import_module(info.name))
    return modules


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_past_version_upgrades_to_the_fresh_schema(component: str, new_url: NewUrl) -> None:
    migrations, _ = COMPONENTS[component]
    fresh = built(new_url(), component, migrations)
    assert fresh  # the schema has tables
    for version in range(1, len(migrations)):
        url = new_url()
        old = built(url, component, migrations[:version])
        assert differences(fresh, old), f"version {version} already has the newest schema?"
        upgraded = built(url, component, migrations)
        found = differences(fresh, upgraded)
        assert not found, f"upgraded from version {version}, not as fresh:\n" + "\n".join(found)


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_each_released_version_builds_what_the_released_code_built(
    component: str, new_url: NewUrl
) -> None:
    """``released/*.json``: the schema the code before issue 15 built at each version (each
    step then called ``create_all`` on its tables), inspected on both backends. Databases in
    the field are at one of these; the frozen steps must build exactly the same, so that the
    steps after it apply to both alike. (Released steps never change: should an SQLAlchemy
    upgrade report a type differently, regenerate the file from the frozen steps.)"""
    migrations, _ = COMPONENTS[component]
    released = json.loads((Path(__file__).parent / "released" / f"{component}.json").read_text())
    for version in range(1, len(migrations) + 1):
        url = new_url()
        dialect = "sqlite" if "://" not in url else "postgresql"
        if str(version) not in released[dialect]:
            continue  # released after issue 15: the upgrade tests cover it
        schema = json.loads(json.dumps(built(url, component, migrations[:version])))
        found = differences(released[dialect][str(version)], schema)
        assert not found, f"version {version} on {dialect}:\n" + "\n".join(found)


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_todays_tables_match_the_migrated_schema(component: str, new_url: NewUrl) -> None:
    """A table changed without a migration (or a migration without the table) fails here,
    naming the difference."""
    migrations, package = COMPONENTS[component]
    metadata = todays_metadata(package)
    assert metadata

    def create_today(conn: sa.Connection) -> None:
        for md in metadata:
            md.create_all(conn)

    migrated = built(new_url(), component, migrations)
    today = built(new_url(), "today", [Migration(1, "today's tables", create_today)])
    found = differences(today, migrated)
    assert not found, "the migrated schema differs from today's tables (a step missing?):\n" + (
        "\n".join(found)
    )


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_the_steps_never_build_todays_tables(
    component: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every table of today's definitions gets a column no step knows: the migrated schema
    must not have it (before issue 15 each step called ``metadata.create_all``)."""
    migrations, package = COMPONENTS[component]
    modules = _modules(package)
    copies: dict[int, object] = {}  # id of today's MetaData or Table -> its changed copy
    for md in todays_metadata(package):
        changed = sa.MetaData()
        copies[id(md)] = changed
        for table in md.sorted_tables:
            copy = table.to_metadata(changed)
            copy.append_column(sa.Column("added_later", sa.Integer))
            copies[id(table)] = copy
    for module in modules:
        for name, value in list(vars(module).items()):
            if id(value) in copies:
                monkeypatch.setattr(module, name, copies[id(value)])
    schema = built(str(tmp_path / "db"), component, migrations)
    assert [t for t, shape in schema.items() if "added_later" in shape["columns"]] == []


def test_the_comparison_names_each_difference(tmp_path: Path) -> None:
    def make(*extra: sa.Column[object]) -> Callable[[sa.Connection], None]:
        def apply(conn: sa.Connection) -> None:
            md = sa.MetaData()
            sa.Table("parents", md, sa.Column("id", sa.Integer, primary_key=True))
            sa.Table(
                "people",
                md,
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("name", sa.String(64), nullable=False, unique=True),
                *extra,
            )
            create_tables(conn, md)

        return apply

    base = built(str(tmp_path / "a"), "t", [Migration(1, "a", make())])
    changed = built(
        str(tmp_path / "b"),
        "t",
        [
            Migration(
                1,
                "b",
                make(
                    sa.Column("parent", sa.Integer, sa.ForeignKey("parents.id"), index=True),
                    sa.Column("note", sa.Text, nullable=True, server_default="x"),
                ),
            )
        ],
    )
    found = differences(base, changed)
    assert "table people: column note not expected" in found
    assert "table people: column parent not expected" in found
    assert any(line.startswith("table people: indexes are") for line in found)
    assert any(line.startswith("table people: foreign keys are") for line in found)
    assert differences(changed, base)[:2] == [
        "table people: column note missing",
        "table people: column parent missing",
    ]


def test_an_added_column_upgrades_like_a_fresh_database(new_url: NewUrl) -> None:
    """The ALTER-style step the frozen scheme exists for: a fresh database and one upgraded
    from version 1 have the same schema, and the data of version 1 stays."""

    def v1(conn: sa.Connection) -> None:
        md = sa.MetaData()
        sa.Table(
            "parents",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(64), nullable=False),
        )
        create_tables(conn, md)

    def v2(conn: sa.Connection) -> None:
        add_column(conn, "parents", sa.Column("note", sa.String(32), nullable=True))
        add_column(
            conn, "parents", sa.Column("rank", sa.Integer, nullable=False, server_default="7")
        )
        md = sa.MetaData()
        stub(md, "parents", sa.Column("id", sa.Integer, primary_key=True))
        sa.Table(
            "children",
            md,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("parent", sa.Integer, sa.ForeignKey("parents.id"), nullable=False),
        )
        create_tables(conn, md)

    steps = [Migration(1, "parents", v1), Migration(2, "note, rank, children", v2)]
    fresh = built(new_url(), "t", steps)
    assert set(fresh) == {"parents", "children"}
    note = fresh["parents"]["columns"]["note"]
    assert note["nullable"] is True and "32" in note["type"]
    assert "7" in str(fresh["parents"]["columns"]["rank"]["default"])

    url = new_url()
    db = Database.open(url, component="t", migrations=steps[:1])
    with db.transaction() as conn:
        conn.execute(sa.text("INSERT INTO parents (name) VALUES ('kept')"))
    db.close()
    upgraded = built(url, "t", steps)
    assert differences(fresh, upgraded) == []
    db = Database.open(url, component="t", migrations=steps)
    with db.transaction() as conn:
        assert conn.execute(sa.text("SELECT name, note, rank FROM parents")).all() == [
            ("kept", None, 7)
        ]
    db.close()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_server_steps_render_as_sql(dialect: str) -> None:
    statements = render_sql(dialect, server_migrations.MIGRATIONS)
    creates = [s.split("(")[0].split()[-1] for s in statements if s.startswith("CREATE TABLE")]
    v1 = {"settings", "users", "devices", "seen_envelopes", "prekeys", "tickets"}
    assert set(creates[:6]) == v1
    assert creates[-1] == "directory_holders"
    assert len(creates) == 6 + 10 + 1
    assert "CREATE INDEX ix_devices_user_id ON devices (user_id)" in statements
    binary = "BYTEA" if dialect == "postgresql" else "BLOB"
    assert f"address {binary} NOT NULL" in next(s for s in statements if "TABLE devices" in s)
    assert ("SERIAL" in next(s for s in statements if "TABLE users" in s)) is (
        dialect == "postgresql"
    )
    assert render_sql(dialect, server_migrations.MIGRATIONS[2:]) == statements[-2:]


# --- status ---------------------------------------------------------------------------------


def test_status_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "no" / "server.db"
    status = Database.status(str(path), component="server", migrations=server_migrations.MIGRATIONS)
    assert (status.exists, status.dialect, status.current, status.newest) == (
        False,
        "sqlite",
        0,
        3,
    )
    assert [m.version for m in status.pending] == [1, 2, 3]
    assert not path.parent.exists()


def test_status_names_the_pending_steps(new_url: NewUrl) -> None:
    migrations = server_migrations.MIGRATIONS
    url = new_url()
    status = Database.status(url, component="server", migrations=migrations)
    assert (status.current, status.newest, len(status.pending)) == (0, 3, 3)
    Database.open(url, component="server", migrations=migrations[:1]).close()
    before = built(url, "x", [Migration(1, "nothing", lambda conn: None)])
    status = Database.status(url, component="server", migrations=migrations)
    assert status.exists and not status.up_to_date
    assert (status.current, [m.version for m in status.pending]) == (1, [2, 3])
    assert built(url, "x", [Migration(1, "nothing", lambda conn: None)]) == before  # untouched
    Database.open(url, component="server", migrations=migrations).close()
    status = Database.status(url, component="server", migrations=migrations)
    assert (status.current, status.pending, status.up_to_date) == (3, (), True)
    newer = Database.status(url, component="server", migrations=migrations[:2])
    assert (newer.current, newer.newest, newer.pending) == (3, 2, ())
    with pytest.raises(StorageError, match="newer than this Sealwire knows"):
        Database.open(url, component="server", migrations=migrations[:2])
