"""How the admin API answers a refusal: the status and stable code of the one table
(:mod:`sealwire._http_errors`, shared with the ``sealwire admin`` client) and a JSON body
``{"detail": "...", "code": "...", "errors": [...]}`` written for the administrator.

``errors`` comes only with a body that fails validation (422, or 400 for bad JSON) and lists
each field: where, what. Never the offending input: it may be a password.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from sealwire._http_errors import ERRORS, ErrorCode, by_code, for_error, for_status
from sealwire.errors import SealwireError

__all__ = [
    "ERRORS",
    "RESPONSES",
    "ErrorAnswer",
    "ErrorCode",
    "FieldError",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger("sealwire.server.api")

_BY_WEB_STATUS: Final = {404: "no-such-route", 405: "method-not-allowed", 413: "too-large"}
"""The code of a refusal the web framework makes itself (an unknown path, a body too large)."""


class FieldError(BaseModel):
    loc: list[str]
    """Where: ``["body", "username"]``, ``["query", "limit"]``."""
    msg: str
    type: str


class ErrorAnswer(BaseModel):
    """Every refusal (4xx, 5xx)."""

    detail: str
    """What went wrong, for the administrator."""
    code: str
    """Stable: which row of the error table (``not-found``, ``invalid``, ``storage``...)."""
    errors: list[FieldError] | None = None
    """With 422 for fields that fail validation (and 400 for bad JSON): each of them."""


def _responses() -> dict[int | str, dict[str, Any]]:
    texts: dict[int, list[str]] = {}
    for row in ERRORS:
        texts.setdefault(row.status, []).append(f"{row.description} (`{row.code}`)")
    return {
        status: {"model": ErrorAnswer, "description": "; ".join(text)}
        for status, text in sorted(texts.items())
    }


RESPONSES: Final[dict[int | str, dict[str, Any]]] = _responses()
"""The refusals of every endpoint, for the OpenAPI description."""

Refused = Callable[[Request, int, BaseException], None]
"""Told of each request refused with 401 or 403 (to audit it)."""


def error_response(row: ErrorCode, detail: str, **extra: Any) -> JSONResponse:
    """The JSON answer of ``row`` with ``detail`` (and ``extra`` fields)."""
    headers = {"WWW-Authenticate": "Bearer"} if row.status == 401 else None
    body = {"detail": detail, "code": row.code, **extra}
    return JSONResponse(body, status_code=row.status, headers=headers)


def _where(loc: Any) -> str:
    parts = [str(part) for part in loc if part not in ("body",)]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI, refused: Refused) -> None:
    """Answer every exception of ``app``'s endpoints from the table; tell ``refused`` of
    each 401 and 403."""

    async def sealwire_error(request: Request, exc: Exception) -> JSONResponse:
        row = for_error(exc)
        if row.status == 503:
            log.warning("admin request failed", extra={"reason": str(exc)})
        if row.status in (401, 403):
            refused(request, row.status, exc)
        return error_response(row, str(exc))

    async def value_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(by_code("invalid"), str(exc) or "invalid value")

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
            return error_response(
                by_code("invalid-json"), "the request body is not valid JSON", errors=errors
            )
        detail = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors[:5])
        return error_response(
            by_code("invalid-request"), f"invalid request: {detail}", errors=errors
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _BY_WEB_STATUS.get(exc.status_code)
        row = by_code(code) if code else for_status(exc.status_code) or by_code("refused")
        return JSONResponse(
            {"detail": exc.detail, "code": row.code},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("admin API bug", exc_info=exc)
        return error_response(by_code("internal"), "internal error (a bug: see the server log)")

    app.add_exception_handler(SealwireError, sealwire_error)
    app.add_exception_handler(ValueError, value_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
