"""Logging (``sealwire.logs``): the handler is on the root logger, so every record of every
library is one line in the chosen format, tracebacks included (issue 15: uvicorn, asyncio and
nats records came out as bare lines in the JSON stream)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sealwire.logs import LIBRARY_FLOORS, configure_logging

from .e2e.harness import RelayProcess

_LIBRARIES = ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio", "nats", "websockets")


@pytest.fixture
def restored() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back."""
    names = ("", "sealwire", *_LIBRARIES, *LIBRARY_FLOORS)
    kept = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level) for name in names
    }
    propagate = {name: logging.getLogger(name).propagate for name in names}
    yield
    for name, (handlers, level) in kept.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate[name]


def _emit_from_everywhere() -> None:
    for name in ("sealwire.server", *_LIBRARIES, "sqlalchemy.engine.Engine"):
        logging.getLogger(name).warning("a record\nwith a second line from %s", name)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    logging.getLogger("nats").info("stack", stack_info=True)


def test_every_logger_is_one_json_line_with_the_traceback_inside(restored: None) -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    _emit_from_everywhere()
    lines = out.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is a JSON object
    names = [e["logger"] for e in entries]
    assert names == ["sealwire.server", *_LIBRARIES, "sqlalchemy.engine.Engine", "asyncio", "nats"]
    assert entries[0]["msg"] == "a record\nwith a second line from sealwire.server"
    crash = entries[-2]
    assert crash["level"] == "error" and "RuntimeError: boom" in crash["exc"]
    assert "Traceback" in crash["exc"]
    assert "test_logs.py" in entries[-1]["stack"]


def test_text_is_one_line_per_record_too(restored: None) -> None:
    out = io.StringIO()
    configure_logging("text", "info", stream=out)
    _emit_from_everywhere()
    lines = out.getvalue().splitlines()
    assert len(lines) == len(_LIBRARIES) + 4
    crash = lines[-2]
    assert " ERROR asyncio: Task exception was never retrieved\\nTraceback" in crash
    assert crash.endswith("RuntimeError: boom")


def test_libraries_that_log_secrets_keep_their_floor(restored: None) -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    logging.getLogger("sqlalchemy.engine.Engine").info("SELECT ... [params with a hash]")
    logging.getLogger("websockets.client").debug("> BINARY 8f 3a ... [frame bytes]")
    logging.getLogger("websockets.client").info("connection open")
    logging.getLogger("asyncio").debug("Using selector: EpollSelector")
    logging.getLogger("sealwire.relay").debug("ours")
    assert not logging.getLogger("sqlalchemy.engine.Engine").isEnabledFor(logging.INFO)
    # a library that lowers its own logger's level is still held back by the handler
    logging.getLogger("sqlalchemy.engine").setLevel(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").debug("row ('secret-row',)")
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == [
        "connection open",
        "Using selector: EpollSelector",
        "ours",
    ]


def test_configuring_twice_keeps_one_handler(restored: None) -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=io.StringIO())
    configure_logging("json", "warning", stream=out)
    logging.getLogger("sealwire.x").warning("once")
    logging.getLogger("sealwire.x").info("not at warning")
    assert len(logging.getLogger().handlers) == 1
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["once"]


# --- a real process ---------------------------------------------------------------------------


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_a_server_process_writes_only_json_lines(tmp_path: Path) -> None:
    """``sealwire server --log-format json --log-level debug``: a malformed HTTP request makes
    uvicorn log, starting the event loop makes asyncio log, a login and a refused request make
    the request log write; every line of standard error is a JSON object, and no password or
    token is in it."""
    relay = RelayProcess(tmp_path / "relay").start()
    data = tmp_path / "org"
    data.mkdir()
    err, out = data / "server.log", data / "server.out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [
        sys.executable,
        "-m",
        "sealwire",
        "server",
        "--data",
        str(data),
        "--relay",
        relay.url,
        "--admin-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--log-level",
        "debug",
    ]
    with open(err, "w") as stderr, open(out, "w") as stdout:
        proc = subprocess.Popen(
            command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env
        )
    try:
        _wait_for(out, "ready", proc, 120)
        url = (data / "server" / "admin-url").read_text().strip()
        password = (data / "server" / "initial-admin-password").read_text().strip()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # uvicorn.error: invalid HTTP request
            raw.recv(1024)
        login = httpx.post(
            url + "/v1/session", json={"username": "admin", "password": password}, timeout=30
        )
        token = login.json()["token"]
        me = httpx.get(url + "/v1/session", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200
        forged = httpx.get(url + "/v1/users", headers={"Authorization": "Bearer forged-x"})
        assert forged.status_code == 401
        _wait_for(err, "Invalid HTTP request", proc, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        relay.stop()
    text = err.read_text()
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"line {number} of stderr is not JSON: {line!r}") from None
        assert isinstance(entries[-1], dict)
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "asyncio"} <= loggers, loggers
    requests = [e for e in entries if e["msg"] == "admin request"]
    assert [(e["method"], e["route"], e["status"], e["account"]) for e in requests] == [
        ("POST", "/v1/session", 200, "admin"),
        ("GET", "/v1/session", 200, "admin"),
        ("GET", "/v1/users", 401, "-"),
    ]
    assert all(isinstance(e["duration_ms"], float) for e in requests)
    assert password not in text and token not in text and "forged-x" not in text


def test_a_relay_process_writes_only_json_lines(tmp_path: Path) -> None:
    """``sealwire relay --log-format json --log-level debug`` from start to stop (its
    "stopping" notice was a bare line in the JSON stream)."""
    relay = RelayProcess(tmp_path / "relay", "--log-format", "json", "--log-level", "debug")
    relay.start()
    try:
        host, port = relay.url.removeprefix("ws://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            raw.sendall(b"NOT HTTP\r\n\r\n")  # websockets logs the failed handshake
            raw.recv(1024)
    finally:
        relay.stop()
    lines = relay.log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # raises on a line that is not JSON
    assert any(e["msg"].startswith("stopping") for e in entries)
    assert {"sealwire.relay", "sealwire.relay.websockets"} <= {e["logger"] for e in entries}
