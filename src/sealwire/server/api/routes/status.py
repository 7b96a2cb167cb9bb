"""``/v1/status``: the server's state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...accounts import Permission

if TYPE_CHECKING:
    from ...server import EnterpriseServer
    from ..access import Routes


def declare(route: Routes, server: EnterpriseServer) -> None:
    """Add the status endpoint to ``route``."""
    admin = server.administration

    @route.get("/v1/status", Permission.STATUS_READ)
    async def status() -> dict[str, Any]:
        """The server's state: organisation, relay link, counts."""
        return admin.status()
