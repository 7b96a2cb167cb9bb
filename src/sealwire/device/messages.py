"""Messages between people: sending, receiving, delivery and read receipts, the outbox.

Nothing is lost on the way: an incoming message is stored (with its envelope id, in one
transaction) before the relay is told to delete it; an outgoing one is stored with its sealed
copies before the first is handed to the relay, and copies the relay has not accepted are
sent again on the next connection. A message is shown once however often it arrives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from sealwire.errors import AccessDenied, ConfigError, EncodeError, SealwireError
from sealwire.protocol.directory import Policy
from sealwire.protocol.envelope import DEFAULT_LIFETIME_MS, OpenedEnvelope, PayloadType
from sealwire.protocol.messaging import (
    APP_MESSAGE_ID_SIZE,
    MAX_RECEIPT_IDS,
    MAX_TEXT,
    ChatMessage,
    Receipt,
    ReceiptKind,
)
from sealwire.protocol.session import EnvelopeDelivered
from sealwire.transport import RelayConnection

from .commit import (
    GroupCommit,
    MarkSeen,
    MarkSent,
    Step,
    StoreCall,
    StoreIncoming,
    StoreOutgoing,
)
from .directory import Directory, empty_entry
from .profile import Profile
from .store import DeviceStore, MessageRecord, MessageState
from .tasks import Background

__all__ = ["RECEIPT_DELAY_S", "Messages", "check_text"]

log = logging.getLogger(__name__)

RECEIPT_DELAY_S = 0.1
"""Delivery receipts wait this long to go out together (one envelope per sending device)."""
_BATCH = 256
"""The message worker stores at most this many envelopes per transaction."""


class Messages:
    """Sending and receiving messages and receipts.

    Args:
        store: messages, the outbox, envelopes seen.
        profile: who we are (our person, our address; sealing).
        directory: people's devices, to seal to and to check senders against.
        send: hands one envelope to the relay (:meth:`~sealwire.device.link.Link.send_envelope`).
        connection: the open relay connection (raises when there is none).
        background: runs receipts and late sender checks.
        clock: Unix milliseconds.
        random: source of random bytes.
    """

    def __init__(
        self,
        store: DeviceStore,
        profile: Profile,
        directory: Directory,
        *,
        send: Callable[[bytes], Awaitable[bool]],
        connection: Callable[[], RelayConnection],
        background: Background,
        clock: Callable[[], int],
        random: Callable[[int], bytes],
    ) -> None:
        self._store = store
        self._profile = profile
        self._directory = directory
        self._send = send
        self._connection = connection
        self._background = background
        self._clock = clock
        self._random = random
        self._commit = GroupCommit(store, background.spawn)
        self._inbound: asyncio.Queue[tuple[EnvelopeDelivered, OpenedEnvelope]] | None = None
        self._sending: set[int] = set()
        self._delivered: dict[tuple[str, bytes], list[bytes]] = {}
        self._receipts_due = False
        self.on_message: Callable[[MessageRecord], None] | None = None
        """Called with every new message stored (``listen`` prints them)."""

    # --- a connection -------------------------------------------------------------------------

    def start(self) -> None:
        """A connection begins: a fresh queue for what arrives."""
        self._inbound = asyncio.Queue()

    async def accept(self, delivered: EnvelopeDelivered, opened: OpenedEnvelope) -> None:
        """Queue an envelope from a person's device for the worker."""
        assert self._inbound is not None
        await self._inbound.put((delivered, opened))

    def finish(self) -> None:
        """The connection is ending: send the delivery receipts that are due now."""
        if self._receipts_due:
            self._send_receipts()

    def apply_retention(self, policy: Policy) -> None:
        """Delete messages older than ``policy`` keeps."""
        if policy.retention_days:
            cutoff = self._clock() - policy.retention_days * 86400 * 1000
            deleted = self._store.delete_messages_before(cutoff)
            if deleted:
                log.info("retention: old messages deleted", extra={"count": deleted})

    def export(self, policy: Policy) -> list[MessageRecord]:
        """Every message on the device, if ``policy`` allows exporting.

        Raises:
            AccessDenied: the policy does not allow exporting.
        """
        if not policy.export_allowed:
            raise AccessDenied("your organisation's policy does not allow exporting messages")
        self._store.touch()
        return self._store.messages()

    # --- sending --------------------------------------------------------------------------

    async def send_message(self, user: str, text: str) -> bytes:
        """Seal ``text`` to every device of ``user`` and our own other devices.

        Returns:
            the message id, once the relay holds every copy durably.

        Raises:
            ConfigError: no such person, they have no activated device, or the text is too
                long.
            TransportError: the relay or server could not be reached (the message is kept and
                sent on the next connection if it was already sealed).
        """
        check_text(text)
        directory = self._directory
        me = self._profile.user
        address = self._profile.address
        entries = await directory.lookup([user, me])
        if user not in entries:
            raise ConfigError(f"{user!r} is not a person of this organisation")
        peers = directory.peers(entries[user])
        if not peers:
            raise ConfigError(f"{user!r} has no activated device yet")
        own = (
            [p for p in directory.peers(entries.get(me, empty_entry(me))) if p.address != address]
            if user != me
            else []
        )
        message_id = self._random(APP_MESSAGE_ID_SIZE)
        body = ChatMessage(message_id=message_id, sender=me, recipient=user, text=text)
        try:
            encoded = body.encode()  # the recipient's decoder enforces the same bounds
        except EncodeError as exc:
            raise ConfigError(f"the message cannot be sent: {exc.reason}") from None
        theirs = [peer for peer in peers if peer.address != address]
        envelopes = tuple(
            self._profile.seal(peer, PayloadType.MESSAGE, encoded)
            for peer in theirs + [p for p in own if p.address != address]
        )
        now = self._clock()
        # The copies go to the relay while the message and its outbox entries are being
        # committed here: the relay's durable store and ours overlap instead of adding up.
        # A crash before our commit ends loses only our own copy of a message the relay has
        # (send_message never returned, so nobody was told it was sent).
        record = MessageRecord(
            seq=0,
            message_id=message_id,
            outgoing=True,
            state=MessageState.QUEUED,
            sent_at=now,
            sender=me,
            recipient=user,
            text=text,
            sender_device=address,
        )
        stored = asyncio.ensure_future(self._commit.write(StoreOutgoing(record, envelopes, now)))
        try:
            taken = await asyncio.gather(*(self._send(env) for env in envelopes))
        finally:
            await stored
        if not all(taken):
            # Our organisation ended some of these devices since we cached the directory.
            directory.forget(user)
            directory.forget(me)
            if theirs and not any(taken[: len(theirs)]):
                await self._commit.write(StoreCall(lambda: self._store.message_failed(message_id)))
                raise ConfigError(
                    f"not sent: {user!r}'s devices have been disabled by your organisation "
                    "(the relay refuses them)"
                )
        await self._commit.write(MarkSent(message_id))
        return message_id

    async def flush_outbox(self) -> None:
        """Hand every waiting envelope to the relay (after a reconnection: what the relay had
        not accepted before is sent again; recipients drop copies they already have).

        Raises:
            TransportError: the relay did not take them (tried again on the next connection).
        """
        await self._send_queued(self._store.outbox())
        for message_id, envelopes in self._store.unsent_messages():
            taken = await asyncio.gather(*(self._send(env) for env in envelopes))
            if any(taken):
                self._store.messages_sent([message_id])
            else:  # every device it was for was disabled meanwhile: it will never arrive
                self._store.message_failed(message_id)

    async def _send_queued(self, queued: list[tuple[int, bytes]]) -> None:
        """Send outbox entries (receipts), skipping any another call is sending; once the
        relay holds them, drop them from the outbox."""
        mine = [(seq, env) for seq, env in queued if seq not in self._sending]
        self._sending.update(seq for seq, _ in mine)
        try:
            await asyncio.gather(*(self._send(env) for _, env in mine))
            await self._commit.write(StoreCall(lambda: self._store.sent([seq for seq, _ in mine])))
        finally:
            self._sending.difference_update(seq for seq, _ in mine)

    # --- receiving ------------------------------------------------------------------------

    async def process_inbound(self) -> None:
        """The message worker: takes what has arrived in batches, stores the whole batch in
        one transaction (one fsync), then acknowledges it.

        It never waits for the network before acknowledging: the relay's delivery window is
        bounded, and the directory answer needed to check a sender would queue behind the
        unacknowledged messages. A message whose sender cannot be checked from the directory
        cache is stored *unverified* (not shown), acknowledged, and checked in the background.
        """
        inbound = self._inbound
        assert inbound is not None
        conn = self._connection()
        while True:
            batch = [await inbound.get()]
            while not inbound.empty() and len(batch) < _BATCH:
                batch.append(inbound.get_nowait())
            steps: list[Step] = []
            for _, opened in batch:
                try:
                    steps.append(self._check_peer(opened))
                except SealwireError as exc:
                    log.warning("dropped a message", extra={"reason": str(exc)})
                    steps.append(MarkSeen(self._seen(opened)))
            stored = await self._commit.write_all(steps)
            conn.ack([delivered.delivery_id for delivered, _ in batch])
            for _ in batch:
                inbound.task_done()
            self.announce([record for record in stored if record is not None])

    def _seen(self, opened: OpenedEnvelope) -> tuple[bytes, int, int]:
        return (opened.message_id, opened.sent_at, self._clock() - DEFAULT_LIFETIME_MS)

    def announce(self, records: list[MessageRecord]) -> None:
        """New messages: verified ones go to :attr:`on_message` and get delivery receipts
        (gathered for up to :data:`RECEIPT_DELAY_S`, one per sending device); unverified
        ones are checked in the background first."""
        for record in records:
            if not record.verified:
                self._background.spawn(self._verify_later(record))
                continue
            if not record.outgoing:
                key = (record.sender, record.sender_device)
                self._delivered.setdefault(key, []).append(record.message_id)
                if not self._receipts_due:
                    self._receipts_due = True
                    asyncio.get_running_loop().call_later(RECEIPT_DELAY_S, self._send_receipts)
            if self.on_message is not None:
                self.on_message(record)

    def announce_unverified(self) -> None:
        """Check again the messages whose senders were not checked on an earlier connection."""
        self.announce(self._store.messages(verified=False))

    def _send_receipts(self) -> None:
        self._receipts_due = False
        delivered, self._delivered = self._delivered, {}
        for (user, device), ids in delivered.items():
            # A receipt not accepted stays in the outbox and goes on the next connection.
            self._background.spawn(self._receipt_quietly(user, device, ReceiptKind.DELIVERED, ids))

    async def _verify_later(self, record: MessageRecord) -> None:
        try:
            genuine = await self._directory.sender_is(record.sender, record.sender_device)
        except SealwireError as exc:  # checked again on the next connection
            log.info("sender not checked yet", extra={"reason": str(exc)})
            return
        if not genuine:
            log.warning("a message claims a sender its device does not belong to")
            await self._commit.write(
                StoreCall(lambda: self._store.delete_message(record.message_id))
            )
            return
        await self._commit.write(StoreCall(lambda: self._store.mark_verified(record.message_id)))
        self.announce([dataclasses.replace(record, verified=True)])

    def _check_peer(self, opened: OpenedEnvelope) -> Step:
        """Decide what to do with an envelope from a person's device, without waiting for
        anything; return the store step that records it (run inside the batch's
        transaction)."""
        sender = opened.sender.body.subject
        envelope = self._seen(opened)
        me = self._profile.user
        known_sender = self._directory.known_sender
        if opened.payload_type is PayloadType.MESSAGE:
            message = ChatMessage.decode(opened.body, max_size=len(opened.body))
            outgoing = message.sender == me
            if not outgoing and message.recipient != me:
                return MarkSeen(envelope)
            record = MessageRecord(
                seq=0,
                message_id=message.message_id,
                outgoing=outgoing,
                state=MessageState.SENT if outgoing else MessageState.RECEIVED,
                sent_at=opened.sent_at,
                sender=message.sender,
                recipient=message.recipient,
                text=message.text,
                sender_device=sender,
                verified=known_sender(message.sender, sender),
            )
            return StoreIncoming(record, envelope, self._clock())
        if opened.payload_type is PayloadType.RECEIPT:
            receipt = Receipt.decode(opened.body, max_size=len(opened.body))
            state = (
                MessageState.READ if receipt.kind is ReceiptKind.READ else MessageState.DELIVERED
            )
            if not known_sender(receipt.by, sender):
                # Receipts are advisory: checked in the background, applied if genuine.
                self._background.spawn(self._receipt_later(receipt, sender, state))
                return MarkSeen(envelope)
            store = self._store

            def store_receipt() -> None:
                if store.first_seen(*envelope):
                    # Only the person a message went to may say it was delivered or read.
                    store.advance_state(list(receipt.message_ids), state, to=receipt.by)

            return StoreCall(store_receipt)
        return MarkSeen(envelope)

    async def _receipt_later(self, receipt: Receipt, sender: bytes, state: MessageState) -> None:
        try:
            if not await self._directory.sender_is(receipt.by, sender):
                return
        except SealwireError:
            return
        await self._commit.write(
            StoreCall(
                lambda: self._store.advance_state(list(receipt.message_ids), state, to=receipt.by)
            )
        )

    async def _receipt_quietly(
        self, user: str, device: bytes, kind: ReceiptKind, message_ids: list[bytes]
    ) -> None:
        try:
            await self._receipt(user, device, kind, message_ids)
        except SealwireError as exc:  # it stays in the outbox for the next connection
            log.info("receipt not sent yet", extra={"reason": str(exc)})

    async def _receipt(
        self, user: str, device: bytes, kind: ReceiptKind, message_ids: list[bytes]
    ) -> None:
        entries = await self._directory.lookup([user])
        peer = (
            next((p for p in self._directory.peers(entries[user]) if p.address == device), None)
            if user in entries
            else None
        )
        if peer is None:
            return
        me = self._profile.user
        envelopes = [
            self._profile.seal(
                peer,
                PayloadType.RECEIPT,
                Receipt(
                    kind=kind,
                    message_ids=tuple(message_ids[start : start + MAX_RECEIPT_IDS]),
                    by=me,
                ).encode(),
            )
            for start in range(0, len(message_ids), MAX_RECEIPT_IDS)
        ]
        seqs = await self._commit.write(StoreCall(lambda: self._store.queue_envelopes(envelopes)))
        await self._send_queued(list(zip(seqs, envelopes, strict=True)))

    async def settle(self, quiet: float = 0.3, limit: float = 10.0) -> None:
        """Wait until nothing has arrived for ``quiet`` seconds and the worker is idle."""
        conn = self._connection()
        inbound = self._inbound
        assert inbound is not None
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            before = conn.deliveries.qsize() + inbound.qsize()
            await asyncio.sleep(quiet)
            await asyncio.wait_for(inbound.join(), max(0.1, deadline - time.monotonic()))
            await self._background.wait(max(0.1, deadline - time.monotonic()))
            if conn.deliveries.empty() and inbound.empty() and before == 0:
                return

    async def mark_read(self, records: list[MessageRecord], *, online: bool) -> None:
        """Mark incoming messages read and, when ``online``, tell their senders' devices.

        Raises:
            TransportError: a read receipt could not be sent.
        """
        unread = [r for r in records if not r.outgoing and r.state is MessageState.RECEIVED]
        self._store.advance_state([r.message_id for r in unread], MessageState.READ)
        if not online:
            return
        by_device: dict[tuple[str, bytes], list[bytes]] = {}
        for record in unread:
            by_device.setdefault((record.sender, record.sender_device), []).append(
                record.message_id
            )
        for (user, device), ids in by_device.items():
            await self._receipt(user, device, ReceiptKind.READ, ids)


def check_text(text: str) -> None:
    """Refuse, before anything is sealed, a text the recipient's decoder would refuse
    (:data:`~sealwire.protocol.messaging.MAX_TEXT`, the one definition both sides use).

    Raises:
        ConfigError: the text is too long.
    """
    if len(text) > MAX_TEXT:
        raise ConfigError(
            f"the message is too long: {len(text):,} characters, and one message carries at "
            f"most {MAX_TEXT:,}; send it in parts"
        )
