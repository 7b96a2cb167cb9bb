"""Administrator accounts of an enterprise server: who may use the admin API (:mod:`.api`) and
what each may do.

Roles and permissions. Every admin API endpoint needs one :class:`Permission`; an account has one
:class:`Role`; :data:`PERMISSIONS` says which roles hold each permission (a test checks that this
drawing matches it; the admin API's OpenAPI description names each operation's permission)::

    permission        security-admin  admin  helpdesk  auditor
    status.read             x           x       x         x
    users.read              x           x       x         x
    users.write             x           x
    users.disable           x           x
    tickets.issue           x           x       x
    groups.read             x           x       x         x
    groups.write            x           x
    policies.read           x           x                 x
    policies.write          x
    devices.read            x           x       x         x
    commands.read           x           x       x         x
    commands.lock           x           x       x
    commands.renew          x           x       x
    commands.wipe           x           x
    accounts.read           x                             x
    accounts.write          x
    audit.read              x                             x

Passwords. An account's password is kept as Argon2id parameters (with their random salt) and the
32-byte key derived from it (RFC 9106 second recommended option, as for activation passwords);
never the password. Derivations run in a worker thread, one at a time
(:func:`sealwire._argon2.in_thread`). A login for an unknown name costs the same derivation as a
wrong password, and fails with the same message.

Tokens. A successful login returns a random 32-byte bearer token (base64url); the database keeps
only its SHA-256, so a dump of it does not let anyone act as an administrator. A token expires
after ``token_lifetime_s`` (12 hours by default), on logout, and when its account is disabled,
changes role or gets a new password.

Throttling. After :data:`FREE_FAILURES` failed logins in a row, an account accepts one attempt per
``failures - FREE_FAILURES + 1`` seconds (at most :data:`MAX_LOGIN_DELAY_S`); attempts in the
waiting time are refused without checking the password. A correct password resets the count.
(This tells whoever tries that the name exists once it is throttled; names of administrators are
not secret.)

Audit. Every change writes an entry in the hash-chained audit log, in the same transaction:
``account.create``, ``account.role``, ``account.password``, ``account.disable``,
``account.login``, ``account.login-failed``, ``account.logout``. Passwords and tokens never appear
in an entry or a log line.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import sqlalchemy as sa

from sealwire._argon2 import in_thread
from sealwire.errors import AccessDenied, AuthenticationFailed, Conflict, NotFound
from sealwire.protocol.directory import check_username
from sealwire.protocol.suite import (
    Argon2Params,
    RandomSource,
    constant_time_equal,
    derive_passcode_key,
)
from sealwire.storage import Database

from .audit import AuditLog

__all__ = [
    "DEFAULT_TOKEN_LIFETIME_S",
    "FREE_FAILURES",
    "INITIAL_PASSWORD_FILE",
    "MAX_LOGIN_DELAY_S",
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "PERMISSIONS",
    "AccountView",
    "AdminAccounts",
    "AdminIdentity",
    "Permission",
    "Role",
    "create_tables",
    "metadata",
    "require",
]

DEFAULT_TOKEN_LIFETIME_S: Final = 12 * 3600
MIN_PASSWORD: Final = 12
"""Shortest administrator password, in characters."""
MAX_PASSWORD: Final = 1024
FREE_FAILURES: Final = 5
"""Failed logins in a row before an account is throttled."""
MAX_LOGIN_DELAY_S: Final = 60
INITIAL_PASSWORD_FILE: Final = "initial-admin-password"  # noqa: S105 (a file name)
"""Written by :meth:`AdminAccounts.bootstrap` into the server's data directory."""
INITIAL_ADMIN: Final = "admin"
_PURPOSE: Final = "server/admin-password"
_RESERVED: Final = frozenset({"system"})  # audit actors that are not accounts


class Role(enum.StrEnum):
    """What an administrator is for; :data:`PERMISSIONS` says what each may do."""

    SECURITY_ADMIN = "security-admin"
    """Everything, including administrator accounts, IT policies and the audit log."""
    ADMIN = "admin"
    """People, groups, devices and commands; reads policies; no accounts, no audit log."""
    HELPDESK = "helpdesk"
    """Looks things up, issues activation tickets, locks devices and renews their keys."""
    AUDITOR = "auditor"
    """Reads everything, including accounts and the audit log; changes nothing."""


