"""The enterprise server's local admin endpoint (``sealwire.server.admin``) and its CLI client:
whatever a local client writes gets an ``{"ok": false, ...}`` answer, never a crash, and the
server keeps answering; the socket is for the server's account only."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sealwire.server.admin import AdminEndpoint, AdminError, call
from sealwire.server.config import ServerConfig
from sealwire.server.service import EnterpriseServer

from ..e2e.harness import cli

# No relay is needed for administration: the server is opened, its relay link never started.
_NO_RELAY = "ws://127.0.0.1:9"


@asynccontextmanager
async def admin_server(data: Path) -> AsyncIterator[AdminEndpoint]:
    config = ServerConfig(data=str(data), relay=_NO_RELAY)
    server = EnterpriseServer.open(config)
    endpoint = AdminEndpoint(server, config.admin_socket)
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()
        await server.stop()


async def exchange(path: Path, *lines: bytes) -> list[dict[str, Any]]:
    """Write raw ``lines`` on one connection; return every answer until the server closes."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    try:
        for line in lines:
            writer.write(line)
        await writer.drain()
        writer.write_eof()
        answers = []
        async with asyncio.timeout(10):
            while line := await reader.readline():
                answers.append(json.loads(line))
        return answers
    finally:
        writer.close()


def _refused(answer: dict[str, Any], *words: str) -> None:
    assert answer["ok"] is False, answer
    assert set(answer) == {"ok", "error"}
    for word in words:
        assert word in answer["error"], answer


def test_malformed_requests_get_error_answers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with admin_server(tmp_path / "org") as endpoint:
            sock = endpoint.path
            bad: list[tuple[bytes, tuple[str, ...]]] = [
                (b"{not json\n", ("bad request",)),
                (b"\n", ("bad request",)),
                (b"\xff\xfe\x00garbage\n", ("bad request",)),
                (b"[1, 2, 3]\n", ("JSON object with an 'op'",)),
                (b'"status"\n', ("JSON object with an 'op'",)),
                (b"null\n", ("JSON object with an 'op'",)),
                (b"{}\n", ("JSON object with an 'op'",)),
                (b'{"op": 5}\n', ("JSON object with an 'op'",)),
                (b'{"op": "user.delete-everything"}\n', ("unknown op",)),
                (b'{"op": "user.add", "username": "Alice!"}\n', ("not a valid user name",)),
                (b'{"op": "user.add"}\n', ("'username' must be a string",)),
                (b'{"op": "user.add", "username": 42}\n', ("'username' must be a string",)),
                (b'{"op": "user.add", "username": ["a"]}\n', ("must be a string",)),
                (
                    b'{"op": "user.add", "username": "zed", "display_name": 7}\n',
                    ("'display_name' must be a string",),
                ),
                (
                    b'{"op": "user.add", "username": "zed", "display_name": ""}\n',
                    ("display name",),
                ),
                (
                    json.dumps(
                        {"op": "user.add", "username": "zed", "display_name": "x" * 129}
                    ).encode()
                    + b"\n",
                    ("display name",),
                ),
                (
                    b'{"op": "user.add", "username": "zed", "lifetime_s": "1h"}\n',
                    ("'lifetime_s' must be an integer",),
                ),
                (
                    b'{"op": "user.add", "username": "zed", "lifetime_s": true}\n',
                    ("'lifetime_s' must be an integer",),
                ),
                (b'{"op": "user.ticket", "username": "nobody"}\n', ("nobody",)),
                (b'{"op": "device.list", "username": null}\n', ("must be a string",)),
                (b"[" * 100_000 + b"]" * 100_000 + b"\n", ()),  # over-long and deep
                (b'{"op": "status", "n": ' + b"9" * 5000 + b"}\n", ("bad request",)),
                (b"[" * 20_000 + b"]" * 20_000 + b"\n", ("bad request", "nested")),
            ]
            for line, words in bad:
                answers = await exchange(sock, line, b'{"op": "status"}\n')
                _refused(answers[0], *words)
                if len(line) <= 64 * 1024:
                    # The same connection goes on serving.
                    assert len(answers) == 2 and answers[1]["ok"] is True, (line[:40], answers)
                else:
                    # A request beyond 64 KiB ends the connection after its answer.
                    assert len(answers) == 1, answers
            # Nothing was added by all that, and the server still answers new connections.
            assert await call(sock, "user.list") == []
            assert (await call(sock, "status"))["users"] == 0

    asyncio.run(scenario())


