"""The server's relay link (DESIGN §1, §4): it dials out to its relay (no inbound port),
reconnects with backoff, feeds what arrives to the dispatcher and the activation channel, and
sends what the server pushes to devices (commands, policies, DirectoryChanged, revocations).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from sealwire.errors import SealwireError, TransportError
from sealwire.protocol.codec import Struct
from sealwire.protocol.directory import DirectoryChanged, SignedPolicy, encode_directory_message
from sealwire.protocol.identity import short_address
from sealwire.protocol.management import SignedCommand
from sealwire.protocol.session import ActivationReceived
from sealwire.protocol.suite import SigningKey
from sealwire.transport import Connector, RelayConnection, SessionEnded

from .authority import Authority
from .policy import effective_policy
from .store import DeviceRecord, DeviceState, ServerStore

__all__ = ["Pushes", "RelayLink", "Sender"]

log = logging.getLogger(__name__)

_BACKOFF_FIRST_S = 0.25
_BACKOFF_MAX_S = 30.0


class Sender(Protocol):
    """Where an answer to a device goes (the relay connection it came on)."""

    async def send(self, envelope: bytes) -> None:
        """Hand one sealed envelope to the relay."""


EnvelopeHandler = Callable[[Sender, bytes], Awaitable[None]]
ActivationHandler = Callable[[ActivationReceived], list[bytes]]


class RelayLink:
    """The connection to the relay, kept up until :meth:`stop`.

    Args:
        url: the relay's URL.
        identity: the server's signing key (it authenticates to the relay with it).
        chain: the server's certificate chain.
        root: the organisation's root public key.
    """

    def __init__(
        self, url: str, *, identity: SigningKey, chain: tuple[bytes, ...], root: bytes
    ) -> None:
        self.url = url
        self._identity = identity
        self._chain = chain
        self._root = root
        self.conn: RelayConnection | None = None
        self.connector: Connector = RelayConnection
        """How the link reaches the relay (the WebSocket by default; an in-process relay in
        tests); set it before :meth:`start`."""
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.task: asyncio.Task[None] | None = None
        """The task that keeps the link up (while it runs, the link reconnects by itself)."""
        self._stopping = False
        self._on_envelope: EnvelopeHandler | None = None
        self._on_activation: ActivationHandler | None = None
        self._on_connected: Callable[[], Awaitable[None]] | None = None

    def start(
        self,
        *,
        on_envelope: EnvelopeHandler,
        on_activation: ActivationHandler,
        on_connected: Callable[[], Awaitable[None]],
    ) -> None:
        """Start the link in the background (it retries until the relay answers)."""
        self._on_envelope = on_envelope
        self._on_activation = on_activation
        self._on_connected = on_connected
        self.task = asyncio.create_task(self._run(), name="relay-link")
        self._tasks.append(self.task)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the link is up. Raises: TimeoutError."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    @property
    def connected(self) -> bool:
        """The link is up now."""
        return self.conn is not None and not self.conn.closed

    async def stop(self) -> None:
        """End the link and every background task."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.conn is not None:
            await self.conn.close()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in the background until :meth:`stop`; a failure is logged."""
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def _run(self) -> None:
        delay = _BACKOFF_FIRST_S
        while not self._stopping:
            try:
                conn = await self.connector.open(
                    self.url, identity=self._identity, chain=self._chain, root=self._root
                )
            except SessionEnded as exc:
                log.warning("relay refused the server", extra={"code": exc.code})
            except TransportError as exc:
                log.warning("relay unreachable", extra={"reason": str(exc)})
            else:
                delay = _BACKOFF_FIRST_S
                self.conn = conn
                self._connected.set()
                log.info("connected to the relay", extra={"relay": self.url})
                try:
                    await self._serve(conn)
                finally:
                    self._connected.clear()
                    self.conn = None
                    await conn.close()
                if self._stopping:
                    return
                why = conn.ended.result() if conn.ended.done() else None
                log.warning("relay link lost", extra={"code": why.code if why else "?"})
            await asyncio.sleep(delay * (0.5 + _random.random()))
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _serve(self, conn: RelayConnection) -> None:
        if self._on_connected is not None:
            await self._on_connected()  # e.g. revocations the relay has not confirmed
        deliveries = asyncio.create_task(self._deliveries(conn))
        activations = asyncio.create_task(self._activations(conn))
        waiters: list[asyncio.Future[Any]] = [deliveries, activations, conn.ended]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (deliveries, activations):
                task.cancel()
            for task in (deliveries, activations):
                with contextlib.suppress(BaseException):
                    await task
                failure = task.exception() if task.done() and not task.cancelled() else None
                if isinstance(failure, SessionEnded | TransportError):
                    # The relay went away while we answered: an expected end, not a bug.
                    log.info("relay link ended while answering", extra={"reason": str(failure)})
                elif failure is not None:
                    log.error("server task failed", exc_info=failure)

    async def _deliveries(self, conn: RelayConnection) -> None:
        assert self._on_envelope is not None
        while True:
            delivered = await conn.deliveries.get()
            try:
                await self._on_envelope(conn, delivered.envelope)
            except SessionEnded:
                raise
            except SealwireError as exc:
                # Never lose the link over one envelope; it is acknowledged and dropped.
                log.warning("envelope not handled", extra={"reason": str(exc)})
            except Exception:  # a bug must not cost everyone the link either
                log.exception("envelope handling failed")
            conn.ack([delivered.delivery_id])

    async def _activations(self, conn: RelayConnection) -> None:
        assert self._on_activation is not None
        while True:
            received = await conn.activations.get()
            for data in self._on_activation(received):
                await conn.send_activation(received.session, data)

    async def push(self, device: DeviceRecord, envelope: Callable[[], bytes]) -> None:
        """Hand the relay an envelope for ``device`` if the link is up (best effort)."""
        conn = self.conn
        if conn is None or conn.closed or not device.prekeys:
            return
        try:
            await conn.send(envelope())
        except SealwireError as exc:
            log.warning(
                "push not sent",
                extra={"reason": str(exc), "device": short_address(device.address)},
            )

    async def revoke(self, addresses: list[bytes]) -> bool:
        """Hand the relay revocations; ``True`` once it confirmed them."""
        conn = self.conn
        if conn is None or conn.closed:
            return False
        try:
            await conn.revoke(addresses)
        except SealwireError as exc:
            log.warning("revocations not confirmed yet", extra={"reason": str(exc)})
            return False
        return True


class Pushes:
    """What the server sends devices unasked, over the relay link (what
    :class:`~sealwire.server.administration.DevicePush` asks for)."""

    def __init__(
        self,
        link: RelayLink,
        *,
        store: ServerStore,
        authority: Authority,
        clock: Callable[[], int],
    ) -> None:
        self._link = link
        self._store = store
        self._authority = authority
        self._clock = clock

    async def _push(self, device: DeviceRecord, message: bytes | Struct) -> None:
        await self._link.push(device, lambda: self._authority.seal_to(device, message))

    async def push_command(self, signed: SignedCommand) -> None:
        """Send a command to its device now if the relay link is up (the relay queues it for
        an offline device; the device also gets every unacknowledged command when it next
        reports, so nothing depends on this push)."""
        device = self._store.device(signed.command.device)
        if device is not None:
            await self._push(device, signed)

    async def push_policies(self) -> None:
        """Send each active device whose last reported policy is not its person's current
        one the policy it should apply."""
        if not self._link.connected:
            return
        pushes: list[tuple[bytes, SignedPolicy]] = []
        with self._store.db.transaction() as conn:
            for row in self._store.all_devices(conn):
                if row.state != DeviceState.ACTIVE:
                    continue
                user_id = self._store.user_id(conn, row.username)
                rules = effective_policy(self._store, conn, user_id)
                if (rules.name, rules.version) != (row.policy_name, row.policy_version):
                    policy = self._authority.signed_policy(conn, user_id)
                    pushes.append((bytes(row.address), policy))
        for address, policy in pushes:
            device = self._store.device(address)
            if device is not None:
                await self._push(device, policy)

    async def directory_changed(self, usernames: list[str]) -> None:
        """Tell every device that may hold one of these people's entries in its directory
        cache to drop it (deprovisioning, a device listed or ended): peers learn it at once,
        not when their caches expire. Devices offline now get it from the relay's queue."""
        if not usernames:
            return
        held = self._store.holders(usernames, now=self._clock() // 1000)
        for address, names in held.items():
            device = self._store.device(address)
            if device is None or device.state != DeviceState.ACTIVE:
                continue
            changed = DirectoryChanged(users=tuple(sorted(names)))
            await self._push(device, encode_directory_message(changed))

    async def send_revocations(self) -> None:
        """Hand the relay every revocation it has not confirmed yet (on each connection and
        after each deprovisioning or wipe)."""
        if not self._link.connected:
            return
        pending = self._store.pending_revocations()
        if not pending or not await self._link.revoke(pending):
            return
        self._store.revocations_done(pending)
        log.info("the relay refuses revoked devices", extra={"count": len(pending)})

    def revoke_soon(self, delay_s: float) -> None:
        """Send the pending revocations after ``delay_s`` seconds (they are in the database:
        a restart sends them at once)."""

        async def later() -> None:
            await asyncio.sleep(delay_s)
            await self.send_revocations()

        self._link.spawn(later())

    def entry_changed(self, username: str) -> None:
        """A device of ``username`` is listed from now on, or is not any more: caches holding
        the person go stale (told in the background)."""
        self._link.spawn(self.directory_changed([username]))
