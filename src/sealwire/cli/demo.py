"""``sealwire demo``: a short scripted tour in a temporary directory — a relay, an enterprise
server, two people who activate a device each, a conversation, and a look at what the relay
stored (ciphertext and routing addresses only)."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["add_demo_parser"]


def add_demo_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="a scripted tour: relay, server, two devices, messages")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from sealwire.logs import configure_logging

    configure_logging("text", "error")
    if args.keep:
        asyncio.run(_tour(Path(tempfile.mkdtemp(prefix="sealwire-demo-"))))
    else:
        with tempfile.TemporaryDirectory(prefix="sealwire-demo-") as tmp:
            asyncio.run(_tour(Path(tmp)))
    return 0


def _say(text: str) -> None:
    print(text, flush=True)


async def _tour(root: Path) -> None:
    from sealwire.device import Device
    from sealwire.protocol.identity import short_address
    from sealwire.relay.config import load_config
    from sealwire.relay.service import Relay
    from sealwire.server import EnterpriseServer
    from sealwire.server.config import load_server_config

    _say(f"Sealwire demo in {root}\n")
    relay = Relay(
        load_config(
            None,
            env={},
            overrides={"port": 0, "data": str(root / "relay"), "metrics": "", "log_format": "text"},
        )
    )
    await relay.start()
    server = None
    try:
        config = load_server_config(
            env={},
            overrides={"data": str(root / "org"), "relay": relay.origin, "organisation": "Example"},
        )
        server = EnterpriseServer.open(config)
        await server.start()
        await server.wait_connected(timeout=15)
        _say(f"1. A relay runs on {relay.origin}; anyone could operate it.")
        _say(
            "2. The enterprise server of 'Example' created its root key and dialled out to the "
            f"relay (organisation {server.organisation.hex()[:16]}…).\n"
        )
        devices = {}
        for name, display in (("alice", "Alice Example"), ("bob", "Bob Example")):
            issued = await server.administration.add_user("demo", name, display)
            _say(f"3. The administrator adds {display}: ticket {issued.ticket[:40]}…")
            _say(f"   and one-time password {issued.password} (48 h, 5 attempts).")
            devices[name] = await Device.activate(
                root / name, issued.ticket, issued.password, "demo-passcode"
            )
            _say(
                f"   {display}'s device ran SPAKE2 with the server through the relay and got "
                f"its certificate: device {short_address(devices[name].info().address)}.\n"
            )
        alice, bob = devices["alice"], devices["bob"]
        text = "Meet at the harbour at nine"
        await alice.send("bob", text)
        _say(f'4. Alice sends Bob "{text}" while Bob is offline.')
        rows = (
            sqlite3.connect(root / "relay" / "relay.db")
            .execute(
                "SELECT recipient, length(envelope), hex(substr(envelope, 1, 24)) FROM envelopes"
            )
            .fetchall()
        )
        _say("5. What the relay stores right now (its whole queue):")
        for recipient, size, head in rows:
            _say(f"   to {short_address(recipient)}: {size} bytes, starting {head.lower()}…")
        files = b"".join(p.read_bytes() for p in (root / "relay").glob("relay.db*"))
        found = text.encode() in files
        _say(f"   Is the text anywhere in the relay's files? {'YES (bug!)' if found else 'no'}.\n")
        new = await bob.sync()
        for record in new:
            _say(f'6. Bob comes online and reads: "{record.text}" from {record.sender}.')
        async with bob.online():
            await bob.mark_read(new)
        await bob.send("alice", "See you there")
        await alice.sync()
        _say('7. Bob answers "See you there". Alice\'s view of the conversation:')
        for record in alice.store.messages(peer="bob"):
            who = "you" if record.outgoing else record.sender
            _say(f"   {who}: {record.text}  [{record.state.name.lower()}]")
        _say(
            "\nEverything was sealed end to end (X-Wing HPKE, Ed25519) to each device; the relay"
            "\nsaw addresses and padded sizes only. Try it for real with `sealwire up`."
        )
        for device in devices.values():
            device.close()
    finally:
        if server is not None:
            await server.stop()
        await relay.stop()
