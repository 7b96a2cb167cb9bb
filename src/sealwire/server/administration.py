"""What administrators can do to a running enterprise server (DESIGN §8): people, groups, IT
policies, devices, commands. The admin API (:mod:`.api`) is a thin HTTP layer over
:class:`Administration`; every method that changes something writes an audit entry in the same
transaction and names the administrator who did it (``actor``).

Role checks are the API's (:mod:`.accounts` holds the permission table); this layer trusts
its caller and checks the request itself: names, ranges, states.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sealwire.errors import Conflict, NotFound
from sealwire.protocol.directory import (
    MAX_DISPLAY_NAME,
    MAX_FAILED_ATTEMPTS,
    MAX_OFFLINE_GRACE_S,
    MIN_FAILED_ATTEMPTS,
    Policy,
    check_username,
)
from sealwire.protocol.identity import short_address
from sealwire.protocol.management import (
    COMMAND_ID_SIZE,
    Command,
    CommandKind,
    ComplianceIssue,
    SignedCommand,
    check_passcode,
)
from sealwire.protocol.suite import seal_at_rest

if TYPE_CHECKING:
    from .service import EnterpriseServer

__all__ = [
    "COMMAND_KINDS",
    "Administration",
    "CommandView",
    "DeviceView",
    "EffectivePolicy",
    "GroupView",
    "PolicySettings",
    "PolicyView",
    "TicketView",
    "UserView",
    "check_name",
    "effective_policy",
    "issue_names",
]

COMMAND_KINDS = ("lock", "wipe", "renew-keys")
_KINDS = {"lock": CommandKind.LOCK, "wipe": CommandKind.WIPE, "renew-keys": CommandKind.RENEW_KEYS}
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
COMMAND_PURPOSE = "server/command"
WIPE_REVOCATION_DELAY_S = 5.0
"""After a wipe command, how long the relay still lets the device in (to erase itself and
acknowledge) before it refuses it for good."""
REMOTE_SECRET_PURPOSE = "server/remote-secret"  # noqa: S105 (a label)


def check_name(kind: str, name: str) -> str:
    """A group or policy name: 1-64 of ``a-z 0-9 . _ -``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid {kind} name: use 1-64 lower-case letters, digits, '.', "
            "'_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class PolicySettings:
    """The rules of one IT policy, as administrators edit them (defaults: the built-in
    ``default`` policy)."""

    passcode_min_length: int = 6
    """6-64 characters."""
    passcode_classes: int = 1
    """1-4 of lower-case, upper-case, digit, other."""
    max_failed_attempts: int = 10
    """3-10 wrong passcodes in a row, then the device erases itself."""
    auto_lock_s: int = 900
    """Idle seconds before the device locks (0: never; at most a day)."""
    offline_grace_s: int = 72 * 3600
    """Seconds the device stays unlockable without reaching its server (0-30 days)."""
    retention_days: int = 0
    """Days messages are kept (0: until deleted; at most 3650)."""
    export_allowed: bool = True
    prekey_rotation_s: int = 7 * 86400
    """1 hour - 90 days."""
    directory_cache_s: int = 600
    """0 - 1 day."""

    def check(self) -> PolicySettings:
        """Return ``self`` if every value is in range.

        Raises:
            ValueError: naming the first setting out of range.
        """
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}")
        if not isinstance(self.export_allowed, bool):
            raise ValueError("export_allowed must be true or false")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, text: str) -> PolicySettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def policy(self, name: str, version: int, issued_at: int) -> Policy:
        """The wire :class:`~sealwire.protocol.directory.Policy` of these settings."""
        return Policy(
            version=version,
            issued_at=issued_at,
            prekey_rotation_s=self.prekey_rotation_s,
            directory_cache_s=self.directory_cache_s,
            name=name,
            passcode_min_length=self.passcode_min_length,
            passcode_classes=self.passcode_classes,
            max_failed_attempts=self.max_failed_attempts,
            auto_lock_s=self.auto_lock_s,
            offline_grace_s=self.offline_grace_s,
            retention_days=self.retention_days,
            export_allowed=self.export_allowed,
        )


