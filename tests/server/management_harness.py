"""The harness of the device-management scenario tests: an in-process enterprise server with
an injected clock on a real relay process (the ``relay`` fixture in ``conftest.py``), and
in-process devices that share the clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sealwire.device import Device
from sealwire.server import EnterpriseServer
from sealwire.server.administration import Administration, DeviceView
from sealwire.server.config import ServerConfig
from sealwire.server.store import managed

from ..relay.harness import RelayProcess

__all__ = [
    "ADMIN",
    "PASSCODE",
    "Clock",
    "Org",
    "eventually",
    "listening",
    "organisation",
    "run",
]

PASSCODE = "correct horse battery"
ADMIN = "alice-admin"
"""The administrator named in audit entries (the tests call the administration layer)."""


class Clock:
    """Unix ms, moved forward by the test (server and devices share it)."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset


@dataclass
class Org:
    server: EnterpriseServer
    clock: Clock
    base: Path
    devices: list[Device] = field(default_factory=list)

    @property
    def admin(self) -> Administration:
        return self.server.administration

    async def person(self, name: str, *, passcode: str = PASSCODE) -> Device:
        """Add a person and activate one device for them (in ``base/name``)."""
        ticket = await self.admin.add_user(ADMIN, name, name.title())
        device = await Device.activate(
            self.base / name, ticket.ticket, ticket.password, passcode, clock=self.clock
        )
        self.devices.append(device)
        return device

    def device_view(self, device: Device) -> DeviceView:
        return self.admin.device(device.address.hex())

    def remote_secret_row(self, device: Device) -> bytes | None:
        """The device's remote secret as the server's database holds it (sealed), if any."""
        with self.server.store.db.transaction() as conn:
            value = conn.execute(
                sa.select(managed.c.remote_secret).where(managed.c.address == device.address)
            ).scalar_one()
        return None if value is None else bytes(value)


@contextlib.asynccontextmanager
async def organisation(
    tmp_path: Path, relay: RelayProcess, database: str = ""
) -> AsyncIterator[Org]:
    """A running server of a new organisation (SQLite unless ``database`` is given)."""
    clock = Clock()
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(data=str(tmp_path / "org"), relay=relay.url, database=database)
    server = EnterpriseServer.open(config, clock=clock)
    await server.start()
    await server.wait_connected(10)
    org = Org(server, clock, tmp_path)
    try:
        yield org
    finally:
        for device in org.devices:
            with contextlib.suppress(Exception):
                device.close()
        await org.server.stop()  # org.server: a test may have replaced it


async def listening(device: Device) -> tuple[asyncio.Task[None], asyncio.Event]:
    """Keep ``device`` connected in the background; wait until it has reported."""
    stop = asyncio.Event()
    task = asyncio.create_task(device.listen(stop))
    for _ in range(200):
        if device._link.connected and device._tasks:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    return task, stop


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("not within the time allowed")
        await asyncio.sleep(0.05)


def run(coroutine: Any, timeout: float = 120.0) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))
