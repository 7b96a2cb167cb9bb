"""``sealwire server``, ``sealwire up`` and ``sealwire admin``: the enterprise server, the
all-in-one embedded deployment, and the administrator's client of the running server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sealwire.errors import (
    AdminError,
    AuthenticationFailed,
    ConfigError,
    StorageError,
    TransportError,
)

from ._text import ask_secret, decode_input, for_terminal
from .db import add_db_parser

__all__ = ["add_server_parsers"]

_SERVER_FLAGS: dict[str, dict[str, Any]] = {
    "relay": {"help": "relay URL (first run; remembered), e.g. wss://relay.example.com"},
    "organisation": {"help": "the organisation's name shown to people (first run)"},
    "database": {"help": "database URL (default: SQLite in DATA/server/server.db)"},
    "key_file": {"help": "key file sealing the server's keys (default DATA/server/master.key)"},
    "ticket_lifetime_s": {"type": int, "help": "default activation password lifetime (48 h)"},
    "admin_listen": {"help": "admin API address HOST:PORT (default 127.0.0.1:8444; port 0: any)"},
    "admin_tls_cert": {"help": "PEM certificate for the admin API (HTTPS)"},
    "admin_tls_key": {"help": "PEM private key for --admin-tls-cert"},
    "log_format": {"choices": ["json", "text"], "help": "log format (default json)"},
    "log_level": {"help": "debug, info, warning or error"},
}


def add_server_parsers(sub: Any) -> None:
    """Add ``server``, ``up`` and ``admin`` to the ``sealwire`` parser."""
    server = sub.add_parser(
        "server",
        help="run the enterprise server (dials out to the relay; no inbound port)",
        description="Run the organisation's enterprise server. The first run creates the "
        "organisation: its root key, the server's certificate and the database. Settings: "
        "SEALWIRE_SERVER_* environment variables, then these flags (docs/OPERATIONS.md).",
    )
    server.add_argument("--data", default=None, help="data directory (default ./sealwire-data)")
    for name, options in _SERVER_FLAGS.items():
        server.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **options)
    server.add_argument(
        "--passphrase",
        action="store_true",
        default=None,
        help="first run: seal the keys under a passphrase (asked, or SEALWIRE_SERVER_PASSPHRASE) "
        "instead of a key file",
    )
    server.add_argument(
        "--admin-allow-plain",
        action="store_true",
        default=None,
        help="allow plain HTTP for the admin API off loopback (behind a TLS proxy only)",
    )
    server.set_defaults(func=_cmd_server)
    add_db_parser(server, _server_config)  # sealwire server db status|upgrade

    up = sub.add_parser(
        "up", help="run a relay and an enterprise server on embedded defaults in one process"
    )
    up.add_argument("--data", default="./sealwire-data", help="data directory")
    up.add_argument("--host", default="127.0.0.1", help="relay address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8443, help="relay port (default 8443)")
    up.add_argument("--organisation", default=None, help="organisation name (first run)")
    up.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="admin API port on the same address (default 8444; 0 with --port 0: any free one)",
    )
    up.set_defaults(func=_cmd_up)

    _add_admin_parser(sub)


# --- sealwire server ---------------------------------------------------------------------


def _server_config(args: argparse.Namespace, **forced: Any) -> Any:
    from sealwire.server.config import load_server_config

    overrides = {name: getattr(args, name, None) for name in _SERVER_FLAGS}
    overrides["data"] = getattr(args, "data", None)
    overrides["passphrase"] = getattr(args, "passphrase", None)
    overrides["admin_allow_plain"] = getattr(args, "admin_allow_plain", None)
    overrides.update(forced)
    return load_server_config(overrides=overrides)


def _passphrase(config: Any) -> str | None:
    """The operator passphrase, when the keys are (or are to be) sealed under one."""
    from sealwire.server.keystore import Protection, key_protection

    sealed = config.server_dir / "keys.sealed"
    needed = (
        key_protection(sealed) is Protection.PASSPHRASE if sealed.exists() else config.passphrase
    )
    if not needed:
        return None
    value = os.environ.get("SEALWIRE_SERVER_PASSPHRASE")
    if value:
        return value
    if not sys.stdin.isatty():
        raise ConfigError("the server's keys need a passphrase: set SEALWIRE_SERVER_PASSPHRASE")
    value = ask_secret("Server passphrase: ", "the passphrase")
    if not sealed.exists() and ask_secret("Again: ", "the passphrase") != value:
        raise ConfigError("the two passphrases differ")
    return value


def _cmd_server(args: argparse.Namespace) -> int:
    from sealwire.logs import configure_logging

    config = _server_config(args)
    configure_logging(config.log_format, config.log_level)
    os.umask(0o077)  # keys, database, admin URL and password files: this account only
    asyncio.run(_serve_server(config, _passphrase(config)))
    return 0


async def _start_server(config: Any, passphrase: str | None) -> tuple[Any, Any, str | None]:
    """Open the server, make its first administrator if it has none, serve the admin API,
    start the relay link. Returns the server, the admin API and where the first
    administrator's password was written (``None`` if there were administrators already)."""
    from sealwire.server.api import AdminApi, check_bind
    from sealwire.server.service import EnterpriseServer

    check_bind(config)  # refuse a plain-text admin API off loopback before touching anything
    server = EnterpriseServer.open(config, passphrase=passphrase)
    try:
        initial = await server.accounts.bootstrap(config.server_dir)
        api = AdminApi(server, config)
        await api.start()
    except BaseException:
        await server.stop()
        raise
    await server.start()
    return server, api, initial


