"""The one table between Sealwire errors and the admin API's HTTP refusals.

The admin API (:mod:`sealwire.server.api.errors`) answers an error with the row's status and a
JSON body ``{"detail": "...", "code": "<row code>"}``; its client (``sealwire admin``) rebuilds
the row's error class from that answer with :func:`error_from_answer`, carrying the server's
message. Both import this module, which depends on nothing but :mod:`sealwire.errors`, so the
client needs neither the server nor the web framework to read an answer.

=================  ======  ========================  =========================================
code               status  error                     when
=================  ======  ========================  =========================================
unauthenticated    401     AuthenticationFailed      no token, an unknown or expired one; login
forbidden          403     AccessDenied              the role does not have the permission
not-found          404     NotFound                  no such person, group, policy, device...
conflict           409     Conflict                  exists already, or contradicts the state
invalid            422     ConfigError               a value the server refuses
storage            503     StorageError              the database failed
unavailable        503     TransportError            a connection the server needs failed
refused            400     AdminError                any other Sealwire error (the default)
invalid-json       400     AdminError                the body is not valid JSON
invalid-request    422     ConfigError               a field missing, mistyped, out of range
too-large          413     AdminError                the body is larger than the API takes
no-such-route      404     NotFound                  no endpoint at that path
method-not-allowed 405     AdminError                the path has no endpoint for that method
internal           500     AdminError                a bug in the server (see its log)
=================  ======  ========================  =========================================

Codes are stable: a script may branch on them; the ``detail`` text is for people.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sealwire.errors import (
    AccessDenied,
    AdminError,
    AuthenticationFailed,
    ConfigError,
    Conflict,
    NotFound,
    SealwireError,
    StorageError,
    TransportError,
)

__all__ = [
    "ERRORS",
    "ErrorCode",
    "by_code",
    "error_from_answer",
    "for_error",
    "for_status",
]


@dataclass(frozen=True)
class ErrorCode:
    """One row of the table."""

    code: str
    """Stable, in the JSON body's ``code``."""
    status: int
    """The HTTP status."""
    error: type[SealwireError]
    """The error the client raises for it."""
    description: str
    """For the OpenAPI description of the status."""
    raised: bool = True
    """The server answers with this row for an instance of :attr:`error` (the first such row
    wins); ``False``: the row names a refusal made by the web layer, not by a raised error."""


ERRORS: Final[tuple[ErrorCode, ...]] = (
    ErrorCode(
        "unauthenticated",
        401,
        AuthenticationFailed,
        "No token, or an unknown or expired one (login: wrong name or password)",
    ),
    ErrorCode("forbidden", 403, AccessDenied, "The role does not have the permission"),
    ErrorCode("not-found", 404, NotFound, "Not found"),
    ErrorCode("conflict", 409, Conflict, "Exists already, or contradicts the state"),
    ErrorCode("invalid", 422, ConfigError, "A value the server refuses"),
    ErrorCode("storage", 503, StorageError, "The database failed"),
    ErrorCode("unavailable", 503, TransportError, "A connection the server needs failed"),
    ErrorCode("refused", 400, AdminError, "The request was refused", raised=False),
    ErrorCode("invalid-json", 400, AdminError, "Not valid JSON", raised=False),
    ErrorCode(
        "invalid-request",
        422,
        ConfigError,
        "A field is missing, of the wrong type, out of range or unknown",
        raised=False,
    ),
    ErrorCode("too-large", 413, AdminError, "The body is too large", raised=False),
    ErrorCode("no-such-route", 404, NotFound, "No such endpoint", raised=False),
    ErrorCode("method-not-allowed", 405, AdminError, "Method not allowed", raised=False),
    ErrorCode("internal", 500, AdminError, "A bug in the server", raised=False),
)
"""Every refusal of the admin API."""

_BY_CODE: Final[Mapping[str, ErrorCode]] = {row.code: row for row in ERRORS}
_DEFAULT: Final = _BY_CODE["refused"]


def by_code(code: str) -> ErrorCode:
    """The row of ``code``.

    Raises:
        KeyError: no such code.
    """
    return _BY_CODE[code]


def for_error(exc: BaseException) -> ErrorCode:
    """The row the server answers ``exc`` with (``refused``, 400, for an error not listed)."""
    return next((r for r in ERRORS if r.raised and isinstance(exc, r.error)), _DEFAULT)


def for_status(status: int) -> ErrorCode | None:
    """The first row with ``status``, if any (for an answer without a known code)."""
    return next((row for row in ERRORS if row.status == status), None)


def error_from_answer(status: int, answer: Any) -> SealwireError:
    """The error an HTTP error answer of the admin API stands for, with the server's message.

    The body's ``code`` chooses the row; without a known code, the status does; an unknown
    status is an :class:`~sealwire.errors.AdminError`.

    Args:
        status: the HTTP status (400 or more).
        answer: the decoded JSON body (anything: a proxy may answer with something else).
    """
    body = answer if isinstance(answer, dict) else {}
    detail = body.get("detail")
    message = str(detail) if isinstance(detail, str) and detail else ""
    code = body.get("code")
    row = _BY_CODE.get(code) if isinstance(code, str) else None
    if row is None or row.status != status:
        row = for_status(status)
    kind = AdminError if row is None else row.error
    return kind(message or f"the admin API answered HTTP {status}")
