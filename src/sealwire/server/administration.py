"""What administrators can do to a running enterprise server (DESIGN §8): people, groups, IT
policies, devices, commands. The admin API (:mod:`.api`) is a thin HTTP layer over
:class:`Administration`; every method that changes something writes an audit entry in the same
transaction and names the administrator who did it (``actor``).

Role checks are the API's (:mod:`.accounts` holds the permission table); this layer trusts
its caller and checks the request itself: names, ranges, states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from sealwire.errors import Conflict, NotFound
from sealwire.protocol.directory import MAX_DISPLAY_NAME, check_username
from sealwire.protocol.identity import short_address
from sealwire.protocol.management import (
    COMMAND_ID_SIZE,
    Command,
    CommandKind,
    SignedCommand,
    check_passcode,
)
from sealwire.protocol.suite import seal_at_rest

from .audit import AuditLog
from .policy import (
    COMMAND_PURPOSE,
    REMOTE_SECRET_PURPOSE,
    EffectivePolicy,
    PolicySettings,
    check_name,
    effective_policy,
    issue_names,
)
from .store import LIVE_DEVICE_STATES, DeviceState, ServerStore, UserExists, UserState
from .tickets import Tickets, check_ticket_lifetime

__all__ = [
    "COMMAND_KINDS",
    "COMMAND_PURPOSE",
    "REMOTE_SECRET_PURPOSE",
    "Administration",
    "CommandView",
    "DevicePush",
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
WIPE_REVOCATION_DELAY_S = 5.0
"""After a wipe command, how long the relay still lets the device in (to erase itself and
acknowledge) before it refuses it for good."""


class DevicePush(Protocol):
    """What the administration layer may ask of the relay link (best effort: every push has a
    fallback, so none of these fails when the link is down)."""

    async def push_command(self, signed: SignedCommand) -> None:
        """Send a command to its device now."""

    async def push_policies(self) -> None:
        """Send each device whose policy changed the one it should apply."""

    async def send_revocations(self) -> None:
        """Hand the relay every revocation it has not confirmed yet."""

    async def directory_changed(self, usernames: list[str]) -> None:
        """Tell the devices holding these people's entries to drop them."""

    def revoke_soon(self, delay_s: float) -> None:
        """Send the pending revocations after ``delay_s`` seconds."""


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


