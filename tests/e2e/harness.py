"""Real enterprise-server processes and CLI runs for the end-to-end tests.

:class:`ServerProcess` runs ``python -m sealwire server`` against a relay (see
``tests/relay/harness.py`` for :class:`RelayProcess`) and waits for its ``ready`` line;
:func:`admin` and :func:`cli` run ``sealwire`` commands the way an operator or a person would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.relay.harness import RelayProcess

__all__ = ["CliResult", "RelayProcess", "ServerProcess", "admin", "cli"]


class ServerProcess:
    """``sealwire server`` in a child process."""

    def __init__(self, data: Path, relay_url: str, *args: str, database: str = "") -> None:
        self.data = data
        self.relay_url = relay_url
        self.args = list(args)
        self.database = database
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data / "server.log"
        self.out = data / "server.out"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.data.mkdir(parents=True, exist_ok=True)
        self.out.write_text("")
        command = [
            sys.executable,
            "-m",
            "sealwire",
            "server",
            "--data",
            str(self.data),
            "--relay",
            self.relay_url,
            *(["--database", self.database] if self.database else []),
            # A free port for the admin API (its URL is in DATA/server/admin-url for the CLI).
            "--admin-listen",
            "127.0.0.1:0",
            *self.args,
        ]
        with open(self.log, "a") as log, open(self.out, "a") as stdout:
            self.proc = subprocess.Popen(
                command,
                stdout=stdout,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if "ready" in self.out.read_text():
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"server did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self) -> Any:
        return json.loads(self.out)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def cli(*args: str, stdin: str = "", timeout: float = 60.0) -> CliResult:
    """Run ``python -m sealwire ARGS``; standard input is ``stdin``."""
    proc = subprocess.run(
        [sys.executable, "-m", "sealwire", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return CliResult(proc)


def admin(data: Path, *args: str) -> Any:
    """``sealwire admin --data DATA --json ARGS``; its parsed JSON (fails the test on error).

    Run where the server's data directory is, the command finds the admin API through
    ``DATA/server/admin-url`` and logs in as the first administrator (``admin``, security admin)
    with ``DATA/server/initial-admin-password`` by itself, keeping the token in
    ``DATA/server/admin-token``."""
    result = cli("admin", "--data", str(data), "--json", *args)
    assert result.code == 0, result.err
    return result.json()