class Permission(enum.StrEnum):
    """One kind of administrative action; each admin API endpoint needs exactly one."""

    STATUS_READ = "status.read"
    USERS_READ = "users.read"
    USERS_WRITE = "users.write"
    """Add people, enable them again."""
    USERS_DISABLE = "users.disable"
    """Deprovision a person (revokes and wipes their devices)."""
    TICKETS_ISSUE = "tickets.issue"
    GROUPS_READ = "groups.read"
    GROUPS_WRITE = "groups.write"
    """Create, change and delete groups, their members and their policy."""
    POLICIES_READ = "policies.read"
    POLICIES_WRITE = "policies.write"
    DEVICES_READ = "devices.read"
    COMMANDS_READ = "commands.read"
    COMMANDS_LOCK = "commands.lock"
    COMMANDS_RENEW = "commands.renew"
    COMMANDS_WIPE = "commands.wipe"
    ACCOUNTS_READ = "accounts.read"
    ACCOUNTS_WRITE = "accounts.write"
    AUDIT_READ = "audit.read"


def _table() -> Mapping[Permission, frozenset[Role]]:
    table: dict[Permission, frozenset[Role]] = {}
    for permission in Permission:
        roles = {Role.SECURITY_ADMIN}
        area = permission.value.split(".")[0]
        if area not in ("accounts", "audit") and permission is not Permission.POLICIES_WRITE:
            roles.add(Role.ADMIN)
        if permission.value.endswith(".read"):
            roles.add(Role.AUDITOR)
            if area not in ("accounts", "audit", "policies"):
                roles.add(Role.HELPDESK)
        if permission in (
            Permission.TICKETS_ISSUE,
            Permission.COMMANDS_LOCK,
            Permission.COMMANDS_RENEW,
        ):
            roles.add(Role.HELPDESK)
        table[permission] = frozenset(roles)
    return MappingProxyType(table)


PERMISSIONS: Final[Mapping[Permission, frozenset[Role]]] = _table()
"""Which roles hold each permission (the module docstring draws it as a table)."""


@dataclass(frozen=True)
class AdminIdentity:
    """Who made an admin API request (from its token)."""

    username: str
    role: Role

    def may(self, permission: Permission) -> bool:
        return self.role in PERMISSIONS[permission]


def require(identity: AdminIdentity, permission: Permission) -> None:
    """Raises:
    AccessDenied: ``identity``'s role does not hold ``permission`` (the message names both).
    """
    if not identity.may(permission):
        raise AccessDenied(
            f"the {identity.role} role does not allow {permission} "
            f"(roles that do: {', '.join(sorted(PERMISSIONS[permission]))})"
        )


@dataclass(frozen=True)
class AccountView:
    """An administrator account as the API shows it (never its password)."""

    username: str
    role: str
    state: str
    """``active`` or ``disabled``."""
    created_at: int
    """Unix seconds."""
    password_changed_at: int
    """Unix seconds."""


metadata = sa.MetaData()

