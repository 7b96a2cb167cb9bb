"""The in-process relay fixture: :class:`~sealwire.transport.memory.MemoryRelay` (the real
relay service behind in-memory pipes) and an organisation on it, for device and server tests
that need no socket and no subprocess.

Each test runs its own event loop (``asyncio.run``), so the fixtures hand out factories that
the test enters inside its loop::

    def test_x(memory_org: MemoryOrgFactory) -> None:
        async def scenario() -> None:
            async with memory_org() as org:
                alice = await org.person("alice")
                ...
        run(scenario())
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from sealwire.device import Device
from sealwire.server import EnterpriseServer
from sealwire.server.config import ServerConfig
from sealwire.transport.memory import MemoryRelay

from ..server.management_harness import ADMIN, PASSCODE, Clock, Org

MemoryRelayFactory = Callable[..., AbstractAsyncContextManager[MemoryRelay]]
MemoryOrgFactory = Callable[..., AbstractAsyncContextManager["MemoryOrg"]]

RELAY_SETTINGS: dict[str, Any] = {
    # Every unlock past the offline grace asks the server through the activation channel
    # (as the server tests' relay process does).
    "activation_rate_per_minute": 6000,
    "activation_burst": 1000,
}


class MemoryOrg(Org):
    """:class:`~tests.server.management_harness.Org` on an in-process relay: its server and
    every device it activates reach the relay through ``relay``."""

    relay: MemoryRelay

    async def person(self, name: str, *, passcode: str = PASSCODE) -> Device:
        ticket = await self.admin.add_user(ADMIN, name, name.title())
        return await self.activate(name, ticket.ticket, ticket.password, passcode)

    async def activate(self, home: str, ticket: str, password: str, passcode: str) -> Device:
        """Activate a device in ``base/home`` through the in-process relay."""
        device = await Device.activate(
            self.base / home, ticket, password, passcode, clock=self.clock, connector=self.relay
        )
        self.devices.append(device)
        return device


@pytest.fixture
def memory_relay(tmp_path: Path) -> MemoryRelayFactory:
    """Enter ``memory_relay(**settings)`` inside the test's loop for a running in-process
    relay (its queue in ``tmp_path``)."""

    def factory(**settings: Any) -> AbstractAsyncContextManager[MemoryRelay]:
        return MemoryRelay.running(tmp_path / "relay", **{**RELAY_SETTINGS, **settings})

    return factory


@pytest.fixture
def memory_org(tmp_path: Path) -> MemoryOrgFactory:
    """Enter ``memory_org()`` inside the test's loop for a running enterprise server (SQLite)
    on a running in-process relay; they share one injected clock with the devices."""

    @contextlib.asynccontextmanager
    async def factory(**settings: Any) -> AsyncIterator[MemoryOrg]:
        clock = Clock()
        async with MemoryRelay.running(
            tmp_path / "relay", clock=clock, **{**RELAY_SETTINGS, **settings}
        ) as relay:
            config = ServerConfig(data=str(tmp_path / "org"), relay=relay.url)
            server = EnterpriseServer.open(config, clock=clock)
            server.connector = relay
            await server.start()
            org = MemoryOrg(server, clock, tmp_path)
            org.relay = relay
            try:
                await server.wait_connected(10)
                yield org
            finally:
                for device in org.devices:
                    with contextlib.suppress(Exception):
                        device.close()
                await org.server.stop()

    return factory
