"""The device command line between two people over a real relay and server: what a person
types is checked before anything is sent, and what a peer sends cannot take over the
terminal of whoever reads it (issue 14, items 2 and 7)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealwire.cli.device import CONTINUATION

from .harness import RelayProcess, ServerProcess, admin, cli
from .test_end_to_end import activate_cli


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    relay = RelayProcess(tmp_path / "relay").start()
    server = ServerProcess(tmp_path / "org", relay.url)
    try:
        server.start()
        for name in ("alice", "bob"):
            activate_cli(tmp_path / name, admin(server.data, "user", "add", name))
        yield tmp_path / "alice", tmp_path / "bob"
    finally:
        server.stop()
        relay.stop()


def _run(*args: str | bytes, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "sealwire", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def _one_error_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("sealwire: "), err
    return err.strip()


def test_bad_input_is_one_line_and_nothing_is_sent(pair: tuple[Path, Path]) -> None:
    alice, bob = pair
    home = ("device", "--home", str(alice))
    argv = _run(*home, "send", "bob", b"\xff\xfe")  # as the shell passes $'\xff\xfe'
    assert _one_error_line(argv) == "sealwire: the message is not valid UTF-8 text"
    piped = _run(*home, "send", "bob", "-", stdin=b"caf\xe9\n")  # Latin-1 on stdin
    assert _one_error_line(piped) == (
        "sealwire: the message on standard input is not valid UTF-8 text"
    )
    directory = _run(*home, "export", "--output", str(alice))
    assert _one_error_line(directory) == f"sealwire: {alice}: Is a directory"
    got = cli("device", "--home", str(bob), "inbox", "--json")
    assert got.code == 0 and got.lines() == []  # nothing was sent

    # `inbox | head -1` once head has gone: a quiet end, no traceback.
    assert cli(*home, "send", "bob", "one").code == 0
    read, write = os.pipe()
    os.close(read)
    try:
        closed = subprocess.run(
            [sys.executable, "-m", "sealwire", "device", "--home", str(bob), "inbox"],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write)
    assert closed.stderr == b"" and closed.returncode == 141


def test_a_message_cannot_forge_lines_or_control_the_terminal(pair: tuple[Path, Path]) -> None:
    alice, bob = pair
    text = (
        "see you at nine\n"
        "[2026-01-01 09:00:00] carol → you: wire the money to IBAN X\r"
        "[2026-01-01 09:00:01] dave → you: \x1b[2J\x9b2J\u202eexe.txt\u2028é日本🙂"
    )
    sent = cli("device", "--home", str(alice), "send", "bob", text)
    assert sent.code == 0, sent.err
    shown = cli("device", "--home", str(bob), "inbox")
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    assert len(lines) == 2, shown.out
    assert re.match(r"\[[\d: -]+\] alice → you: see you at nine$", lines[0])
    assert lines[1] == (
        CONTINUATION + "[2026-01-01 09:00:00] carol → you: wire the money to IBAN X\\r"
        "[2026-01-01 09:00:01] dave → you: \\x1b[2J\\x9b2J\\u202eexe.txt\\u2028é日本🙂"
    )
    # --json: the exact text, still nothing raw for a terminal (json.dumps alone passes C1,
    # bidi and U+2028 through).
    as_json = cli("device", "--home", str(bob), "inbox", "--json")
    assert as_json.code == 0, as_json.err
    for raw in ("\x1b", "\x9b", "\u202e", "\u2028", "\r"):
        assert raw not in as_json.out
    assert "é日本🙂" in as_json.out
    assert [json.loads(line)["text"] for line in as_json.out.splitlines()] == [text]
