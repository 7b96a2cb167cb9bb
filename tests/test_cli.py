"""The command line: exit codes and messages from the one error-mapping place."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

import pytest

from sealwire.cli.main import EXIT_ERROR, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert "sealwire/v1" in capsys.readouterr().out


def test_errors_print_one_line_and_exit_1(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["admin", "--data", str(tmp_path), "status"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no enterprise server is running" in err
    assert main(["device", "--home", str(tmp_path / "d"), "status"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no activated device" in err and "activate" in err


def test_up_runs_relay_and_server_and_says_what_to_do_next(tmp_path: pathlib.Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "sealwire", "up", "--data", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        _check_up(proc, tmp_path)
    assert proc.returncode == 0


def _check_up(proc: subprocess.Popen[str], tmp_path: pathlib.Path) -> None:
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "ready" in first
        rest = "".join(proc.stdout.readline() for _ in range(6))
        assert "sealwire admin --data" in rest and "user add" in rest
        status = subprocess.run(
            [sys.executable, "-m", "sealwire", "admin", "--data", str(tmp_path), "status"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert "relay_connected" in status.stdout and "True" in status.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2


def test_console_entry_point_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sealwire", "version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("sealwire ")