class Administration:
    """The administrative operations of one server (see the module docstring). It is given
    what it needs, never the server: devices are reached through ``push``
    (:class:`DevicePush`).

    Args:
        store: the server's database.
        audit: the audit log every change is entered in.
        push: reaches devices through the relay link (best effort).
        tickets: makes and stores activation tickets.
        sign_command: signs a command as the server.
        ticket_key: the at-rest key queued commands are sealed under.
        status: the running server's status.
        clock: Unix milliseconds.
        random: source of random bytes.

    Errors: :class:`~sealwire.errors.NotFound`, :class:`~sealwire.errors.Conflict`,
    ``ValueError`` (a bad value, with a message for the administrator).
    """

    def __init__(
        self,
        *,
        store: ServerStore,
        audit: AuditLog,
        push: DevicePush,
        tickets: Tickets,
        sign_command: Callable[[Command], SignedCommand],
        ticket_key: bytes,
        status: Callable[[], dict[str, object]],
        clock: Callable[[], int],
        random: Callable[[int], bytes],
    ) -> None:
        self._store = store
        self._db = store.db
        self._audit = audit
        self._push = push
        self._tickets = tickets
        self._sign_command = sign_command
        self._ticket_key = ticket_key
        self._status = status
        self._clock = clock
        self._random = random

    def _now(self) -> int:
        return self._clock()

    def status(self) -> dict[str, object]:
        """The running server's status."""
        return self._status()

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
        """Add a person (optionally into groups) and issue their first activation ticket:
        the person, the memberships, the ticket and the audit entry are one transaction.

        Raises:
            UserExists, NotFound (a group), ValueError, ConfigError (a lifetime).
        """
        check_username(username)
        if not 1 <= len(display_name) <= MAX_DISPLAY_NAME:
            raise ValueError(f"a display name has 1 to {MAX_DISPLAY_NAME} characters")
        check_ticket_lifetime(lifetime_s)
        if self._store.users([username]):  # fail early, before the Argon2id work
            raise UserExists(f"a person with the user name {username!r} exists already")
        with self._db.transaction() as conn:
            for name in groups:
                self._group_id(conn, name)
        new = await self._tickets.make(lifetime_s)
        with self._db.transaction() as conn:
            ids = [self._group_id(conn, name) for name in groups]
            user_id = self._store.add_user(username, display_name, now=self._now(), conn=conn)
            for group_id in ids:
                self._store.set_member(conn, group_id, user_id, True)
            issued = self._tickets.store(conn, username, user_id, new)
            self._audit.append(
                actor,
                "user.add",
                username,
                {
                    "display_name": display_name,
                    "groups": list(groups),
                    "expires_at": issued.expires_at,
                },
                conn=conn,
            )
        return TicketView(issued.username, issued.ticket, issued.password, issued.expires_at)

    async def issue_ticket(
        self, actor: str, username: str, lifetime_s: int | None = None
    ) -> TicketView:
        """A new activation ticket and one-time password for ``username`` (any open ticket
        of theirs is withdrawn), with its audit entry in the same transaction.

        Raises:
            UnknownUser: no such person, or a disabled one.
            ConfigError: a lifetime outside one minute to 30 days.
        """
        check_username(username)
        check_ticket_lifetime(lifetime_s)
        with self._db.transaction() as conn:  # fail early, before the Argon2id work
            self._store.active_user_id(conn, username)
        new = await self._tickets.make(lifetime_s)
        with self._db.transaction() as conn:
            user_id = self._store.active_user_id(conn, username)
            issued = self._tickets.store(conn, username, user_id, new)
            self._audit.append(
                actor, "user.ticket", username, {"expires_at": issued.expires_at}, conn=conn
            )
        return TicketView(issued.username, issued.ticket, issued.password, issued.expires_at)

    async def disable_user(self, actor: str, username: str) -> UserView:
        """Deprovision: revoke every device (the relay drops and refuses them), remove the
        person from directory answers, delete their devices' remote secrets, queue wipes."""
        check_username(username)
        now = self._now()
        wipes: list[SignedCommand] = []
        with self._db.transaction() as conn:
            user_id = self._store.user_id(conn, username)
            addresses = self._store.device_addresses(
                conn, user_id, (*LIVE_DEVICE_STATES, DeviceState.WIPED)
            )
            self._store.set_user_state(conn, user_id, UserState.DISABLED)
            for address in addresses:
                wipes.append(self._queue_command(conn, actor, address, CommandKind.WIPE, None, now))
            self._store.end_devices(conn, addresses, DeviceState.REVOKED)
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
            await self._push.push_command(signed)
        await self._push.send_revocations()
        await self._push.directory_changed([username])  # peers' caches drop the person now
        return self.user(username)

    def enable_user(self, actor: str, username: str) -> UserView:
        """Allow the person again; they need a new activation (issue a ticket)."""
        check_username(username)
        with self._db.transaction() as conn:
            user_id = self._store.user_id(conn, username)
            self._store.set_user_state(conn, user_id, UserState.ACTIVE)
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
            await self._push.push_policies()
        return self.group(name)

    async def assign_policy(self, actor: str, group: str, policy: str | None) -> GroupView:
        """Assign a policy to a group (``None``: none); devices affected get it pushed."""
        with self._db.transaction() as conn:
            group_id = self._group_id(conn, group)
            policy_id = None if policy is None else self._policy_id(conn, policy)
            self._store.update_group(conn, group_id, policy_id=policy_id)
            self._audit.append(actor, "group.policy", group, {"policy": policy}, conn=conn)
        await self._push.push_policies()
        return self.group(group)

    async def delete_group(self, actor: str, name: str) -> None:
        with self._db.transaction() as conn:
            self._store.delete_group(conn, self._group_id(conn, name))
            self._audit.append(actor, "group.delete", name, conn=conn)
        await self._push.push_policies()

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
        await self._push.push_policies()
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
        await self._push.push_policies()
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
            if row.state not in LIVE_DEVICE_STATES:
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
                self._store.end_devices(conn, [address], DeviceState.WIPED)
                self._store.add_revocations(conn, [address], now)
        await self._push.push_command(signed)
        if kind == "wipe":
            # A connected device gets a moment to erase itself and say so; then (or at once,
            # if the server restarts) the relay refuses it whatever it does.
            self._push.revoke_soon(WIPE_REVOCATION_DELAY_S)
            await self._push.directory_changed([row.username])
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
            command_id=self._random(COMMAND_ID_SIZE),
            device=address,
            kind=kind,
            issued_at=now // 1000,
            new_passcode=new_passcode,
        )
        signed = self._sign_command(command)
        self._store.add_command(
            conn,
            command_id=command.command_id,
            address=address,
            kind=_kind_name(kind),
            sealed=seal_at_rest(
                self._ticket_key,
                signed.encode(),
                purpose=COMMAND_PURPOSE,
                context=command.command_id,
                random=self._random,
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