def test_over_long_line_is_refused_and_the_server_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with admin_server(tmp_path / "org") as endpoint:
            name = "a" * (70 * 1024)
            request = json.dumps({"op": "user.add", "username": name}).encode() + b"\n"
            answers = await exchange(endpoint.path, request, b'{"op": "status"}\n')
            assert answers == [{"ok": False, "error": "request too long"}]
            assert await call(endpoint.path, "user.list") == []

    asyncio.run(scenario())


def test_users_tickets_and_lifetimes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with admin_server(tmp_path / "org") as endpoint:
            sock = endpoint.path
            ticket = await call(sock, "user.add", username="alice", display_name="Alice E")
            assert ticket["username"] == "alice"
            assert ticket["ticket"].startswith("sealwire-ticket:")
            with pytest.raises(AdminError, match="exists already"):
                await call(sock, "user.add", username="alice")
            for lifetime in (31 * 86400, 30 * 86400 + 1, 59, 0, -5):
                with pytest.raises(AdminError, match="between one minute and 30 days"):
                    await call(sock, "user.ticket", username="alice", lifetime_s=lifetime)
                # A refused lifetime adds nobody (the person could not be added again).
                with pytest.raises(AdminError, match="between one minute and 30 days"):
                    await call(sock, "user.add", username="bob", lifetime_s=lifetime)
            users = await call(sock, "user.list")
            assert [u["username"] for u in users] == ["alice"]
            assert users[0] == {
                "username": "alice",
                "display_name": "Alice E",
                "state": "active",
                "devices": 0,
            }
            longest = await call(sock, "user.ticket", username="alice", lifetime_s=30 * 86400)
            assert longest["password"] != ticket["password"]
            assert await call(sock, "device.list") == []

    asyncio.run(scenario())


def test_socket_is_private_to_the_server_account(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with admin_server(tmp_path / "org") as endpoint:
            mode = endpoint.path.stat().st_mode
            assert stat.S_ISSOCK(mode)
            assert stat.S_IMODE(mode) == 0o600
            assert stat.S_IMODE(endpoint.path.parent.stat().st_mode) == 0o700
        assert not endpoint.path.exists()  # removed on stop

    asyncio.run(scenario())


def test_cli_against_the_endpoint(tmp_path: Path) -> None:
    data = tmp_path / "org"

    async def sealwire(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sealwire",
            "admin",
            "--data",
            str(data),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def scenario() -> None:
        async with admin_server(data):
            code, out, err = await sealwire("--json", "user", "add", "carol", "--name", "Carol")
            assert code == 0, err
            assert json.loads(out)["username"] == "carol"
            code, out, err = await sealwire("user", "add", "carol")
            assert code == 1 and out == ""
            assert err.splitlines() == [
                "sealwire: a person with the user name 'carol' exists already"
            ]
            code, out, err = await sealwire("user", "ticket", "carol", "--lifetime", "31d")
            assert code == 1 and len(err.splitlines()) == 1
            assert "between one minute and 30 days" in err
            code, out, err = await sealwire("user", "add", "Carol!")
            assert code == 1 and len(err.splitlines()) == 1
            assert "not a valid user name" in err

    asyncio.run(scenario())


def test_cli_without_a_running_server(tmp_path: Path) -> None:
    result = cli("admin", "--data", str(tmp_path / "nothing-here"), "user", "list")
    assert result.code == 1
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("sealwire: no enterprise server is running")
    assert "sealwire server" in lines[0]
