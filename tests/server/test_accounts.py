"""Administrator accounts (``sealwire.server.accounts``): the role table, passwords, tokens,
expiry, the last security admin, throttling, bootstrap, and the audit entries they write.

The accounts run on their own database here (the account and audit tables only), with a
clock the tests move and cheap Argon2id parameters."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sealwire.errors import AccessDenied, AuthenticationFailed, Conflict, NotFound
from sealwire.protocol.suite import Argon2Params, SigningKey, derive_passcode_key
from sealwire.server import accounts as accounts_module
from sealwire.server.accounts import (
    FREE_FAILURES,
    PERMISSIONS,
    AdminAccounts,
    AdminIdentity,
    Permission,
    Role,
    require,
)
from sealwire.server.audit import AuditLog
from sealwire.server.audit import create_tables as create_audit_tables
from sealwire.storage import Database, Migration

START_MS = 1_800_000_000_000
GOOD = "correct horse battery"


def cheap(random: Any) -> Argon2Params:
    return Argon2Params(salt=random(16), memory_kib=8, iterations=1, lanes=1)


class Clock:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


class Org:
    def __init__(self, path: Path) -> None:
        def create(conn: sa.Connection) -> None:
            accounts_module.create_tables(conn)
            create_audit_tables(conn)

        self.db = Database.open(
            str(path / "admin.db"),
            component="accounts-test",
            migrations=[Migration(1, "accounts and audit", create)],
        )
        self.clock = Clock()
        self.audit = AuditLog(self.db, SigningKey.generate(os.urandom), clock=self.clock)
        self.accounts = AdminAccounts(
            self.db, self.audit, clock=self.clock, params=cheap, token_lifetime_s=3600
        )

    def actions(self) -> list[tuple[str, str, str]]:
        return [(e.actor, e.action, e.target) for e in self.audit.entries()]

    def dump(self) -> bytes:
        """Every byte of the database file (and its WAL), as an attacker with a copy has it."""
        data = b""
        for suffix in ("", "-wal"):
            path = Path(str(self.db.url) + suffix)
            if path.exists():
                data += path.read_bytes()
        return data


@pytest.fixture
def org(tmp_path: Path) -> Iterator[Org]:
    made = Org(tmp_path)
    yield made
    made.db.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- the permission table ---------------------------------------------------------------------


def test_the_role_table_is_what_the_issue_specifies() -> None:
    everything = set(Permission)
    assert {p for p, roles in PERMISSIONS.items() if Role.SECURITY_ADMIN in roles} == everything
    admin = {p for p, roles in PERMISSIONS.items() if Role.ADMIN in roles}
    assert admin == everything - {
        Permission.ACCOUNTS_READ,
        Permission.ACCOUNTS_WRITE,
        Permission.AUDIT_READ,
        Permission.POLICIES_WRITE,
    }
    helpdesk = {p for p, roles in PERMISSIONS.items() if Role.HELPDESK in roles}
    assert helpdesk == {
        Permission.STATUS_READ,
        Permission.USERS_READ,
        Permission.GROUPS_READ,
        Permission.DEVICES_READ,
        Permission.COMMANDS_READ,
        Permission.TICKETS_ISSUE,
        Permission.COMMANDS_LOCK,
        Permission.COMMANDS_RENEW,
    }
    auditor = {p for p, roles in PERMISSIONS.items() if Role.AUDITOR in roles}
    assert auditor == {p for p in Permission if p.value.endswith(".read")}
    assert Permission.AUDIT_READ in auditor and Permission.ACCOUNTS_READ in auditor


def test_the_documented_table_matches_the_code() -> None:
    doc = accounts_module.__doc__ or ""
    rows = re.findall(r"^    ([a-z]+\.[a-z]+) +(.*)$", doc, re.MULTILINE)
    assert len(rows) == len(Permission)
    header = re.search(r"^    permission +(.*)$", doc, re.MULTILINE)
    assert header is not None
    columns = [m.start() for m in re.finditer(r"\S+", header.group(0))][1:]
    roles = header.group(1).split()
    assert roles == [r.value for r in Role]
    for name, _ in rows:
        line = next(li for li in doc.splitlines() if li.startswith(f"    {name} "))
        marked = {
            Role(role)
            for role, col in zip(roles, columns, strict=True)
            if "x" in line[col - 2 : col + len(role) + 2]
        }
        assert marked == PERMISSIONS[Permission(name)], name


def test_require_names_the_role_and_the_permission() -> None:
    require(AdminIdentity("h", Role.HELPDESK), Permission.COMMANDS_LOCK)
    with pytest.raises(AccessDenied, match=r"helpdesk role does not allow commands\.wipe"):
        require(AdminIdentity("h", Role.HELPDESK), Permission.COMMANDS_WIPE)


# --- passwords and tokens ---------------------------------------------------------------------


def test_login_authenticate_logout(org: Org) -> None:
    run(org.accounts.create("system", "root", GOOD, "security-admin"))
    token, expires_at = run(org.accounts.login("root", GOOD))
    assert expires_at == START_MS // 1000 + 3600
    assert len(token) == 43  # 32 random bytes, base64url without padding
    assert org.accounts.authenticate(token) == AdminIdentity("root", Role.SECURITY_ADMIN)
    other, _ = run(org.accounts.login("root", GOOD))
    assert other != token
    org.accounts.logout(token)
    with pytest.raises(AuthenticationFailed, match="log in again"):
        org.accounts.authenticate(token)
    assert org.accounts.authenticate(other).username == "root"  # only that token ended
    org.accounts.logout("never-issued")  # ignored
    for bad in ("", "x" * 300, token + "x"):
        with pytest.raises(AuthenticationFailed):
            org.accounts.authenticate(bad)


def test_neither_passwords_nor_tokens_are_stored(org: Org) -> None:
    run(org.accounts.create("system", "root", GOOD, "admin"))
    token, _ = run(org.accounts.login("root", GOOD))
    with pytest.raises(AuthenticationFailed):
        run(org.accounts.login("root", "the wrong password"))
    dump = org.dump()
    assert dump, "the database file was found"
    for secret in (GOOD, token, "the wrong password"):
        assert secret.encode() not in dump
    export = "\n".join(org.audit.export_lines())
    for secret in (GOOD, token, "the wrong password"):
        assert secret not in export


def test_tokens_expire(org: Org) -> None:
    run(org.accounts.create("system", "root", GOOD, "auditor"))
    token, _ = run(org.accounts.login("root", GOOD))
    org.clock.advance(3600 - 1)
    assert org.accounts.authenticate(token).role is Role.AUDITOR
    org.clock.advance(1)
    with pytest.raises(AuthenticationFailed, match="expired"):
        org.accounts.authenticate(token)


def test_wrong_password_and_unknown_name_fail_alike(
    org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(org.accounts.create("system", "root", GOOD, "admin"))
    derived: list[str] = []
    real = derive_passcode_key

    def counting(password: str, params: Argon2Params, *, purpose: str) -> bytes:
        derived.append(purpose)
        return real(password, params, purpose=purpose)

    monkeypatch.setattr(accounts_module, "derive_passcode_key", counting)
    messages = []
    for name, password in (("root", "not the password"), ("nobody", GOOD), ("root", "")):
        with pytest.raises(AuthenticationFailed) as info:
            run(org.accounts.login(name, password))
        messages.append(str(info.value))
    assert len(set(messages)) == 1 and "wrong administrator name or password" in messages[0]
    assert len(derived) == 3  # the unknown name costs the same derivation
    failed = [e for e in org.audit.entries() if e.action == "account.login-failed"]
    assert [(e.actor, e.target) for e in failed] == [
        ("system", "root"),
        ("system", "nobody"),
        ("system", "root"),
    ]
    assert all(set(e.details) == {"reason"} for e in failed)
    # Names and passwords no account can have are refused without a look-up or a crash.
    for name, password in (("ro\x00ot", GOOD), ("root", "\ud800" * 12), ("r" * 300, GOOD)):
        with pytest.raises(AuthenticationFailed, match="wrong administrator name or password"):
            run(org.accounts.login(name, password))
    with pytest.raises(AuthenticationFailed):
        run(org.accounts.login("root", "x" * 2000))


def test_failed_logins_are_throttled(org: Org) -> None:
    run(org.accounts.create("system", "root", GOOD, "admin"))
    for _ in range(FREE_FAILURES):
        with pytest.raises(AuthenticationFailed, match="wrong"):
            run(org.accounts.login("root", "guess guess guess"))
        org.clock.advance(0.1)
    # Now even the right password waits a second after the last failure.
    with pytest.raises(AuthenticationFailed, match=r"try again in 1 s"):
        run(org.accounts.login("root", GOOD))
    org.clock.advance(1)
    with pytest.raises(AuthenticationFailed, match="wrong"):
        run(org.accounts.login("root", "guess guess guess"))
    # Six failures in a row: two seconds.
    org.clock.advance(1.5)
    with pytest.raises(AuthenticationFailed, match=r"try again in 1 s"):
        run(org.accounts.login("root", GOOD))
    org.clock.advance(0.5)
    token, _ = run(org.accounts.login("root", GOOD))
    assert org.accounts.authenticate(token).username == "root"
    # A success resets the count: the next failure is not throttled.
    with pytest.raises(AuthenticationFailed, match="wrong"):
        run(org.accounts.login("root", "guess guess guess"))
    token, _ = run(org.accounts.login("root", GOOD))


# --- account changes ----------------------------------------------------------------------


def test_account_changes_are_checked_and_audited(org: Org) -> None:
    accounts = org.accounts
    run(accounts.create("system", "root", GOOD, "security-admin"))
    view = run(accounts.create("root", "helper", GOOD, "helpdesk"))
    assert (view.username, view.role, view.state) == ("helper", "helpdesk", "active")
    assert view.created_at == START_MS // 1000
    with pytest.raises(Conflict, match="exists already"):
        run(accounts.create("root", "helper", GOOD, "helpdesk"))
    with pytest.raises(ValueError, match="12 to 1024 characters"):
        run(accounts.create("root", "short", "eleven char", "admin"))
    with pytest.raises(ValueError, match="a role is one of"):
        run(accounts.create("root", "boss", GOOD, "superuser"))
    with pytest.raises(ValueError, match="not a valid user name"):
        run(accounts.create("root", "Bad Name", GOOD, "admin"))
    with pytest.raises(ValueError, match="reserved"):
        run(accounts.create("root", "system", GOOD, "admin"))
    with pytest.raises(NotFound):
        accounts.set_role("root", "ghost", "admin")

    token, _ = run(accounts.login("helper", GOOD))
    assert accounts.set_role("root", "helper", "admin").role == "admin"
    with pytest.raises(AuthenticationFailed):  # a new role: log in again
        accounts.authenticate(token)
    token, _ = run(accounts.login("helper", GOOD))
    run(accounts.set_password("root", "helper", "another good password"))
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate(token)
    with pytest.raises(AuthenticationFailed):
        run(accounts.login("helper", GOOD))
    token, _ = run(accounts.login("helper", "another good password"))
    assert accounts.disable("root", "helper").state == "disabled"
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate(token)
    with pytest.raises(AuthenticationFailed, match="wrong administrator name or password"):
        run(accounts.login("helper", "another good password"))
    assert accounts.enable("root", "helper").state == "active"
    assert [a.username for a in accounts.list()] == ["helper", "root"]

    assert [(actor, action) for actor, action, target in org.actions()] == [
        ("system", "account.create"),
        ("root", "account.create"),
        ("helper", "account.login"),
        ("root", "account.role"),
        ("helper", "account.login"),
        ("root", "account.password"),
        ("system", "account.login-failed"),
        ("helper", "account.login"),
        ("root", "account.disable"),
        ("system", "account.login-failed"),
        ("root", "account.enable"),
    ]
    role_change = next(e for e in org.audit.entries() if e.action == "account.role")
    assert role_change.details == {"from": "helpdesk", "to": "admin"}
    assert org.audit.verify().ok


def test_the_last_security_admin_stays(org: Org) -> None:
    accounts = org.accounts
    run(accounts.create("system", "root", GOOD, "security-admin"))
    with pytest.raises(Conflict, match="last active security admin"):
        accounts.set_role("root", "root", "admin")
    with pytest.raises(Conflict, match="last active security admin"):
        accounts.disable("root", "root")
    run(accounts.create("root", "second", GOOD, "security-admin"))
    accounts.disable("root", "second")  # a disabled security admin does not count
    with pytest.raises(Conflict):
        accounts.set_role("root", "root", "auditor")
    accounts.enable("root", "second")
    assert accounts.set_role("second", "root", "auditor").role == "auditor"
    with pytest.raises(Conflict):
        accounts.disable("second", "second")
    assert [e.action for e in org.audit.entries()][-1] == "account.role"


def test_bootstrap_makes_the_first_administrator_once(org: Org, tmp_path: Path) -> None:
    directory = tmp_path / "server"
    path = run(org.accounts.bootstrap(directory))
    assert path == str(directory / "initial-admin-password")
    password = Path(path).read_text().strip()
    assert len(password) >= 20
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    token, _ = run(org.accounts.login("admin", password))
    assert org.accounts.authenticate(token) == AdminIdentity("admin", Role.SECURITY_ADMIN)
    assert run(org.accounts.bootstrap(directory)) is None
    assert Path(path).read_text().strip() == password
    assert org.actions()[0] == ("system", "account.create", "admin")
    assert password not in "\n".join(org.audit.export_lines())


def test_a_role_and_a_password_changed_together_are_one_audited_change(org: Org) -> None:
    """PATCH /v1/accounts/{name} with both wrote two entries (and two transactions)."""
    accounts = org.accounts
    run(accounts.create("system", "root", GOOD, "security-admin"))
    run(accounts.create("root", "helper", GOOD, "helpdesk"))
    before = len(org.audit.entries())
    token, _ = run(accounts.login("helper", GOOD))
    view = run(accounts.change("root", "helper", role="admin", password="another good password"))
    assert view.role == "admin"
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate(token)
    run(accounts.login("helper", "another good password"))
    changes = [e for e in org.audit.entries()[before:] if e.actor == "root"]
    assert [(e.action, e.details) for e in changes] == [
        ("account.change", {"from": "helpdesk", "to": "admin", "changed": ["role", "password"]})
    ]
    # The same role again changes nothing and writes nothing.
    count = len(org.audit.entries())
    assert run(accounts.change("root", "helper", role="admin")).role == "admin"
    assert len(org.audit.entries()) == count
    assert org.audit.verify().ok
