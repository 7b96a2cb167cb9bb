"""Background work of a device: tasks that run beside the connection (receipts, late sender
checks, pushed policies and commands), kept so that a connection can let them finish."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["Background", "consume"]


class Background:
    """A set of running tasks: :meth:`spawn` one, :meth:`wait` for those running."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in the background."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __bool__(self) -> bool:
        return bool(self._tasks)

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the tasks running now."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)


def consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a background future's exception so that asyncio does not report it."""
    if not future.cancelled():
        future.exception()
