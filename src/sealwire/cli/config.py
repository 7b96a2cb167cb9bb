"""``sealwire config check FILE``: every unknown or invalid setting of a settings file, one line
each (exit 1), or a short OK (exit 0)."""

from __future__ import annotations

import argparse
from typing import Any

from ._text import for_terminal

__all__ = ["add_config_parser"]


def add_config_parser(sub: Any) -> None:
    """Add the ``config`` command to the ``sealwire`` parser."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "config", help="check a settings file", description="Settings files (TOML)."
    )
    what = parser.add_subparsers(dest="op", required=True, metavar="OP")
    check = what.add_parser(
        "check",
        help="name each unknown or invalid key of the [relay] and [server] tables",
        description="Check a settings file on its own (without the environment or flags): "
        "each unknown or invalid key of its [relay] and [server] tables is one line, and the "
        "exit code is 1; a file without problems prints OK (exit 0).",
    )
    check.add_argument("file", help="the TOML settings file")
    check.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from sealwire.settings import check_file, read_toml
    from sealwire.settings.reference import SECTIONS

    problems = check_file(args.file, SECTIONS)
    for problem in problems:
        print(for_terminal(problem.located()))
    if problems:
        return 1
    document = read_toml(args.file)
    tables = [f"[{name}]" for name in ("relay", "server") if name in document] or ["[relay]"]
    print(for_terminal(f"{args.file}: OK ({' and '.join(tables)})"))
    return 0
