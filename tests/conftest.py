"""Shared fixtures: deterministic randomness and a small organisation of keys."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "sealwire", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile("sealwire")


class FixedRandom:
    """A deterministic byte stream (SHA-256 in counter mode over a seed), for tests only."""

    def __init__(self, seed: bytes = b"sealwire-tests") -> None:
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = self._seed + self._counter.to_bytes(8, "big")
            self._buffer += hashlib.sha256(block).digest()
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


@pytest.fixture
def fixed_random() -> FixedRandom:
    return FixedRandom()


# --- databases ------------------------------------------------------------------------------

POSTGRES_URL = os.environ.get("SEALWIRE_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
"""The PostgreSQL database the storage tests use (``.ci/run`` starts the local server). Each
test gets a fresh schema in it (:func:`postgres_schema_url`). Without a user in the URL the
tests try the OS user, then ``postgres``."""

_postgres_base: str | None = None
_postgres_missing: str | None = None  # why not, once known: ask the server once per run


def require_postgres() -> str:
    """The URL of :data:`POSTGRES_URL` with a user that can log in. The one place that decides
    what a missing server means: the test is skipped, except under ``CI=true`` where it fails."""
    global _postgres_base, _postgres_missing
    if _postgres_base is not None:
        return _postgres_base
    import psycopg

    parts = urllib.parse.urlsplit(POSTGRES_URL)
    candidates = [POSTGRES_URL]
    if not parts.username:
        candidates.append(parts._replace(netloc="postgres@" + parts.netloc).geturl())
    errors: list[str] = []
    for url in candidates if _postgres_missing is None else []:
        try:
            with psycopg.connect(url, connect_timeout=2):
                pass
        except psycopg.Error as exc:
            if (error := " ".join(str(exc).split())) not in errors:
                errors.append(error)
            continue
        _postgres_base = url
        return url
    if _postgres_missing is None:
        shown = POSTGRES_URL
        if parts.password:
            shown = POSTGRES_URL.replace(f":{parts.password}@", ":***@", 1)
        _postgres_missing = (
            f"no PostgreSQL server at {shown} ({'; '.join(errors)}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
            "or set SEALWIRE_TEST_POSTGRES"
        )
    message = _postgres_missing
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def postgres_schema_url() -> Iterator[str]:
    """A URL of :data:`POSTGRES_URL` whose ``search_path`` is a fresh, empty schema, dropped
    (with everything in it) on exit. Skips or fails like :func:`require_postgres`."""
    import psycopg

    base = require_postgres()
    schema = "t_" + secrets.token_hex(8)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")  # a connection left open fails, not hangs
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database, once per backend: an SQLite path in a directory that does
    not exist yet, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "db" / "test.db")
    else:
        with postgres_schema_url() as url:
            yield url
