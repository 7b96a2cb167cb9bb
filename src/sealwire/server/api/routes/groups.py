"""``/v1/groups``: groups of people, their members and their IT policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...accounts import Permission
from ...administration import GroupView
from ..access import Who
from ..models import GroupChangeBody, GroupPolicyBody, NewGroupBody

if TYPE_CHECKING:
    from ...server import EnterpriseServer
    from ..access import Routes


def declare(route: Routes, server: EnterpriseServer) -> None:
    """Add the group endpoints to ``route``."""
    admin = server.administration

    @route.get("/v1/groups", Permission.GROUPS_READ)
    async def groups() -> list[GroupView]:
        """Every group."""
        return admin.groups()

    @route.post("/v1/groups", Permission.GROUPS_WRITE, status_code=201)
    async def create_group(body: NewGroupBody, who: Who) -> GroupView:
        """Create a group."""
        view = await admin.create_group(
            who.username,
            body.name,
            description=body.description,
            priority=body.priority,
            policy=body.policy,
        )
        return view

    @route.get("/v1/groups/{name}", Permission.GROUPS_READ)
    async def group(name: str) -> GroupView:
        """One group."""
        return admin.group(name)

    @route.patch("/v1/groups/{name}", Permission.GROUPS_WRITE)
    async def update_group(name: str, body: GroupChangeBody, who: Who) -> GroupView:
        """Change a group's description or priority."""
        view = await admin.update_group(
            who.username, name, description=body.description, priority=body.priority
        )
        return view

    @route.delete("/v1/groups/{name}", Permission.GROUPS_WRITE)
    async def delete_group(name: str, who: Who) -> dict[str, str]:
        """Delete a group (its members stay)."""
        await admin.delete_group(who.username, name)
        return {"deleted": name}

    @route.put("/v1/groups/{name}/members/{username}", Permission.GROUPS_WRITE)
    async def add_member(name: str, username: str, who: Who) -> GroupView:
        """Put a person in a group."""
        return await admin.add_member(who.username, name, username)

    @route.delete("/v1/groups/{name}/members/{username}", Permission.GROUPS_WRITE)
    async def remove_member(name: str, username: str, who: Who) -> GroupView:
        """Take a person out of a group."""
        return await admin.remove_member(who.username, name, username)

    @route.put("/v1/groups/{name}/policy", Permission.GROUPS_WRITE)
    async def group_policy(name: str, body: GroupPolicyBody, who: Who) -> GroupView:
        """Assign a policy to a group (``null``: none)."""
        return await admin.assign_policy(who.username, name, body.policy)
