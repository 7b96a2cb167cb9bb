"""The admin API of an enterprise server: HTTP/JSON (FastAPI), served by uvicorn inside the
server's own event loop (:class:`AdminApi`), on loopback by default.

Every path is versioned (``/v1/...``); the OpenAPI description is at ``/openapi.json`` and
readable at ``/docs``. A client logs in (``POST /v1/session`` with a name and password) and sends
the token it gets as ``Authorization: Bearer TOKEN``.

Access control is one table. Each endpoint is declared with the :class:`~.accounts.Permission`
it needs, right where it is defined (``@route.get("/v1/users", Permission.USERS_READ)``); the
roles holding each permission are :data:`~.accounts.PERMISSIONS`. The app keeps the list of its
endpoints and their permissions in ``app.state.endpoints`` (:class:`Endpoint`), so the tests walk
that table. ``POST /v1/devices/{address}/commands`` needs the permission of its ``kind``
(:data:`COMMAND_PERMISSIONS`).

Errors are JSON ``{"detail": "..."}`` written for the administrator:

=====  ===============================================================================
400    the body is not valid JSON
401    no token, or an unknown or expired one; a wrong name or password at login
403    the role does not have the permission (the message names it)
404    no such person, group, policy, device, command or administrator
409    it exists already, or contradicts the state (e.g. the last security admin)
413    the body is larger than :data:`MAX_BODY` bytes
422    a field is missing, of the wrong type, out of range, or unknown (``errors`` lists
       each: where, what); or a value the server refuses (a bad name, a lifetime)
503    the database failed
=====  ===============================================================================

Answers never contain a password or token, except the one-time activation password in an
answer that issues a ticket, and the token in the answer to a login.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sealwire import __version__
from sealwire.errors import (
    AccessDenied,
    AuthenticationFailed,
    ConfigError,
    Conflict,
    NotFound,
    RemoteProtocolError,
    SealwireError,
    StorageError,
    TransportError,
)

from .accounts import PERMISSIONS, AccountView, AdminIdentity, Permission, Role, require
from .administration import (
    CommandView,
    DeviceView,
    GroupView,
    PolicySettings,
    PolicyView,
    TicketView,
    UserView,
)
from .audit import AuditVerdict
from .config import ServerConfig

if TYPE_CHECKING:
    from .service import EnterpriseServer

__all__ = [
    "COMMAND_PERMISSIONS",
    "MAX_BODY",
    "URL_FILE",
    "AdminApi",
    "Endpoint",
    "check_bind",
    "create_app",
]

log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

MAX_BODY: Final = 64 * 1024
"""Largest request body, in bytes (larger: 413)."""
URL_FILE: Final = "admin-url"
"""Written into the server's directory while the API runs: where ``sealwire admin`` finds it."""

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


# --- request bodies -------------------------------------------------------------------------


def _plain(value: str) -> str:
    """No control characters, no lone surrogates (they cannot be stored or encoded)."""
    if not value.isprintable() or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError("must not contain control characters or unpaired surrogates")
    return value


def _encodable(value: str) -> str:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value) or "\x00" in value:
        raise ValueError("must not contain NUL or unpaired surrogates")
    return value


Name = Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_plain)]
"""A user, administrator, group or policy name (the server checks the exact form)."""
Label = Annotated[StrictStr, Field(min_length=1, max_length=128), AfterValidator(_plain)]
Description = Annotated[StrictStr, Field(max_length=256), AfterValidator(_plain)]
Secret = Annotated[StrictStr, Field(min_length=1, max_length=1024), AfterValidator(_encodable)]
NewPassword = Annotated[
    StrictStr, Field(min_length=12, max_length=1024), AfterValidator(_encodable)
]
Lifetime = Annotated[StrictInt, Field(ge=-(2**40), le=2**40)]
"""Seconds; the server checks the range (one minute to 30 days) and says so."""
Setting = Annotated[StrictInt, Field(ge=0, le=2**40)]