def _admin_notice(api: Any, initial: str | None, data: str) -> str:
    """What the operator needs to log in (never the password itself)."""
    lines = [f"Admin API: {api.url} (OpenAPI at {api.url}/docs)."]
    if initial is not None:
        lines.append(
            f"First administrator: 'admin' (security admin); its password is in {initial} "
            f"(this account only). `sealwire admin --data {_quote(data)} ...` on this machine "
            "logs in with it by itself; change it with `sealwire admin account password admin`."
        )
    return "\n".join(lines)


async def _wait_for_relay(server: Any) -> None:
    waited = 0.0
    while True:
        try:
            await server.wait_connected(timeout=5.0)
            return
        except TimeoutError:
            waited += 5.0
            # A log record, not a bare line: standard error is the JSON log stream.
            logging.getLogger("sealwire.server").warning(
                "still trying to reach the relay",
                extra={"relay": server.relay_url, "waited_s": round(waited)},
            )


async def _serve_server(config: Any, passphrase: str | None) -> None:
    server, api, initial = await _start_server(config, passphrase)
    print(_admin_notice(api, initial, config.data), flush=True)
    stop = _stop_event()
    try:
        waiting = asyncio.create_task(_wait_for_relay(server))
        await asyncio.wait(
            [waiting, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if waiting.done():
            print(
                f"sealwire server ready: organisation {server.organisation_name!r} "
                f"({server.organisation.hex()[:16]}…), relay {server.relay_url}, "
                f"admin API {api.url}",
                flush=True,
            )
        else:
            waiting.cancel()
        await stop.wait()
    finally:
        logging.getLogger("sealwire.server").info("stopping")
        await api.stop()
        await server.stop()


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


# --- sealwire up -------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    from sealwire.logs import configure_logging

    os.umask(0o077)  # keys, databases and queues: readable by this account only
    configure_logging("text", os.environ.get("SEALWIRE_LOG_LEVEL", "warning"))
    asyncio.run(_serve_up(args))
    return 0


async def _serve_up(args: argparse.Namespace) -> None:
    from sealwire.relay.config import load_config
    from sealwire.relay.service import Relay

    data = Path(args.data)
    if data.exists() and not data.is_dir():
        raise ConfigError(f"the data directory {data} is not a directory: give another --data")
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    relay_config = load_config(
        None,
        env={},
        overrides={
            "host": args.host,
            "port": args.port,
            "data": str(data / "relay"),
            "metrics": "",
            "log_format": "text",
        },
    )
    relay = Relay(relay_config)
    try:
        await relay.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot start the relay on {args.host}:{args.port}: {exc.strerror or exc} "
            "(is another `sealwire up` running? use --port)"
        ) from None
    try:
        config = _server_config(
            argparse.Namespace(), data=str(data), relay=relay.origin, organisation=args.organisation
        )
        admin_port = args.admin_port
        if admin_port is None:
            admin_port = 0 if args.port == 0 else 8444
        # The admin API stays on loopback whatever address the relay serves.
        config = dataclasses.replace(config, admin_listen=f"127.0.0.1:{admin_port}")
        server, api, initial = await _start_server(config, _passphrase(config))
    except BaseException:
        await relay.stop()
        raise
    stop = _stop_event()
    try:
        try:
            await server.wait_connected(timeout=30)
        except TimeoutError:
            raise ConfigError(
                f"the enterprise server could not reach its relay at {relay.origin} in 30 s"
            ) from None
        admin = f"sealwire admin --data {_quote(str(data))}"
        print(
            f"sealwire up: ready. Relay {relay.origin} and enterprise server of "
            f"{server.organisation_name!r} running in {data}.\n"
            "\n"
            "Next, in another terminal:\n"
            f'  1. add people:        {admin} user add alice --name "Alice Example"\n'
            f'                        {admin} user add bob --name "Bob Example"\n'
            "  2. activate devices:  sealwire device --home ./alice activate TICKET\n"
            "     (each asks for the one-time password printed in step 1, then a passcode)\n"
            '  3. send a message:    sealwire device --home ./alice send bob "hello"\n'
            "     and read it:       sealwire device --home ./bob inbox\n"
            "\n"
            f"Administration: {admin} --help (people, groups, policies, devices, audit).\n"
            f"{_admin_notice(api, initial, str(data))}\n"
            f"Log in elsewhere: sealwire admin --url {api.url} login --user admin\n"
            "\n"
            "Ctrl-C stops both; data stays in the data directory.",
            flush=True,
        )
        await stop.wait()
    finally:
        print("sealwire up: stopping", file=sys.stderr, flush=True)
        await api.stop()
        await server.stop()
        await relay.stop()


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w./-]+", text) else repr(text)


