"""Databases of the enterprise server and the device: SQLAlchemy Core with frozen, versioned
migrations, SQLite by default and PostgreSQL for several server processes (DESIGN §11).

See :mod:`sealwire.storage.database` for the rules a table definition follows so that it works
on both backends, and :mod:`sealwire.storage.migrations` for how a schema version is written.
"""

from __future__ import annotations

from sealwire.storage.database import Database
from sealwire.storage.migrations import Migration, MigrationStatus

__all__ = ["Database", "Migration", "MigrationStatus"]
