"""The command line: exit codes and messages from the one error-mapping place."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from sealwire.cli.main import EXIT_BROKEN_PIPE, EXIT_ERROR, main


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


# --- whatever a person types or pipes: one line on stderr, never a traceback ----------------


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sealwire: "), err
    return lines[0]


def test_undecodable_arguments_are_refused_by_name(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Python decodes argv with surrogateescape: b"\xff\xfe" arrives as "\udcff\udcfe".
    home = str(tmp_path / "d")
    assert main(["device", "--home", home, "send", "bob", "\udcff\udcfe"]) == EXIT_ERROR
    line = _one_line(capsys.readouterr().err)
    assert line == "sealwire: the message is not valid UTF-8 text"
    assert main(["device", "--home", home, "send", "b\udcffob", "hi"]) == EXIT_ERROR
    assert "USER is not valid UTF-8" in _one_line(capsys.readouterr().err)


def test_undecodable_admin_arguments_never_reach_http(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEALWIRE_ADMIN_TOKEN", "t")
    url = ["admin", "--url", "http://127.0.0.1:9"]
    assert main([*url, "user", "add", "bad\udcffname"]) == EXIT_ERROR
    assert "USERNAME is not valid UTF-8" in _one_line(capsys.readouterr().err)
    assert main([*url, "user", "add", "carol", "--name", "C\udcff"]) == EXIT_ERROR
    assert "--name is not valid UTF-8" in _one_line(capsys.readouterr().err)
    monkeypatch.delenv("SEALWIRE_ADMIN_TOKEN")
    monkeypatch.setenv("SEALWIRE_ADMIN_PASSWORD", "pass\udcffword")
    assert main([*url, "login"]) == EXIT_ERROR
    assert "SEALWIRE_ADMIN_PASSWORD is not valid UTF-8" in _one_line(capsys.readouterr().err)


def test_a_password_file_that_is_not_utf8(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "pw"
    bad.write_bytes(b"pass\xffword\n")
    args = ["admin", "--url", "http://127.0.0.1:9", "login", "--password-file", str(bad)]
    assert main(args) == EXIT_ERROR
    assert "is not valid UTF-8 text" in _one_line(capsys.readouterr().err)


def test_secrets_on_stdin_that_are_not_utf8(tmp_path: pathlib.Path) -> None:
    home = ["device", "--home", str(tmp_path / "d")]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sealwire",
            *home,
            "activate",
            "sealwire-ticket:AAAA",
            "--password-stdin",
        ],
        input=b"pass\xffword\npasscode-123\n",
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_ERROR
    line = _one_line(proc.stderr.decode())
    assert line == "sealwire: the activation password on standard input is not valid UTF-8 text"


def test_a_data_directory_that_is_a_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "f"
    file.write_text("")
    assert main(["up", "--data", str(file), "--port", "0"]) == EXIT_ERROR
    assert "is not a directory" in _one_line(capsys.readouterr().err)
    relay = ["relay", "--data", str(file), "--port", "0", "--metrics", ""]
    assert main(relay) == EXIT_ERROR
    assert _one_line(capsys.readouterr().err) == f"sealwire: {file}: File exists"


def test_unexpected_errors_are_one_line_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sealwire.cli.main as cli_main

    def broken(args: object) -> int:
        raise RuntimeError("boom\n\x1b[2J")

    monkeypatch.setattr(cli_main, "_cmd_version", broken)
    monkeypatch.delenv("SEALWIRE_DEBUG", raising=False)
    assert main(["version"]) == EXIT_ERROR
    line = _one_line(capsys.readouterr().err)
    assert "internal error (RuntimeError" in line and "SEALWIRE_DEBUG=1" in line
    assert "\x1b" not in line
    monkeypatch.setenv("SEALWIRE_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["version"])


def test_a_closed_pipe_ends_quietly() -> None:
    read, write = os.pipe()
    os.close(read)  # like `sealwire ... | head -1` once head has exited
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sealwire", "version"],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write)
    assert proc.stderr == b""
    assert proc.returncode == EXIT_BROKEN_PIPE


@pytest.mark.parametrize("closed", ["<&-", ">&-"])
def test_closed_standard_streams(tmp_path: pathlib.Path, closed: str) -> None:
    # libuv (uvloop) used to abort when the loop got descriptor 0 or 1.
    home = tmp_path / "d"
    command = f"exec {sys.executable} -m sealwire device --home {home} send bob - {closed}"
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_ERROR
    assert "no activated device" in _one_line(proc.stderr)
