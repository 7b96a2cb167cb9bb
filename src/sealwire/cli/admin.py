"""``sealwire admin``: the administrator's client of the running enterprise server's admin API
(:mod:`sealwire.server.api`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

from sealwire.errors import (
    ConfigError,
    StorageError,
    TransportError,
)

from ._admin_client import AdminClient, read_password
from ._text import for_terminal

__all__ = ["add_admin_parser"]

# --- sealwire admin ----------------------------------------------------------------------
#
# A client of the admin API (sealwire.server.api). Where the server is: --url, else
# $SEALWIRE_ADMIN_URL, else DATA/server/admin-url (written by the running server; DATA is
# --data or $SEALWIRE_ADMIN_DATA: the settings of _admin_client.ADMIN_SETTINGS). Who is
# asking, in order: $SEALWIRE_ADMIN_TOKEN; the stored token (DATA/server/admin-token when this
# machine has the server's directory, else $XDG_CONFIG_HOME/sealwire/admin-token); and, on the
# server's own machine, the first administrator's password in DATA/server/initial-admin-password
# (logged in with automatically, the token then stored).

_POLICY_SETTINGS = (
    ("passcode_min_length", "shortest passcode, 6-64"),
    ("passcode_classes", "character classes a passcode mixes, 1-4"),
    ("max_failed_attempts", "wrong passcodes before the device erases itself, 3-10"),
    ("auto_lock_s", "idle seconds before the device locks (0: never)"),
    ("offline_grace_s", "seconds a device stays usable without reaching the server"),
    ("retention_days", "days messages are kept (0: until deleted)"),
    ("prekey_rotation_s", "seconds between prekey rotations"),
    ("directory_cache_s", "seconds a directory answer may be cached"),
)


def add_admin_parser(sub: Any) -> None:
    """Add ``admin`` to the ``sealwire`` parser."""
    admin = sub.add_parser(
        "admin",
        help="administer the running enterprise server through its admin API",
        description="A client of the server's admin API (HTTP/JSON). On the server's machine "
        "it finds the API through DATA/server/admin-url and, until an administrator logs in, "
        "logs in as 'admin' with DATA/server/initial-admin-password.",
    )
    admin.add_argument("--data", default=None, help="the server's data directory (./sealwire-data)")
    admin.add_argument("--url", default=None, help="the admin API URL (default: from DATA)")
    admin.add_argument("--cafile", default=None, help="CA certificate to trust for an https URL")
    admin.add_argument("--json", action="store_true", help="print results as JSON")
    what = admin.add_subparsers(dest="area", required=True, metavar="AREA")

    def area(name: str, help: str) -> Any:
        parser = what.add_parser(name, help=help)
        return parser.add_subparsers(dest="op", required=True, metavar="OP")

    login = what.add_parser("login", help="log in and keep the token (12 h by default)")
    login.add_argument("--user", default="admin", help="administrator name (default admin)")
    login.add_argument("--password-file", default=None, help="read the password from a file")
    what.add_parser("logout", help="end the stored token")
    what.add_parser("whoami", help="the logged-in administrator and their permissions")
    what.add_parser("status", help="the server's state")

    user = area("user", "people of the organisation")
    add = user.add_parser("add", help="add a person and print their activation ticket")
    add.add_argument("username")
    add.add_argument("--name", default=None, help='display name, e.g. "Alice Example"')
    add.add_argument("--lifetime", default=None, help="password lifetime: 30m, 48h, 7d (max 30d)")
    add.add_argument("--group", action="append", default=[], help="put them in a group")
    ticket = user.add_parser("ticket", help="new activation password (e.g. another device)")
    ticket.add_argument("username")
    ticket.add_argument("--lifetime", default=None, help="password lifetime (max 30d)")
    user.add_parser("list", help="list people")
    for op, text in (
        ("show", "one person"),
        ("disable", "deprovision: revoke and wipe every device of the person"),
        ("enable", "allow a disabled person again (then issue a ticket)"),
    ):
        user.add_parser(op, help=text).add_argument("username")

    group = area("group", "groups of people (a group may carry an IT policy)")
    create = group.add_parser("create", help="create a group")
    create.add_argument("name")
    create.add_argument("--description", default="")
    create.add_argument("--priority", type=int, default=100, help="lower wins (default 100)")
    create.add_argument("--policy", default=None, help="IT policy of its members")
    group.add_parser("list", help="list groups")
    group.add_parser("show", help="one group").add_argument("name")
    change = group.add_parser("set", help="change a group's description or priority")
    change.add_argument("name")
    change.add_argument("--description", default=None)
    change.add_argument("--priority", type=int, default=None)
    for op, text in (("add", "put a person in a group"), ("remove", "take a person out")):
        member = group.add_parser(op, help=text)
        member.add_argument("name")
        member.add_argument("username")
    assign = group.add_parser("policy", help="assign an IT policy to a group ('none': remove)")
    assign.add_argument("name")
    assign.add_argument("policy")
    group.add_parser("delete", help="delete a group").add_argument("name")

    policy = area("policy", "IT policies (pushed to the devices they apply to)")
    policy.add_parser("list", help="list policies")
    policy.add_parser("show", help="one policy").add_argument("name")
    setting = policy.add_parser("set", help="create a policy or change some of its settings")
    setting.add_argument("name")
    for name, text in _POLICY_SETTINGS:
        setting.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=text)
    setting.add_argument(
        "--export-allowed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="may people export their messages",
    )
    policy.add_parser("delete", help="delete a policy no group uses").add_argument("name")

    device = area("device", "devices and device commands")
    listing = device.add_parser("list", help="list devices")
    listing.add_argument("username", nargs="?", default=None)
    listing.add_argument("--user", default=None, help="only this person's devices")
    device.add_parser("show", help="one device (address or 8+ leading hex digits)").add_argument(
        "address"
    )
    lock = device.add_parser("lock", help="lock a device remotely")
    lock.add_argument("address")
    lock.add_argument(
        "--new-passcode",
        action="store_true",
        help="also set a new passcode (asked, or $SEALWIRE_ADMIN_NEW_PASSCODE)",
    )
    device.add_parser("wipe", help="erase a device remotely").add_argument("address")
    device.add_parser("renew-keys", help="make a device renew its keys").add_argument("address")

    command = area("command", "commands sent to devices")
    commands = command.add_parser("list", help="list commands")
    commands.add_argument("--device", default=None, help="only this device's")
    command.add_parser("show", help="one command").add_argument("command_id")

    account = area("account", "administrator accounts")
    account.add_parser("list", help="list administrators")
    new = account.add_parser("add", help="add an administrator (the password is asked)")
    new.add_argument("username")
    new.add_argument("--role", required=True, choices=_ROLES)
    new.add_argument("--password-file", default=None, help="read the password from a file")
    role = account.add_parser("role", help="change an administrator's role")
    role.add_argument("username")
    role.add_argument("role", choices=_ROLES)
    password = account.add_parser("password", help="set an administrator's password (asked)")
    password.add_argument("username")
    password.add_argument("--password-file", default=None, help="read the password from a file")
    account.add_parser("disable", help="disable an administrator").add_argument("username")
    account.add_parser("enable", help="enable an administrator again").add_argument("username")

    audit = area("audit", "the hash-chained audit log")
    entries = audit.add_parser("list", help="list entries, oldest first")
    entries.add_argument("--after", type=int, default=0, help="entries after this number")
    entries.add_argument("--limit", type=int, default=100)
    entries.add_argument("--actor", default=None)
    entries.add_argument("--action", default=None)
    audit.add_parser("verify", help="check the whole chain (exit 1 if it is broken)")
    export = audit.add_parser("export", help="the whole log as JSON lines")
    export.add_argument("--output", default=None, help="write to this file (default stdout)")
    admin.set_defaults(func=_cmd_admin)


_ROLES = ("security-admin", "admin", "helpdesk", "auditor")


def _parse_lifetime(text: str | None) -> int | None:
    """A ticket lifetime, written as every duration setting is (sealwire.settings)."""
    from sealwire.settings import parse_duration

    if text is None:
        return None
    try:
        return int(parse_duration(text, whole=True))
    except ValueError:
        raise ConfigError(f"{text!r} is not a lifetime: use e.g. 30m, 48h or 7d") from None


def _cmd_admin(args: argparse.Namespace) -> int:
    client = AdminClient(args)
    area, op = args.area, getattr(args, "op", None)
    if area == "login":
        password = read_password(
            f"Password of {args.user}: ",
            args.password_file,
            "SEALWIRE_ADMIN_PASSWORD",
            confirm=False,
        )
        client.login(args.user, password)
        who = client.request("GET", "/v1/session")
        _show(args, who, f"Logged in to {client.url} as {who['username']} ({who['role']}).")
        return 0
    if area == "logout":
        client.logout()
        _show(args, {"logged_out": True}, "Logged out.")
        return 0
    handler = _HANDLERS[(area, op)]
    code: int = handler(client, args)
    return code


def _show(args: argparse.Namespace, result: Any, text: str | None = None) -> None:
    """``result`` as JSON (``--json``: json.dumps escapes every non-ASCII character), else
    ``text`` or its keys and values, made safe for a terminal: the server's answers carry
    names other administrators typed."""
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif text is not None:
        print(for_terminal(text))
    elif isinstance(result, dict):
        for key, value in result.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(str(v) for v in value) or "-"
            elif value is None:
                value = "-"
            print(for_terminal(f"{key:<24} {value}"))
    else:
        print(for_terminal(str(result)))


def _table(args: argparse.Namespace, rows: list[Any], columns: list[str], empty: str) -> None:
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows:
        print(empty)
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return for_terminal(",".join(str(v) for v in value)) or "-"
    return for_terminal(str(value))


def _when(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def _print_ticket(result: dict[str, Any], *, added: bool) -> None:
    until = _when(result["expires_at"])
    username, ticket = for_terminal(result["username"]), for_terminal(result["ticket"])
    if added:
        print(f"Added {username}.")
    print(
        "Activation ticket (not secret; give it to the person):\n"
        f"  {ticket}\n"
        f"One-time activation password (give it separately; valid until {until}):\n"
        f"  {for_terminal(result['password'])}\n"
        "On the device:\n"
        f"  sealwire device --home ./{username} activate '{ticket}'"
    )


def _path(*parts: str) -> str:
    from urllib.parse import quote

    return "/" + "/".join(quote(part, safe="") for part in parts)


# --- the areas ----------------------------------------------------------------------------


def _whoami(c: AdminClient, args: argparse.Namespace) -> int:
    who = c.request("GET", "/v1/session")
    _show(args, who, f"{who['username']} ({who['role']}): {', '.join(who['permissions'])}")
    return 0


def _status(c: AdminClient, args: argparse.Namespace) -> int:
    _show(args, c.request("GET", "/v1/status"))
    return 0


def _user_add(c: AdminClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"username": args.username, "display_name": args.name or args.username}
    lifetime = _parse_lifetime(args.lifetime)
    if lifetime is not None:
        body["lifetime_s"] = lifetime
    if args.group:
        body["groups"] = args.group
    result = c.request("POST", "/v1/users", body=body)
    if args.json:
        _show(args, result)
    else:
        _print_ticket(result, added=True)
    return 0


def _user_ticket(c: AdminClient, args: argparse.Namespace) -> int:
    lifetime = _parse_lifetime(args.lifetime)
    body = {} if lifetime is None else {"lifetime_s": lifetime}
    result = c.request("POST", _path("v1", "users", args.username, "tickets"), body=body)
    if args.json:
        _show(args, result)
    else:
        _print_ticket(result, added=False)
    return 0


def _user_list(c: AdminClient, args: argparse.Namespace) -> int:
    rows = c.request("GET", "/v1/users")
    if args.json or not rows:
        _table(args, rows, [], "no people yet: add one with `sealwire admin user add NAME`")
        return 0
    for user in rows:
        line = (
            f"{user['username']:<20} {user['display_name']:<30} {user['state']:<9} "
            f"{user['devices']} device(s)  policy {user['policy']}"
            + (f"  groups {','.join(user['groups'])}" if user["groups"] else "")
        )
        print(for_terminal(line))
    return 0


def _user_one(method: str, suffix: str | None) -> Any:
    def run(c: AdminClient, args: argparse.Namespace) -> int:
        parts = ["v1", "users", args.username] + ([suffix] if suffix else [])
        _show(args, c.request(method, _path(*parts)))
        return 0

    return run


def _group_create(c: AdminClient, args: argparse.Namespace) -> int:
    body = {
        "name": args.name,
        "description": args.description,
        "priority": args.priority,
        "policy": args.policy,
    }
    _show(args, c.request("POST", "/v1/groups", body=body))
    return 0


def _group_list(c: AdminClient, args: argparse.Namespace) -> int:
    rows = c.request("GET", "/v1/groups")
    _table(args, rows, ["name", "priority", "policy", "members", "description"], "no groups")
    return 0


def _group_show(c: AdminClient, args: argparse.Namespace) -> int:
    _show(args, c.request("GET", _path("v1", "groups", args.name)))
    return 0


def _group_set(c: AdminClient, args: argparse.Namespace) -> int:
    body = {
        k: v
        for k, v in (("description", args.description), ("priority", args.priority))
        if v is not None
    }
    _show(args, c.request("PATCH", _path("v1", "groups", args.name), body=body))
    return 0


def _group_member(method: str) -> Any:
    def run(c: AdminClient, args: argparse.Namespace) -> int:
        path = _path("v1", "groups", args.name, "members", args.username)
        _show(args, c.request(method, path))
        return 0

    return run


def _group_policy(c: AdminClient, args: argparse.Namespace) -> int:
    policy = None if args.policy == "none" else args.policy
    path = _path("v1", "groups", args.name, "policy")
    _show(args, c.request("PUT", path, body={"policy": policy}))
    return 0


def _group_delete(c: AdminClient, args: argparse.Namespace) -> int:
    c.request("DELETE", _path("v1", "groups", args.name))
    _show(args, {"deleted": args.name}, f"Deleted the group {args.name}.")
    return 0


def _policy_list(c: AdminClient, args: argparse.Namespace) -> int:
    rows = c.request("GET", "/v1/policies")
    if not args.json:
        for row in rows:
            row["settings"] = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
    _table(args, rows, ["name", "version", "groups", "updated_by", "settings"], "no policies")
    return 0


def _policy_show(c: AdminClient, args: argparse.Namespace) -> int:
    _show(args, c.request("GET", _path("v1", "policies", args.name)))
    return 0


def _policy_set(c: AdminClient, args: argparse.Namespace) -> int:
    from sealwire.errors import NotFound

    try:
        current = c.request("GET", _path("v1", "policies", args.name))["settings"]
    except NotFound:
        current = {}  # a new policy: what is not given takes the default
    for name, _ in _POLICY_SETTINGS:
        if getattr(args, name) is not None:
            current[name] = getattr(args, name)
    if args.export_allowed is not None:
        current["export_allowed"] = args.export_allowed
    _show(args, c.request("PUT", _path("v1", "policies", args.name), body=current))
    return 0


def _policy_delete(c: AdminClient, args: argparse.Namespace) -> int:
    c.request("DELETE", _path("v1", "policies", args.name))
    _show(args, {"deleted": args.name}, f"Deleted the policy {args.name}.")
    return 0


def _device_list(c: AdminClient, args: argparse.Namespace) -> int:
    username = args.user or args.username
    rows = c.request("GET", "/v1/devices", params={"username": username} if username else None)
    if args.json or not rows:
        _table(args, rows, [], "no activated devices")
        return 0
    for device in rows:
        compliant = {None: "not reported", True: "compliant", False: "NOT compliant"}
        line = (
            f"{device['username']:<20} {device['short']:<24} {device['state']:<9} "
            f"activated {_when(device['activated_at'])}  {compliant[device['compliant']]}"
        )
        print(for_terminal(line))
    return 0


def _device_show(c: AdminClient, args: argparse.Namespace) -> int:
    _show(args, c.request("GET", _path("v1", "devices", args.address)))
    return 0


def _device_command(kind: str) -> Any:
    def run(c: AdminClient, args: argparse.Namespace) -> int:
        body: dict[str, Any] = {"kind": kind}
        if getattr(args, "new_passcode", False):
            body["new_passcode"] = read_password(
                "New passcode for the device: ", None, "SEALWIRE_ADMIN_NEW_PASSCODE", confirm=True
            )
        result = c.request("POST", _path("v1", "devices", args.address, "commands"), body=body)
        text = (
            f"{kind} command {result['command_id']} for {result['username']}'s device: "
            f"{result['state']} (follow it with `sealwire admin command show "
            f"{result['command_id']}`)"
        )
        _show(args, result, text)
        return 0

    return run


def _command_list(c: AdminClient, args: argparse.Namespace) -> int:
    params = {"device": args.device} if args.device else None
    rows = c.request("GET", "/v1/commands", params=params)
    columns = ["command_id", "kind", "username", "state", "created_by", "detail"]
    _table(args, rows, columns, "no commands")
    return 0


def _command_show(c: AdminClient, args: argparse.Namespace) -> int:
    _show(args, c.request("GET", _path("v1", "commands", args.command_id)))
    return 0


def _account_list(c: AdminClient, args: argparse.Namespace) -> int:
    rows = c.request("GET", "/v1/accounts")
    _table(args, rows, ["username", "role", "state"], "no administrators")
    return 0


def _account_add(c: AdminClient, args: argparse.Namespace) -> int:
    password = read_password(
        f"Password for {args.username}: ",
        args.password_file,
        "SEALWIRE_ADMIN_NEW_PASSWORD",
        confirm=True,
    )
    body = {"username": args.username, "password": password, "role": args.role}
    _show(args, c.request("POST", "/v1/accounts", body=body))
    return 0


def _account_role(c: AdminClient, args: argparse.Namespace) -> int:
    path = _path("v1", "accounts", args.username)
    _show(args, c.request("PATCH", path, body={"role": args.role}))
    return 0


def _account_password(c: AdminClient, args: argparse.Namespace) -> int:
    password = read_password(
        f"New password for {args.username}: ",
        args.password_file,
        "SEALWIRE_ADMIN_NEW_PASSWORD",
        confirm=True,
    )
    path = _path("v1", "accounts", args.username)
    _show(args, c.request("PATCH", path, body={"password": password}))
    return 0


def _account_state(op: str) -> Any:
    def run(c: AdminClient, args: argparse.Namespace) -> int:
        _show(args, c.request("POST", _path("v1", "accounts", args.username, op)))
        return 0

    return run


def _audit_list(c: AdminClient, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"after": args.after, "limit": args.limit}
    params.update({k: v for k, v in (("actor", args.actor), ("action", args.action)) if v})
    rows = c.request("GET", "/v1/audit", params=params)
    if args.json:
        _table(args, rows, [], "")
        return 0
    if not rows:
        print("no entries")
    for entry in rows:
        details = json.dumps(entry["details"], sort_keys=True) if entry["details"] else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry["at"] // 1000))
        line = (
            f"{entry['seq']:>6}  {when}  {entry['actor']:<16} {entry['action']:<22} "
            f"{entry['target']} {details}"
        )
        print(for_terminal(line.rstrip()))
    return 0


def _audit_verify(c: AdminClient, args: argparse.Namespace) -> int:
    verdict = c.request("GET", "/v1/audit/verify")
    if verdict["ok"]:
        _show(args, verdict, f"The audit log verifies: {verdict['checked']} entries.")
        return 0
    _show(
        args,
        verdict,
        f"The audit log is BROKEN at entry {verdict['first_broken']}: {verdict['reason']} "
        f"({verdict['checked']} entries before it check out).",
    )
    return 1


def _audit_export(c: AdminClient, args: argparse.Namespace) -> int:
    lines = c.stream("/v1/audit/export")
    where = "" if args.output is None else f" to {args.output}"
    with contextlib.ExitStack() as stack:
        out = sys.stdout
        if args.output is not None:
            out = stack.enter_context(open(args.output, "w", encoding="ascii"))
        count, unreadable, cut = 0, [], None
        try:
            for line in lines:
                out.write(line + "\n")  # every line, a marked one too: the file shows where
                marker = _export_marker(line)
                if marker is None:
                    count += 1
                elif marker.get("seq") is None:
                    cut = str(marker["error"])
                else:
                    unreadable.append((marker["seq"], str(marker["error"])))
        except TransportError as exc:
            cut = str(exc)
    if cut is not None:
        raise TransportError(
            f"the audit export was cut short after {count} entries ({cut}); the {count} entries "
            f"received were written{where}; export again"
        )
    if unreadable:
        seqs = ", ".join(str(seq) for seq, _ in unreadable)
        reasons = "; ".join(dict.fromkeys(reason for _, reason in unreadable))
        which = f"entry {seqs}" if len(unreadable) == 1 else f"entries {seqs}"
        raise StorageError(
            f"audit {which} could not be read ({reasons}); the other {count} entries were "
            f"written{where}"
        )
    if args.output is not None:
        print(f"Wrote {count} entries to {args.output}.", file=sys.stderr)
    return 0


def _export_marker(line: str) -> dict[str, Any] | None:
    """A line of the export marking what the server could not export (``{"error"}``, with
    the entry's ``seq`` or without one if the export stopped), or ``None`` for an entry."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "error" in obj else None


_HANDLERS: dict[tuple[str, str | None], Any] = {
    ("whoami", None): _whoami,
    ("status", None): _status,
    ("user", "add"): _user_add,
    ("user", "ticket"): _user_ticket,
    ("user", "list"): _user_list,
    ("user", "show"): _user_one("GET", None),
    ("user", "disable"): _user_one("POST", "disable"),
    ("user", "enable"): _user_one("POST", "enable"),
    ("group", "create"): _group_create,
    ("group", "list"): _group_list,
    ("group", "show"): _group_show,
    ("group", "set"): _group_set,
    ("group", "add"): _group_member("PUT"),
    ("group", "remove"): _group_member("DELETE"),
    ("group", "policy"): _group_policy,
    ("group", "delete"): _group_delete,
    ("policy", "list"): _policy_list,
    ("policy", "show"): _policy_show,
    ("policy", "set"): _policy_set,
    ("policy", "delete"): _policy_delete,
    ("device", "list"): _device_list,
    ("device", "show"): _device_show,
    ("device", "lock"): _device_command("lock"),
    ("device", "wipe"): _device_command("wipe"),
    ("device", "renew-keys"): _device_command("renew-keys"),
    ("command", "list"): _command_list,
    ("command", "show"): _command_show,
    ("account", "list"): _account_list,
    ("account", "add"): _account_add,
    ("account", "role"): _account_role,
    ("account", "password"): _account_password,
    ("account", "disable"): _account_state("disable"),
    ("account", "enable"): _account_state("enable"),
    ("audit", "list"): _audit_list,
    ("audit", "verify"): _audit_verify,
    ("audit", "export"): _audit_export,
}
