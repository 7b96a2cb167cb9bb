"""``/v1/users``: the people of the organisation and their activation tickets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...accounts import Permission
from ...administration import TicketView, UserView
from ..access import Who
from ..models import NewUserBody, TicketBody

if TYPE_CHECKING:
    from ...server import EnterpriseServer
    from ..access import Routes


def declare(route: Routes, server: EnterpriseServer) -> None:
    """Add the people endpoints to ``route``."""
    admin = server.administration

    @route.get("/v1/users", Permission.USERS_READ)
    async def users() -> list[UserView]:
        """Everyone, with their state, devices, groups and policy."""
        return admin.users()

    @route.post("/v1/users", Permission.USERS_WRITE, status_code=201)
    async def add_user(body: NewUserBody, who: Who) -> TicketView:
        """Add a person; the answer holds their first activation ticket and password."""
        ticket = await admin.add_user(
            who.username,
            body.username,
            body.display_name or body.username,
            lifetime_s=body.lifetime_s,
            groups=tuple(body.groups),
        )
        return ticket

    @route.get("/v1/users/{username}", Permission.USERS_READ)
    async def user(username: str) -> UserView:
        """One person."""
        return admin.user(username)

    @route.post("/v1/users/{username}/tickets", Permission.TICKETS_ISSUE, status_code=201)
    async def ticket(username: str, who: Who, body: TicketBody | None = None) -> TicketView:
        """A new activation ticket and password (another device, or a lost one)."""
        lifetime = None if body is None else body.lifetime_s
        return await admin.issue_ticket(who.username, username, lifetime)

    @route.post("/v1/users/{username}/disable", Permission.USERS_DISABLE)
    async def disable_user(username: str, who: Who) -> UserView:
        """Deprovision: revoke and wipe every device of the person."""
        return await admin.disable_user(who.username, username)

    @route.post("/v1/users/{username}/enable", Permission.USERS_WRITE)
    async def enable_user(username: str, who: Who) -> UserView:
        """Allow a disabled person again (they need a new ticket)."""
        return admin.enable_user(who.username, username)