Plain = Annotated[StrictStr, AfterValidator(_plain)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginBody(_Body):
    username: Name
    password: Secret


class NewUserBody(_Body):
    username: Name
    display_name: Label | None = None
    """Default: the user name."""
    lifetime_s: Lifetime | None = None
    """Activation password lifetime; default: the server's (48 h)."""
    groups: Annotated[list[Name], Field(max_length=32)] = []


class TicketBody(_Body):
    lifetime_s: Lifetime | None = None


class NewGroupBody(_Body):
    name: Name
    description: Description = ""
    priority: Annotated[StrictInt, Field(ge=0, le=10000)] = 100
    policy: Name | None = None


class GroupChangeBody(_Body):
    description: Description | None = None
    priority: Annotated[StrictInt, Field(ge=0, le=10000)] | None = None


class GroupPolicyBody(_Body):
    policy: Name | None
    """``null``: no policy of its own."""


_DEFAULTS = PolicySettings()


class PolicyBody(_Body):
    """An IT policy's settings; a missing one takes the built-in default. The ranges are
    checked by the server (422 names the first setting out of range)."""

    passcode_min_length: Setting = _DEFAULTS.passcode_min_length
    passcode_classes: Setting = _DEFAULTS.passcode_classes
    max_failed_attempts: Setting = _DEFAULTS.max_failed_attempts
    auto_lock_s: Setting = _DEFAULTS.auto_lock_s
    offline_grace_s: Setting = _DEFAULTS.offline_grace_s
    retention_days: Setting = _DEFAULTS.retention_days
    export_allowed: StrictBool = _DEFAULTS.export_allowed
    prekey_rotation_s: Setting = _DEFAULTS.prekey_rotation_s
    directory_cache_s: Setting = _DEFAULTS.directory_cache_s


class CommandBody(_Body):
    kind: Literal["lock", "wipe", "renew-keys"]
    new_passcode: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    """Only with ``lock``: the passcode the device takes (it must meet the device's policy)."""


class NewAccountBody(_Body):
    username: Name
    password: NewPassword
    role: Role


class AccountChangeBody(_Body):
    role: Role | None = None
    password: NewPassword | None = None


# --- answers (besides the views of :mod:`.administration` and :mod:`.accounts`) ---------------


class SessionAnswer(BaseModel):
    token: str
    """Send it as ``Authorization: Bearer TOKEN``."""
    expires_at: int
    """Unix seconds."""
    username: str
    role: Role


class FieldError(BaseModel):
    loc: list[str]
    """Where: ``["body", "username"]``, ``["query", "limit"]``."""
    msg: str
    type: str


class ErrorAnswer(BaseModel):
    """Every refusal (4xx, 503)."""

    detail: str
    """What went wrong, for the administrator."""
    errors: list[FieldError] | None = None
    """With 422 for fields that fail validation (and 400 for bad JSON): each of them."""


_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorAnswer, "description": text}
    for status, text in (
        (400, "Not valid JSON"),
        (401, "No token, or an unknown or expired one (login: wrong name or password)"),
        (403, "The role does not have the permission"),
        (404, "Not found"),
        (409, "Exists already, or contradicts the state"),
        (413, f"Body larger than {MAX_BODY} bytes"),
        (422, "A field is missing, of the wrong type, out of range or unknown"),
        (503, "The database failed"),
    )
}


class WhoAmI(BaseModel):
    username: str
    role: Role
    permissions: list[str]


# --- the app ----------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="a token from POST /v1/session")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _identity(request: Request) -> AdminIdentity:
    """The administrator the endpoint's permission check let in."""
    who: AdminIdentity = request.state.identity
    return who


Who = Annotated[AdminIdentity, Depends(_identity)]


class _Routes:
    """Declares endpoints with their permission and records them in the access table."""

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
        return self.add("GET", path, permission, **kw)

    def post(self, path: str, permission: Permission | None, **kw: Any) -> Callable[[_F], _F]:
        return self.add("POST", path, permission, **kw)

    def put(self, path: str, permission: Permission | None) -> Callable[[_F], _F]:
        return self.add("PUT", path, permission)

    def patch(self, path: str, permission: Permission | None) -> Callable[[_F], _F]:
        return self.add("PATCH", path, permission)

    def delete(self, path: str, permission: Permission | None) -> Callable[[_F], _F]:
        return self.add("DELETE", path, permission)


