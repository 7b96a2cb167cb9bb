"""Logging setup for Sealwire's services: one JSON object per line (or one line of text).

:func:`configure_logging` puts its handler on the *root* logger, so every record of the process
comes out in the chosen format: Sealwire's own and those of the libraries under it (uvicorn,
uvicorn.error, asyncio, nats, websockets, sqlalchemy). Every record is exactly one line: a
traceback is a field of the JSON object (``exc``, ``stack``), and in text its line breaks are
written as ``\\n``.

What may be logged is decided where a message is logged: never plaintext, keys, passwords,
envelope bytes or full addresses (services log :func:`~sealwire.protocol.identity.short_address`).
The formatter adds the ``extra={...}`` fields a call passes, and nothing else. Two libraries
write secrets at their verbose levels, so they get a floor whatever the level asked for
(:data:`LIBRARY_FLOORS`): SQLAlchemy's INFO is every statement with its parameters (token
hashes, password hashes, sealed keys), websockets' DEBUG dumps frame bytes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, TextIO

__all__ = ["LIBRARY_FLOORS", "JsonFormatter", "TextFormatter", "configure_logging"]

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colour codes
}

LIBRARY_FLOORS: Final[Mapping[str, int]] = MappingProxyType(
    {"sqlalchemy": logging.WARNING, "websockets": logging.INFO}
)
"""The lowest level each library logger may log at: below it, it writes secrets."""


def _timestamp(record: logging.LogRecord) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "msg": ..., <extra fields>}`` per line;
    a traceback is the ``exc`` field (``stack`` for ``stack_info``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool | str) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE`` on one line: line breaks (a traceback's too) are
    written as ``\\n``, so one record is one line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


class _LibraryFloor(logging.Filter):
    """Drops a library's records below its :data:`LIBRARY_FLOORS` level (a second guard:
    a library may lower its own logger's level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.partition(".")[0]
        return record.levelno >= LIBRARY_FLOORS.get(top, logging.NOTSET)


def configure_logging(
    fmt: str = "json", level: str = "info", *, stream: TextIO | None = None
) -> None:
    """Send every logger's records to standard error (or ``stream``) in ``fmt``.

    Args:
        fmt: ``json`` (one object per line) or ``text``.
        level: the lowest level logged (``debug``, ``info``, ``warning``, ``error``); the
            libraries of :data:`LIBRARY_FLOORS` never go below their floor.
        stream: where to write (default: standard error at the time of the call).
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_LibraryFloor())
    root = logging.getLogger()
    root.setLevel(level.upper())
    wanted = root.level
    root.handlers[:] = [handler]
    ours = logging.getLogger("sealwire")  # once had a handler of its own: give it back
    ours.handlers[:] = []
    ours.setLevel(logging.NOTSET)
    ours.propagate = True
    for name, floor in LIBRARY_FLOORS.items():
        logging.getLogger(name).setLevel(max(floor, wanted))
    # uvicorn installs handlers of its own on its loggers when given a log_config; the admin
    # API gives none, but a stray one would print each record twice: let them propagate.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        library = logging.getLogger(name)
        library.handlers[:] = []
        library.propagate = True
