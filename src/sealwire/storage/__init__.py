"""Databases of the enterprise server and the device: SQLAlchemy Core with versioned
migrations, SQLite by default and PostgreSQL for several server processes (DESIGN §11).

See :mod:`sealwire.storage.database` for the rules a table definition follows so that it works
on both backends.
"""

from __future__ import annotations

from sealwire.storage.database import Database, Migration

__all__ = ["Database", "Migration"]
