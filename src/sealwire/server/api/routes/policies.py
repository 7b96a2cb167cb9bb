"""``/v1/policies``: IT policies (pushed to the devices they apply to)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...accounts import Permission
from ...administration import PolicySettings, PolicyView
from ..access import Who
from ..models import PolicyBody

if TYPE_CHECKING:
    from ...server import EnterpriseServer
    from ..access import Routes


def declare(route: Routes, server: EnterpriseServer) -> None:
    """Add the policy endpoints to ``route``."""
    admin = server.administration

    @route.get("/v1/policies", Permission.POLICIES_READ)
    async def policies() -> list[PolicyView]:
        """Every IT policy."""
        return admin.policies()

    @route.get("/v1/policies/{name}", Permission.POLICIES_READ)
    async def policy(name: str) -> PolicyView:
        """One IT policy."""
        return admin.policy(name)

    @route.put("/v1/policies/{name}", Permission.POLICIES_WRITE)
    async def put_policy(name: str, body: PolicyBody, who: Who) -> PolicyView:
        """Create a policy or store a new version of it; devices it applies to get it."""
        settings = PolicySettings(**body.model_dump())
        return await admin.put_policy(who.username, name, settings)

    @route.delete("/v1/policies/{name}", Permission.POLICIES_WRITE)
    async def delete_policy(name: str, who: Who) -> dict[str, str]:
        """Delete a policy no group uses (not ``default``)."""
        admin.delete_policy(who.username, name)
        return {"deleted": name}
