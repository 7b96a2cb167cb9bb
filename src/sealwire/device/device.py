"""The device client: one façade, :class:`Device`, that the CLI (and later the TUI) uses.

A device activates once with a ticket and its one-time password (SPAKE2 through the relay,
DESIGN §7), then talks only through its relay: envelopes sealed to each device of a person,
and to the sender's own other devices; directory look-ups sealed to its server, answered and
signed by it; delivery and read receipts back to the sending device.

:class:`Device` only wires the feature modules together and sequences a connection; each
concern lives in its own module, given the few things it needs:

- :mod:`.profile`: who we are (identity, chain, organisation, policy in force), sealing;
- :mod:`.vault`: unlocking, locking, the passcode, erasing, the auto-lock;
- :mod:`.link`: the relay connection, dispatch of what arrives, questions to the server;
- :mod:`.activation`: activating a new device;
- :mod:`.management`: policy, compliance reports, commands;
- :mod:`.keys`: prekeys and certificate renewal;
- :mod:`.directory`: look-ups, the cache, verified peers;
- :mod:`.messages` (with :mod:`.commit`, its group commit): messages, receipts, the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sealwire._system import now_ms
from sealwire.errors import DeviceLocked, SealwireError, TransportError
from sealwire.protocol.codec import Struct
from sealwire.protocol.directory import DirectoryChanged, Policy, SignedPolicy, UserEntry
from sealwire.protocol.identity import Certificate
from sealwire.protocol.management import ComplianceIssue, SignedCommand
from sealwire.transport import Connector, RelayConnection, SessionEnded

from .activation import create_activated_store
from .directory import Directory
from .keys import Keys
from .link import ActivationChannel, Link
from .management import Management
from .messages import Messages
from .profile import Profile
from .store import DeviceStore, MessageRecord
from .tasks import Background, consume
from .vault import Vault

__all__ = ["Device", "DeviceInfo"]

log = logging.getLogger(__name__)
A = TypeVar("A")

MAINTAIN_WAIT_S = 3.0
"""How long opening a connection waits for the server's list of our own devices."""


@dataclass(frozen=True)
class DeviceInfo:
    """What ``sealwire device status`` shows."""

    user: str
    display_name: str
    organisation: str
    organisation_id: bytes
    address: bytes
    relay: str
    certificate_expires: int
    locked: bool


