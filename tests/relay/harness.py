"""Real relay processes and real clients for the relay's integration tests.

:class:`RelayProcess` runs ``python -m sealwire relay`` on ``127.0.0.1:0`` and reads the
chosen port from its ``ready`` line; :func:`live_org` makes an organisation whose certificates
are valid *now* (the relay checks them at its own clock).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sealwire.protocol.envelope import PayloadType, ReplayGuard, open_envelope, seal
from sealwire.protocol.identity import (
    Certificate,
    ChainVerifier,
    Role,
    address_of,
    issue_certificate,
)
from sealwire.protocol.suite import SigningKey, XWingPrivateKey
from sealwire.transport import RelayConnection

DAY = 86_400
_READY = re.compile(r"ready on (?P<origin>\S+) .*?(?:metrics (?P<metrics>http://\S+/metrics))?\)")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class LiveDevice:
    key: SigningKey
    chain: list[bytes]
    prekey: XWingPrivateKey
    prekey_id: int
    org: LiveOrg
    guard: ReplayGuard = field(default_factory=ReplayGuard)

    @property
    def address(self) -> bytes:
        return address_of(self.key.public_key)

    async def connect(self, url: str, **kwargs: object) -> RelayConnection:
        return await RelayConnection.open(url, identity=self.key, chain=self.chain, **kwargs)  # type: ignore[arg-type]

    def seal_to(self, other: LiveDevice, body: bytes) -> bytes:
        return seal(
            sender=self.key,
            sender_chain=self.chain,
            recipient=other.address,
            prekey_id=other.prekey_id,
            prekey=other.prekey.public_key,
            payload_type=PayloadType.MESSAGE,
            body=body,
            now_ms=now_ms(),
            random=os.urandom,
        )

    def open(self, envelope: bytes, *, guard: bool = True) -> bytes:
        """Open an envelope sealed to us; with ``guard`` a duplicate raises (the application's
        "shown once" rule)."""
        opened = open_envelope(
            envelope,
            recipient=self.address,
            prekeys=lambda i: self.prekey if i == self.prekey_id else None,
            verifier=self.org.verifier,
            now_ms=now_ms(),
            guard=self.guard if guard else None,
        )
        return opened.body


@dataclass
class LiveOrg:
    root: SigningKey
    server: SigningKey
    server_cert: Certificate

    @property
    def id(self) -> bytes:
        return address_of(self.root.public_key)

    @property
    def server_address(self) -> bytes:
        return address_of(self.server.public_key)

    @property
    def verifier(self) -> ChainVerifier:
        return ChainVerifier({self.id: self.root.public_key})

    def device(self, n: int, *, lifetime: int = 30 * DAY) -> LiveDevice:
        key = SigningKey.from_seed(os.urandom(32))
        now = int(time.time())
        cert = issue_certificate(
            self.server,
            organisation=self.id,
            role=Role.DEVICE,
            identity_key=key.public_key,
            serial=1000 + n,
            not_before=now - DAY,
            not_after=now + lifetime,
        )
        return LiveDevice(
            key,
            [cert.encode(), self.server_cert.encode()],
            XWingPrivateKey(os.urandom(32)),
            7000 + n,
            self,
        )

    async def connect_server(self, url: str, **kwargs: object) -> RelayConnection:
        return await RelayConnection.open(
            url,
            identity=self.server,
            chain=[self.server_cert.encode()],
            root=self.root.public_key,
            **kwargs,  # type: ignore[arg-type]
        )


def live_org() -> LiveOrg:
    root = SigningKey.from_seed(os.urandom(32))
    server = SigningKey.from_seed(os.urandom(32))
    now = int(time.time())
    cert = issue_certificate(
        root,
        organisation=address_of(root.public_key),
        role=Role.SERVER,
        identity_key=server.public_key,
        serial=1,
        not_before=now - DAY,
        not_after=now + 365 * DAY,
    )
    return LiveOrg(root, server, cert)


class RelayProcess:
    """``sealwire relay`` in a child process, on a free loopback port."""

    def __init__(
        self, data: Path, *args: str, env: dict[str, str] | None = None, port: int = 0
    ) -> None:
        self.data = data
        self.port = port
        self.args = list(args)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.metrics_url = ""
        self.log = data / "relay.log"
        """The relay's standard error (its JSON log)."""
        self.out = data / "relay.out"
        """The relay's standard output (the ``ready`` line)."""

    def start(self, timeout: float = 30.0) -> RelayProcess:
        self.data.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        out = self.out
        out.write_text("")
        # Files, not pipes: nothing is left open when a test kills the process.
        with open(self.log, "a") as log, open(out, "a") as stdout:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sealwire",
                    "relay",
                    "--port",
                    str(self.port),
                    "--data",
                    str(self.data),
                    "--metrics",
                    "127.0.0.1:0",
                    *self.args,
                ],
                stdout=stdout,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = _READY.search(out.read_text())
            if match:
                self.url = match["origin"]
                self.metrics_url = match["metrics"] or ""
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"relay did not start:\n{self.log.read_text()[-3000:]}")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample (``name{labels}``), 0 if absent."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.metrics().splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    @property
    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


async def receive(conn: RelayConnection, count: int, timeout: float = 10.0) -> list[bytes]:
    """Take ``count`` deliveries (acknowledging them) and return their envelopes."""
    out: list[bytes] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            delivery = await conn.deliveries.get()
            out.append(delivery.envelope)
            ids = [delivery.delivery_id]
            while not conn.deliveries.empty() and len(out) < count:
                delivery = conn.deliveries.get_nowait()
                out.append(delivery.envelope)
                ids.append(delivery.delivery_id)
            conn.ack(ids)
    return out


async def drain(conn: RelayConnection, quiet: float = 0.5) -> list[tuple[bytes, bytes]]:
    """Every delivery until none arrives for ``quiet`` seconds: ``(id, envelope)`` pairs."""
    out: list[tuple[bytes, bytes]] = []
    while True:
        try:
            delivery = await asyncio.wait_for(conn.deliveries.get(), quiet)
        except TimeoutError:
            return out
        out.append((delivery.delivery_id, delivery.envelope))


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def wait_for(predicate: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def addresses(devices: Sequence[LiveDevice]) -> list[bytes]:
    return [d.address for d in devices]
