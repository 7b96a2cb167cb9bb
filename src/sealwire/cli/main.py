"""The ``sealwire`` command.

Exactly one place, :func:`main`, turns exceptions into messages for the person at the keyboard
and into exit codes:

=====  ==========================================================
code   meaning
=====  ==========================================================
0      success
1      a Sealwire error (the message says what happened and what to do)
2      the command line was wrong (argparse prints the usage)
3      the command exists but that part of Sealwire is not built yet
130    interrupted (Ctrl-C)
=====  ==========================================================
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sealwire import __version__
from sealwire.errors import SealwireError

__all__ = ["main", "run"]

EXIT_ERROR = 1
EXIT_NOT_BUILT = 3
EXIT_INTERRUPTED = 130


class NotBuiltYet(Exception):
    """A command whose service has not been built yet (exit code 3)."""


def _cmd_version(args: argparse.Namespace) -> int:
    from sealwire.protocol.suite import SUITE_NAME

    print(f"sealwire {__version__} (protocol suite {SUITE_NAME})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealwire",
        description="Self-hosted secure messaging: enterprise-held keys, a blind relay.",
    )
    parser.add_argument("--version", action="version", version=f"sealwire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .demo import add_demo_parser
    from .device import add_device_parser
    from .relay import add_relay_parser
    from .server import add_server_parsers

    add_server_parsers(sub)
    add_relay_parser(sub)
    add_device_parser(sub)
    add_demo_parser(sub)
    version = sub.add_parser("version", help="print the version and protocol suite")
    version.set_defaults(func=_cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = _parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except NotBuiltYet as exc:
        print(f"sealwire: {exc}", file=sys.stderr)
        return EXIT_NOT_BUILT
    except SealwireError as exc:
        print(f"sealwire: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("sealwire: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return result


def run() -> None:
    """Console-script entry point."""
    raise SystemExit(main())


if __name__ == "__main__":
    run()
