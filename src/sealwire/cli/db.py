"""``sealwire server db status`` and ``sealwire server db upgrade [--dry-run]``: the server
database's schema version, and its frozen migrations (:mod:`sealwire.server.migrations`).

The server upgrades its database itself when it starts; these commands let an operator see
what is pending, read the SQL before it runs (``--dry-run`` touches nothing: no file, table or
version is created), and apply it at a time of their choosing, for example right after a
backup. Several server processes may share a PostgreSQL database: an upgrade takes the same
lock as a starting server, so it runs once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_db_parser"]


def add_db_parser(
    server: argparse.ArgumentParser, load_config: Callable[[argparse.Namespace], Any]
) -> None:
    """Add ``db status`` and ``db upgrade`` under the ``sealwire server`` parser.

    Args:
        server: the ``sealwire server`` parser; ``sealwire server`` alone still runs the server.
        load_config: reads the server's settings (its ``database_url``) from the parsed
            arguments, as ``sealwire server`` does.
    """
    commands = server.add_subparsers(dest="server_command", metavar="COMMAND")
    db = commands.add_parser(
        "db",
        help="the server database's schema: status, upgrade",
        description="The server database's schema version and its migrations. The server "
        "also upgrades its database when it starts.",
    )
    ops = db.add_subparsers(dest="db_op", required=True, metavar="OP")
    status = ops.add_parser(
        "status", help="the schema version, the newest this Sealwire knows, and what is pending"
    )
    status.set_defaults(func=lambda args: _cmd_status(args, load_config))
    upgrade = ops.add_parser("upgrade", help="apply the pending migrations")
    upgrade.add_argument(
        "--dry-run",
        action="store_true",
        help="print the SQL that would run and change nothing",
    )
    upgrade.set_defaults(func=lambda args: _cmd_upgrade(args, load_config))
    for parser in (status, upgrade):
        # SUPPRESS: not given here, the value given before ``db`` (or the setting) stays.
        parser.add_argument(
            "--data", default=argparse.SUPPRESS, help="data directory (default ./sealwire-data)"
        )
        parser.add_argument(
            "--database",
            default=argparse.SUPPRESS,
            help="database URL (default: SQLite in DATA/server/server.db)",
        )


def _status(args: argparse.Namespace, load_config: Callable[[argparse.Namespace], Any]) -> Any:
    from sealwire.server.migrations import COMPONENT, MIGRATIONS
    from sealwire.storage import Database

    config = load_config(args)
    return Database.status(config.database_url, component=COMPONENT, migrations=MIGRATIONS)


def _cmd_status(args: argparse.Namespace, load_config: Callable[[argparse.Namespace], Any]) -> int:
    status = _status(args, load_config)
    where = status.database if status.exists else f"{status.database} (not created yet)"
    print(f"component  {status.component}")
    print(f"database   {where}")
    print(f"version    {status.current}")
    print(f"newest     {status.newest}")
    if status.current > status.newest:
        print("pending    none; the database is newer than this Sealwire: upgrade Sealwire")
        return 1
    if status.up_to_date:
        print("pending    none")
    for i, step in enumerate(status.pending):
        print(f"{'pending' if i == 0 else '':<10} {step.version}: {step.description}")
    return 0


def _cmd_upgrade(args: argparse.Namespace, load_config: Callable[[argparse.Namespace], Any]) -> int:
    from sealwire.errors import StorageError
    from sealwire.server.migrations import COMPONENT, MIGRATIONS
    from sealwire.storage import Database
    from sealwire.storage.migrations import render_sql

    status = _status(args, load_config)
    if status.current > status.newest:
        raise StorageError(
            f"the {status.component} database is at schema version {status.current}, newer "
            f"than this Sealwire knows ({status.newest}): upgrade Sealwire"
        )
    if status.up_to_date:
        print(f"{status.component} schema is at version {status.current}: nothing to do")
        return 0
    steps = f"{status.current} -> {status.newest}"
    if args.dry_run:
        print(f"-- {status.component} schema {steps} on {status.dialect} ({status.database})")
        print("-- dry run: nothing was changed")
        if not status.exists:
            print("-- the database file would be created first")
        print("-- each step runs in one transaction, which also records its version in")
        print("-- sealwire_schema (created first if missing)")
        for step in status.pending:
            print(f"\n-- step {step.version}: {step.description}")
            for statement in render_sql(status.dialect, [step]):
                print(f"{statement};")
        return 0
    config = load_config(args)
    Database.open(config.database_url, component=COMPONENT, migrations=MIGRATIONS).close()
    for step in status.pending:
        print(f"applied {step.version}: {step.description}")
    print(f"{status.component} schema upgraded {steps}")
    return 0