_RANGES = (
    ("passcode_min_length", 6, 64),
    ("passcode_classes", 1, 4),
    ("max_failed_attempts", MIN_FAILED_ATTEMPTS, MAX_FAILED_ATTEMPTS),
    ("auto_lock_s", 0, 86400),
    ("offline_grace_s", 0, MAX_OFFLINE_GRACE_S),
    ("retention_days", 0, 3650),
    ("prekey_rotation_s", 3600, 90 * 86400),
    ("directory_cache_s", 0, 86400),
)


@dataclass(frozen=True)
class UserView:
    username: str
    display_name: str
    state: str
    """``active`` or ``disabled`` (deprovisioned)."""
    created_at: int
    """Unix seconds."""
    devices: int
    """Active devices."""
    groups: tuple[str, ...]
    policy: str
    """The name of the policy that applies to the person."""


@dataclass(frozen=True)
class TicketView:
    """A new activation ticket: hand the ticket and the password to the person separately."""

    username: str
    ticket: str
    password: str
    expires_at: int
    """Unix seconds."""

    def __repr__(self) -> str:  # never print the password
        return f"TicketView(username={self.username!r}, expires_at={self.expires_at})"


@dataclass(frozen=True)
class GroupView:
    name: str
    description: str
    priority: int
    """Lower first: a person in several groups gets the policy of the first group that has
    one (then ``default``)."""
    policy: str | None
    members: tuple[str, ...]


@dataclass(frozen=True)
class PolicyView:
    name: str
    version: int
    updated_at: int
    """Unix seconds."""
    updated_by: str
    settings: PolicySettings
    groups: tuple[str, ...]
    """Groups it is assigned to (``default`` applies to everyone else)."""


@dataclass(frozen=True)
class DeviceView:
    address: str
    """Hex, 64 characters."""
    short: str
    """The short form people read (``sealwire device status`` shows it)."""
    username: str
    state: str
    """``pending`` (activated, not heard from yet), ``active``, ``wiped``, ``revoked``."""
    activated_at: int
    last_seen: int | None
    policy: str | None
    """Name and version the device last reported applying, e.g. ``default v3``."""
    compliant: bool | None
    """``None`` until the device has reported."""
    issues: tuple[str, ...]


@dataclass(frozen=True)
class CommandView:
    command_id: str
    device: str
    """Hex address."""
    username: str
    kind: str
    """``lock``, ``wipe`` or ``renew-keys``."""
    state: str
    """``queued`` (waiting for the device), ``done``, ``failed``."""
    created_at: int
    created_by: str
    completed_at: int | None
    detail: str


@dataclass(frozen=True)
class EffectivePolicy:
    """The policy that applies to one person."""

    name: str
    version: int
    settings: PolicySettings


def effective_policy(store: Any, conn: sa.Connection, user_id: int) -> EffectivePolicy:
    """The policy of the person's first group (by priority) that has one, else ``default``."""
    for row in store.user_groups(conn, user_id):
        if row.policy is not None:
            name = row.policy
            break
    else:
        name = "default"
    policy = store.policy_row(conn, name)
    if policy is None:  # only before the server created its default policy
        return EffectivePolicy("default", 0, PolicySettings())
    return EffectivePolicy(name, int(policy.version), PolicySettings.from_json(policy.settings))


