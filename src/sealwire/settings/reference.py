"""The settings reference of docs/OPERATIONS.md, generated from the settings classes.

Each table sits between two markers in the document::

    <!-- settings-reference:relay begin (generated: python -m sealwire.settings ...) -->
    | TOML key | variable | ... |
    <!-- settings-reference:relay end -->

``python -m sealwire.settings --markdown`` prints the tables; ``--update FILE`` rewrites them in
place; ``--check FILE`` exits 1 naming each stale table (a test does the same).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sealwire.cli._admin_client import ADMIN_SETTINGS
from sealwire.relay.config import RELAY_SETTINGS
from sealwire.server.config import SERVER_SETTINGS

from . import Section, markdown_reference

__all__ = ["REGENERATE", "SECTIONS", "main", "stale_tables", "update"]

SECTIONS: tuple[Section, ...] = (RELAY_SETTINGS, SERVER_SETTINGS, ADMIN_SETTINGS)
"""Every process's settings, in the order the reference shows them."""

REGENERATE = "python -m sealwire.settings --update docs/OPERATIONS.md"
"""The command that regenerates the tables."""


def _begin(name: str) -> str:
    return f"<!-- settings-reference:{name} begin (generated: {REGENERATE}) -->"


def _end(name: str) -> str:
    return f"<!-- settings-reference:{name} end -->"


def _block(section: Section) -> str:
    return f"{_begin(section.name)}\n{markdown_reference(section)}{_end(section.name)}"


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        re.escape(f"<!-- settings-reference:{name} begin") + r".*?" + re.escape(_end(name)),
        re.DOTALL,
    )


def stale_tables(text: str) -> list[str]:
    """The names of the sections whose table in ``text`` is missing or differs from what
    the settings classes say."""
    stale = []
    for section in SECTIONS:
        found = _pattern(section.name).search(text)
        if found is None or found.group(0) != _block(section):
            stale.append(section.name)
    return stale


def _replacement(block: str) -> Callable[[re.Match[str]], str]:
    return lambda _: block


def update(path: Path) -> list[str]:
    """Rewrite the tables in ``path``; return the names of those that changed.

    Raises:
        ValueError: a table's markers are missing (add them where the table belongs).
    """
    text = path.read_text(encoding="utf-8")
    changed = stale_tables(text)
    for section in SECTIONS:
        pattern = _pattern(section.name)
        if pattern.search(text) is None:
            raise ValueError(f"{path}: no markers for the {section.name} settings table")
        # A function, not the text: re.sub would read backslashes in the text as escapes.
        text = pattern.sub(_replacement(_block(section)), text)
    path.write_text(text, encoding="utf-8")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sealwire.settings``: print, check or rewrite the reference tables."""
    parser = argparse.ArgumentParser(
        prog="python -m sealwire.settings", description="The settings reference tables."
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--markdown", action="store_true", help="print every table")
    what.add_argument("--update", metavar="FILE", help="rewrite the tables in FILE")
    what.add_argument("--check", metavar="FILE", help="exit 1 if a table in FILE is stale")
    args = parser.parse_args(argv)
    if args.markdown:
        print("\n\n".join(_block(section) for section in SECTIONS))
        return 0
    if args.update:
        changed = update(Path(args.update))
        print(f"{args.update}: " + (f"updated {', '.join(changed)}" if changed else "up to date"))
        return 0
    stale = stale_tables(Path(args.check).read_text(encoding="utf-8"))
    for name in stale:
        print(f"{args.check}: the {name} settings table is stale: run {REGENERATE}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
