"""One client connection as the relay service sees it: the :class:`Wire` it arrives on (a
WebSocket from :mod:`.edge`, or an in-process pipe) and the :class:`Link` that holds its
session and the relay's bookkeeping for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from sealwire.protocol.session import ClientVerified, RelaySession

from .admission import TokenBucket

__all__ = ["OUTBOX_SOFT_LIMIT", "Link", "Wire", "WireClosed"]

OUTBOX_SOFT_LIMIT = 1 << 20
"""Bytes waiting to be written to one connection above which no more deliveries are pulled
and its reader pauses (a slow reader gets back-pressure, not a growing buffer)."""
QUEUED_FRAMES_MAX = 1024
"""Frames (small ones: Pongs, Accepteds) queued for a peer above which its reader pauses."""


class WireClosed(Exception):
    """The connection is gone: nothing more can be written to it."""


class Wire(Protocol):
    """A client connection carrying whole binary messages both ways."""

    @property
    def source(self) -> str:
        """Where the client connects from (its IP address), for per-source limits."""
        ...

    async def receive(self) -> bytes | str | None:
        """The next message; ``None`` once the connection is closed."""
        ...

    async def send(self, frames: list[bytes]) -> None:
        """Write these frames, each one message, and wait until the transport took them
        (back-pressure).

        Raises:
            WireClosed: the connection is gone.
        """
        ...

    async def close(self) -> None:
        """Close cleanly if still open (never raises)."""
        ...

    def abort(self) -> None:
        """Cut a connection that did not finish closing in time (its peer stopped reading)."""
        ...


@dataclass(eq=False)
class Link:
    """One client connection: its wire, its session and the relay's bookkeeping."""

    wire: Wire
    session: RelaySession
    source: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    frames: TokenBucket | None = None
    role: str = "handshake"
    peer: ClientVerified | None = None
    more: bool = True
    """The backend may hold deliveries this session has not been given yet."""
    cursor: bytes | None = None
    """Delivery id of the last envelope pulled; the next pull starts after it (``None``: from
    the start of the queue)."""
    inflight: set[bytes] = field(default_factory=set)
    """Delivered in this session and not yet deleted (acknowledged ones stay until the backend
    confirms the deletion), so a pull from the start never delivers one twice."""
    acks: list[bytes] = field(default_factory=list)
    """Acknowledged delivery ids gathered for one backend call."""
    pulling: bool = False
    deleted_during_pull: set[bytes] = field(default_factory=set)
    """Acknowledged ids whose deletion completed while a pull was reading: that read may
    still hold them."""
    outbox_bytes: int = 0
    """Bytes taken from the session by the writer and not yet written to the wire."""
    timer: asyncio.TimerHandle | None = None
    timer_at: int | None = None
    detach: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    activation_id: bytes | None = None
    """Activation mode: the relay's session id for this device's run."""
    activation_server: bytes | None = None
    submitted_at: dict[int, float] = field(default_factory=dict)
    writer: asyncio.Task[None] | None = None
    finished: bool = False
    """The connection is gone and the service has undone the bookkeeping."""

    @property
    def address(self) -> bytes | None:
        """The verified client's address (``None`` before that, and in activation mode)."""
        return self.peer.address if self.peer is not None else None

    @property
    def backlogged(self) -> bool:
        """Whether the peer is behind in reading what we send it (then we stop reading from
        it)."""
        session = self.session
        return (
            self.outbox_bytes + session.queued_bytes > OUTBOX_SOFT_LIMIT
            or session.queued_frames > QUEUED_FRAMES_MAX
        )

    def pull_again(self) -> None:
        """Have the writer read the backend again."""
        self.more = True
        self.wake.set()
