"""Device commands: ``POST /v1/devices/{address}/commands`` and ``/v1/commands``.

Queuing a command needs the permission of its ``kind``
(:data:`~sealwire.server.api.access.COMMAND_PERMISSIONS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Query

from ...accounts import Permission, require
from ...administration import CommandView
from ..access import COMMAND_PERMISSIONS, Who
from ..models import CommandBody, Name

if TYPE_CHECKING:
    from ...server import EnterpriseServer
    from ..access import Routes


def declare(route: Routes, server: EnterpriseServer) -> None:
    """Add the command endpoints to ``route``."""
    admin = server.administration

    @route.post(
        "/v1/devices/{address}/commands",
        None,
        by_kind=COMMAND_PERMISSIONS,
        status_code=202,
    )
    async def command(address: str, body: CommandBody, who: Who) -> CommandView:
        """Queue a lock, wipe or renew-keys command (pushed now if the device is online)."""
        require(who, COMMAND_PERMISSIONS[body.kind])
        view = await admin.command(who.username, address, body.kind, new_passcode=body.new_passcode)
        return view

    @route.get("/v1/commands", Permission.COMMANDS_READ)
    async def commands(device: Annotated[Name | None, Query()] = None) -> list[CommandView]:
        """Commands, newest first (of one device with ``?device=``)."""
        return admin.commands(device)

    @route.get("/v1/commands/{command_id}", Permission.COMMANDS_READ)
    async def command_status(command_id: str) -> CommandView:
        """One command and its state."""
        return admin.command_status(command_id)
