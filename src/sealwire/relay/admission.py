"""The relay's admission policy: who gets in (open or allow-list, revoked addresses, server
registration), how fast (token buckets per source and per connection) and revocations.

Nothing here touches a connection: the service asks, this module answers. Limits per source
are checked at the HTTP upgrade (:meth:`SourceTable.refusal`) and when an activation session
is requested (:meth:`SourceTable.allow_activation`); the per-connection frame rate is a
:class:`TokenBucket` the service spends on every frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sealwire.errors import StorageError
from sealwire.protocol.frames import ErrorCode
from sealwire.protocol.identity import ChainVerifier, Role
from sealwire.protocol.session import ClientVerified

from .backends.base import RelayBackend
from .config import RelayServiceConfig

__all__ = ["Admission", "SourceTable", "TokenBucket"]

_log = logging.getLogger("sealwire.relay")

_SOURCE_TABLE_MAX: Final = 100_000
"""Most per-source rate-limit entries kept (the idlest are dropped first)."""


class TokenBucket:
    """A token bucket (rate per second, burst) on the loop's monotonic clock."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens even if there are none; return what is left (negative: over
        the limit, and the debt must be paid back: for floods of frames on one connection)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - cost
        self.stamp = now
        return self.tokens

    def allow(self, now: float) -> bool:
        """Spend a token if one is there. A refused attempt costs nothing, so a source that
        retried a lot is served again as soon as the rate allows (not locked out for as long
        as it flooded)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class _Source:
    """What the relay tracks per client IP address."""

    connect: TokenBucket
    activate: TokenBucket
    open: int = 0


class SourceTable:
    """Connections and rates per client IP address (bounded: the idlest are forgotten)."""

    def __init__(self, config: RelayServiceConfig) -> None:
        self._config = config
        self._sources: dict[str, _Source] = {}

    def refusal(self, source: str, now: float, *, stopping: bool, connections: int) -> str | None:
        """Why a new connection from ``source`` is refused (a metric label: ``shutdown``,
        ``max-connections``, ``source-connections``, ``source-rate``), or ``None``."""
        entry = self._sources.get(source)
        if entry is None:
            if len(self._sources) >= _SOURCE_TABLE_MAX:
                self._forget_idle()
            cfg = self._config
            entry = _Source(
                connect=TokenBucket(cfg.source_connect_rate, cfg.source_connect_burst, now),
                activate=TokenBucket(
                    cfg.activation_rate_per_minute / 60, cfg.activation_burst, now
                ),
            )
            self._sources[source] = entry
        if stopping:
            return "shutdown"
        if connections >= self._config.max_connections:
            return "max-connections"
        if entry.open >= self._config.max_connections_per_source:
            return "source-connections"
        if not entry.connect.allow(now):
            return "source-rate"
        return None

    def opened(self, source: str) -> None:
        """A connection from ``source`` began."""
        entry = self._sources.get(source)
        if entry is not None:
            entry.open += 1

    def closed(self, source: str) -> None:
        """A connection from ``source`` ended."""
        entry = self._sources.get(source)
        if entry is not None:
            entry.open = max(0, entry.open - 1)

    def allow_activation(self, source: str, now: float) -> bool:
        """Whether ``source`` may open another activation session now (spends a token)."""
        entry = self._sources.get(source)
        return entry is None or entry.activate.allow(now)

    def _forget_idle(self) -> None:
        idle = [s for s, e in self._sources.items() if e.open == 0]
        for source in idle[: max(1, len(idle) // 2)]:
            del self._sources[source]


class Admission:
    """Whether a verified client is let in, and the revocations servers ask for.

    Args:
        config: ``admission`` (``open`` or an allow-list) and ``allowed_organisations``.
        backend: where registrations and revocations are kept.
        verifier: device chains are verified against it; the root of every organisation the
            relay serves is added.
    """

    def __init__(
        self, config: RelayServiceConfig, backend: RelayBackend, verifier: ChainVerifier
    ) -> None:
        self._open = config.admission == "open"
        self._allowed = config.allowed_organisations
        self._backend = backend
        self._verifier = verifier

    def serves(self, organisation: bytes) -> bool:
        """Whether admission lets this organisation (its server and its devices) in."""
        return self._open or organisation in self._allowed

    def trust(self, organisation: bytes, root: bytes) -> None:
        """An organisation was registered: trust its root for device chains if it is served."""
        if self.serves(organisation):
            self._verifier.add_root(root)

    async def load(self) -> None:
        """Trust the organisations registered before (under an allow-list, an organisation
        registered while the relay was open is not trusted any more: neither its server nor
        its devices get in)."""
        for organisation, root in (await self._backend.organisations()).items():
            self.trust(organisation, root)

    async def refusal(self, peer: ClientVerified) -> tuple[ErrorCode, str] | None:
        """Why ``peer`` is refused (a wire code and a reason), or ``None`` to admit it.
        A server is registered (its organisation and root) on the way."""
        try:
            if not self.serves(peer.organisation):
                return ErrorCode.NOT_ADMITTED, "organisation not served here"
            if peer.role is Role.SERVER:
                assert peer.root is not None
                await self._backend.register(peer.organisation, peer.root, peer.address)
            if await self._backend.is_revoked(peer.organisation, peer.address):
                return ErrorCode.REVOKED, "address revoked by its organisation"
        except StorageError as exc:
            _log.warning("admission check failed", extra={"error": str(exc)})
            return ErrorCode.UNAVAILABLE, "relay storage unavailable; retry"
        return None

    async def revoke(self, organisation: bytes, addresses: Sequence[bytes]) -> bool:
        """Record a server's revocation (scoped to its own organisation by the backend and
        the listener); ``False`` if it could not be stored."""
        try:
            await self._backend.revoke(organisation, addresses)
        except StorageError as exc:
            _log.warning("revocation not stored", extra={"error": str(exc)})
            return False
        return True