# --- sealwire admin ----------------------------------------------------------------------
#
# A client of the admin API (sealwire.server.api). Where the server is: --url, else
# $SEALWIRE_ADMIN_URL, else DATA/server/admin-url (written by the running server). Who is
# asking, in order: $SEALWIRE_ADMIN_TOKEN; the stored token (DATA/server/admin-token when this
# machine has the server's directory, else $XDG_CONFIG_HOME/sealwire/admin-token); and, on the
# server's own machine, the first administrator's password in DATA/server/initial-admin-password
# (logged in with automatically, the token then stored).

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TOKEN_FILE = "admin-token"  # noqa: S105 (a file name)
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


def _add_admin_parser(sub: Any) -> None:
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
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if match is None:
        raise ConfigError(f"{text!r} is not a lifetime: use e.g. 30m, 48h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


class _Client:
    """The admin API, as the operator at the keyboard uses it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.data = Path(args.data or os.environ.get("SEALWIRE_DATA", "./sealwire-data"))
        self.server_dir = self.data / "server"
        self.url = args.url or os.environ.get("SEALWIRE_ADMIN_URL") or self._url_from_data()
        self.url = self.url.rstrip("/")
        self.verify: Any = args.cafile or True
        if self.server_dir.is_dir():
            self.token_file = self.server_dir / _TOKEN_FILE
        else:
            config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
            self.token_file = config / "sealwire" / _TOKEN_FILE
        self.initial = self.server_dir / "initial-admin-password"

    def _url_from_data(self) -> str:
        try:
            return (self.server_dir / "admin-url").read_text().strip()
        except OSError:
            raise TransportError(
                f"no enterprise server is running with its admin API for {self.data}: start it "
                "with `sealwire server` or `sealwire up` (same --data), or give --url"
            ) from None

    # --- HTTP -----------------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, body: Any = None, params: Any = None, auth: bool = True
    ) -> Any:
        """One request; its JSON answer. Raises the AdminError of an HTTP error status."""
        headers = {}
        token = self._token() if auth else None
        if token is not None:
            headers["Authorization"] = f"Bearer {token[0]}"
        response = self._send(method, path, body, params, headers)
        expired = response.status_code == 401 and token is not None and token[1] == "stored"
        if expired and self.initial.exists():
            # The stored token expired: on the server's machine, the initial password may do.
            headers["Authorization"] = f"Bearer {self._login_initial()}"
            response = self._send(method, path, body, params, headers)
        return self._answer(response)

    def stream(self, path: str) -> Iterator[str]:
        """The lines of a streamed answer, once it started (HTTP 200).

        Raises:
            TransportError: before the answer, the server cannot be reached; while iterating,
                the answer broke off (the message says so, not that no server is running).
            AdminError: the answer is an HTTP error status.
        """
        import httpx

        token = self._token()
        headers = {"Authorization": f"Bearer {token[0]}"} if token else {}
        client = httpx.Client(base_url=self.url, verify=self.verify, timeout=60)
        try:
            response = client.send(client.build_request("GET", path, headers=headers), stream=True)
        except httpx.TransportError as exc:
            client.close()
            raise self._unreachable(exc) from None
        try:
            if response.status_code != 200:
                response.read()
                self._answer(response)
        except BaseException:
            response.close()
            client.close()
            raise
        return self._lines(client, response)

    @staticmethod
    def _lines(client: Any, response: Any) -> Iterator[str]:
        import httpx

        try:
            yield from response.iter_lines()
        except httpx.HTTPError as exc:
            raise TransportError(f"the server's answer broke off: {exc}") from None
        finally:
            response.close()
            client.close()

    def _send(self, method: str, path: str, body: Any, params: Any, headers: dict[str, str]) -> Any:
        import httpx

        try:
            with httpx.Client(base_url=self.url, verify=self.verify, timeout=60) as client:
                return client.request(method, path, json=body, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: Exception) -> TransportError:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return TransportError(
                f"the admin API at {self.url} presented a certificate this machine does not "
                f"trust ({exc}): give its CA certificate with --cafile"
            )
        return TransportError(
            f"no enterprise server is running with its admin API at {self.url} ({exc}): start "
            "it with `sealwire server` or `sealwire up` (same --data), or check --url"
        )

    @staticmethod
    def _answer(response: Any) -> Any:
        from sealwire._http_errors import error_from_answer  # the API's own table

        try:
            answer = response.json()
        except ValueError:
            answer = {"detail": response.text[:200]}
        if response.status_code < 400:
            return answer
        raise error_from_answer(response.status_code, answer)

    # --- credentials ----------------------------------------------------------------------

    def _token(self) -> tuple[str, str] | None:
        """The token to send and where it came from (env, stored, initial)."""
        env = os.environ.get("SEALWIRE_ADMIN_TOKEN")
        if env:
            return env.strip(), "env"
        try:
            stored = self.token_file.read_text().strip()
        except OSError:
            stored = ""
        if stored:
            return stored, "stored"
        if self.initial.exists():
            return self._login_initial(), "initial"
        raise AuthenticationFailed(
            f"not logged in to {self.url}: run `sealwire admin login --user NAME`"
        )

    def _login_initial(self) -> str:
        password = self.initial.read_text().strip()
        try:
            return self.login("admin", password)
        except AuthenticationFailed:
            raise AuthenticationFailed(
                f"the first administrator's password in {self.initial} no longer works (it was "
                "changed?): log in with `sealwire admin login --user NAME`, and delete that file"
            ) from None

    def login(self, username: str, password: str) -> str:
        answer = self.request(
            "POST", "/v1/session", body={"username": username, "password": password}, auth=False
        )
        token = str(answer["token"])
        _write_private(self.token_file, token + "\n")
        return token

    def logout(self) -> None:
        try:
            stored = self.token_file.read_text().strip()
        except OSError:
            return
        with contextlib.suppress(AdminError):
            self._answer(self._send("DELETE", "/v1/session", None, None, _bearer(stored)))
        self.token_file.unlink(missing_ok=True)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(temporary, path)


def _password(prompt: str, path: str | None, env: str, *, confirm: bool) -> str:
    """A password from a file, the environment, or the terminal (never the command line)."""
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the password file {path}: {exc.strerror}") from None
        return decode_input(data, f"the password file {path}").rstrip("\r\n")
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise ConfigError(f"no terminal to ask for the password: use --password-file or {env}")
    value = ask_secret(prompt, "the password")
    if confirm and ask_secret("Again: ", "the password") != value:
        raise ConfigError("the two passwords differ")
    return value


def _cmd_admin(args: argparse.Namespace) -> int:
    client = _Client(args)
    area, op = args.area, getattr(args, "op", None)
    if area == "login":
        password = _password(
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


def _whoami(c: _Client, args: argparse.Namespace) -> int:
    who = c.request("GET", "/v1/session")
    _show(args, who, f"{who['username']} ({who['role']}): {', '.join(who['permissions'])}")
    return 0


def _status(c: _Client, args: argparse.Namespace) -> int:
    _show(args, c.request("GET", "/v1/status"))
    return 0


def _user_add(c: _Client, args: argparse.Namespace) -> int:
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


def _user_ticket(c: _Client, args: argparse.Namespace) -> int:
    lifetime = _parse_lifetime(args.lifetime)
    body = {} if lifetime is None else {"lifetime_s": lifetime}
    result = c.request("POST", _path("v1", "users", args.username, "tickets"), body=body)
    if args.json:
        _show(args, result)
    else:
        _print_ticket(result, added=False)
    return 0


def _user_list(c: _Client, args: argparse.Namespace) -> int:
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
    def run(c: _Client, args: argparse.Namespace) -> int:
        parts = ["v1", "users", args.username] + ([suffix] if suffix else [])
        _show(args, c.request(method, _path(*parts)))
        return 0

    return run


def _group_create(c: _Client, args: argparse.Namespace) -> int:
    body = {
        "name": args.name,
        "description": args.description,
        "priority": args.priority,
        "policy": args.policy,
    }
    _show(args, c.request("POST", "/v1/groups", body=body))
    return 0


def _group_list(c: _Client, args: argparse.Namespace) -> int:
    rows = c.request("GET", "/v1/groups")
    _table(args, rows, ["name", "priority", "policy", "members", "description"], "no groups")
    return 0


def _group_show(c: _Client, args: argparse.Namespace) -> int:
    _show(args, c.request("GET", _path("v1", "groups", args.name)))
    return 0


def _group_set(c: _Client, args: argparse.Namespace) -> int:
    body = {
        k: v
        for k, v in (("description", args.description), ("priority", args.priority))
        if v is not None
    }
    _show(args, c.request("PATCH", _path("v1", "groups", args.name), body=body))
    return 0


def _group_member(method: str) -> Any:
    def run(c: _Client, args: argparse.Namespace) -> int:
        path = _path("v1", "groups", args.name, "members", args.username)
        _show(args, c.request(method, path))
        return 0

    return run


def _group_policy(c: _Client, args: argparse.Namespace) -> int:
    policy = None if args.policy == "none" else args.policy
    path = _path("v1", "groups", args.name, "policy")
    _show(args, c.request("PUT", path, body={"policy": policy}))
    return 0


def _group_delete(c: _Client, args: argparse.Namespace) -> int:
    c.request("DELETE", _path("v1", "groups", args.name))
    _show(args, {"deleted": args.name}, f"Deleted the group {args.name}.")
    return 0


def _policy_list(c: _Client, args: argparse.Namespace) -> int:
    rows = c.request("GET", "/v1/policies")
    if not args.json:
        for row in rows:
            row["settings"] = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
    _table(args, rows, ["name", "version", "groups", "updated_by", "settings"], "no policies")
    return 0


def _policy_show(c: _Client, args: argparse.Namespace) -> int:
    _show(args, c.request("GET", _path("v1", "policies", args.name)))
    return 0


def _policy_set(c: _Client, args: argparse.Namespace) -> int:
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


def _policy_delete(c: _Client, args: argparse.Namespace) -> int:
    c.request("DELETE", _path("v1", "policies", args.name))
    _show(args, {"deleted": args.name}, f"Deleted the policy {args.name}.")
    return 0


def _device_list(c: _Client, args: argparse.Namespace) -> int:
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


def _device_show(c: _Client, args: argparse.Namespace) -> int:
    _show(args, c.request("GET", _path("v1", "devices", args.address)))
    return 0


def _device_command(kind: str) -> Any:
    def run(c: _Client, args: argparse.Namespace) -> int:
        body: dict[str, Any] = {"kind": kind}
        if getattr(args, "new_passcode", False):
            body["new_passcode"] = _password(
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


def _command_list(c: _Client, args: argparse.Namespace) -> int:
    params = {"device": args.device} if args.device else None
    rows = c.request("GET", "/v1/commands", params=params)
    columns = ["command_id", "kind", "username", "state", "created_by", "detail"]
    _table(args, rows, columns, "no commands")
    return 0


def _command_show(c: _Client, args: argparse.Namespace) -> int:
    _show(args, c.request("GET", _path("v1", "commands", args.command_id)))
    return 0


def _account_list(c: _Client, args: argparse.Namespace) -> int:
    rows = c.request("GET", "/v1/accounts")
    _table(args, rows, ["username", "role", "state"], "no administrators")
    return 0


def _account_add(c: _Client, args: argparse.Namespace) -> int:
    password = _password(
        f"Password for {args.username}: ",
        args.password_file,
        "SEALWIRE_ADMIN_NEW_PASSWORD",
        confirm=True,
    )
    body = {"username": args.username, "password": password, "role": args.role}
    _show(args, c.request("POST", "/v1/accounts", body=body))
    return 0


def _account_role(c: _Client, args: argparse.Namespace) -> int:
    path = _path("v1", "accounts", args.username)
    _show(args, c.request("PATCH", path, body={"role": args.role}))
    return 0


def _account_password(c: _Client, args: argparse.Namespace) -> int:
    password = _password(
        f"New password for {args.username}: ",
        args.password_file,
        "SEALWIRE_ADMIN_NEW_PASSWORD",
        confirm=True,
    )
    path = _path("v1", "accounts", args.username)
    _show(args, c.request("PATCH", path, body={"password": password}))
    return 0


def _account_state(op: str) -> Any:
    def run(c: _Client, args: argparse.Namespace) -> int:
        _show(args, c.request("POST", _path("v1", "accounts", args.username, op)))
        return 0

    return run


def _audit_list(c: _Client, args: argparse.Namespace) -> int:
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


def _audit_verify(c: _Client, args: argparse.Namespace) -> int:
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


def _audit_export(c: _Client, args: argparse.Namespace) -> int:
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
