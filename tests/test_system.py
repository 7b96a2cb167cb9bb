"""The one clock, private-file writer and loopback check every service uses (sealwire._system)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from sealwire._system import is_loopback, now_ms, write_private


def test_now_ms_is_the_wall_clock_in_milliseconds() -> None:
    before = time.time() * 1000
    assert before - 1000 <= now_ms() <= time.time() * 1000 + 1000


def test_a_private_file_is_written_whole_for_this_user_only(tmp_path: Path) -> None:
    path = tmp_path / "new" / "secret"
    write_private(path, "token\n")
    assert path.read_text() == "token\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    write_private(path, b"\x00\x01")  # bytes too, replacing the old content
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret"]  # no temporary left


def test_a_failed_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret"
    write_private(path, "old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_private(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("relay.example.com", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
