"""Access control of the admin API: one table of endpoints and the permission each needs.

Each endpoint is declared with the :class:`~sealwire.server.accounts.Permission` it needs,
right where it is defined (``@route.get("/v1/users", Permission.USERS_READ)``); the roles
holding each permission are :data:`~sealwire.server.accounts.PERMISSIONS`. :class:`Routes`
keeps the list of endpoints and their permissions (:class:`Endpoint`), which the app publishes
as ``app.state.endpoints`` so the tests walk that table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Final, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..accounts import AdminIdentity, Permission

__all__ = ["COMMAND_PERMISSIONS", "Bearer", "Endpoint", "Routes", "Who"]

_F = TypeVar("_F", bound=Callable[..., Any])

COMMAND_PERMISSIONS: Final[Mapping[str, Permission]] = MappingProxyType(
    {
        "lock": Permission.COMMANDS_LOCK,
        "wipe": Permission.COMMANDS_WIPE,
        "renew-keys": Permission.COMMANDS_RENEW,
    }
)
"""The permission each device command needs."""


@dataclass(frozen=True)
class Endpoint:
    """One row of the app's access table (``app.state.endpoints``)."""

    method: str
    path: str
    permission: Permission | None
    """``None``: any logged-in administrator (or, with :attr:`public`, anyone)."""
    public: bool = False
    """No token needed (logging in)."""
    by_kind: Mapping[str, Permission] | None = None
    """For device commands: the permission depends on the body's ``kind``."""


_bearer = HTTPBearer(auto_error=False, description="a token from POST /v1/session")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
"""The request's bearer token, if it sent one."""


def _identity(request: Request) -> AdminIdentity:
    """The administrator the endpoint's permission check let in."""
    who: AdminIdentity = request.state.identity
    return who


Who = Annotated[AdminIdentity, Depends(_identity)]
"""The logged-in administrator making the request."""


class Routes:
    """Declares endpoints with their permission and records them in the access table.

    Args:
        app: the app the endpoints are added to.
        authorise: given an endpoint's permission, the dependency that checks a request's
            token and permission (and sets ``request.state.identity``).
    """

    def __init__(self, app: FastAPI, authorise: Callable[[Permission | None], Any]) -> None:
        self._app = app
        self._authorise = authorise
        self.table: list[Endpoint] = []

    def add(
        self,
        method: str,
        path: str,
        permission: Permission | None,
        *,
        public: bool = False,
        by_kind: Mapping[str, Permission] | None = None,
        status_code: int = 200,
        **extra: Any,
    ) -> Callable[[_F], _F]:
        """A decorator adding its handler as the endpoint ``method path``.

        Args:
            permission: what the endpoint needs (``None``: any administrator).
            public: no token needed.
            by_kind: the permission depends on the body's ``kind`` (the handler checks it).
            status_code: the status of a successful answer.
            extra: passed on to FastAPI's ``add_api_route``.
        """

        def declare(handler: _F) -> _F:
            needs = "none (public)" if public else (permission or "any administrator")
            if by_kind:
                needs = ", ".join(f"{kind}: {p}" for kind, p in by_kind.items())
            self._app.add_api_route(
                path,
                handler,
                methods=[method],
                status_code=status_code,
                dependencies=[] if public else [Depends(self._authorise(permission))],
                openapi_extra={"x-permission": str(needs)},
                description=f"{(handler.__doc__ or '').strip()}\n\nPermission: {needs}.",
                **extra,
            )
            self.table.append(Endpoint(method, path, permission, public, by_kind))
            return handler

        return declare

    def get(self, path: str, permission: Permission | None, **kw: Any) -> Callable[[_F], _F]:
        """A ``GET`` endpoint (see :meth:`add`)."""
        return self.add("GET", path, permission, **kw)

    def post(self, path: str, permission: Permission | None, **kw: Any) -> Callable[[_F], _F]:
        """A ``POST`` endpoint (see :meth:`add`)."""
        return self.add("POST", path, permission, **kw)

    def put(self, path: str, permission: Permission | None) -> Callable[[_F], _F]:
        """A ``PUT`` endpoint (see :meth:`add`)."""
        return self.add("PUT", path, permission)

    def patch(self, path: str, permission: Permission | None) -> Callable[[_F], _F]:
        """A ``PATCH`` endpoint (see :meth:`add`)."""
        return self.add("PATCH", path, permission)

    def delete(self, path: str, permission: Permission | None) -> Callable[[_F], _F]:
        """A ``DELETE`` endpoint (see :meth:`add`)."""
        return self.add("DELETE", path, permission)
