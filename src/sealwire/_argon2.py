"""Running Argon2id off the event loop, one derivation at a time per process.

pyca runs Argon2id's lanes on OpenSSL's shared thread pool (sized to the CPU count); two
derivations started together from two threads were seen to wait on each other for ever
(cryptography 50, OpenSSL 4.0). Every service that derives a passcode or activation-password
key in a worker thread goes through :func:`in_thread`, which serialises them.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["in_thread"]

P = ParamSpec("P")
T = TypeVar("T")

_LOCK = threading.Lock()


async def in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` (which derives an Argon2id key) in a worker thread, alone."""

    def locked() -> T:
        with _LOCK:
            return fn(*args, **kwargs)

    return await asyncio.to_thread(functools.partial(locked))