class Administration:
    """The administrative operations of one server (see the module docstring).

    Errors: :class:`~sealwire.errors.NotFound`, :class:`~sealwire.errors.Conflict`,
    ``ValueError`` (a bad value, with a message for the administrator).
    """

    def __init__(self, server: EnterpriseServer) -> None:
        self._server = server
        self._store = server.store
        self._db = server.store.db
        self._audit = server.audit

    def _now(self) -> int:
        return self._server.now_ms()

    def status(self) -> dict[str, object]:
        return self._server.status()

    # --- people ---------------------------------------------------------------------------

    def users(self) -> list[UserView]:
        return [self._user_view(record) for record in self._store.users()]

    def user(self, username: str) -> UserView:
        return self._user_view(self._store.user(username))

    def _user_view(self, record: Any) -> UserView:
        with self._db.transaction() as conn:
            rows = self._store.user_groups(conn, record.id)
            policy = effective_policy(self._store, conn, record.id)
        return UserView(
            username=record.username,
            display_name=record.display_name,
            state=record.state,
            created_at=record.created_at // 1000,
            devices=record.devices,
            groups=tuple(row.name for row in rows),
            policy=policy.name,
        )

    async def add_user(
        self,
        actor: str,
        username: str,
        display_name: str,
        *,
        lifetime_s: int | None = None,
        groups: tuple[str, ...] = (),
    ) -> TicketView:
        """Add a person (optionally into groups) and issue their first activation ticket."""
        check_username(username)
        if not 1 <= len(display_name) <= MAX_DISPLAY_NAME:
            raise ValueError(f"a display name has 1 to {MAX_DISPLAY_NAME} characters")
        self._server.check_ticket_lifetime(lifetime_s)
        with self._db.transaction() as conn:
            ids = [self._group_id(conn, name) for name in groups]
        self._server.add_user(username, display_name)
        with self._db.transaction() as conn:
            user_id = self._store.user_id(conn, username)
            for group_id in ids:
                self._store.set_member(conn, group_id, user_id, True)
            self._audit.append(
                actor,
                "user.add",
                username,
                {"display_name": display_name, "groups": list(groups)},
                conn=conn,
            )
        return await self.issue_ticket(actor, username, lifetime_s)

    async def issue_ticket(
        self, actor: str, username: str, lifetime_s: int | None = None
    ) -> TicketView:
        check_username(username)
        issued = await self._server.issue_ticket(username, lifetime_s)
        self._audit.append(actor, "user.ticket", username, {"expires_at": issued.expires_at})
        return TicketView(issued.username, issued.ticket, issued.password, issued.expires_at)

    async def disable_user(self, actor: str, username: str) -> UserView:
        """Deprovision: revoke every device (the relay drops and refuses them), remove the
        person from directory answers, delete their devices' remote secrets, queue wipes."""
        check_username(username)
        now = self._now()
        wipes: list[SignedCommand] = []
        with self._db.transaction() as conn:
            user_id = self._store.user_id(conn, username)
            addresses = self._store.device_addresses(conn, user_id, ("pending", "active", "wiped"))
            self._store.set_user_state(conn, user_id, "disabled")
            for address in addresses:
                wipes.append(self._queue_command(conn, actor, address, CommandKind.WIPE, None, now))
            self._store.end_devices(conn, addresses, "revoked")
            self._store.add_revocations(conn, addresses, now)
            self._audit.append(
                actor,
                "user.disable",
                username,
                {"devices": [short_address(a) for a in addresses]},
                conn=conn,
            )
        # Wipes first (a connected device may still get its own), then the relay drops them.
        for signed in wipes:
            await self._server.push_command(signed)
        await self._server.send_revocations()
        await self._server.directory_changed([username])  # peers' caches drop the person now
        return self.user(username)

    def enable_user(self, actor: str, username: str) -> UserView:
        """Allow the person again; they need a new activation (issue a ticket)."""
        check_username(username)
        with self._db.transaction() as conn:
            user_id = self._store.user_id(conn, username)
            self._store.set_user_state(conn, user_id, "active")
            self._audit.append(actor, "user.enable", username, conn=conn)
        return self.user(username)

    # --- groups ---------------------------------------------------------------------------

    def groups(self) -> list[GroupView]:
        with self._db.transaction() as conn:
            return [self._group_view(conn, row) for row in self._store.group_rows(conn)]

    def group(self, name: str) -> GroupView:
        with self._db.transaction() as conn:
            return self._group_view(conn, self._group_row(conn, name))

    def _group_row(self, conn: sa.Connection, name: str) -> Any:
        rows = self._store.group_rows(conn, check_name("group", name))
        if not rows:
            raise NotFound(f"no group named {name!r}")
        return rows[0]

    def _group_id(self, conn: sa.Connection, name: str) -> int:
        return int(self._group_row(conn, name).id)

    def _group_view(self, conn: sa.Connection, row: Any) -> GroupView:
        return GroupView(
            name=row.name,
            description=row.description,
            priority=row.priority,
            policy=row.policy_name,
            members=tuple(self._store.group_members(conn, row.id)),
        )

    def _policy_id(self, conn: sa.Connection, name: str) -> int:
        row = self._store.policy_row(conn, check_name("policy", name))
        if row is None:
            raise NotFound(f"no policy named {name!r}")
        return int(row.id)

    async def create_group(
        self,
        actor: str,
        name: str,
        *,
        description: str = "",
        priority: int = 100,
        policy: str | None = None,
    ) -> GroupView:
        check_name("group", name)
        _check_group_fields(description, priority)
        with self._db.transaction() as conn:
            policy_id = None if policy is None else self._policy_id(conn, policy)
            self._store.add_group(conn, name, description, priority, policy_id)
            self._audit.append(
                actor,
                "group.create",
                name,
                {"description": description, "priority": priority, "policy": policy},
                conn=conn,
            )
        return self.group(name)

    async def update_group(
        self,
        actor: str,
        name: str,
        *,
        description: str | None = None,
        priority: int | None = None,
    ) -> GroupView:
        _check_group_fields(description or "", 100 if priority is None else priority)
        values: dict[str, Any] = {}
        if description is not None:
            values["description"] = description
        if priority is not None:
            values["priority"] = priority
        with self._db.transaction() as conn:
            group_id = self._group_id(conn, name)
            if values:
                self._store.update_group(conn, group_id, **values)
                self._audit.append(actor, "group.update", name, values, conn=conn)
        if priority is not None:  # may change whose policy wins
            await self._server.push_policies()
        return self.group(name)

    async def assign_policy(self, actor: str, group: str, policy: str | None) -> GroupView:
        """Assign a policy to a group (``None``: none); devices affected get it pushed."""
        with self._db.transaction() as conn:
            group_id = self._group_id(conn, group)
            policy_id = None if policy is None else self._policy_id(conn, policy)
            self._store.update_group(conn, group_id, policy_id=policy_id)
            self._audit.append(actor, "group.policy", group, {"policy": policy}, conn=conn)
        await self._server.push_policies()
        return self.group(group)

    async def delete_group(self, actor: str, name: str) -> None:
        with self._db.transaction() as conn:
            self._store.delete_group(conn, self._group_id(conn, name))
            self._audit.append(actor, "group.delete", name, conn=conn)
        await self._server.push_policies()

    async def add_member(self, actor: str, group: str, username: str) -> GroupView:
        return await self._membership(actor, group, username, True)

    async def remove_member(self, actor: str, group: str, username: str) -> GroupView:
        return await self._membership(actor, group, username, False)

    async def _membership(self, actor: str, group: str, username: str, member: bool) -> GroupView:
        check_username(username)
        with self._db.transaction() as conn:
            group_id = self._group_id(conn, group)
            user_id = self._store.user_id(conn, username)
            self._store.set_member(conn, group_id, user_id, member)
            action = "group.add-member" if member else "group.remove-member"
            self._audit.append(actor, action, group, {"user": username}, conn=conn)
        await self._server.push_policies()
        return self.group(group)

    # --- policies -------------------------------------------------------------------------

    def policies(self) -> list[PolicyView]:
        with self._db.transaction() as conn:
            return [self._policy_view(conn, row) for row in self._store.policy_rows(conn)]

    def policy(self, name: str) -> PolicyView:
        with self._db.transaction() as conn:
            row = self._store.policy_row(conn, check_name("policy", name))
            if row is None:
                raise NotFound(f"no policy named {name!r}")
            return self._policy_view(conn, row)

    def _policy_view(self, conn: sa.Connection, row: Any) -> PolicyView:
        used = [g.name for g in self._store.group_rows(conn) if g.policy_id == row.id]
        return PolicyView(
            name=row.name,
            version=row.version,
            updated_at=row.updated_at // 1000,
            updated_by=row.updated_by,
            settings=PolicySettings.from_json(row.settings),
            groups=tuple(used),
        )

    async def put_policy(self, actor: str, name: str, settings: PolicySettings) -> PolicyView:
        """Create a policy or store a new version of it; devices it applies to get it pushed."""
        check_name("policy", name)
        settings.check()
        with self._db.transaction() as conn:
            version = self._store.put_policy(conn, name, settings.to_json(), self._now(), actor)
            # The settings as one text: some of their names ("passcode_min_length") would
            # trip the audit log's guard against secrets in details.
            self._audit.append(
                actor,
                "policy.put",
                name,
                {"version": version, "settings": settings.to_json()},
                conn=conn,
            )
        await self._server.push_policies()
        return self.policy(name)

    def delete_policy(self, actor: str, name: str) -> None:
        """Not ``default``, and not while a group uses it (Conflict)."""
        if name == "default":
            raise Conflict("the default policy cannot be deleted (change it instead)")
        with self._db.transaction() as conn:
            policy_id = self._policy_id(conn, name)
            used = [g.name for g in self._store.group_rows(conn) if g.policy_id == policy_id]
            if used:
                raise Conflict(f"the policy {name!r} is assigned to {', '.join(used)}")
            self._store.delete_policy(conn, policy_id)
            self._audit.append(actor, "policy.delete", name, conn=conn)

    # --- devices and commands ---------------------------------------------------------------

    def devices(self, username: str | None = None) -> list[DeviceView]:
        if username is not None:
            check_username(username)
        with self._db.transaction() as conn:
            return [_device_view(row) for row in self._store.all_devices(conn, username)]

    def device(self, address: str) -> DeviceView:
        """``address``: the full hex address or an unambiguous prefix of it (8+ hex digits)."""
        full = self._resolve(address)
        with self._db.transaction() as conn:
            row = next(r for r in self._store.all_devices(conn) if bytes(r.address) == full)
        return _device_view(row)

    def _resolve(self, address: str) -> bytes:
        text = address.strip().lower().replace("-", "").replace(":", "")
        if not 8 <= len(text) <= 64 or any(c not in "0123456789abcdef" for c in text):
            raise ValueError("a device address is 8 to 64 hexadecimal digits")
        with self._db.transaction() as conn:
            found = [
                bytes(row.address)
                for row in self._store.all_devices(conn)
                if bytes(row.address).hex().startswith(text)
            ]
        if not found:
            raise NotFound(f"no device with the address {address!r}")
        if len(found) > 1:
            raise Conflict(f"{address!r} names several devices: give more digits")
        return found[0]

    async def command(
        self, actor: str, device: str, kind: str, *, new_passcode: str | None = None
    ) -> CommandView:
        """Queue a command for a device and push it if the device is reachable now.
        ``new_passcode`` only with ``lock`` (checked against the device's policy)."""
        if kind not in _KINDS:
            raise ValueError(f"a command is one of {', '.join(COMMAND_KINDS)}")
        if new_passcode is not None and kind != "lock":
            raise ValueError("only a lock command sets a new passcode")
        address = self._resolve(device)
        now = self._now()
        with self._db.transaction() as conn:
            row = next(r for r in self._store.all_devices(conn) if bytes(r.address) == address)
            if row.state not in ("pending", "active"):
                raise Conflict(f"the device is {row.state}: it takes no more commands")
            if new_passcode is not None:
                user_id = self._store.user_id(conn, row.username)
                rules = effective_policy(self._store, conn, user_id)
                wire_policy = rules.settings.policy(rules.name, max(1, rules.version), 0)
                issues = check_passcode(new_passcode, wire_policy)
                if issues or len(new_passcode) > 128:
                    raise ValueError(
                        f"the new passcode does not meet the {rules.name!r} policy: at least "
                        f"{rules.settings.passcode_min_length} characters mixing "
                        f"{rules.settings.passcode_classes} of lower-case, upper-case, digits, "
                        "other"
                    )
            signed = self._queue_command(conn, actor, address, _KINDS[kind], new_passcode, now)
            if kind == "wipe":
                # The crypto-backed half: from now on no copy of the device can be unlocked
                # once its offline grace has passed, whether or not it gets the command.
                self._store.end_devices(conn, [address], "wiped")
                self._store.add_revocations(conn, [address], now)
        await self._server.push_command(signed)
        if kind == "wipe":
            # A connected device gets a moment to erase itself and say so; then (or at once,
            # if the server restarts) the relay refuses it whatever it does.
            self._server.revoke_soon(WIPE_REVOCATION_DELAY_S)
            await self._server.directory_changed([row.username])
        return self.command_status(signed.command.command_id.hex())

    def _queue_command(
        self,
        conn: sa.Connection,
        actor: str,
        address: bytes,
        kind: CommandKind,
        new_passcode: str | None,
        now: int,
    ) -> SignedCommand:
        command = Command(
            command_id=self._server.random(COMMAND_ID_SIZE),
            device=address,
            kind=kind,
            issued_at=now // 1000,
            new_passcode=new_passcode,
        )
        signed = self._server.sign_command(command)
        self._store.add_command(
            conn,
            command_id=command.command_id,
            address=address,
            kind=_kind_name(kind),
            sealed=seal_at_rest(
                self._server.keys.ticket_key,
                signed.encode(),
                purpose=COMMAND_PURPOSE,
                context=command.command_id,
                random=self._server.random,
            ),
            now=now,
            actor=actor,
        )
        details: dict[str, Any] = {"device": short_address(address)}
        if new_passcode is not None:
            details["reset_by_administrator"] = True  # never the code itself
        self._audit.append(
            actor, f"command.{_kind_name(kind)}", command.command_id.hex(), details, conn=conn
        )
        return signed

    def commands(self, device: str | None = None) -> list[CommandView]:
        address = None if device is None else self._resolve(device)
        with self._db.transaction() as conn:
            return [_command_view(r) for r in self._store.command_rows(conn, address=address)]

    def command_status(self, command_id: str) -> CommandView:
        try:
            raw = bytes.fromhex(command_id)
        except ValueError:
            raise ValueError("a command id is 32 hexadecimal digits") from None
        if len(raw) != COMMAND_ID_SIZE:
            raise ValueError("a command id is 32 hexadecimal digits")
        with self._db.transaction() as conn:
            rows = self._store.command_rows(conn, command_id=raw)
        if not rows:
            raise NotFound(f"no command {command_id}")
        return _command_view(rows[0])


