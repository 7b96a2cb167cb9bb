"""Text at the terminal boundary, both ways.

In: what a person types or pipes must be valid UTF-8. Python decodes command-line arguments and
environment variables with ``surrogateescape``, so undecodable bytes arrive as lone surrogates
(``U+DC80``-``U+DCFF``) that cannot be sent anywhere; :func:`check_text` and
:func:`decode_input` refuse them with a :class:`~sealwire.errors.ConfigError` naming the input.

Out: text that came from someone else (a peer's message or name, a server's answer, an audit
entry another administrator caused) is shown through :func:`for_terminal`, which makes every
character that could move the cursor, break the line, recolour or clear the screen, or reorder
or hide text visible as an escape (``\\n``, ``\\x1b``, ``\\u202e``): C0 and C1 controls, DEL,
format characters (Unicode category Cf: bidi embeddings, overrides, isolates and marks,
zero-width spaces, tag characters...), line and paragraph separators, and lone surrogates.
Ordinary text, accents, any script and emoji (with their zero-width joiners) stay as they are.
The result is always one line. A backslash is left as it is, so the escaping is for reading,
not a reversible encoding (``--json`` output is the exact text).

:func:`json_line` is ``json.dumps`` whose output keeps ordinary non-ASCII text readable but
escapes the same unsafe characters as ``\\uXXXX`` (``json.dumps`` itself escapes C0 only).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from sealwire.errors import ConfigError

__all__ = ["ask_secret", "check_text", "decode_input", "for_terminal", "is_unsafe", "json_line"]

# Joiners that emoji sequences and several scripts (Persian, Indic) need; they cannot move
# or hide text on their own.
_KEPT_FORMAT = frozenset("\u200c\u200d")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def is_unsafe(char: str) -> bool:
    """Whether one character must not reach a terminal as it is."""
    return char not in _KEPT_FORMAT and unicodedata.category(char) in _UNSAFE_CATEGORIES


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte carried by surrogateescape (a path)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def for_terminal(text: str) -> str:
    """``text`` made safe to print for a person: one line, nothing that controls the terminal
    or reorders or hides text (those characters are shown as escapes)."""
    if text.isprintable():  # the common case: nothing to escape (isprintable refuses all of them)
        return text
    return "".join(_escape(c) if is_unsafe(c) else c for c in text)


def json_line(value: Any, **options: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)`` with the characters :func:`for_terminal`
    escapes written as JSON escapes (the same JSON value, safe on a terminal)."""
    text = json.dumps(value, ensure_ascii=False, **options)
    if text.isprintable():
        return text
    out: list[str] = []
    for char in text:
        if char != "\n" and is_unsafe(char):  # a "\n" here is json.dumps's own (indent=)
            # Outside strings JSON has only ASCII, so every such character is inside a string.
            data = char.encode("utf-16-be", "surrogatepass")
            out.extend(f"\\u{int.from_bytes(data[i : i + 2]):04x}" for i in range(0, len(data), 2))
        else:
            out.append(char)
    return "".join(out)


def check_text(value: str, what: str) -> str:
    """``value`` if it is valid UTF-8 text (no lone surrogates), else a ConfigError naming
    ``what`` ("the message", "the argument USERNAME")."""
    if _SURROGATE.search(value):
        raise ConfigError(f"{what} is not valid UTF-8 text")
    return value


def decode_input(data: bytes, what: str) -> str:
    """Bytes read from standard input or a file, decoded as UTF-8 strictly."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not valid UTF-8 text") from None


def ask_secret(prompt: str, what: str) -> str:
    """``getpass.getpass(prompt)``, refusing what is not valid UTF-8 text."""
    import getpass

    try:
        return check_text(getpass.getpass(prompt), what)
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not valid UTF-8 text") from None
