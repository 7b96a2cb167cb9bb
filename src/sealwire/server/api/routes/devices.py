"""``/v1/devices``: activated devices, their state and compliance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Query

from ...accounts import Permission
from ...administration import DeviceView
from ..models import Name

if TYPE_CHECKING:
    from ...server import EnterpriseServer
    from ..access import Routes


def declare(route: Routes, server: EnterpriseServer) -> None:
    """Add the device endpoints to ``route``."""
    admin = server.administration

    @route.get("/v1/devices", Permission.DEVICES_READ)
    async def devices(username: Annotated[Name | None, Query()] = None) -> list[DeviceView]:
        """Devices (of one person with ``?username=``), with state and compliance."""
        return admin.devices(username)

    @route.get("/v1/devices/{address}", Permission.DEVICES_READ)
    async def device(address: str) -> DeviceView:
        """One device: its full hex address or 8+ leading hex digits."""
        return admin.device(address)
