"""What a stolen backup shows (issue 4): a dump of the server's database, and every file in
the server's data directory, the relay's and the device homes, hold no message plaintext, no
activation password and no passcode -- while demonstrably holding the organisation's data
(people, device addresses and certificates), so the test cannot pass by reading nothing.

Real processes: a relay, an enterprise server on SQLite or PostgreSQL, the administrator's CLI
and devices through the CLI.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import urllib.parse
from pathlib import Path

import cbor2
import pytest

from sealwire.device import Device
from sealwire.protocol.activation import normalise_password
from sealwire.protocol.identity import Certificate
from sealwire.protocol.suite import SigningKey

from .harness import RelayProcess, ServerProcess, admin, cli

PASSCODES = {"alice": "alice passcode 4417", "bob": "bob passcode 9051"}
TEXTS = [
    ("alice", "bob", "Marker-Plaintext: the vault code is 7391-ALPHA"),
    ("bob", "alice", "Marker-Plaintext: meet at pier 39 at dawn"),
    ("alice", "bob", "Marker-Plaintext: ünïcödé secret ✓ 5521"),
]


def sqlite_dump(path: Path) -> list[tuple[str, bytes]]:
    """The raw database, WAL and shared-memory files, and an SQL dump (``iterdump``)."""
    out = [(str(p), p.read_bytes()) for p in sorted(path.parent.glob(path.name + "*"))]
    assert any(name.endswith(".db") for name, _ in out)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out.append((f"{path} (iterdump)", "\n".join(conn.iterdump()).encode()))
    finally:
        conn.close()
    return out


def postgres_dump(url: str) -> list[tuple[str, bytes]]:
    """``pg_dump`` of the test's schema (when the tool is here), and every row of every table
    of the schema read with SELECT, as text."""
    import psycopg

    parts = urllib.parse.urlsplit(url)
    options = urllib.parse.parse_qs(parts.query)["options"][0]
    schema = options.rpartition("=")[2]
    out: list[tuple[str, bytes]] = []
    if shutil.which("pg_dump"):
        dumped = subprocess.run(
            ["pg_dump", "--no-owner", "-n", schema, "--dbname", parts._replace(query="").geturl()],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert dumped.returncode == 0, dumped.stderr.decode()
        out.append(("pg_dump", dumped.stdout))
    rows: list[str] = []
    with psycopg.connect(url) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
        ]
        assert {"users", "devices", "tickets", "prekeys"} <= set(tables)
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{schema}"."{table}"'):
                rows.append(f"{table}: " + " | ".join(_show(v) for v in row))
    out.append(("SELECT *", "\n".join(rows).encode()))
    return out


def _show(value: object) -> str:
    if isinstance(value, bytes | memoryview):
        data = bytes(value)
        return data.hex() + " " + data.decode("latin-1")
    return str(value)


def files_under(*roots: Path) -> list[tuple[str, bytes]]:
    return [
        (str(p), p.read_bytes()) for root in roots for p in sorted(root.rglob("*")) if p.is_file()
    ]


def secrets_in(name: str, data: bytes, secrets: list[str]) -> list[str]:
    lowered = data.lower()
    found = []
    for secret in secrets:
        for form in (secret.encode(), secret.encode("utf-16-le"), secret.encode().hex().encode()):
            if form.lower() in lowered:
                found.append(f"{secret!r} in {name}")
    return found


def test_dumps_hold_no_plaintext_and_no_password(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = tmp_path / "sessions"  # unlocked sessions' keys: outside the homes, as advised
    sessions.mkdir()
    monkeypatch.setenv("SEALWIRE_SESSION_DIR", str(sessions))
    relay = RelayProcess(tmp_path / "relay").start()
    server = ServerProcess(tmp_path / "org", relay.url, database=database_url)
    homes = {name: tmp_path / "homes" / name for name in PASSCODES}
    secrets = [text for _, _, text in TEXTS] + list(PASSCODES.values())
    dumps: list[tuple[str, bytes]] = []
    try:
        server.start()
        for name, passcode in PASSCODES.items():
            issued = admin(server.data, "user", "add", name, "--name", f"{name.title()} Example")
            secrets += [issued["password"], normalise_password(issued["password"])]
            activated = cli(
                "device",
                "--home",
                str(homes[name]),
                "activate",
                issued["ticket"],
                "--password-stdin",
                stdin=f"{issued['password']}\n{passcode}\n",
            )
            assert activated.code == 0, activated.err
        # A second password for alice, never used: an open ticket stays in the database.
        spare = admin(server.data, "user", "ticket", "alice")
        secrets += [spare["password"], normalise_password(spare["password"])]
        for sender, recipient, text in TEXTS:
            sent = cli("device", "--home", str(homes[sender]), "send", recipient, text)
            assert sent.code == 0, sent.err
            got = cli("device", "--home", str(homes[recipient]), "inbox", "--json")
            assert got.code == 0, got.err
            assert text in [m["text"] for m in got.lines()]
        for name in PASSCODES:  # both sides fetched everything (receipts included)
            assert cli("device", "--home", str(homes[name]), "inbox").code == 0

        # The database while the server runs (SQLite: its WAL not yet checkpointed) ...
        sqlite = "://" not in database_url
        dumps += sqlite_dump(Path(database_url)) if sqlite else postgres_dump(database_url)
    finally:
        server.stop()
        relay.stop()
    # ... and once it stopped, with every file of the server, the relay and the devices.
    if sqlite:
        dumps += sqlite_dump(Path(database_url))
    dumps += files_under(server.data, relay.data, *homes.values())

    leaks = [leak for name, data in dumps for leak in secrets_in(name, data, secrets)]
    assert leaks == []
    # The search itself finds what it looks for, in each form.
    for form in (TEXTS[2][2].encode(), TEXTS[2][2].encode().hex().upper().encode()):
        assert secrets_in("probe", b"x" + form + b"y", secrets) != []

    # The dumps are real: the database dump names the people and holds each device's address
    # and certificate; the homes hold the messages (sealed: readable with the store's key).
    # Each SQL dump on its own (iterdump, pg_dump, SELECT); hex compared in lower case.
    sql = [d.lower() for n, d in dumps if n in {"pg_dump", "SELECT *"} or "iterdump" in n]
    assert len(sql) == (2 if sqlite else 1 + bool(shutil.which("pg_dump")))
    for name, home in homes.items():
        device = Device.open(home)
        try:
            info = device.info()
            chain = device.store.secret("chain")
            seed = device.store.secret("identity")
            texts = {m.text for m in device.store.messages()}
        finally:
            device.close()
        assert {text for _, _, text in TEXTS} <= texts
        assert chain is not None and seed is not None
        identity_key = SigningKey.from_seed(seed).public_key
        leaf = cbor2.loads(chain)[0][0]  # the device's certificate, as the server stored it
        assert Certificate.parse(leaf).body.identity_key == identity_key
        for database in sql:
            assert name.encode() in database and f"{name} example".encode() in database
            assert info.address.hex().encode() in database
            assert identity_key.hex().encode() in database
            assert leaf.hex().encode() in database
        files = {Path(n).name for n, _ in dumps if n.startswith(str(home))}
        assert {"device.key", "device.db"} <= files
    assert any(Path(n).name == "keys.sealed" for n, _ in dumps)
    assert any(Path(n).name == "server.log" and data for n, data in dumps)
