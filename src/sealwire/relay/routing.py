"""What the relay passes between sessions besides envelopes: activation messages (a device
without a certificate and its organisation's server, possibly on another relay node) and
expiry notices (to one connected server of the sender's organisation).

Both work on :class:`~.link.Link` objects and the backend they are given; ending a session is
the service's, through the ``end`` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from sealwire.errors import StorageError
from sealwire.protocol.frames import ErrorCode
from sealwire.protocol.session import ActivationSubmitted, RelayState

from .backends.base import ActivationRoute, RelayBackend
from .link import Link

__all__ = ["ActivationRouter", "ExpiryNotices"]

_log = logging.getLogger("sealwire.relay")

_NOTICE_BATCH: Final = 256


class ActivationRouter:
    """Routes activation messages between activating devices and their servers.

    Args:
        backend: routes between relay nodes (``attach`` / ``route_activation``).
        end: ends a session from the relay's side (code, reason).
    """

    def __init__(self, backend: RelayBackend, end: Callable[[Link, ErrorCode, str], None]) -> None:
        self._backend = backend
        self._end = end

    async def attach_server(self, link: Link, address: bytes) -> None:
        """A server's session opened: route activation messages for ``address`` to it.

        Raises:
            StorageError: the backend cannot route to it.
        """
        detach = await self._backend.attach(address, _server_route(link))
        await keep_route(link, detach)

    async def submitted(self, link: Link, event: ActivationSubmitted) -> None:
        """Route one activation message (from a device: to its server; from a server: to the
        device whose run has the relay's id ``event.session``)."""
        if event.server is not None:  # from an activating device
            try:
                if link.activation_id is None:
                    if not await self._backend.is_registered_server(event.server):
                        self._end(link, ErrorCode.UNKNOWN_SERVER, "no such enterprise server here")
                        return
                    link.activation_id = os.urandom(16)
                    link.activation_server = event.server
                    detach = await self._backend.attach(
                        link.activation_id, _device_route(link, event.session)
                    )
                    await keep_route(link, detach)
                delivered = await self._backend.route_activation(
                    event.server, link.activation_id, event.payload, None
                )
            except StorageError as exc:
                _log.warning("activation routing failed", extra={"error": str(exc)})
                delivered = False
            if not delivered:
                self._end(link, ErrorCode.UNAVAILABLE, "the enterprise server is not connected")
            return
        assert link.peer is not None
        try:
            await self._backend.route_activation(
                event.session, event.session, event.payload, link.peer.address
            )
        except StorageError as exc:
            _log.warning("activation answer not routed", extra={"error": str(exc)})


async def keep_route(link: Link, detach: Callable[[], Awaitable[None]]) -> None:
    """Keep an activation route until the connection ends (at once if it already has)."""
    if link.finished:
        with contextlib.suppress(StorageError):
            await detach()
    else:
        link.detach.append(detach)


def _server_route(link: Link) -> ActivationRoute:
    async def route(session: bytes, payload: bytes, server: bytes | None) -> bool:
        if link.session.state is not RelayState.OPEN:
            return False
        link.session.send_activation(session, payload)
        link.wake.set()
        return True

    return route


def _device_route(link: Link, device_session: bytes) -> ActivationRoute:
    async def route(session: bytes, payload: bytes, server: bytes | None) -> bool:
        # Only the server this device named may answer it.
        if server is None or server != link.activation_server:
            return False
        s = link.session
        if s.state is not RelayState.ACTIVATING or not s.awaiting_activation_answer:
            return False
        s.send_activation(device_session, payload)
        link.wake.set()
        return True

    return route


class ExpiryNotices:
    """Passes an organisation's expiry notices to one of its connected servers.

    Args:
        backend: where the notices wait.
        servers: the open server links of each organisation (kept by the service).
    """

    def __init__(self, backend: RelayBackend, servers: Mapping[bytes, set[Link]]) -> None:
        self._backend = backend
        self._servers = servers
        self._running: set[bytes] = set()
        self._again: set[bytes] = set()

    async def send(self, organisation: bytes) -> None:
        """One run per organisation at a time (a request during a run makes it go round once
        more); a notice is deleted only once its frame was written, so a server that drops
        off meanwhile gets it again from the next server (at least once)."""
        if organisation in self._running:
            self._again.add(organisation)
            return
        self._running.add(organisation)
        try:
            while True:
                self._again.discard(organisation)
                await self._pass(organisation)
                if organisation not in self._again:
                    return
        finally:
            self._running.discard(organisation)

    async def _pass(self, organisation: bytes) -> None:
        try:
            while True:
                links = [
                    link
                    for link in self._servers.get(organisation, ())
                    if link.session.state is RelayState.OPEN
                ]
                if not links:
                    return  # kept until a server of the organisation connects
                link = links[0]
                notices = await self._backend.notices(organisation, limit=_NOTICE_BATCH)
                if not notices or link.session.state is not RelayState.OPEN:
                    return
                for notice in notices:
                    link.session.notify_expired(notice.recipient, notice.digest, notice.accepted_at)
                link.wake.set()
                while link.session.queued_bytes or link.outbox_bytes:
                    if link.session.closed:
                        return  # not written: the next server gets them
                    link.drained.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(link.drained.wait(), 10)
                await self._backend.clear_notices(organisation, [n.notice_id for n in notices])
                if len(notices) < _NOTICE_BATCH:
                    return
        except StorageError as exc:
            _log.warning("expiry notices not sent", extra={"error": str(exc)})
