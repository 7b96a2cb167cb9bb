"""``sealwire server`` and ``sealwire up``: the enterprise server and the all-in-one embedded
deployment (``sealwire admin``, the administrator's client, is :mod:`sealwire.cli.admin`)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from sealwire.errors import ConfigError

from ._text import ask_secret
from .admin import add_admin_parser
from .db import add_db_parser

__all__ = ["add_server_parsers"]

_SERVER_FLAGS: dict[str, dict[str, Any]] = {
    "relay": {"help": "relay URL (first run; remembered), e.g. wss://relay.example.com"},
    "organisation": {"help": "the organisation's name shown to people (first run)"},
    "database": {"help": "database URL (default: SQLite in DATA/server/server.db)"},
    "key_file": {"help": "key file sealing the server's keys (default DATA/server/master.key)"},
    "ticket_lifetime_s": {"help": "default activation password lifetime: seconds, or e.g. 48h"},
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
        "--config FILE (TOML, a [server] table), then SEALWIRE_SERVER_* environment variables, "
        "then these flags (docs/OPERATIONS.md).",
    )
    server.add_argument(
        "--config", default=None, help="TOML settings file ([server] table; SEALWIRE_SERVER_CONFIG)"
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
    add_db_parser(  # sealwire server db status|upgrade, with the same settings as the server
        server,
        lambda a: _server_config(a, a.config or os.environ.get("SEALWIRE_SERVER_CONFIG")),
    )

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

    add_admin_parser(sub)


# --- sealwire server ---------------------------------------------------------------------


def _server_config(args: argparse.Namespace, file: str | None = None, **forced: Any) -> Any:
    from sealwire.server.config import load_server_config

    overrides = {name: getattr(args, name, None) for name in _SERVER_FLAGS}
    overrides["data"] = getattr(args, "data", None)
    overrides["passphrase"] = getattr(args, "passphrase", None)
    overrides["admin_allow_plain"] = getattr(args, "admin_allow_plain", None)
    overrides.update(forced)
    return load_server_config(file, overrides=overrides)


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

    config = _server_config(args, args.config or os.environ.get("SEALWIRE_SERVER_CONFIG"))
    configure_logging(config.log_format, config.log_level)
    os.umask(0o077)  # keys, database, admin URL and password files: this account only
    asyncio.run(_serve_server(config, _passphrase(config)))
    return 0


async def _start_server(config: Any, passphrase: str | None) -> tuple[Any, Any, str | None]:
    """Open the server, make its first administrator if it has none, serve the admin API,
    start the relay link. Returns the server, the admin API and where the first
    administrator's password was written (``None`` if there were administrators already)."""
    from sealwire.server import EnterpriseServer
    from sealwire.server.api import AdminApi, check_bind

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
