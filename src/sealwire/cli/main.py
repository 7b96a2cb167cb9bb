"""The ``sealwire`` command."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("sealwire: placeholder", file=sys.stderr)
    return 2
