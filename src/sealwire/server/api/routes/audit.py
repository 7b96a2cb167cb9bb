"""``/v1/audit``: reading, verifying and exporting the hash-chained audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, Final

from fastapi import Query
from fastapi.responses import StreamingResponse

from ...accounts import Permission
from ...audit import AuditVerdict
from ..access import Who
from ..models import Plain

if TYPE_CHECKING:
    from ...server import EnterpriseServer
    from ..access import Routes


class _JsonLines(StreamingResponse):
    """One JSON object per line (the audit export)."""

    media_type = "application/x-ndjson"


_LINES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "One JSON object per line, oldest entry first",
        "content": {_JsonLines.media_type: {"schema": {"type": "string"}}},
    }
}


def declare(route: Routes, server: EnterpriseServer) -> None:
    """Add the audit log endpoints to ``route``."""

    @route.get("/v1/audit", Permission.AUDIT_READ)
    async def audit(
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        actor: Annotated[Plain | None, Query(max_length=128)] = None,
        action: Annotated[Plain | None, Query(max_length=64)] = None,
    ) -> list[dict[str, Any]]:
        """Entries after ``after``, oldest first (filter by ``actor`` and ``action``)."""
        found = server.audit.entries(after=after, limit=limit, actor=actor, action=action)
        return [entry.to_json() for entry in found]

    @route.get("/v1/audit/verify", Permission.AUDIT_READ)
    async def verify_audit() -> AuditVerdict:
        """Check the whole hash chain; ``first_broken`` names the first bad entry."""
        return server.audit.verify()

    @route.get("/v1/audit/export", Permission.AUDIT_READ, responses=_LINES)
    async def export_audit(who: Who) -> _JsonLines:
        """The whole log as JSON lines (keep it elsewhere: it proves later truncation)."""
        server.audit.append(who.username, "audit.export", "")
        lines = server.audit.export_lines()

        async def stream() -> AsyncIterator[str]:
            for line in lines:
                yield line + "\n"

        return _JsonLines(stream())
