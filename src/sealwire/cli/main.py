"""The ``sealwire`` command.

Exactly one place, :func:`main`, turns exceptions into messages for the person at the keyboard
and into exit codes:

=====  ==========================================================
code   meaning
=====  ==========================================================
0      success
1      a Sealwire error (the message says what happened and what to do), a file or
       directory that cannot be used, or an internal error (a bug: one line names it;
       ``SEALWIRE_DEBUG=1`` shows the traceback instead)
2      the command line was wrong (argparse prints the usage)
3      the command exists but that part of Sealwire is not built yet
130    interrupted (Ctrl-C)
141    standard output was closed early (``sealwire ... | head``): quietly, like SIGPIPE
=====  ==========================================================

Every message is one line made safe for a terminal (:func:`~sealwire.cli._text.for_terminal`),
whatever text from elsewhere it quotes. Before a command runs, every text argument and every
``SEALWIRE_*`` environment variable must be valid UTF-8 (paths may hold any bytes).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from sealwire import __version__
from sealwire.errors import SealwireError

from ._text import check_text, for_terminal

__all__ = ["main", "run"]

EXIT_ERROR = 1
EXIT_NOT_BUILT = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a process the signal ended

# Arguments and environment variables naming files or directories: any bytes the file system
# allows (Python carries undecodable ones as surrogates, and hands them back to the OS as bytes).
_PATH_ARGUMENTS = frozenset(
    {
        "home",
        "data",
        "output",
        "cafile",
        "config",
        "password_file",
        "key_file",
        "tls_cert",
        "tls_key",
        "admin_tls_cert",
        "admin_tls_key",
    }
)
_PATH_VARIABLES = ("_HOME", "_DATA", "_DIR", "_CONFIG", "_FILE", "_CERT", "_KEY")


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
        epilog="Errors are one line on standard error (exit code 1); SEALWIRE_DEBUG=1 shows "
        "the traceback of an internal error instead.",
    )
    parser.add_argument("--version", action="version", version=f"sealwire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .config import add_config_parser
    from .demo import add_demo_parser
    from .device import add_device_parser
    from .relay import add_relay_parser
    from .server import add_server_parsers

    add_server_parsers(sub)
    add_relay_parser(sub)
    add_device_parser(sub)
    add_demo_parser(sub)
    add_config_parser(sub)
    version = sub.add_parser("version", help="print the version and protocol suite")
    version.set_defaults(func=_cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    _open_standard_streams()
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        _check_input(parser, args)
        result: int = args.func(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except NotBuiltYet as exc:
        return _fail(str(exc), EXIT_NOT_BUILT)
    except SealwireError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # Whoever read standard output has gone (`| head`): end quietly, as a SIGPIPE would.
        # Standard output goes to /dev/null so the interpreter's last flush cannot fail too
        # (Python docs, signal module, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        # A file or directory that cannot be used (a file where a directory must be, no
        # permission, a full disk): what the system said, Unix-style.
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return _fail(f"{where}{exc.strerror or exc}", EXIT_ERROR)
    except Exception as exc:
        if os.environ.get("SEALWIRE_DEBUG"):
            raise
        return _fail(
            f"internal error ({type(exc).__name__}: {exc}); run again with SEALWIRE_DEBUG=1 "
            "to see the traceback, and please report it",
            EXIT_ERROR,
        )
    return result


def _open_standard_streams() -> None:
    """Started with standard input, output or error closed (``<&-``): /dev/null in its
    place, so no file the command opens takes descriptor 0, 1 or 2 (libuv aborts on that)
    and reading standard input finds it empty."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
    if sys.stdin is None:
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 (for the whole run)


def _fail(message: str, code: int) -> int:
    print(f"sealwire: {for_terminal(message)}", file=sys.stderr)
    return code


def _check_input(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse text arguments and ``SEALWIRE_*`` variables that are not valid UTF-8."""
    names = dict(_argument_names(parser, args))
    for dest, value in vars(args).items():
        if dest in _PATH_ARGUMENTS:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                check_text(item, f"the {names.get(dest, dest)}")
    for variable, value in os.environ.items():
        if variable.startswith("SEALWIRE_") and not variable.endswith(_PATH_VARIABLES):
            check_text(value, f"the environment variable {variable}")


def _argument_names(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> Iterator[tuple[str, str]]:
    """(dest, how to name it) for each argument of the command that was chosen."""
    for action in parser._actions:  # argparse has no public walk over its arguments
        choices: Any = action.choices
        if isinstance(action, argparse._SubParsersAction):
            chosen = choices.get(getattr(args, action.dest, None))
            if chosen is not None:
                yield from _argument_names(chosen, args)
        elif action.dest == "text":
            yield action.dest, "message"
        elif action.option_strings:
            yield action.dest, f"value of {max(action.option_strings, key=len)}"
        else:
            yield action.dest, f"argument {action.metavar or action.dest.upper()}"


def run() -> None:
    """Console-script entry point."""
    raise SystemExit(main())


if __name__ == "__main__":
    run()
