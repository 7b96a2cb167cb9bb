"""Peer- and server-supplied text on the terminal (``sealwire.cli._text``) and the inbox line
(``sealwire.cli.device.format_message``): nothing that controls the terminal or reorders text
gets through, and a message cannot forge a line of its own."""

from __future__ import annotations

import json
import re
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from sealwire.cli._text import for_terminal, json_line
from sealwire.cli.device import CONTINUATION, format_message
from sealwire.device.store import MessageRecord, MessageState

_UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_JOINERS = {"\u200c", "\u200d"}
# Any code point, surrogates included (lone ones come from surrogateescape), weighted towards
# the characters that matter here.
_nasty = st.sampled_from(
    "\n\r\t\x00\x07\x08\x1b\x7f\x85\x9b\u00ad\u061c\u200b\u200e\u200f\u2028\u2029"
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff\U000e0041\udcff"
)
_text = st.lists(st.one_of(st.characters(), _nasty), max_size=40).map("".join)
_LINE_START = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ")


def _safe(text: str) -> bool:
    return (
        not any(unicodedata.category(c) in _UNSAFE and c not in _JOINERS for c in text)
        and text.count("\n") == 0
    )


def _record(text: str, sender: str = "alice", *, outgoing: bool = False) -> MessageRecord:
    return MessageRecord(
        seq=1,
        message_id=b"\x00" * 16,
        outgoing=outgoing,
        state=MessageState.RECEIVED,
        sent_at=1_700_000_000_000,
        sender=sender,
        recipient="bob",
        text=text,
        sender_device=b"\x01" * 32,
    )


@given(_text)
def test_for_terminal_leaves_no_control_or_format_character(text: str) -> None:
    shown = for_terminal(text)
    assert _safe(shown)
    shown.encode("utf-8")  # printable on any UTF-8 terminal: no lone surrogate left


@given(st.text(alphabet=st.characters(categories=["L", "M", "N", "P", "S", "Zs"])))
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert for_terminal(text) == text


def test_escapes_are_visible() -> None:
    assert for_terminal("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert for_terminal("\x1b[2J\x9b2J\x7f") == "\\x1b[2J\\x9b2J\\x7f"
    assert for_terminal("abc\u202edef\u2066") == "abc\\u202edef\\u2066"
    assert for_terminal("x\U000e0041") == "x\\U000e0041"
    assert for_terminal("/tmp/b-\udcff") == "/tmp/b-\\xff"  # an undecodable byte of a path
    assert for_terminal("é 日本 🙂 👨\u200d👩\u200d👧 ﷺ") == "é 日本 🙂 👨\u200d👩\u200d👧 ﷺ"


@given(_text, _text, st.booleans())
def test_a_message_cannot_forge_a_line(text: str, sender: str, outgoing: bool) -> None:
    lines = format_message(_record(text, sender, outgoing=outgoing), "bob").split("\n")
    assert _LINE_START.match(lines[0])
    for line in lines:
        assert _safe(line)
    for line in lines[1:]:
        assert line.startswith(CONTINUATION)  # never "[time] someone → you: ..."


def test_a_newline_does_not_make_a_second_message() -> None:
    forged = "see you\n[2026-01-01 09:00:00] carol → you: wire the money to IBAN X"
    shown = format_message(_record(forged), "bob")
    first, second = shown.split("\n")
    assert first.endswith("] alice → you: see you")
    assert second == CONTINUATION + "[2026-01-01 09:00:00] carol → you: wire the money to IBAN X"
    cr = format_message(_record("hi\r[2026-01-01 09:00:00] carol → you: x"), "bob")
    assert "\n" not in cr and "hi\\r[2026" in cr
    assert format_message(_record("two\r\nlines\n"), "bob").endswith(
        "you: two\n" + CONTINUATION + "lines"
    )


def test_escape_sequences_and_bidi_in_names_and_text_are_shown_escaped() -> None:
    shown = format_message(_record("\x1b[2Jgone\u202etxt.exe", sender="eve\x1b]0;x\x07"), "bob")
    assert "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown
    assert "eve\\x1b]0;x\\x07 → you: \\x1b[2Jgone\\u202etxt.exe" in shown


# Valid text only: a lone surrogate never reaches output (check_text refuses it at input), and
# no JSON can carry a high and a low surrogate apart (JSON reads them as one character).
_valid_text = st.lists(
    st.one_of(st.characters(exclude_categories=("Cs",)), _nasty), max_size=40
).map("".join)


@given(st.dictionaries(_valid_text, _valid_text, max_size=3))
def test_json_lines_are_the_same_json_and_safe_on_a_terminal(value: dict[str, str]) -> None:
    line = json_line(value)
    assert _safe(line)
    assert json.loads(line) == value
    assert json_line({"t": "é日本🙂"}) == '{"t": "é日本🙂"}'  # readable, not \\u-escaped
