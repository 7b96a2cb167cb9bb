"""Refused admin API requests (401, 403) as security events in the audit log.

Each refusal is one ``api.refused`` entry: the actor is the account when the token named one
(403), else ``anonymous`` (401); the target is ``METHOD /route/{template}``; the details give
the status, the reason, the source address and the method. A failed login is not written
here: :meth:`~sealwire.server.accounts.AdminAccounts.login` writes its own
``account.login-failed`` entry.

A flood must not bloat the log (every entry is signed and serialises the log's writers), so
each key, the account if known else the source address, gets at most :data:`BURST` entries per
:data:`WINDOW_S` seconds; further refusals in that window are counted, and the next entry
written for the key carries the count as ``suppressed``. At most :data:`MAX_KEYS` keys are
tracked (the oldest window is forgotten first), so a spray of sources cannot exhaust memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = ["BURST", "MAX_KEYS", "WINDOW_S", "Refusal", "RefusalAudit"]

log = logging.getLogger("sealwire.server.api")

BURST: Final = 10
"""Entries written per key and window."""
WINDOW_S: Final = 60.0
"""Length of a rate-limit window, in seconds."""
MAX_KEYS: Final = 4096
"""Keys whose window is tracked at once."""


class _Appends(Protocol):
    def append(
        self, actor: str, action: str, target: str, details: dict[str, Any] | None = None
    ) -> Any: ...


@dataclass(frozen=True)
class Refusal:
    """One refused request, as the audit entry records it."""

    status: int
    """401 or 403."""
    account: str | None
    """The administrator, when the token named one."""
    source: str
    """The client's address (``-`` if unknown)."""
    method: str
    route: str
    """The route template (``/v1/users/{username}``), never the raw path or query."""
    reason: str
    """Why: ``no token``, ``unknown or expired token``, or the missing permission."""


@dataclass
class _Window:
    started: float
    written: int = 0
    suppressed: int = 0


class RefusalAudit:
    """Writes :class:`Refusal` records to the audit log, rate-limited per key.

    Args:
        audit: the audit log (anything with ``append(actor, action, target, details)``).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, audit: _Appends, clock: Callable[[], float] = time.monotonic) -> None:
        self._audit = audit
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def record(self, refusal: Refusal) -> bool:
        """Write ``refusal`` unless its key is over its burst in this window.

        Returns:
            Whether an entry was written. A failing audit log is logged, never raised: the
            request is refused all the same.
        """
        key = f"account:{refusal.account}" if refusal.account else f"source:{refusal.source}"
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window.started >= WINDOW_S:
            carried = 0 if window is None else window.suppressed
            self._windows.pop(key, None)
            while len(self._windows) >= MAX_KEYS:
                del self._windows[next(iter(self._windows))]
            window = self._windows[key] = _Window(now, suppressed=carried)
        if window.written >= BURST:
            window.suppressed += 1
            return False
        details: dict[str, Any] = {
            "status": refusal.status,
            "reason": refusal.reason,
            "source": refusal.source,
            "method": refusal.method,
        }
        if window.suppressed:
            details["suppressed"] = window.suppressed
        try:
            self._audit.append(
                refusal.account or "anonymous",
                "api.refused",
                f"{refusal.method} {refusal.route}"[:256],
                details,
            )
        except Exception as exc:  # the refusal stands: say so in the log
            log.warning("refused request not audited", extra={"reason": str(exc)})
            return False
        window.written += 1
        window.suppressed = 0
        return True
