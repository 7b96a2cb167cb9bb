"""The admin API of an enterprise server: HTTP/JSON (FastAPI), served by uvicorn inside the
server's own event loop (:class:`AdminApi`), on loopback by default.

Every path is versioned (``/v1/...``); the OpenAPI description is at ``/openapi.json`` and
readable at ``/docs``. A client logs in (``POST /v1/session`` with a name and password) and sends
the token it gets as ``Authorization: Bearer TOKEN``.

Access control is one table (:mod:`.access`): each endpoint is declared with the permission it
needs; ``POST /v1/devices/{address}/commands`` needs the permission of its ``kind``.

Errors are JSON ``{"detail": "...", "code": "..."}`` written for the administrator, with a
stable ``code`` (the table is in :mod:`sealwire._http_errors`, shared with ``sealwire admin``):

=====  ===============================================================================
400    the body is not valid JSON (``invalid-json``)
401    no token, or an unknown or expired one; a wrong name or password at login
403    the role does not have the permission (the message names it)
404    no such person, group, policy, device, command or administrator
409    it exists already, or contradicts the state (e.g. the last security admin)
413    the body is larger than :data:`MAX_BODY` bytes
422    a field is missing, of the wrong type, out of range, or unknown (``errors`` lists
       each: where, what); or a value the server refuses (a bad name, a lifetime)
503    the database failed
=====  ===============================================================================

Every request is logged once (``admin request``: account, method, route template, status,
duration in ms; never the path's values, the query, a body or a header). Requests refused with
401 or 403 are written to the audit log (:mod:`.refusals`).

Answers never contain a password or token, except the one-time activation password in an
answer that issues a ticket, and the token in the answer to a login.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Final

import uvicorn
from fastapi import FastAPI, Request
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sealwire import __version__
from sealwire._http_errors import by_code
from sealwire._system import is_loopback, write_private
from sealwire.errors import AuthenticationFailed, ConfigError

from ..accounts import PERMISSIONS, Permission, require
from ..config import ServerConfig
from .access import Bearer, Routes
from .errors import RESPONSES, error_response, install_error_handlers
from .refusals import Refusal, RefusalAudit
from .routes import AREAS

if TYPE_CHECKING:
    from ..server import EnterpriseServer

__all__ = ["MAX_BODY", "URL_FILE", "AdminApi", "check_bind", "create_app"]

log = logging.getLogger("sealwire.server.api")

MAX_BODY: Final = 64 * 1024
"""Largest request body, in bytes (larger: 413)."""
URL_FILE: Final = "admin-url"
"""Written into the server's directory while the API runs: where ``sealwire admin`` finds it."""

_MISSING_CREDENTIALS: Final = (
    "no administrator token: log in (`sealwire admin login`, or POST "
    "/v1/session) and send it as 'Authorization: Bearer TOKEN'"
)


def create_app(server: EnterpriseServer) -> FastAPI:
    """The admin API of ``server`` (see the module docstring)."""
    app = FastAPI(
        title="Sealwire enterprise server admin API",
        version=__version__,
        description=__doc__,
        redoc_url=None,
        responses=RESPONSES,
    )
    accounts = server.accounts

    def authorise(permission: Permission | None) -> Any:
        async def check(request: Request, credentials: Bearer) -> None:
            if credentials is None:
                raise AuthenticationFailed(_MISSING_CREDENTIALS)
            identity = accounts.authenticate(credentials.credentials)
            request.state.identity = identity
            if permission is not None:
                require(identity, permission)

        return check

    refusals: list[RefusalAudit] = []  # made at the first refusal: ``server.audit`` is set late

    def refused(request: Request, status: int, exc: BaseException) -> None:
        route = request.scope.get("route")
        template = str(getattr(route, "path", "-"))
        if template == "/v1/session" and request.method == "POST":
            return  # a failed login: AdminAccounts.login audits it itself
        identity = getattr(request.state, "identity", None)
        if status == 401:
            missing = str(exc) == _MISSING_CREDENTIALS
            reason = "no token" if missing else "unknown or expired token"
        else:
            reason = str(exc)
        if not refusals:
            refusals.append(RefusalAudit(server.audit))
        refusals[0].record(
            Refusal(
                status=status,
                account=None if identity is None else identity.username,
                source=request.client.host if request.client else "-",
                method=request.method,
                route=template,
                reason=reason,
            )
        )

    route = Routes(app, authorise)
    install_error_handlers(app, refused)
    app.add_middleware(_BodyLimit)
    app.add_middleware(_RequestLog)
    for declare in AREAS:
        declare(route, server)
    app.state.endpoints = tuple(route.table)
    app.state.permissions = PERMISSIONS
    return app


class _RequestLog:
    """Logs each request once it is answered: ``admin request`` with the account (``-`` for
    none: a bad token, a failed login), method, route template (``-`` for no route), status
    and duration in ms.

    The template, not the path: the path's values are people's names and device addresses.
    Never the query string, a body or a header (they hold passwords and tokens)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception escaping the app becomes a 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            identity = scope.get("state", {}).get("identity")
            log.info(
                "admin request",
                extra={
                    "account": getattr(identity, "username", "-"),
                    "method": scope.get("method", "-"),
                    "route": str(getattr(scope.get("route"), "path", "-")),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )


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
            await error_response(by_code("too-large"), _TOO_LARGE)(scope, receive, send)
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


# --- serving ----------------------------------------------------------------------------------


def check_bind(config: ServerConfig) -> tuple[str, int, bool]:
    """Where the admin API is to listen: ``(host, port, tls)``.

    Raises:
        ConfigError: a non-loopback address without TLS, unless ``admin_allow_plain``.
    """
    host, port = config.admin_address
    tls = bool(config.admin_tls_cert and config.admin_tls_key)
    if not tls and not is_loopback(host) and not config.admin_allow_plain:
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
        write_private(self._url_file, self.url + "\n")
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