admins = sa.Table(
    "admins",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("password_params", sa.LargeBinary, nullable=False),
    # The encoded Argon2Params (salt, memory, iterations, lanes) the key was derived with.
    sa.Column("password_hash", sa.LargeBinary, nullable=False),
    # The 32-byte Argon2id key of the password: compared in constant time, never the password.
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("password_changed_at", sa.BigInteger, nullable=False),
    sa.Column("failed_logins", sa.Integer, nullable=False, default=0),
    sa.Column("last_failed_at", sa.BigInteger, nullable=True),
)
admin_tokens = sa.Table(
    "admin_tokens",
    metadata,
    sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
    # SHA-256 of the token text: a dump of the database does not hold usable tokens.
    sa.Column("admin_id", sa.Integer, sa.ForeignKey("admins.id"), nullable=False, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
)


def create_tables(conn: sa.Connection) -> None:
    """Create today's account tables (tests; the schema is built by :mod:`.migrations`)."""
    metadata.create_all(conn)


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(
            f"an administrator password has {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )
    return password


def _check_account_name(username: str) -> str:
    check_username(username)
    if username in _RESERVED:
        raise ValueError(f"{username!r} is reserved: choose another administrator name")
    return username


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ValueError(f"a role is one of {', '.join(r.value for r in Role)}") from None


class AdminAccounts:
    """The administrator accounts in the server's database (see the module docstring).

    Errors: :class:`~sealwire.errors.AuthenticationFailed`, :class:`~sealwire.errors.NotFound`,
    :class:`~sealwire.errors.Conflict`, ``ValueError`` (a bad name, role or password, with a
    message for the administrator).
    """

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        *,
        clock: Callable[[], int],
        random: RandomSource = os.urandom,
        token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S,
        params: Callable[[RandomSource], Argon2Params] = Argon2Params.default,
    ) -> None:
        """Args:
        db: the server's database, migrated by :mod:`.migrations`.
        audit: the server's audit log.
        clock: Unix milliseconds.
        random: random bytes (salts, tokens, initial passwords).
        token_lifetime_s: how long a login lasts.
        params: makes the Argon2id parameters for a new password (tests pass cheap ones).
        """
        self._db = db
        self._audit = audit
        self._clock = clock
        self._random = random
        self.token_lifetime_s = token_lifetime_s
        self._params = params

    # --- accounts ---------------------------------------------------------------------------

    def list(self) -> list[AccountView]:
        with self._db.transaction() as conn:
            rows = conn.execute(sa.select(admins).order_by(admins.c.username)).all()
        return [_view(row) for row in rows]

    def get(self, username: str) -> AccountView:
        check_username(username)
        with self._db.transaction() as conn:
            return _view(self._row(conn, username))

    def has_accounts(self) -> bool:
        with self._db.transaction() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(admins)).scalar_one() > 0

    async def create(self, actor: str, username: str, password: str, role: str) -> AccountView:
        """Add an administrator.

        Raises:
            ValueError: a bad name, role or password.
            Conflict: the name is taken.
        """
        _check_account_name(username)
        chosen = _role(role)
        params, key = await self._derive_new(_check_password(password))
        now = self._clock()
        with self._db.transaction() as conn:
            if conn.execute(sa.select(admins.c.id).where(admins.c.username == username)).first():
                raise Conflict(f"an administrator named {username!r} exists already")
            conn.execute(
                admins.insert().values(
                    username=username,
                    password_params=params.encode(),
                    password_hash=key,
                    role=chosen.value,
                    state="active",
                    created_at=now,
                    password_changed_at=now,
                    failed_logins=0,
                )
            )
            self._audit.append(actor, "account.create", username, {"role": chosen.value}, conn=conn)
        return self.get(username)

    def set_role(self, actor: str, username: str, role: str) -> AccountView:
        """Give an account another role; its tokens end (it logs in again).

        Raises:
            Conflict: it would leave no active security admin.
        """
        return self._change(actor, username, _role(role), None)

    async def set_password(self, actor: str, username: str, password: str) -> AccountView:
        """Give an account a new password (at least :data:`MIN_PASSWORD` characters); its tokens
        end and its failed-login count is reset."""
        return await self.change(actor, username, password=password)

    async def change(
        self, actor: str, username: str, *, role: str | None = None, password: str | None = None
    ) -> AccountView:
        """Change an account's role, password or both: one transaction and one audit entry
        (``account.role``, ``account.password``, or ``account.change`` naming both); its tokens
        end. A role it has already changes nothing.

        Raises:
            Conflict: it would leave no active security admin.
            ValueError: a password shorter than :data:`MIN_PASSWORD`, or an unknown role.
        """
        check_username(username)
        chosen = _role(role) if role is not None else None
        derived = (
            await self._derive_new(_check_password(password)) if password is not None else None
        )
        return self._change(actor, username, chosen, derived)

    def _change(
        self,
        actor: str,
        username: str,
        chosen: Role | None,
        derived: tuple[Argon2Params, bytes] | None,
    ) -> AccountView:
        with self._db.transaction() as conn:
            row = self._row(conn, username)
            values: dict[str, Any] = {}
            details: dict[str, Any] = {}
            if chosen is not None and row.role != chosen.value:
                if row.role == Role.SECURITY_ADMIN and row.state == "active":
                    self._keep_a_security_admin(conn, username)
                values["role"] = chosen.value
                details = {"from": row.role, "to": chosen.value}
            if derived is not None:
                params, hashed = derived
                values.update(
                    password_params=params.encode(),
                    password_hash=hashed,
                    password_changed_at=self._clock(),
                    failed_logins=0,
                    last_failed_at=None,
                )
            if not values:
                return _view(row)
            conn.execute(admins.update().where(admins.c.id == row.id).values(**values))
            conn.execute(admin_tokens.delete().where(admin_tokens.c.admin_id == row.id))
            if derived is None:
                self._audit.append(actor, "account.role", username, details, conn=conn)
            elif not details:
                self._audit.append(actor, "account.password", username, conn=conn)
            else:
                details["changed"] = ["role", "password"]
                self._audit.append(actor, "account.change", username, details, conn=conn)
            return _view(self._row(conn, username))

    def disable(self, actor: str, username: str) -> AccountView:
        """Disable an account and end its tokens.

        Raises:
            Conflict: it is the last active security admin.
        """
        with self._db.transaction() as conn:
            row = self._row(conn, username)
            if row.state == "disabled":
                return _view(row)
            if row.role == Role.SECURITY_ADMIN:
                self._keep_a_security_admin(conn, username)
            conn.execute(admins.update().where(admins.c.id == row.id).values(state="disabled"))
            conn.execute(admin_tokens.delete().where(admin_tokens.c.admin_id == row.id))
            self._audit.append(actor, "account.disable", username, conn=conn)
            return _view(self._row(conn, username))

    def enable(self, actor: str, username: str) -> AccountView:
        with self._db.transaction() as conn:
            row = self._row(conn, username)
            if row.state == "active":
                return _view(row)
            conn.execute(admins.update().where(admins.c.id == row.id).values(state="active"))
            self._audit.append(actor, "account.enable", username, conn=conn)
            return _view(self._row(conn, username))

    def _keep_a_security_admin(self, conn: sa.Connection, username: str) -> None:
        others = conn.execute(
            sa.select(sa.func.count())
            .select_from(admins)
            .where(
                admins.c.role == Role.SECURITY_ADMIN.value,
                admins.c.state == "active",
                admins.c.username != username,
            )
        ).scalar_one()
        if others == 0:
            raise Conflict(
                f"{username!r} is the last active security admin: make another account "
                "security-admin first"
            )

    def _row(self, conn: sa.Connection, username: str) -> sa.Row[tuple[object, ...]]:
        check_username(username)
        row = conn.execute(sa.select(admins).where(admins.c.username == username)).first()
        if row is None:
            raise NotFound(f"no administrator named {username!r}")
        return row

    # --- logins and tokens ------------------------------------------------------------------

    async def login(self, username: str, password: str) -> tuple[str, int]:
        """Check a name and password; return a new token and when it expires (Unix seconds).

        Raises:
            AuthenticationFailed: wrong name or password, a disabled account, or an account
                throttled after failed logins (the message says how long to wait).
        """
        refused = AuthenticationFailed("wrong administrator name or password")
        if not _storable(username, 256) or not _storable(password, MAX_PASSWORD):
            raise refused  # nothing to look up or derive (cannot be a real name or password)
        with self._db.transaction() as conn:
            row = conn.execute(sa.select(admins).where(admins.c.username == username)).first()
        now = self._clock()
        if row is not None and row.failed_logins >= FREE_FAILURES:
            wait_ms = min(row.failed_logins - FREE_FAILURES + 1, MAX_LOGIN_DELAY_S) * 1000
            left = int(row.last_failed_at or 0) + wait_ms - now
            if left > 0:
                raise AuthenticationFailed(
                    f"too many failed logins for {username!r}: try again in "
                    f"{(left + 999) // 1000} s"
                )
        if row is None:  # the same derivation, against a key nothing derives to
            params, stored = self._params(self._random), self._random(32)
        else:
            params, stored = Argon2Params.decode(row.password_params), bytes(row.password_hash)
        key = await in_thread(derive_passcode_key, password, params, purpose=_PURPOSE)
        good = constant_time_equal(key, stored) and row is not None
        target = username if username.isprintable() else "?"
        if not good or row is None or row.state != "active":
            with self._db.transaction() as conn:
                if row is not None:
                    conn.execute(
                        admins.update()
                        .where(admins.c.id == row.id)
                        .values(
                            failed_logins=admins.c.failed_logins + (0 if good else 1),
                            last_failed_at=now if not good else admins.c.last_failed_at,
                        )
                    )
                reason = "disabled" if good else "wrong name or password"
                self._audit.append(
                    "system", "account.login-failed", target, {"reason": reason}, conn=conn
                )
            raise refused
        token = base64.urlsafe_b64encode(self._random(32)).rstrip(b"=").decode()
        expires_at = now + self.token_lifetime_s * 1000
        with self._db.transaction() as conn:
            conn.execute(
                admins.update()
                .where(admins.c.id == row.id)
                .values(failed_logins=0, last_failed_at=None)
            )
            conn.execute(admin_tokens.delete().where(admin_tokens.c.expires_at <= now))
            conn.execute(
                admin_tokens.insert().values(
                    token_hash=_token_hash(token),
                    admin_id=row.id,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
            self._audit.append(username, "account.login", username, conn=conn)
        return token, expires_at // 1000

    def authenticate(self, token: str) -> AdminIdentity:
        """The active account a token belongs to.

        Raises:
            AuthenticationFailed: a missing, unknown or expired token, or a disabled account.
        """
        if not isinstance(token, str) or not 1 <= len(token) <= 256:
            raise _no_token()
        with self._db.transaction() as conn:
            row = conn.execute(
                sa.select(
                    admins.c.username, admins.c.role, admins.c.state, admin_tokens.c.expires_at
                )
                .join(admins, admins.c.id == admin_tokens.c.admin_id)
                .where(admin_tokens.c.token_hash == _token_hash(token))
            ).first()
        if row is None or row.state != "active" or row.expires_at <= self._clock():
            raise _no_token()
        return AdminIdentity(row.username, Role(row.role))

    def logout(self, token: str) -> None:
        """End a token (unknown tokens are ignored)."""
        with self._db.transaction() as conn:
            row = conn.execute(
                sa.select(admins.c.username)
                .join(admins, admins.c.id == admin_tokens.c.admin_id)
                .where(admin_tokens.c.token_hash == _token_hash(token))
            ).first()
            if row is None:
                return
            conn.execute(
                admin_tokens.delete().where(admin_tokens.c.token_hash == _token_hash(token))
            )
            self._audit.append(row.username, "account.logout", row.username, conn=conn)

    async def bootstrap(self, directory: Path) -> str | None:
        """On a server without administrators, create ``admin`` (security admin) with a random
        password and write the password to ``directory / initial-admin-password`` (mode 0600).

        Returns:
            The file's path as text, or ``None`` when an administrator existed already.
        """
        if self.has_accounts():
            return None
        password = "-".join(
            base64.b32encode(self._random(15)).decode().lower()[i : i + 6] for i in range(0, 24, 6)
        )
        path = directory / INITIAL_PASSWORD_FILE
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.create("system", INITIAL_ADMIN, password, Role.SECURITY_ADMIN)
        temporary = directory / f".{INITIAL_PASSWORD_FILE}.{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(password + "\n")
        os.replace(temporary, path)
        return str(path)

    # --- Argon2id ---------------------------------------------------------------------------

    async def _derive_new(self, password: str) -> tuple[Argon2Params, bytes]:
        params = self._params(self._random)
        key = await in_thread(derive_passcode_key, password, params, purpose=_PURPOSE)
        return params, key


def _storable(text: object, limit: int) -> bool:
    """A string the database and the KDF can take: bounded, no NUL, no lone surrogates."""
    if not isinstance(text, str) or len(text) > limit or "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _no_token() -> AuthenticationFailed:
    return AuthenticationFailed(
        "missing, unknown or expired administrator token: log in again (`sealwire admin login`)"
    )


def _view(row: sa.Row[tuple[object, ...]]) -> AccountView:
    return AccountView(
        username=str(row.username),
        role=str(row.role),
        state=str(row.state),
        created_at=int(row.created_at) // 1000,
        password_changed_at=int(row.password_changed_at) // 1000,
    )
