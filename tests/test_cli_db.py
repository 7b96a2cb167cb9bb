"""``sealwire server db status`` and ``sealwire server db upgrade [--dry-run]`` (issue 15)."""

from __future__ import annotations

import pathlib

import pytest

from sealwire.cli.main import EXIT_ERROR, _parser, main
from sealwire.server.migrations import MIGRATIONS
from sealwire.storage import Database


def status_of(url: str) -> tuple[int, int]:
    status = Database.status(url, component="server", migrations=MIGRATIONS)
    return status.current, len(status.pending)


def test_server_alone_still_runs_the_server(tmp_path: pathlib.Path) -> None:
    from sealwire.cli import db, server

    args = _parser().parse_args(["server", "--data", str(tmp_path), "--relay", "ws://x"])
    assert args.func is server._cmd_server
    args = _parser().parse_args(["server", "--data", "before", "db", "status"])
    assert (args.data, args.func.__qualname__) == ("before", "add_db_parser.<locals>.<lambda>")
    args = _parser().parse_args(["server", "--data", "before", "db", "status", "--data", "after"])
    assert args.data == "after"
    assert db.__all__ == ["add_db_parser"]


def test_status_dry_run_and_upgrade_of_a_new_database(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["server", "db", "status", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "version    0\nnewest     3\n" in out and "(not created yet)" in out
    assert "pending    1: people, tickets" in out and "           3: directory holders" in out

    assert main(["server", "db", "upgrade", "--dry-run", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "-- server schema 0 -> 3 on sqlite" in out and "nothing was changed" in out
    assert "CREATE TABLE users (" in out and "CREATE TABLE directory_holders (" in out
    assert out.count("CREATE TABLE") == 17 and out.count(";\n") == out.count("CREATE ")
    assert not data.exists()  # the dry run touched nothing

    assert main(["server", "db", "upgrade", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "applied 1: " in out and "server schema upgraded 0 -> 3" in out
    assert status_of(str(data / "server" / "server.db")) == (3, 0)
    assert main(["server", "--data", str(data), "db", "status"]) == 0
    assert "version    3\nnewest     3\npending    none\n" in capsys.readouterr().out
    assert main(["server", "--data", str(data), "db", "upgrade"]) == 0
    assert "version 3: nothing to do" in capsys.readouterr().out


def test_dry_run_of_a_partly_migrated_database_on_each_backend(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Database.open(database_url, component="server", migrations=MIGRATIONS[:1]).close()
    assert main(["server", "db", "status", "--database", database_url]) == 0
    out = capsys.readouterr().out
    assert "version    1\n" in out and "pending    2: device management" in out

    assert main(["server", "db", "upgrade", "--dry-run", "--database", database_url]) == 0
    out = capsys.readouterr().out
    assert "-- server schema 1 -> 3" in out and "-- step 1:" not in out
    assert "CREATE TABLE users" not in out and "CREATE TABLE device_management (" in out
    binary = "BYTEA" if "postgresql" in database_url else "BLOB"
    assert f"address {binary} NOT NULL" in out
    assert status_of(database_url) == (1, 2)  # nothing changed

    assert main(["server", "db", "upgrade", "--database", database_url]) == 0
    assert "upgraded 1 -> 3" in capsys.readouterr().out
    assert status_of(database_url) == (3, 0)


def test_a_newer_database_is_named(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = str(tmp_path / "server.db")
    Database.open(url, component="server", migrations=MIGRATIONS).close()
    later = (*MIGRATIONS, type(MIGRATIONS[0])(4, "later", lambda conn: None))
    Database.open(url, component="server", migrations=later).close()
    assert main(["server", "db", "status", "--database", url]) == 1
    assert "newer than this Sealwire: upgrade Sealwire" in capsys.readouterr().out
    assert main(["server", "db", "upgrade", "--dry-run", "--database", url]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "schema version 4, newer than this Sealwire knows (3)" in err


def test_an_unreachable_database_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://sealwire:secret@127.0.0.1:1/none"
    assert main(["server", "db", "status", "--database", url]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the database" in err and "secret" not in err
