"""The local admin endpoint of a running enterprise server.

A Unix socket, ``DATA/server/admin.sock`` (mode 0600 in a 0700 directory: only the account
that runs the server may use it), speaking one JSON object per line each way::

    -> {"op": "user.add", "username": "alice", "display_name": "Alice Example"}
    <- {"ok": true, "result": {...}}        or        {"ok": false, "error": "..."}

``sealwire admin`` is its client (:func:`call`). The device-management issue replaces it with
the HTTP admin API (roles, tokens); until then, filesystem permissions are the access control.
Requests are bounded (64 KiB per line, 30 s per request) and a malformed one gets an error
answer, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from sealwire.errors import ConfigError, SealwireError, TransportError
from sealwire.protocol.directory import MAX_DISPLAY_NAME, check_username
from sealwire.protocol.identity import short_address

from .config import MAX_TICKET_LIFETIME_S
from .service import EnterpriseServer

__all__ = ["AdminEndpoint", "AdminError", "call"]

log = logging.getLogger(__name__)

_MAX_LINE = 64 * 1024
_TIMEOUT_S = 30.0


class AdminError(SealwireError):
    """The server refused an admin request; the message says why."""


class AdminEndpoint:
    """Serves admin requests for ``server`` on its admin socket."""

    def __init__(self, server: EnterpriseServer, path: Path) -> None:
        self._server = server
        self.path = path
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a server that was killed
        old = os.umask(0o177)
        try:
            self._listener = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=_MAX_LINE
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(Exception):
                await self._listener.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), _TIMEOUT_S)
                except (ValueError, asyncio.LimitOverrunError):
                    await _answer(writer, {"ok": False, "error": "request too long"})
                    return
                if not line:
                    return
                answer = await asyncio.wait_for(self._handle(line), _TIMEOUT_S)
                await _answer(writer, answer)
        except (TimeoutError, ConnectionError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("a request is a JSON object with an 'op'")
            result = await self._dispatch(request["op"], request)
        except RecursionError:  # JSON nested too deep for the decoder: malformed, not a fault
            return {"ok": False, "error": "bad request: nested too deeply"}
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        except SealwireError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception:
            log.exception("admin request failed")
            return {"ok": False, "error": "internal error (see the server log)"}
        return {"ok": True, "result": result}

    async def _dispatch(self, op: str, request: dict[str, Any]) -> Any:
        server = self._server
        if op == "status":
            return server.status()
        if op == "user.add":
            username = check_username(_text(request, "username"))
            display = _text(request, "display_name", default=username)
            if not 1 <= len(display) <= MAX_DISPLAY_NAME:
                raise ValueError(f"a display name has 1 to {MAX_DISPLAY_NAME} characters")
            lifetime = _lifetime(request)  # checked before the person is added, not after
            server.add_user(username, display)
            return _ticket(await server.issue_ticket(username, lifetime))
        if op == "user.ticket":
            username = check_username(_text(request, "username"))
            return _ticket(await server.issue_ticket(username, _lifetime(request)))
        if op == "user.list":
            return [
                {
                    "username": u.username,
                    "display_name": u.display_name,
                    "state": u.state,
                    "devices": u.devices,
                }
                for u in server.store.users()
            ]
        if op == "device.list":
            names = [u.username for u in server.store.users()]
            if "username" in request:
                names = [check_username(_text(request, "username"))]
            return [
                {
                    "username": d.username,
                    "address": short_address(d.address),
                    "activated_at": d.activated_at // 1000,
                    "state": d.state,
                }
                for d in server.store.devices_of(names, now=0, states=("active", "pending"))
            ]
        raise ValueError(f"unknown op {op!r}")


def _text(request: dict[str, Any], name: str, *, default: str | None = None) -> str:
    value = request.get(name, default)
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be a string")
    return value


def _lifetime(request: dict[str, Any]) -> int | None:
    value = request.get("lifetime_s")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("'lifetime_s' must be an integer number of seconds")
    if not 60 <= value <= MAX_TICKET_LIFETIME_S:
        raise ConfigError("an activation password lives between one minute and 30 days")
    return value


def _ticket(issued: Any) -> dict[str, Any]:
    return {
        "username": issued.username,
        "ticket": issued.ticket,
        "password": issued.password,
        "expires_at": issued.expires_at,
    }


async def _answer(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
    writer.write(json.dumps(answer).encode() + b"\n")
    await writer.drain()


async def call(path: Path, op: str, **fields: Any) -> Any:
    """Send one request to the running server's admin endpoint; return its result.

    Raises:
        TransportError: no server is running on that data directory.
        AdminError: the server refused the request.
    """
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 * _MAX_LINE)
    except (FileNotFoundError, ConnectionRefusedError):
        raise TransportError(
            f"no enterprise server is running with its admin endpoint at {path}: "
            "start it with `sealwire server` or `sealwire up` (same --data)"
        ) from None
    except PermissionError:
        raise TransportError(
            f"permission denied on {path}: run as the account that runs the server"
        ) from None
    try:
        writer.write(json.dumps({"op": op, **fields}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), _TIMEOUT_S + 5)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if not line:
        raise TransportError("the server closed the admin connection without an answer")
    answer = json.loads(line)
    if not answer.get("ok"):
        raise AdminError(str(answer.get("error", "refused")))
    return answer.get("result")