def create_app(server: EnterpriseServer) -> FastAPI:
    """The admin API of ``server`` (see the module docstring)."""
    app = FastAPI(
        title="Sealwire enterprise server admin API",
        version=__version__,
        description=__doc__,
        redoc_url=None,
        responses=_ERRORS,
    )
    admin = server.administration
    accounts = server.accounts

    def authorise(permission: Permission | None) -> Any:
        async def check(
            request: Request,
            credentials: Bearer,
        ) -> None:
            if credentials is None:
                raise AuthenticationFailed(
                    "no administrator token: log in (`sealwire admin login`, or POST "
                    "/v1/session) and send it as 'Authorization: Bearer TOKEN'"
                )
            identity = accounts.authenticate(credentials.credentials)
            if permission is not None:
                require(identity, permission)
            request.state.identity = identity

        return check

    route = _Routes(app, authorise)
    _install_error_handlers(app)
    app.add_middleware(_BodyLimit)

    # --- session ------------------------------------------------------------------------

    @route.post("/v1/session", None, public=True)
    async def login(body: LoginBody) -> SessionAnswer:
        """Log in: a bearer token and when it expires (Unix seconds)."""
        token, expires_at = await accounts.login(body.username, body.password)
        who = accounts.authenticate(token)
        return SessionAnswer(
            token=token, expires_at=expires_at, username=who.username, role=who.role
        )

    @route.get("/v1/session", None)
    async def whoami(who: Who) -> WhoAmI:
        """The logged-in administrator, their role and its permissions."""
        return WhoAmI(
            username=who.username,
            role=who.role,
            permissions=sorted(p.value for p in Permission if who.may(p)),
        )

    @route.delete("/v1/session", None)
    async def logout(credentials: Bearer) -> dict[str, bool]:
        """Log out: the token stops working."""
        if credentials is not None:
            accounts.logout(credentials.credentials)
        return {"logged_out": True}

    @route.get("/v1/status", Permission.STATUS_READ)
    async def status() -> dict[str, Any]:
        """The server's state: organisation, relay link, counts."""
        return admin.status()

    # --- people -------------------------------------------------------------------------

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

    # --- groups -------------------------------------------------------------------------

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

    # --- policies -----------------------------------------------------------------------

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

    # --- devices and commands -----------------------------------------------------------

    @route.get("/v1/devices", Permission.DEVICES_READ)
    async def devices(username: Annotated[Name | None, Query()] = None) -> list[DeviceView]:
        """Devices (of one person with ``?username=``), with state and compliance."""
        return admin.devices(username)

    @route.get("/v1/devices/{address}", Permission.DEVICES_READ)
    async def device(address: str) -> DeviceView:
        """One device: its full hex address or 8+ leading hex digits."""
        return admin.device(address)

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

    # --- administrator accounts ---------------------------------------------------------

    @route.get("/v1/accounts", Permission.ACCOUNTS_READ)
    async def list_accounts() -> list[AccountView]:
        """Every administrator account (never a password)."""
        return accounts.list()

    @route.post("/v1/accounts", Permission.ACCOUNTS_WRITE, status_code=201)
    async def create_account(body: NewAccountBody, who: Who) -> AccountView:
        """Add an administrator."""
        view = await accounts.create(who.username, body.username, body.password, body.role)
        return view

    @route.get("/v1/accounts/{username}", Permission.ACCOUNTS_READ)
    async def account(username: str) -> AccountView:
        """One administrator account."""
        return accounts.get(username)

    @route.patch("/v1/accounts/{username}", Permission.ACCOUNTS_WRITE)
    async def change_account(username: str, body: AccountChangeBody, who: Who) -> AccountView:
        """Change an administrator's role or password (their logins end)."""
        if body.role is None and body.password is None:
            raise ValueError("give a role, a password, or both")
        view = accounts.get(username)
        if body.role is not None:
            view = accounts.set_role(who.username, username, body.role)
        if body.password is not None:
            view = await accounts.set_password(who.username, username, body.password)
        return view

    @route.post("/v1/accounts/{username}/disable", Permission.ACCOUNTS_WRITE)
    async def disable_account(username: str, who: Who) -> AccountView:
        """Disable an administrator (their logins end)."""
        return accounts.disable(who.username, username)

    @route.post("/v1/accounts/{username}/enable", Permission.ACCOUNTS_WRITE)
    async def enable_account(username: str, who: Who) -> AccountView:
        """Enable a disabled administrator again."""
        return accounts.enable(who.username, username)

    # --- audit log ----------------------------------------------------------------------

    @route.get("/v1/audit", Permission.AUDIT_READ)
    async def audit(
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        actor: Annotated[Plain | None, Query(max_length=128)] = None,
        action: Annotated[Plain | None, Query(max_length=64)] = None,
    ) -> list[dict[str, Any]]:
        """Entries after ``after``, oldest first (filter by ``actor`` and ``action``)."""
        found = server.audit.entries(after=after, limit=limit, actor=actor, action=action)
        return [entry.to_json() for entry in found]

    @route.get("/v1/audit/verify", Permission.AUDIT_READ)
    async def verify_audit() -> AuditVerdict:
        """Check the whole hash chain; ``first_broken`` names the first bad entry."""
        return server.audit.verify()

    @route.get("/v1/audit/export", Permission.AUDIT_READ, responses=_LINES)
    async def export_audit(who: Who) -> _JsonLines:
        """The whole log as JSON lines (keep it elsewhere: it proves later truncation)."""
        server.audit.append(who.username, "audit.export", "")
        lines = server.audit.export_lines()

        async def stream() -> AsyncIterator[str]:
            for line in lines:
                yield line + "\n"

        return _JsonLines(stream())

    app.state.endpoints = tuple(route.table)
    app.state.permissions = PERMISSIONS
    return app


class _JsonLines(StreamingResponse):
    """One JSON object per line (the audit export)."""

    media_type = "application/x-ndjson"


_LINES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "One JSON object per line, oldest entry first",
        "content": {_JsonLines.media_type: {"schema": {"type": "string"}}},
    }
}


