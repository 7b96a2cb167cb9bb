"""The admin API's endpoints, one module per area; each has ``declare(route, server)``.

:data:`AREAS` is the order they are declared in (the order of the OpenAPI description).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from . import accounts, audit, commands, devices, groups, policies, status, users

if TYPE_CHECKING:
    from ...server import EnterpriseServer
    from ..access import Routes

__all__ = ["AREAS"]

AREAS: Final[tuple[Callable[[Routes, EnterpriseServer], None], ...]] = (
    accounts.declare_session,
    status.declare,
    users.declare,
    groups.declare,
    policies.declare,
    devices.declare,
    commands.declare,
    accounts.declare,
    audit.declare,
)