def _check_group_fields(description: str, priority: int) -> None:
    if not isinstance(description, str) or len(description) > 256:
        raise ValueError("a group description has at most 256 characters")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 10000:
        raise ValueError("a group priority is an integer from 0 to 10000")


def _kind_name(kind: CommandKind) -> str:
    return {CommandKind.LOCK: "lock", CommandKind.WIPE: "wipe"}.get(kind, "renew-keys")


def _device_view(row: Any) -> DeviceView:
    issues = None if row.issues is None else tuple(i for i in row.issues.split(",") if i)
    return DeviceView(
        address=bytes(row.address).hex(),
        short=short_address(bytes(row.address)),
        username=row.username,
        state=row.state,
        activated_at=row.activated_at // 1000,
        last_seen=None if row.last_seen is None else row.last_seen // 1000,
        policy=None if row.policy_name is None else f"{row.policy_name} v{row.policy_version}",
        compliant=None if issues is None else not issues,
        issues=issues or (),
    )


def _command_view(row: Any) -> CommandView:
    return CommandView(
        command_id=bytes(row.command_id).hex(),
        device=bytes(row.address).hex(),
        username=row.username,
        kind=row.kind,
        state=row.state,
        created_at=row.created_at // 1000,
        created_by=row.created_by,
        completed_at=None if row.completed_at is None else row.completed_at // 1000,
        detail=row.detail,
    )


def issue_names(issues: tuple[ComplianceIssue, ...]) -> str:
    """How compliance issues are stored and shown: ``passcode-too-short,...``."""
    return ",".join(issue.name.lower().replace("_", "-") for issue in issues)