class _BodyLimit:
    """Refuses request bodies over :data:`MAX_BODY` bytes (413, JSON): at once when the
    ``Content-Length`` says so, else as soon as the body read so far is larger."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            await _error(413, _TOO_LARGE)(scope, receive, send)
            return
        total = 0

        async def limited() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > MAX_BODY:
                    raise StarletteHTTPException(413, _TOO_LARGE)
            return message

        await self.app(scope, limited, send)


_TOO_LARGE: Final = f"the request body is larger than {MAX_BODY} bytes"


# --- errors -----------------------------------------------------------------------------------


_STATUS: Final = (
    (AuthenticationFailed, 401),
    (AccessDenied, 403),
    (NotFound, 404),
    (Conflict, 409),
    (ConfigError, 422),
    (RemoteProtocolError, 400),
    (StorageError, 503),
    (TransportError, 503),
)


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def _where(loc: Any) -> str:
    parts = [str(part) for part in loc if part not in ("body",)]
    return ".".join(parts) or "body"


def _install_error_handlers(app: FastAPI) -> None:
    async def sealwire_error(request: Request, exc: Exception) -> JSONResponse:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)
        if status == 503:
            log.warning("admin request failed", extra={"reason": str(exc)})
        return _error(status, str(exc))

    async def value_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(422, str(exc) or "invalid value")

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]  # never the offending input: it may be a password
        if any(e["type"] == "json_invalid" for e in errors):
            return _error(400, "the request body is not valid JSON", errors=errors)
        detail = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors[:5])
        return _error(422, f"invalid request: {detail}", errors=errors)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("admin API bug", exc_info=exc)
        return _error(500, "internal error (a bug: see the server log)")

    app.add_exception_handler(SealwireError, sealwire_error)
    app.add_exception_handler(ValueError, value_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


# --- serving ----------------------------------------------------------------------------------


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(config: ServerConfig) -> tuple[str, int, bool]:
    """Where the admin API is to listen: ``(host, port, tls)``.

    Raises:
        ConfigError: a non-loopback address without TLS, unless ``admin_allow_plain``.
    """
    host, port = config.admin_address
    tls = bool(config.admin_tls_cert and config.admin_tls_key)
    if not tls and not _loopback(host) and not config.admin_allow_plain:
        raise ConfigError(
            f"the admin API would listen on {host}:{port} without TLS: administrator passwords "
            "and tokens would cross the network in the clear. Set admin_tls_cert and "
            "admin_tls_key, listen on 127.0.0.1, or (behind a TLS proxy only) set "
            "admin_allow_plain"
        )
    return host, port, tls


class AdminApi:
    """Serves :func:`create_app` for a server with uvicorn, in the running event loop.

    Attributes:
        url: where it listens (``http://127.0.0.1:8444``), once started.
    """

    def __init__(self, server: EnterpriseServer, config: ServerConfig | None = None) -> None:
        self._server = server
        self._config = config or server.config
        self.app = create_app(server)
        self.url = ""
        self._uvicorn: uvicorn.Server | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._url_file = self._config.server_dir / URL_FILE

    async def start(self) -> str:
        """Bind and serve; return the URL and write it to ``DATA/server/admin-url``.

        Raises:
            ConfigError: the address is refused (:func:`check_bind`) or cannot be bound, or the
                TLS files cannot be loaded.
        """
        host, port, tls = check_bind(self._config)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for the admin API on {host}:{port}: {exc.strerror or exc} "
                "(another server running? set admin_listen)"
            ) from None
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            limit_concurrency=100,
            ssl_certfile=self._config.admin_tls_cert or None,
            ssl_keyfile=self._config.admin_tls_key or None,
        )
        try:
            config.load()
        except (OSError, ValueError) as exc:
            sock.close()
            raise ConfigError(
                f"cannot load the admin API's TLS certificate or key: {exc}"
            ) from None
        served = uvicorn.Server(config)
        served.lifespan = config.lifespan_class(config)
        await served.startup(sockets=[sock])
        self._uvicorn = served
        self._loop_task = asyncio.create_task(served.main_loop())
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"{'https' if tls else 'http'}://{shown}:{bound_port}"
        _write_private(self._url_file, self.url + "\n")
        log.info("admin API listening", extra={"url": self.url})
        return self.url

    async def stop(self) -> None:
        """Stop serving (requests in progress get a few seconds) and remove the URL file."""
        served, self._uvicorn = self._uvicorn, None
        if served is None:
            return
        served.should_exit = True
        if self._loop_task is not None:
            with contextlib.suppress(Exception):
                await self._loop_task
        await served.shutdown()
        with contextlib.suppress(FileNotFoundError):
            self._url_file.unlink()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(temporary, path)
