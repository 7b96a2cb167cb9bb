"""``sealwire device ...``: a person's device, through the :class:`~sealwire.device.Device`
façade. Secrets (activation password, passcode) come from the terminal, or from standard input
with ``--password-stdin`` / ``--passcode-stdin``; never from the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any

from sealwire.errors import ConfigError, SealwireError

from ._text import ask_secret, decode_input, for_terminal, json_line

__all__ = ["CONTINUATION", "add_device_parser", "format_message"]


def add_device_parser(sub: Any) -> None:
    """Add ``device`` to the ``sealwire`` parser."""
    device = sub.add_parser(
        "device",
        help="a person's device: activate, send, inbox, listen, devices, status, lock, unlock, "
        "passcode, export",
    )
    device.add_argument(
        "--home",
        default=os.environ.get("SEALWIRE_HOME", "./sealwire-device"),
        help="the device's home directory (default $SEALWIRE_HOME or ./sealwire-device)",
    )
    ops = device.add_subparsers(dest="op", required=True, metavar="OP")
    activate = ops.add_parser("activate", help="activate this device with a ticket")
    activate.add_argument("ticket", help="the activation ticket (sealwire-ticket:...)")
    activate.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the activation password, then the new passcode, from standard input",
    )
    send = ops.add_parser("send", help="send a message to a person")
    send.add_argument("user")
    send.add_argument("text", help="the message ('-' reads it from standard input)")
    inbox = ops.add_parser("inbox", help="fetch new messages and show the conversations")
    inbox.add_argument("--with", dest="peer", default=None, help="only the conversation with USER")
    inbox.add_argument("--offline", action="store_true", help="do not connect; show what is here")
    inbox.add_argument("--json", action="store_true", help="one JSON object per message")
    listen = ops.add_parser("listen", help="stay connected and print new messages")
    listen.add_argument("--json", action="store_true", help="one JSON object per message")
    devices = ops.add_parser("devices", help="list the devices of a person (default: yours)")
    devices.add_argument("user", nargs="?")
    ops.add_parser("status", help="this device: person, organisation, relay, lock state")
    ops.add_parser("lock", help="lock the store (the passcode is needed to unlock it)")
    unlock = ops.add_parser("unlock", help="unlock the store with the passcode")
    unlock.add_argument("--passcode-stdin", action="store_true", help="read it from stdin")
    passcode = ops.add_parser("passcode", help="set a new passcode (the device must be unlocked)")
    passcode.add_argument(
        "--passcode-stdin", action="store_true", help="read the new passcode from stdin"
    )
    export = ops.add_parser(
        "export", help="write every message as JSON lines (if your organisation allows it)"
    )
    export.add_argument("--output", "-o", default="-", help="a file (default: standard output)")
    device.set_defaults(func=_cmd_device)


def _secret(prompt: str, *, from_stdin: bool) -> str:
    what = prompt.lower().rstrip(": ")
    if from_stdin:
        line = sys.stdin.buffer.readline()  # bytes: decoded strictly, never surrogateescape
        if not line:
            raise ConfigError(f"standard input ended before the {what}")
        return decode_input(line, f"the {what} on standard input").rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ConfigError("no terminal to ask for secrets: use --password-stdin/--passcode-stdin")
    return ask_secret(prompt, f"the {what}")


CONTINUATION = "    | "
"""What starts each further line of a multi-line message in :func:`format_message`. A message
line starts with ``[``; a sender cannot start a line of their own, since every character that
could break or rewrite a line is shown escaped (:func:`~sealwire.cli._text.for_terminal`)."""


def format_message(record: Any, me: str) -> str:
    """A message for a person to read: one line, or, for a message of several lines, its
    further lines each under it after :data:`CONTINUATION`. Everything the peer or the server
    chose (names, text) goes through :func:`~sealwire.cli._text.for_terminal`."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.sent_at / 1000))
    lines = record.text.replace("\r\n", "\n").rstrip("\n").split("\n")
    text = ("\n" + CONTINUATION).join(for_terminal(line) for line in lines)
    if record.outgoing:
        state = record.state.name.lower()
        return f"[{when}] you → {for_terminal(record.recipient)} ({state}): {text}"
    return f"[{when}] {for_terminal(record.sender)} → you: {text}"


def _as_json(record: Any) -> str:
    return json_line(
        {
            "id": record.message_id.hex(),
            "from": record.sender,
            "to": record.recipient,
            "outgoing": record.outgoing,
            "state": record.state.name.lower(),
            "sent_at": record.sent_at,
            "text": record.text,
        }
    )


def _cmd_device(args: argparse.Namespace) -> int:
    from sealwire.logs import configure_logging

    configure_logging("text", os.environ.get("SEALWIRE_LOG_LEVEL", "warning"))
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()  # a faster event loop when the `speed` extra is installed
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from sealwire.device import Device

    if args.op == "activate":
        password = _secret("Activation password: ", from_stdin=args.password_stdin)
        passcode = _secret("New passcode for this device: ", from_stdin=args.password_stdin)
        if not args.password_stdin and ask_secret("Again: ", "the passcode") != passcode:
            raise ConfigError("the two passcodes differ")
        print("activating (this takes a few seconds)...", file=sys.stderr, flush=True)
        device = await Device.activate(args.home, args.ticket, password, passcode)
        info = device.info()
        device.close()
        print(
            f"activated: {for_terminal(info.display_name)} ({for_terminal(info.user)}) of "
            f"{for_terminal(info.organisation)}; device address {_short(info.address)}. "
            "The device is unlocked."
        )
        return 0
    device = Device.open(args.home)
    try:
        return await _with_device(device, args)
    finally:
        device.close()


async def _with_device(device: Any, args: argparse.Namespace) -> int:
    if args.op == "lock":
        device.lock()
        print("locked")
        return 0
    if args.op == "unlock":
        await device.unlock(_secret("Passcode: ", from_stdin=args.passcode_stdin))
        print("unlocked")
        _compliance_hint(device)
        return 0
    if args.op == "passcode":
        new = _secret("New passcode: ", from_stdin=args.passcode_stdin)
        if not args.passcode_stdin and ask_secret("Again: ", "the passcode") != new:
            raise ConfigError("the two passcodes differ")
        await device.change_passcode(new)
        with contextlib.suppress(SealwireError):  # tell the server it complies now
            async with device.online():
                pass
        print("passcode changed")
        return 0
    if args.op == "export":
        records = device.export_messages()
        lines = "".join(_as_json(record) + "\n" for record in records)
        if args.output == "-":
            sys.stdout.write(lines)
        else:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(lines)
            where = for_terminal(args.output)
            print(f"{len(records)} messages written to {where}", file=sys.stderr)
        return 0
    if args.op == "status":
        if device.locked:
            print(f"home         {for_terminal(str(device.store.home))}\nstate        locked")
            return 0
        info = device.info()
        expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info.certificate_expires))
        print(
            f"person       {for_terminal(info.display_name)} ({for_terminal(info.user)})\n"
            f"organisation {for_terminal(info.organisation)} "
            f"({info.organisation_id.hex()[:16]}…)\n"
            f"device       {_short(info.address)}\n"
            f"relay        {for_terminal(info.relay)}\n"
            f"certificate  valid until {expires}\n"
            f"policy       {_policy_line(device)}\n"
            f"state        unlocked"
        )
        return 0
    if args.op == "send":
        if args.text == "-":
            text = decode_input(sys.stdin.buffer.read(), "the message on standard input")
        else:
            text = args.text  # checked by main: valid UTF-8
        if not text.strip():
            raise ConfigError("the message is empty")
        await device.send(args.user, text)
        print(f"sent to {for_terminal(args.user)}")
        return 0
    if args.op == "inbox":
        if not args.offline:
            await device.sync()
        records = device.store.messages(peer=args.peer)
        me = device.info().user
        for record in records:
            print(_as_json(record) if args.json else format_message(record, me))
        if not records and not args.json:
            print("no messages")
        if not args.offline:
            async with device.online():
                await device.mark_read(records)
        else:
            await device.mark_read(records)
        return 0
    if args.op == "devices":
        async with device.online():
            found = await device.devices(args.user)
        for address, this in found:
            print(_short(address) + ("  (this device)" if this else ""))
        return 0
    if args.op == "listen":
        me = device.info().user
        stop = asyncio.Event()
        closed: list[BrokenPipeError] = []

        def show(record: Any) -> None:
            try:
                print(_as_json(record) if args.json else format_message(record, me), flush=True)
            except BrokenPipeError as exc:  # `listen | head`: stop, and main ends quietly
                closed.append(exc)
                stop.set()

        device.on_message = show
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"listening as {for_terminal(me)} (Ctrl-C stops)", file=sys.stderr, flush=True)
        await device.listen(stop)
        if closed:
            raise closed[0]
        return 0
    raise ConfigError(f"unknown device command {args.op}")


def _policy_line(device: Any) -> str:
    policy = device.policy
    issues = device.compliance()
    state = (
        "complies"
        if not issues
        else "does not comply: "
        + ", ".join(issue.name.lower().replace("_", " ") for issue in issues)
    )
    return f"{for_terminal(policy.name)} v{policy.version} ({state})"


def _compliance_hint(device: Any) -> None:
    if device.compliance():
        policy = device.policy
        print(
            f"your organisation's policy asks for a passcode of at least "
            f"{policy.passcode_min_length} characters mixing {policy.passcode_classes} of "
            "lower-case, upper-case, digits and other characters: set one with "
            f"`sealwire device --home {for_terminal(str(device.store.home))} passcode`",
            file=sys.stderr,
        )


def _short(address: bytes) -> str:
    from sealwire.protocol.identity import short_address

    return short_address(address)
