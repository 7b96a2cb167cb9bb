"""``sealwire server``, ``sealwire up`` and ``sealwire admin``: the enterprise server, the
all-in-one embedded deployment, and the administrator's client of the running server."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from sealwire.errors import ConfigError

__all__ = ["add_server_parsers"]

_SERVER_FLAGS: dict[str, dict[str, Any]] = {
    "relay": {"help": "relay URL (first run; remembered), e.g. wss://relay.example.com"},
    "organisation": {"help": "the organisation's name shown to people (first run)"},
    "database": {"help": "database URL (default: SQLite in DATA/server/server.db)"},
    "key_file": {"help": "key file sealing the server's keys (default DATA/server/master.key)"},
    "ticket_lifetime_s": {"type": int, "help": "default activation password lifetime (48 h)"},
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
    server.set_defaults(func=_cmd_server)

    up = sub.add_parser(
        "up", help="run a relay and an enterprise server on embedded defaults in one process"
    )
    up.add_argument("--data", default="./sealwire-data", help="data directory")
    up.add_argument("--host", default="127.0.0.1", help="relay address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8443, help="relay port (default 8443)")
    up.add_argument("--organisation", default=None, help="organisation name (first run)")
    up.set_defaults(func=_cmd_up)

    admin = sub.add_parser(
        "admin",
        help="administer the running enterprise server (users, devices, status)",
        description="Talks to the running server through its local admin endpoint "
        "(DATA/server/admin.sock); never opens its database.",
    )
    admin.add_argument("--data", default="./sealwire-data", help="the server's data directory")
    admin.add_argument("--json", action="store_true", help="print results as JSON")
    what = admin.add_subparsers(dest="area", required=True, metavar="AREA")
    user = what.add_parser("user", help="people of the organisation")
    user_ops = user.add_subparsers(dest="op", required=True, metavar="OP")
    add = user_ops.add_parser("add", help="add a person and print their activation ticket")
    add.add_argument("username")
    add.add_argument("--name", default=None, help='display name, e.g. "Alice Example"')
    add.add_argument("--lifetime", default=None, help="password lifetime: 30m, 48h, 7d (max 30d)")
    ticket = user_ops.add_parser("ticket", help="new activation password (e.g. another device)")
    ticket.add_argument("username")
    ticket.add_argument("--lifetime", default=None, help="password lifetime (max 30d)")
    user_ops.add_parser("list", help="list people")
    device = what.add_parser("device", help="activated devices")
    device_ops = device.add_subparsers(dest="op", required=True, metavar="OP")
    listing = device_ops.add_parser("list", help="list devices")
    listing.add_argument("username", nargs="?")
    what.add_parser("status", help="the server's state")
    admin.set_defaults(func=_cmd_admin)


# --- sealwire server ---------------------------------------------------------------------


def _server_config(args: argparse.Namespace, **forced: Any) -> Any:
    from sealwire.server.config import load_server_config

    overrides = {name: getattr(args, name, None) for name in _SERVER_FLAGS}
    overrides["data"] = getattr(args, "data", None)
    overrides["passphrase"] = getattr(args, "passphrase", None)
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
    value = getpass.getpass("Server passphrase: ")
    if not sealed.exists() and getpass.getpass("Again: ") != value:
        raise ConfigError("the two passphrases differ")
    return value


def _cmd_server(args: argparse.Namespace) -> int:
    from sealwire.logs import configure_logging

    config = _server_config(args)
    configure_logging(config.log_format, config.log_level)
    os.umask(0o077)  # keys, database and admin socket: this account only
    asyncio.run(_serve_server(config, _passphrase(config)))
    return 0


async def _start_server(config: Any, passphrase: str | None) -> tuple[Any, Any]:
    from sealwire.server.admin import AdminEndpoint
    from sealwire.server.service import EnterpriseServer

    server = EnterpriseServer.open(config, passphrase=passphrase)
    endpoint = AdminEndpoint(server, config.admin_socket)
    try:
        await endpoint.start()
    except OSError as exc:
        server.store.close()
        raise ConfigError(f"cannot open the admin endpoint {config.admin_socket}: {exc}") from None
    await server.start()
    return server, endpoint


async def _wait_for_relay(server: Any) -> None:
    waited = 0.0
    while True:
        try:
            await server.wait_connected(timeout=5.0)
            return
        except TimeoutError:
            waited += 5.0
            print(
                f"sealwire server: still trying to reach the relay at {server.relay_url} "
                f"({waited:.0f} s)",
                file=sys.stderr,
                flush=True,
            )


async def _serve_server(config: Any, passphrase: str | None) -> None:
    server, endpoint = await _start_server(config, passphrase)
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
                f"admin endpoint {config.admin_socket}",
                flush=True,
            )
        else:
            waiting.cancel()
        await stop.wait()
    finally:
        print("sealwire server: stopping", file=sys.stderr, flush=True)
        await endpoint.stop()
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
        server, endpoint = await _start_server(config, _passphrase(config))
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
            "Ctrl-C stops both; data stays in the data directory.",
            flush=True,
        )
        await stop.wait()
    finally:
        print("sealwire up: stopping", file=sys.stderr, flush=True)
        await endpoint.stop()
        await server.stop()
        await relay.stop()


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w./-]+", text) else repr(text)


# --- sealwire admin ----------------------------------------------------------------------


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_lifetime(text: str | None) -> int | None:
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if match is None:
        raise ConfigError(f"{text!r} is not a lifetime: use e.g. 30m, 48h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def _cmd_admin(args: argparse.Namespace) -> int:
    from sealwire.server.admin import call

    socket = Path(args.data) / "server" / "admin.sock"
    if args.area == "status":
        op, fields = "status", {}
    elif args.area == "user" and args.op == "add":
        op = "user.add"
        fields = {"username": args.username, "display_name": args.name or args.username}
        lifetime = _parse_lifetime(args.lifetime)
        if lifetime is not None:
            fields["lifetime_s"] = lifetime
    elif args.area == "user" and args.op == "ticket":
        op, fields = "user.ticket", {"username": args.username}
        lifetime = _parse_lifetime(args.lifetime)
        if lifetime is not None:
            fields["lifetime_s"] = lifetime
    elif args.area == "user":
        op, fields = "user.list", {}
    else:
        op = "device.list"
        fields = {"username": args.username} if args.username else {}
    result = asyncio.run(call(socket, op, **fields))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    if op in {"user.add", "user.ticket"}:
        _print_ticket(result, added=op == "user.add")
    elif op == "status":
        for key, value in result.items():
            print(f"{key:<24} {value}")
    elif op == "user.list":
        if not result:
            print("no people yet: add one with `sealwire admin user add NAME`")
        for user in result:
            print(
                f"{user['username']:<20} {user['display_name']:<30} {user['state']:<9} "
                f"{user['devices']} device(s)"
            )
    else:
        if not result:
            print("no activated devices")
        for device in result:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(device["activated_at"]))
            print(
                f"{device['username']:<20} {device['address']:<24} {device['state']:<9} "
                f"activated {when} UTC"
            )
    return 0


def _print_ticket(result: dict[str, Any], *, added: bool) -> None:
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(result["expires_at"]))
    if added:
        print(f"Added {result['username']}.")
    print(
        "Activation ticket (not secret; give it to the person):\n"
        f"  {result['ticket']}\n"
        f"One-time activation password (give it separately; valid until {until}):\n"
        f"  {result['password']}\n"
        "On the device:\n"
        f"  sealwire device --home ./{result['username']} activate '{result['ticket']}'"
    )