class Device:
    """An activated device in its home directory.

    Open one with :meth:`open` (or make one with :meth:`activate`), ``unlock`` it if needed,
    then use it inside ``async with device.online():`` to send and receive, or call the
    one-shot helpers (:meth:`send`, :meth:`sync`) that connect for the duration of the call.

    Args:
        store: the device's encrypted store.
        clock: Unix milliseconds.
        random: source of random bytes.
        connector: how the relay is reached (default: WebSocket
            :class:`~sealwire.transport.RelayConnection`).
    """

    def __init__(
        self,
        store: DeviceStore,
        *,
        clock: Callable[[], int] = now_ms,
        random: Callable[[int], bytes] = os.urandom,
        connector: Connector = RelayConnection,
    ) -> None:
        self.store = store
        """The device's encrypted store."""
        self._clock = clock
        self._random = random
        profile = self._profile = Profile(store, clock=clock, random=random)
        self._background = Background()
        channel = ActivationChannel(connector, profile, random=random)
        self._keys = Keys(store, profile, self._ask, clock=clock, random=random)
        self._link = Link(store, profile, connector, clock=clock, prekeys=self._keys.private_prekey)
        self._vault = Vault(
            store, profile, channel, clock=clock, random=random, on_policy=self._apply_policy
        )
        self._directory = Directory(store, profile, self._link.ask, clock=clock, random=random)
        self._messages = Messages(
            store,
            profile,
            self._directory,
            send=self._link.send_envelope,
            connection=self._link.connection,
            background=self._background,
            clock=clock,
            random=random,
        )
        self._management = Management(
            store,
            profile,
            self._vault,
            self._keys,
            ask=self._link.ask,
            send=self._link.send_envelope,
            channel=channel,
            end=self._link.end,
            ended=lambda: self._link.end_reason is not None,
            retention=self._messages.apply_retention,
            clock=clock,
            random=random,
        )
        self._link.on_peer = self._messages.accept
        self._link.on(SignedPolicy, self._policy_pushed)
        self._link.on(SignedCommand, self._commands_pushed)
        self._link.on(DirectoryChanged, self._directory.changed)
        self._tasks: list[asyncio.Task[None]] = []
        self._server_away = False
        """The server did not answer within the connection's wait: later connections of this
        process do not wait for it again (they still ask, and use what comes back)."""

    # The few callbacks between modules (so that none holds another's state).

    def _ask(self, request: Struct, expect: type[A]) -> Awaitable[A]:  # Keys is made before Link
        return self._link.ask(request, expect)

    def _apply_policy(self, policy: Policy) -> bool:
        return self._management.apply_policy(policy)

    def _policy_pushed(self, signed: SignedPolicy) -> None:
        self._background.spawn(self._management.policy_pushed(signed))

    def _commands_pushed(self, signed: SignedCommand) -> None:
        self._background.spawn(self._management.run_commands([signed]))

    # --- opening and activation -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        home: str | Path,
        *,
        clock: Callable[[], int] = now_ms,
        random: Callable[[int], bytes] = os.urandom,
        connector: Connector = RelayConnection,
    ) -> Device:
        """Open the device in ``home`` (locked unless a session is open and not idle past the
        policy's auto-lock delay).

        Args:
            home: the device's home directory.
            clock: Unix milliseconds.
            random: source of random bytes.
            connector: how the relay is reached.

        Returns:
            the device.

        Raises:
            ConfigError: no device there.
        """
        store = DeviceStore.open(Path(home), random=random, clock=clock)
        return cls(store, clock=clock, random=random, connector=connector)

    @classmethod
    async def activate(
        cls,
        home: str | Path,
        ticket_text: str,
        password: str,
        passcode: str,
        *,
        clock: Callable[[], int] = now_ms,
        random: Callable[[int], bytes] = os.urandom,
        timeout: float = 60.0,
        connector: Connector = RelayConnection,
    ) -> Device:
        """Activate a new device in ``home`` with a ticket and its one-time password.

        The new store is created only once the server has answered: a failed activation
        leaves nothing behind.

        Args:
            home: the new device's home directory (must not hold a device).
            ticket_text: the activation ticket, as the administrator gave it.
            password: the ticket's one-time password.
            passcode: the passcode that will unlock this device.
            clock: Unix milliseconds.
            random: source of random bytes.
            timeout: how long to wait for the server, in seconds.
            connector: how the relay is reached.

        Returns:
            the activated device, unlocked.

        Raises:
            ActivationFailed: wrong password, burned or expired ticket, refusal or tampering
                (the message says which, as far as the device can know).
            TransportError: the relay or the server could not be reached.
            ConfigError: bad ticket, short passcode, or ``home`` holds a device already.
        """
        store = await create_activated_store(
            Path(home),
            ticket_text,
            password,
            passcode,
            connector=connector,
            clock=clock,
            random=random,
            timeout=timeout,
        )
        device = cls(store, clock=clock, random=random, connector=connector)
        try:
            # The server lists a new device only once it has heard from it (proof that the
            # answer arrived): say hello now.
            async with device.online():
                pass
        except SealwireError as exc:
            log.warning(
                "activated; the server will list this device once it is reached",
                extra={"reason": str(exc)},
            )
        return device

    # --- who we are ---------------------------------------------------------------------------

    @property
    def address(self) -> bytes:
        """This device's address.

        Raises:
            DeviceLocked: never unlocked in this process and the store is locked.
        """
        return self._profile.address

    @property
    def user(self) -> str:
        """The user name of this device's person.

        Raises:
            DeviceLocked: never unlocked in this process and the store is locked.
        """
        return self._profile.user

    @property
    def organisation(self) -> bytes:
        """The organisation's address (of its root key).

        Raises:
            DeviceLocked: never unlocked in this process and the store is locked.
        """
        return self._profile.organisation

    @property
    def server_address(self) -> bytes:
        """The address of the organisation's server.

        Raises:
            DeviceLocked: never unlocked in this process and the store is locked.
        """
        return self._profile.server_address

    @property
    def on_message(self) -> Callable[[MessageRecord], None] | None:
        """Called with every new message stored (``listen`` prints them)."""
        return self._messages.on_message

    @on_message.setter
    def on_message(self, callback: Callable[[MessageRecord], None] | None) -> None:
        self._messages.on_message = callback

    def info(self) -> DeviceInfo:
        """What ``sealwire device status`` shows.

        Returns:
            the device's person, organisation, relay, certificate expiry and lock state.

        Raises:
            DeviceLocked: the store's boot key is not open.
        """
        profile = self._profile
        profile.load()
        directory = profile.directory
        return DeviceInfo(
            user=directory.user,
            display_name=directory.display_name,
            organisation=directory.organisation_name,
            organisation_id=profile.organisation,
            address=profile.address,
            relay=directory.relay,
            certificate_expires=min(Certificate.parse(c).body.not_after for c in profile.chain),
            locked=self.locked,
        )

    # --- locking --------------------------------------------------------------------------

    @property
    def locked(self) -> bool:
        """Whether the store is locked."""
        return self._vault.locked

    async def unlock(self, passcode: str) -> None:
        """Unlock with the passcode and the remote secret: from the runtime cache while the
        policy's offline grace lasts, else from the server (through the relay's activation
        channel: a locked device cannot read its own queue).

        Args:
            passcode: the device's passcode.

        Raises:
            WrongPasscode: with the attempts left before the device erases itself.
            DeviceWiped: that was the last attempt, or the server says this device was wiped
                or its person deprovisioned: the device has erased itself.
            TransportError: the server could not be reached and no cached secret is left.
        """
        await self._vault.unlock(passcode)

    def lock(self) -> None:
        """Lock: forget the keys and end the session."""
        self._vault.lock()

    def close(self) -> None:
        """Close the store (the device object is not used afterwards)."""
        self.store.close()

    async def change_passcode(self, new_passcode: str) -> None:
        """Set a new passcode (the device must be unlocked); it must meet the policy.

        Args:
            new_passcode: the new passcode.

        Raises:
            DeviceLocked: the device is locked.
            ConfigError: the new passcode does not meet the policy.
        """
        self._profile.load()
        if self.store.locked:
            raise DeviceLocked("unlock the device first")
        self._management.check_new_passcode(new_passcode)
        await self._vault.set_passcode(new_passcode)
        if self._link.connected:
            await self._management.report()

    # --- policy ---------------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        """The organisation's policy in force on this device.

        Raises:
            DeviceLocked: the store's boot key is not open.
        """
        self._profile.load()
        return self._profile.policy

    def compliance(self) -> tuple[ComplianceIssue, ...]:
        """What keeps this device from complying with its policy.

        Returns:
            the issues (empty: it complies).

        Raises:
            DeviceLocked: the store's boot key is not open.
        """
        self._profile.load()
        return self._management.compliance()

    def export_messages(self) -> list[MessageRecord]:
        """Every message on the device, for export (if the policy allows it).

        Returns:
            the messages, oldest first.

        Raises:
            AccessDenied: the organisation's policy does not allow exporting.
            DeviceLocked: the store is locked.
        """
        self._profile.load()
        return self._messages.export(self._profile.policy)

    # --- the connection -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def online(self) -> AsyncIterator[Device]:
        """Connect to the relay for the duration of the block: incoming envelopes are handled
        in the background, the outbox is flushed, prekeys and the certificate are kept fresh.

        Returns:
            an async context manager that yields this device.

        Raises:
            TransportError: the relay is unreachable or refused the device (``revoked``...).
            DeviceLocked: the store is locked, or a command locked it during the block.
            DeviceWiped: a command wiped the device during the block.
        """
        self._profile.load()
        self.store.touch()
        if self.store.locked:
            raise self.store.locked_error()
        link, messages = self._link, self._messages
        try:
            conn = await link.connect()
        except SessionEnded as exc:
            if exc.code == "revoked":
                raise self._vault.revoked() from None
            raise
        messages.start()
        self._tasks = [
            asyncio.create_task(link.read(conn)),
            asyncio.create_task(messages.process_inbound()),
        ]
        try:
            try:
                await messages.flush_outbox()
                await self._maintain()
                if link.end_reason is None:
                    messages.announce_unverified()  # unchecked last time
                    yield self
                if link.end_reason is None:
                    messages.finish()
                await self._background.wait(5)  # receipts on their way: let them reach the relay
            except SealwireError:
                if link.end_reason is not None:  # locked or wiped under our feet
                    raise link.end_reason from None
                raise
            if link.end_reason is not None:
                raise link.end_reason
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks = []
            await link.disconnect(conn)

    async def _maintain(self) -> None:
        """Keep keys and our own device list fresh. Messaging between people needs the relay
        only: when the server does not answer, this waits at most a few seconds and the
        connection goes on (what was not done is tried on the next connection)."""
        # Our own person's devices fresh from the server: a device activated since reaches
        # every copy we send (and this first contact is what makes the server list a newly
        # activated device).
        # Both questions go out at once and share one wait: a connection waits at most
        # MAINTAIN_WAIT_S for the server in all, and not at all once it was found away.
        own = asyncio.ensure_future(self._directory.lookup([self._profile.user], fresh=True))
        report = asyncio.ensure_future(self._management.report())  # policy and commands
        self._messages.apply_retention(self._profile.policy)
        wait = 0.0 if self._server_away else MAINTAIN_WAIT_S
        _, pending = await asyncio.wait((own, report), timeout=wait)
        for future, what in ((own, "own devices not refreshed"), (report, "report not answered")):
            if future in pending:
                future.add_done_callback(consume)
            elif future.exception() is not None:
                log.info(what, extra={"reason": str(future.exception())})
        if own in pending:  # not even a plain question answered: the server is away
            log.info("the server has not answered yet; using the cached directory")
            self._server_away = True
            return  # key maintenance needs the server: on a later connection
        self._server_away = False
        if self._link.end_reason is not None:
            return
        try:
            await self._keys.maintain()
        except TransportError as exc:  # the server is away: next connection
            log.warning("key maintenance postponed", extra={"reason": str(exc)})

    # --- keys -----------------------------------------------------------------------------

    async def rotate_prekey(self) -> None:
        """Make a new prekey, publish it through the server, and schedule the old private
        prekeys for deletion one envelope lifetime from now (forward secrecy). Online only.

        Raises:
            TransportError: not connected, or the server did not answer.
            RemoteProtocolError: the server refused the prekey.
        """
        await self._keys.rotate_prekey()

    async def renew_certificate(self) -> None:
        """Ask the server for a fresh certificate (the current one authenticates the ask).
        Online only.

        Raises:
            TransportError: not connected, or the server did not answer.
            RemoteProtocolError: the server refused.
        """
        await self._keys.renew_certificate()

    # --- directory ------------------------------------------------------------------------

    async def lookup(self, users: list[str], *, fresh: bool = False) -> dict[str, UserEntry]:
        """Directory entries for ``users`` (from the cache unless expired or ``fresh``).

        Args:
            users: user names.
            fresh: ask the server even if the cache holds an entry.

        Returns:
            the entries found, by user name (unknown names are left out).

        Raises:
            ConfigError: a name that is not a valid user name.
            TransportError: the server could not be asked.
        """
        self._profile.load()
        return await self._directory.lookup(users, fresh=fresh)

    async def devices(self, user: str | None = None) -> list[tuple[bytes, bool]]:
        """The active devices of ``user`` (default: our own person), fresh from the server.

        Args:
            user: a user name, or ``None`` for our own person.

        Returns:
            ``(address, is this device)`` for each device.

        Raises:
            ConfigError: no such person.
            TransportError: the server could not be asked.
        """
        self._profile.load()
        return await self._directory.devices(user or self._profile.user)

    # --- messages -------------------------------------------------------------------------

    async def send_message(self, user: str, text: str) -> bytes:
        """Seal ``text`` to every device of ``user`` and our own other devices (online).

        Args:
            user: the person it is for.
            text: the message.

        Returns:
            the message id, once the relay holds every copy durably.

        Raises:
            ConfigError: no such person, or they have no activated device.
            TransportError: the relay or server could not be reached (the message is kept and
                sent on the next connection if it was already sealed).
        """
        self._profile.load()
        return await self._messages.send_message(user, text)

    async def send(self, user: str, text: str) -> bytes:
        """Connect, send one message, disconnect (what ``sealwire device send`` does).

        Args:
            user: the person it is for.
            text: the message.

        Returns:
            the message id.

        Raises:
            As :meth:`online` and :meth:`send_message`.
        """
        async with self.online():
            message_id = await self._messages.send_message(user, text)
            await self._messages.settle()
            return message_id

    async def sync(self) -> list[MessageRecord]:
        """Connect, take every waiting envelope, disconnect.

        Returns:
            the new messages.

        Raises:
            As :meth:`online`.
        """
        self._profile.load()
        last = self.store.messages()
        after = last[-1].seq if last else 0
        async with self.online():
            await self._messages.settle()
        return self.store.messages(after=after)

    async def mark_read(self, records: list[MessageRecord]) -> None:
        """Mark incoming messages read and tell their senders' devices (when online).

        Args:
            records: messages as the store returned them (outgoing ones are skipped).

        Raises:
            TransportError: a read receipt could not be sent.
        """
        await self._messages.mark_read(records, online=self._link.connected)

    async def listen(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set; new messages go to :attr:`on_message`.

        Args:
            stop: set it to disconnect.

        Raises:
            DeviceLocked: locked by a command or after the idle time the policy allows.
            DeviceWiped: wiped by a command.
            TransportError: the relay ended the session (``revoked``: the device is locked).
        """
        link = self._link
        async with self.online():
            conn = link.connection()
            stopped = asyncio.ensure_future(stop.wait())
            ended = asyncio.ensure_future(link.wait_ended())
            idle = asyncio.ensure_future(self._vault.auto_lock(link.end))
            waiters: list[asyncio.Future[object]] = [
                stopped,  # type: ignore[list-item]
                ended,  # type: ignore[list-item]
                idle,  # type: ignore[list-item]
                conn.ended,  # type: ignore[list-item]
                *self._tasks,  # type: ignore[list-item]
            ]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (stopped, ended, idle):
                waiter.cancel()
            if link.end_reason is not None:
                raise link.end_reason
            if conn.ended.done() and not stop.is_set():
                why = conn.ended.result()
                if why.code == "revoked":
                    raise self._vault.revoked()
                raise TransportError(f"the relay ended the session ({why.code})")
