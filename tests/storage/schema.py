"""A database's schema as plain data (SQLAlchemy's inspector), and the differences between two,
each named: what the frozen-migration tests compare."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from sealwire.storage import Database
from sealwire.storage.database import SCHEMA_TABLE

Schema = dict[str, dict[str, Any]]
"""Table name -> {"columns": {name: {...}}, "primary key": ..., "indexes": ..., ...}."""


def describe(conn: sa.Connection, *, skip: frozenset[str] = frozenset({SCHEMA_TABLE})) -> Schema:
    """Every table of the connection's default schema, with its columns (type, nullability,
    server default, autoincrement), primary key, indexes, unique constraints, foreign keys."""
    inspector = sa.inspect(conn)
    dialect = conn.dialect
    schema: Schema = {}
    for table in sorted(inspector.get_table_names()):
        if table in skip or table.startswith("sqlite_"):
            continue
        columns = {}
        for column in inspector.get_columns(table):
            columns[column["name"]] = {
                "type": column["type"].compile(dialect=dialect),
                "nullable": column["nullable"],
                "default": column.get("default"),
                "autoincrement": column.get("autoincrement"),
                "identity": column.get("identity"),
                "computed": column.get("computed"),
            }
        pk = inspector.get_pk_constraint(table)
        schema[table] = {
            "columns": columns,
            "primary key": (pk.get("name"), tuple(pk["constrained_columns"])),
            "indexes": sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                )
                for i in inspector.get_indexes(table)
            ),
            "unique constraints": sorted(
                (str(u["name"]), tuple(u["column_names"]))
                for u in inspector.get_unique_constraints(table)
            ),
            "foreign keys": sorted(
                (
                    str(f["name"]),
                    tuple(f["constrained_columns"]),
                    f["referred_table"],
                    tuple(f["referred_columns"]),
                    tuple(sorted(f.get("options", {}).items())),
                )
                for f in inspector.get_foreign_keys(table)
            ),
        }
    return schema


def describe_database(db: Database) -> Schema:
    """:func:`describe` of an open :class:`Database`."""
    with db.transaction() as conn:
        return describe(conn)


def differences(expected: Schema, actual: Schema) -> list[str]:
    """Each difference as one line naming the table, and the column or constraint."""
    found: list[str] = []
    for table in sorted(expected.keys() - actual.keys()):
        found.append(f"table {table}: missing")
    for table in sorted(actual.keys() - expected.keys()):
        found.append(f"table {table}: not expected")
    for table in sorted(expected.keys() & actual.keys()):
        want, got = expected[table], actual[table]
        for name in sorted(want["columns"].keys() - got["columns"].keys()):
            found.append(f"table {table}: column {name} missing")
        for name in sorted(got["columns"].keys() - want["columns"].keys()):
            found.append(f"table {table}: column {name} not expected")
        for name in sorted(want["columns"].keys() & got["columns"].keys()):
            for key, value in want["columns"][name].items():
                if got["columns"][name][key] != value:
                    found.append(
                        f"table {table}: column {name}: {key} is "
                        f"{got['columns'][name][key]!r}, expected {value!r}"
                    )
        for key in ("primary key", "indexes", "unique constraints", "foreign keys"):
            if want[key] != got[key]:
                found.append(f"table {table}: {key} are {got[key]!r}, expected {want[key]!r}")
    return found
