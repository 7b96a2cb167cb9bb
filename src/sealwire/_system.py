"""What every service asks of the machine it runs on, written once: the wall clock in Unix
milliseconds, a private file written whole, and whether a host name is on loopback.

Services take the clock as an argument (so tests inject their own); :func:`now_ms` is the one
default. The sans-IO core (``protocol/``, ``mls/``) never imports this module.
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

__all__ = ["is_loopback", "now_ms", "write_private"]


def now_ms() -> int:
    """The wall clock in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` readable by this user only (0600), whole or not at all: a
    temporary file beside it, flushed to disk, then renamed over it. The directory is made
    (0700) if it is missing.

    Raises:
        OSError: the file could not be written (the old one, if any, is left as it was).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback: ``localhost``,
    127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
