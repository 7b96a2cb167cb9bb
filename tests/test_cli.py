"""The command line: exit codes and messages from the one error-mapping place."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sealwire.cli.main import EXIT_NOT_BUILT, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert "sealwire/v1" in capsys.readouterr().out


def test_up_says_honestly_that_it_is_not_built(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--data", "somewhere"]) == EXIT_NOT_BUILT
    err = capsys.readouterr().err
    assert "not built yet" in err and "somewhere" in err


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2


def test_console_entry_point_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sealwire", "version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("sealwire ")
