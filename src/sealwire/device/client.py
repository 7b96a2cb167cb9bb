"""The device client: one façade, :class:`Device`, that the CLI (and later the TUI) uses.

A device activates once with a ticket and its one-time password (SPAKE2 through the relay,
DESIGN §7), then talks only through its relay: envelopes sealed to each device of a person,
and to the sender's own other devices; directory look-ups sealed to its server, answered and
signed by it; delivery and read receipts back to the sending device.

Nothing is lost on the way: an incoming message is stored (with its envelope id, in one
transaction) before the relay is told to delete it; an outgoing one is stored with its sealed
copies before the first is handed to the relay, and copies the relay has not accepted are
sent again on the next connection. A message is shown once however often it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sealwire._argon2 import in_thread
from sealwire.errors import (
    AccessDenied,
    ActivationFailed,
    ConfigError,
    CryptoError,
    DecodeError,
    DeviceLocked,
    DeviceWiped,
    EncodeError,
    InvalidEnvelope,
    RemoteProtocolError,
    SealwireError,
    StorageError,
    TransportError,
)
from sealwire.protocol.activation import (
    ActivationAborted,
    ActivationCompleted,
    ActivationRefused,
    DeviceActivation,
    RefusalCode,
    ServerAnswer,
    ServerNotConfirmed,
    UnlockAnswer,
    UnlockRequest,
    decode_message,
    encode_message,
    normalise_password,
    ticket_from_text,
)
from sealwire.protocol.codec import Struct, wire
from sealwire.protocol.directory import (
    MAX_USERS_PER_QUERY,
    REQUEST_ID_SIZE,
    ActivationDirectory,
    CertificateRenewed,
    DirectoryChanged,
    DirectoryQuery,
    Policy,
    PrekeysPublished,
    PublishPrekeys,
    RenewCertificate,
    ServerRefusal,
    SignedDirectoryAnswer,
    SignedPolicy,
    UserEntry,
    check_username,
    decode_directory_message,
    encode_directory_message,
    verify_prekey,
)
from sealwire.protocol.envelope import (
    DEFAULT_LIFETIME_MS,
    OpenedEnvelope,
    PayloadType,
    open_envelope,
    seal,
)
from sealwire.protocol.frames import ErrorCode
from sealwire.protocol.identity import (
    MAX_CERTIFICATE_SIZE,
    MAX_CHAIN,
    Certificate,
    ChainVerifier,
    Role,
    address_of,
    sign_prekey,
)
from sealwire.protocol.management import (
    Command,
    CommandKind,
    CommandResult,
    CommandStatus,
    ComplianceIssue,
    DeviceErased,
    DeviceReport,
    FetchRemoteSecret,
    ManagementAnswer,
    RemoteSecretAnswer,
    SecretStatus,
    SignedCommand,
    check_passcode,
    decode_management_message,
    encode_management_message,
    passcode_classes,
    payload_type_of,
)
from sealwire.protocol.messaging import (
    APP_MESSAGE_ID_SIZE,
    MAX_RECEIPT_IDS,
    MAX_TEXT,
    ChatMessage,
    Receipt,
    ReceiptKind,
)
from sealwire.protocol.session import EnvelopeDelivered
from sealwire.protocol.suite import SigningKey, XWingPrivateKey, XWingPublicKey
from sealwire.transport import RelayConnection, RequestRefused, SessionEnded

from .store import DeviceStore, MessageRecord, MessageState

__all__ = ["Device", "DeviceInfo", "Peer"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_PREKEY_LIFETIME_FACTOR = 2
_ANSWER_TIMEOUT_S = 15.0
_MAINTAIN_WAIT_S = 3.0
"""How long opening a connection waits for the server's list of our own devices."""
_RECEIPT_DELAY_S = 0.1
"""Delivery receipts wait this long to go out together (one envelope per sending device)."""
_MAX_CACHE_S = 86400
_COMMAND_RESULT_WAIT_S = 3.0
"""How long a wipe or lock waits for its result to reach the relay before it goes ahead."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Peer:
    """A device of a person, ready to seal to."""

    address: bytes
    prekey_id: int
    prekey: XWingPublicKey


@dataclass(frozen=True)
class _Incoming:
    """A store step for one incoming message (batched by :meth:`Device._run_steps`)."""

    record: MessageRecord
    envelope: tuple[bytes, int, int]
    now: int

    def __call__(self) -> MessageRecord | None:
        raise AssertionError("run through Device._run_steps")


@dataclass(frozen=True)
class _Outgoing:
    """A store step: a message we send and its sealed copies (batched)."""

    record: MessageRecord
    envelopes: tuple[bytes, ...]
    now: int

    def __call__(self) -> None:
        raise AssertionError("run through Device._run_steps")


@dataclass(frozen=True)
class _Sent:
    """A store step: the relay holds every copy of this message (batched)."""

    message_id: bytes

    def __call__(self) -> None:
        raise AssertionError("run through Device._run_steps")


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
        on_message: called with every new message stored (``listen`` prints them).
    """

    def __init__(
        self,
        store: DeviceStore,
        *,
        clock: Callable[[], int] = _now_ms,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self._clock = clock
        self._random = random
        self._conn: RelayConnection | None = None
        self._pending: dict[bytes, asyncio.Future[object]] = {}
        self._inbound: asyncio.Queue[tuple[EnvelopeDelivered, OpenedEnvelope]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sending: set[int] = set()
        self._writes: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._committing = False
        self._delivered: dict[tuple[str, bytes], list[bytes]] = {}
        self._receipts_due = False
        self._background: set[asyncio.Task[None]] = set()
        self._entries: dict[str, tuple[int, UserEntry]] = {}
        """Directory entries in memory: user → (use until, entry)."""
        self._verified: dict[str, tuple[UserEntry, list[Peer], int]] = {}
        """Verified peers of an entry: user → (entry, peers, valid until)."""
        self._prekeys: dict[int, XWingPrivateKey] = {}
        self._asking: dict[str, asyncio.Future[dict[str, UserEntry]]] = {}
        self.on_message: Callable[[MessageRecord], None] | None = None
        self._loaded = False
        self._wiped = False
        self._ended: asyncio.Event | None = None
        self._end_reason: SealwireError | None = None
        """Why the device left its connection on its own (locked or wiped by a command)."""
        self._server_away = False
        """The server did not answer within the connection's wait: later connections of this
        process do not wait for it again (they still ask, and use what comes back)."""

    # --- opening and activation -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        home: str | Path,
        *,
        clock: Callable[[], int] = _now_ms,
        random: Callable[[int], bytes] = os.urandom,
    ) -> Device:
        """Open the device in ``home`` (locked unless a session is open and not idle past the
        policy's auto-lock delay).

        Raises:
            ConfigError: no device there.
        """
        store = DeviceStore.open(Path(home), random=random, clock=clock)
        return cls(store, clock=clock, random=random)

    @classmethod
    async def activate(
        cls,
        home: str | Path,
        ticket_text: str,
        password: str,
        passcode: str,
        *,
        clock: Callable[[], int] = _now_ms,
        random: Callable[[int], bytes] = os.urandom,
        timeout: float = 60.0,
    ) -> Device:
        """Activate a new device in ``home`` with a ticket and its one-time password.

        The new store is created only once the server has answered: a failed activation
        leaves nothing behind.

        Raises:
            ActivationFailed: wrong password, burned or expired ticket, refusal or tampering
                (the message says which, as far as the device can know).
            TransportError: the relay or the server could not be reached.
            ConfigError: bad ticket, short passcode, or ``home`` holds a device already.
        """
        home = Path(home)
        if DeviceStore.exists(home):
            raise ConfigError(f"{home} holds an activated device already")
        from .store import MIN_PASSCODE

        if len(passcode) < MIN_PASSCODE:
            raise ConfigError(f"a passcode has at least {MIN_PASSCODE} characters")
        try:
            ticket = ticket_from_text(ticket_text)
        except DecodeError as exc:
            raise ConfigError(f"that is not a valid activation ticket: {exc.reason}") from None
        identity = SigningKey.generate(random)
        prekey = XWingPrivateKey.generate(random)
        now_s = clock() // 1000
        prekey_id = int.from_bytes(random(4), "big")
        signed = sign_prekey(
            identity,
            prekey_id=prekey_id,
            public_key=prekey.public_key,
            not_after=now_s + _PREKEY_LIFETIME_FACTOR * 7 * 86400,
        )
        run = DeviceActivation(
            ticket,
            normalise_password(password),
            identity=identity,
            signed_prekeys=[signed.encode()],
            random=random,
        )
        await in_thread(run.start)  # Argon2id: off the event loop
        answer = await _run_activation(ticket.relay, ticket.server, run, random(16), timeout)
        verifier = ChainVerifier({})
        verifier.add_root(answer.organisation_root_key)
        try:
            leaf = verifier.verify(answer.certificate_chain, now=now_s, role=Role.DEVICE)
            if leaf.body.identity_key != identity.public_key:
                raise ActivationFailed("the server certified another key")
            directory = ActivationDirectory.decode(answer.directory, max_size=10 * 1024)
            server = Certificate.parse(answer.certificate_chain[-1])
            policy = SignedPolicy.decode(answer.policy, max_size=4096).verify(
                server.body.identity_key
            )
            verify_prekey(directory.server_prekey, server.body.identity_key, now=now_s)
        except (CryptoError, DecodeError) as exc:
            raise ActivationFailed(f"the server's answer does not check out: {exc}") from None
        if answer.remote_secret is None:
            raise ActivationFailed("the server sent no remote secret: it needs an upgrade")
        store = await in_thread(
            functools.partial(
                DeviceStore.create,
                home,
                passcode,
                answer.remote_secret,
                random=random,
                clock=clock,
                attempt_limit=policy.max_failed_attempts,
            )
        )
        store.put_secret("identity", identity.seed())
        store.put_secret("chain", _join(answer.certificate_chain))
        store.put_secret("root", answer.organisation_root_key)
        store.put_secret("directory", answer.directory)
        store.put_secret("policy", policy.encode())
        store.put_secret("passcode", _facts(passcode))
        store.set_policy_limits(
            attempt_limit=policy.max_failed_attempts, auto_lock_s=policy.auto_lock_s
        )
        store.cache_remote_secret(answer.remote_secret, clock() + policy.offline_grace_s * 1000)
        store.add_prekey(prekey_id, prekey.seed(), created_at=now_s)
        device = cls(store, clock=clock, random=random)
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

    def _load(self) -> None:
        if self._loaded:
            return
        seed = self.store.secret("identity")
        chain = self.store.secret("chain")
        root = self.store.secret("root")
        directory = self.store.secret("directory")
        policy = self.store.secret("policy")
        if seed is None or chain is None or root is None or directory is None or policy is None:
            raise ConfigError(f"the device in {self.store.home} is incomplete; activate again")
        self._identity = SigningKey.from_seed(seed)
        self.address = address_of(self._identity.public_key)
        self._chain = _split(chain)
        self._root = root
        self.organisation = address_of(root)
        self._directory = ActivationDirectory.decode(directory, max_size=10 * 1024)
        self._policy = Policy.decode(policy, max_size=4096)
        self.user = self._directory.user
        server = Certificate.parse(self._chain[-1])
        self._server_key = server.body.identity_key
        self.server_address = server.body.subject
        signed = verify_prekey(
            self._directory.server_prekey, self._server_key, now=self._clock() // 1000
        )
        self._server_peer = Peer(
            self.server_address, signed.prekey.prekey_id, XWingPublicKey(signed.prekey.public_key)
        )
        self._verifier = ChainVerifier({self.organisation: root})
        self._loaded = True

    # --- locking --------------------------------------------------------------------------

    @property
    def locked(self) -> bool:
        return self.store.locked

    async def unlock(self, passcode: str) -> None:
        """Unlock with the passcode and the remote secret: from the runtime cache while the
        policy's offline grace lasts, else from the server (through the relay's activation
        channel: a locked device cannot read its own queue).

        Raises:
            WrongPasscode: with the attempts left before the device erases itself.
            DeviceWiped: that was the last attempt, or the server says this device was wiped
                or its person deprovisioned: the device has erased itself.
            TransportError: the server could not be reached and no cached secret is left.
        """
        if self._wiped:
            raise DeviceWiped("this device was wiped: activate it again")
        await self._unlock_boot_or_report_erasure(passcode)
        try:
            self._load()
            self.store.set_policy_limits(
                attempt_limit=self._policy.max_failed_attempts,
                auto_lock_s=self._policy.auto_lock_s,
            )
            secret = self.store.cached_remote_secret()
            if secret is not None:
                try:
                    self.store.unlock_data(secret)
                except StorageError:  # stale cache: ask the server
                    self.store.forget_remote_secret()
                    secret = None
            if secret is None:
                secret = await self._fetch_remote_secret()
                self.store.unlock_data(secret)
            self.store.put_secret("passcode", _facts(passcode))
        except DeviceWiped:
            raise
        except BaseException:
            self.lock()
            raise

    async def _unlock_boot_or_report_erasure(self, passcode: str) -> None:
        """Check the passcode (:meth:`DeviceStore.unlock_boot`). When that was the last wrong
        passcode the policy allows, the store has erased the device: if this process still
        holds the identity key from an earlier unlock, the server is told (``DeviceErased``,
        through the relay's activation channel, best effort, a few seconds at most), so that
        it marks the device wiped and peers stop sealing to it. Then DeviceWiped is raised.
        """
        try:
            await in_thread(self.store.unlock_boot, passcode)
        except DeviceWiped:
            identity = getattr(self, "_identity", None)
            if identity is None:  # never unlocked in this process: nothing can sign it now
                raise
            erased = DeviceErased(failed_attempts=self._policy.max_failed_attempts)
            envelope = self._seal(
                self._server_peer, payload_type_of(erased), encode_management_message(erased)
            )
            with contextlib.suppress(SealwireError, TimeoutError):
                async with asyncio.timeout(_COMMAND_RESULT_WAIT_S):
                    conn = await RelayConnection.open_for_activation(self._directory.relay)
                    try:
                        payload = encode_message(UnlockRequest(envelope=envelope))
                        await conn.send_activation(self._random(16), payload, self.server_address)
                        # No answer comes; give the relay a moment to pass it on.
                        await asyncio.sleep(0.5)
                    finally:
                        await conn.close()
            raise

    async def _fetch_remote_secret(self) -> bytes:
        reply = XWingPrivateKey.generate(self._random)
        reply_id = int.from_bytes(self._random(4), "big")
        request = FetchRemoteSecret(
            request_id=self._random(REQUEST_ID_SIZE),
            reply_prekey_id=reply_id,
            reply_key=reply.public_key.raw,
        )
        envelope = self._seal(
            self._server_peer, PayloadType.CONTROL, encode_management_message(request)
        )
        try:
            conn = await RelayConnection.open_for_activation(self._directory.relay)
        except TransportError as exc:
            raise TransportError(
                f"cannot unlock: the offline grace has ended and the relay cannot be reached "
                f"to ask your organisation's server ({exc})"
            ) from None
        session = self._random(16)
        try:
            await conn.send_activation(
                session, encode_message(UnlockRequest(envelope=envelope)), self.server_address
            )
            answer = await asyncio.wait_for(
                self._unlock_answer(conn, reply_id, reply, request.request_id), _ANSWER_TIMEOUT_S
            )
        except TimeoutError:
            raise TransportError(
                "cannot unlock: your organisation's server did not answer (the offline grace "
                "has ended, so the device needs it once); try again later"
            ) from None
        finally:
            await conn.close()
        if answer.policy is not None:
            self._apply_policy(answer.policy.verify(self._server_key))
        if answer.status is SecretStatus.UNAVAILABLE:
            raise StorageError(
                "your organisation's server has no key for this device (was its database "
                "restored from an older backup?): ask your administrator; nothing was erased"
            )
        if answer.status is SecretStatus.WIPE or answer.secret is None:
            self._erase()
            raise DeviceWiped(
                "your organisation has wiped this device (or disabled your account): its keys "
                "and messages are erased"
            )
        self.store.cache_remote_secret(
            answer.secret, self._clock() + self._policy.offline_grace_s * 1000
        )
        return answer.secret

    async def _unlock_answer(
        self, conn: RelayConnection, reply_id: int, reply: XWingPrivateKey, request_id: bytes
    ) -> RemoteSecretAnswer:
        while True:
            getter = asyncio.ensure_future(conn.activations.get())
            waiters: list[asyncio.Future[Any]] = [getter, conn.ended]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                why = conn.ended.result()
                raise TransportError(
                    "cannot unlock: the offline grace has ended and your organisation's server "
                    f"cannot be reached now ({why.code}); try again later"
                )
            try:
                message = decode_message(getter.result().payload)
                if not isinstance(message, UnlockAnswer):
                    continue
                opened = open_envelope(
                    message.envelope,
                    recipient=self.address,
                    prekeys=lambda pid: reply if pid == reply_id else None,
                    verifier=self._verifier,
                    now_ms=self._clock(),
                )
                if opened.sender.body.subject != self.server_address:
                    continue
                answer = decode_management_message(opened.payload_type, opened.body)
            except (DecodeError, InvalidEnvelope):
                continue
            if isinstance(answer, RemoteSecretAnswer) and answer.request_id == request_id:
                return answer

    def lock(self) -> None:
        self.store.lock()
        self._loaded = False

    def _erase(self) -> None:
        self.store.erase()
        self._loaded = False
        self._wiped = True

    def close(self) -> None:
        self.store.close()

    # --- policy -------------------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        self._load()
        return self._policy

    def compliance(self) -> tuple[ComplianceIssue, ...]:
        """What keeps this device from complying with its policy (empty: it complies)."""
        self._load()
        raw = self.store.secret("passcode")
        if raw is None:
            return (ComplianceIssue.PASSCODE_NOT_CHECKED,)
        facts = _PasscodeFacts.decode(raw, max_size=64)
        issues = []
        if facts.length < self._policy.passcode_min_length:
            issues.append(ComplianceIssue.PASSCODE_TOO_SHORT)
        if facts.classes < self._policy.passcode_classes:
            issues.append(ComplianceIssue.PASSCODE_TOO_SIMPLE)
        return tuple(issues)

    def _apply_policy(self, policy: Policy) -> bool:
        """Apply a policy the server signed; ``False`` if it is older than the one we have."""
        if policy.issued_at < self._policy.issued_at:
            return False
        self.store.put_secret("policy", policy.encode())
        self._policy = policy
        self.store.set_policy_limits(
            attempt_limit=policy.max_failed_attempts, auto_lock_s=policy.auto_lock_s
        )
        if policy.offline_grace_s == 0:
            self.store.forget_remote_secret()
        else:
            self.store.cap_remote_secret(self._clock() + policy.offline_grace_s * 1000)
        if not self.store.locked:
            self._apply_retention()
        log.info("policy applied", extra={"policy": policy.name, "version": policy.version})
        return True

    def _apply_retention(self) -> None:
        if self._policy.retention_days:
            cutoff = self._clock() - self._policy.retention_days * 86400 * 1000
            deleted = self.store.delete_messages_before(cutoff)
            if deleted:
                log.info("retention: old messages deleted", extra={"count": deleted})

    async def change_passcode(self, new_passcode: str) -> None:
        """Set a new passcode (the device must be unlocked); it must meet the policy.

        Raises:
            ConfigError: the new passcode does not meet the policy.
        """
        self._load()
        if self.store.locked:
            raise DeviceLocked("unlock the device first")
        if check_passcode(new_passcode, self._policy):
            raise ConfigError(
                f"your organisation's policy asks for at least "
                f"{self._policy.passcode_min_length} characters mixing "
                f"{self._policy.passcode_classes} of lower-case, upper-case, digits, other"
            )
        await in_thread(self.store.change_passcode, new_passcode)
        self.store.put_secret("passcode", _facts(new_passcode))
        if self._conn is not None:
            await self._report()

    def export_messages(self) -> list[MessageRecord]:
        """Every message on the device, for export (if the policy allows it).

        Raises:
            AccessDenied: the organisation's policy does not allow exporting.
        """
        self._load()
        if not self._policy.export_allowed:
            raise AccessDenied("your organisation's policy does not allow exporting messages")
        self.store.touch()
        return self.store.messages()

    def info(self) -> DeviceInfo:
        self._load()
        return DeviceInfo(
            user=self.user,
            display_name=self._directory.display_name,
            organisation=self._directory.organisation_name,
            organisation_id=self.organisation,
            address=self.address,
            relay=self._directory.relay,
            certificate_expires=min(Certificate.parse(c).body.not_after for c in self._chain),
            locked=self.locked,
        )

    # --- the connection -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def online(self) -> AsyncIterator[Device]:
        """Connect to the relay for the duration of the block: incoming envelopes are handled
        in the background, the outbox is flushed, prekeys and the certificate are kept fresh.

        Raises:
            TransportError: the relay is unreachable or refused the device (``revoked``...).
            DeviceLocked: the store is locked.
        """
        self._load()
        self.store.touch()
        if self.store.locked:
            raise self.store.locked_error()
        try:
            conn = await RelayConnection.open(
                self._directory.relay, identity=self._identity, chain=self._chain
            )
        except SessionEnded as exc:
            if exc.code == "revoked":
                raise self._revoked() from None
            raise
        self._conn = conn
        self._ended = asyncio.Event()
        self._end_reason = None
        self._inbound = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._dispatch(conn)),
            asyncio.create_task(self._process_inbound()),
        ]
        try:
            try:
                await self._flush_outbox()
                await self._maintain()
                if self._end_reason is None:
                    self._announce(self.store.messages(verified=False))  # unchecked last time
                    yield self
                if self._receipts_due and self._end_reason is None:
                    self._send_receipts()
                if self._background:  # receipts on their way: let them reach the relay
                    await asyncio.wait(self._background, timeout=5)
            except SealwireError:
                if self._end_reason is not None:  # locked or wiped under our feet
                    raise self._end_reason from None
                raise
            if self._end_reason is not None:
                raise self._end_reason
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks = []
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(TransportError("the relay connection closed"))
                    _consume(future)  # its asker may have stopped waiting
            self._pending.clear()
            self._conn = None
            await conn.close()

    def _revoked(self) -> TransportError:
        """The relay refuses this device for its organisation (deprovisioned or wiped): lock
        and drop the cached remote secret. Nothing is erased on the relay's word alone (a
        relay may lie); without the server's secret the store stays closed."""
        self.store.forget_remote_secret()
        self.lock()
        return TransportError(
            "this device has been disabled by your organisation (the relay refuses it); it is "
            "locked and cannot be unlocked without your organisation's server"
        )

    def _end(self, reason: SealwireError) -> None:
        """Leave the connection on our own (a lock or wipe command)."""
        self._end_reason = reason
        if self._ended is not None:
            self._ended.set()

    def _connection(self) -> RelayConnection:
        if self._conn is None or self._conn.closed:
            why = self._conn.ended.result() if self._conn and self._conn.ended.done() else None
            raise TransportError("not connected to the relay" + (f" ({why.code})" if why else ""))
        return self._conn

    async def _send_envelope(self, envelope: bytes) -> bool:
        """Hand one envelope to the relay; ``True`` once it holds it durably, ``False`` if
        the relay will never carry it (our organisation revoked the recipient's device).

        Raises:
            TransportError: not accepted now (retry on the next connection).
        """
        try:
            await self._connection().send(envelope)
        except RequestRefused as exc:
            if exc.code == ErrorCode.RECIPIENT_REVOKED:
                return False
            raise TransportError(f"the relay refused an envelope ({exc.code})") from exc
        return True

    async def _dispatch(self, conn: RelayConnection) -> None:
        """Read deliveries: server answers are handled at once (they may be awaited by the
        message worker), everything else goes to the worker in order."""
        assert self._inbound is not None
        while True:
            delivered = await conn.deliveries.get()
            try:
                opened = open_envelope(
                    delivered.envelope,
                    recipient=self.address,
                    prekeys=self._private_prekey,
                    verifier=self._verifier,
                    now_ms=self._clock(),
                )
            except InvalidEnvelope:
                log.info("dropped an envelope that does not open")
                conn.ack([delivered.delivery_id])
                continue
            if opened.sender.body.subject == self.server_address:
                self._handle_server(opened)
                self.store.first_seen(opened.message_id, opened.sent_at, self._horizon())
                conn.ack([delivered.delivery_id])
            else:
                await self._inbound.put((delivered, opened))

    def _horizon(self) -> int:
        return self._clock() - DEFAULT_LIFETIME_MS

    def _private_prekey(self, prekey_id: int) -> XWingPrivateKey | None:
        key = self._prekeys.get(prekey_id)
        if key is None:
            seed = self.store.prekey_seed(prekey_id)
            if seed is None:
                return None
            key = self._prekeys[prekey_id] = XWingPrivateKey(seed)
        return key

    def _handle_server(self, opened: OpenedEnvelope) -> None:
        try:
            if opened.payload_type is PayloadType.DIRECTORY:
                message = decode_directory_message(opened.body)
            elif opened.payload_type in _MANAGEMENT_TYPES:
                message = decode_management_message(opened.payload_type, opened.body)
            else:
                return
        except DecodeError:
            log.info("dropped a malformed message from the server")
            return
        if isinstance(message, SignedPolicy):
            self._spawn(self._policy_pushed(message))
            return
        if isinstance(message, SignedCommand):
            self._spawn(self._run_commands([message]))
            return
        if isinstance(message, DirectoryChanged):
            log.info("directory entries changed", extra={"count": len(message.users)})
            for user in message.users:
                self._forget(user)
            return
        request_id = getattr(message, "request_id", None)
        if isinstance(message, SignedDirectoryAnswer):
            request_id = message.answer.request_id
        future = self._pending.pop(request_id, None) if request_id else None
        if future is not None and not future.done():
            future.set_result(message)

    async def _ask_server(self, message: object) -> object:
        request_id = getattr(message, "request_id")  # noqa: B009
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if isinstance(message, DeviceReport):
            payload_type, body = payload_type_of(message), encode_management_message(message)
        else:
            payload_type = PayloadType.DIRECTORY
            body = encode_directory_message(message)  # type: ignore[arg-type]
        await self._send_envelope(self._seal(self._server_peer, payload_type, body))
        try:
            answer = await asyncio.wait_for(future, _ANSWER_TIMEOUT_S)
            if isinstance(answer, ServerRefusal):
                raise RemoteProtocolError(
                    f"your organisation's server refused the request: {answer.reason}",
                    code=answer.code.name.lower(),
                )
            return answer
        except TimeoutError:
            raise TransportError(
                "the enterprise server did not answer within "
                f"{_ANSWER_TIMEOUT_S:.0f} s (is it running and connected to the relay?)"
            ) from None
        finally:
            self._pending.pop(request_id, None)

    def _seal(self, peer: Peer, payload_type: PayloadType, body: bytes) -> bytes:
        return seal(
            sender=self._identity,
            sender_chain=self._chain,
            recipient=peer.address,
            prekey_id=peer.prekey_id,
            prekey=peer.prekey,
            payload_type=payload_type,
            body=body,
            now_ms=self._clock(),
            random=self._random,
        )

    # --- keeping keys fresh -------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Keep keys and our own device list fresh. Messaging between people needs the relay
        only: when the server does not answer, this waits at most a few seconds and the
        connection goes on (what was not done is tried on the next connection)."""
        # Our own person's devices fresh from the server: a device activated since reaches
        # every copy we send (and this first contact is what makes the server list a newly
        # activated device).
        # Both questions go out at once and share one wait: a connection waits at most
        # _MAINTAIN_WAIT_S for the server in all, and not at all once it was found away.
        own = asyncio.ensure_future(self.lookup([self.user], fresh=True))
        report = asyncio.ensure_future(self._report())  # policy and commands
        self._apply_retention()
        wait = 0.0 if self._server_away else _MAINTAIN_WAIT_S
        _, pending = await asyncio.wait((own, report), timeout=wait)
        for future, what in ((own, "own devices not refreshed"), (report, "report not answered")):
            if future in pending:
                future.add_done_callback(_consume)
            elif future.exception() is not None:
                log.info(what, extra={"reason": str(future.exception())})
        if pending:
            log.info("the server has not answered yet; using the cached directory")
            self._server_away = True
            return  # key maintenance needs the server: on a later connection
        self._server_away = False
        if self._end_reason is not None:
            return
        now_s = self._clock() // 1000
        self.store.delete_retired_prekeys(now_s)
        self._prekeys.clear()
        try:
            kept = self.store.prekeys()
            if not kept or now_s - kept[0][1] >= self._policy.prekey_rotation_s:
                await self.rotate_prekey()
            leaf = Certificate.parse(self._chain[0]).body
            if leaf.not_after - now_s < (leaf.not_after - leaf.not_before) // 3:
                await self.renew_certificate()
        except TransportError as exc:  # the server is away: next connection
            log.warning("key maintenance postponed", extra={"reason": str(exc)})

    # --- management: policy, compliance, commands -------------------------------------------

    async def _report(self) -> None:
        """Tell the server which policy we apply and whether we comply; apply the policy and
        carry out the commands its answer holds (then report again if the policy changed)."""
        for _ in range(2):
            answer = await self._ask_server(
                DeviceReport(
                    request_id=self._random(REQUEST_ID_SIZE),
                    policy_name=self._policy.name,
                    policy_version=self._policy.version,
                    policy_issued_at=self._policy.issued_at,
                    issues=self.compliance(),
                )
            )
            if not isinstance(answer, ManagementAnswer):
                raise TransportError("the server sent an unexpected answer")
            if answer.commands:
                await self._run_commands(list(answer.commands))
            if answer.policy is None or self._end_reason is not None:
                return
            try:
                if not self._apply_policy(answer.policy.verify(self._server_key)):
                    return
            except CryptoError:
                log.warning("a policy not signed by our server was ignored")
                return

    async def _policy_pushed(self, signed: SignedPolicy) -> None:
        try:
            policy = signed.verify(self._server_key)
        except CryptoError:
            log.warning("a policy not signed by our server was ignored")
            return
        if self._apply_policy(policy):
            try:
                await self._report()
            except SealwireError as exc:
                log.info("policy applied; report postponed", extra={"reason": str(exc)})

    async def _run_commands(self, commands: list[SignedCommand]) -> None:
        for signed in commands:
            if self._end_reason is not None:
                return
            try:
                command = signed.verify(self._server_key, self.address)
            except CryptoError:
                log.warning("a command not signed by our server for this device was ignored")
                continue
            try:
                await self._run_command(command)
            except SealwireError as exc:
                log.warning("command failed", extra={"kind": command.kind.name})
                await self._command_result(command.command_id, CommandStatus.FAILED, str(exc))

    async def _run_command(self, command: Command) -> None:
        """Carry out one command (idempotent: a command done before is only acknowledged)."""
        log.info("command received", extra={"kind": command.kind.name})
        if command.kind is CommandKind.WIPE:
            # Acknowledge first (best effort, briefly), then erase: afterwards nothing can.
            await self._acknowledge_wipe(command.command_id)
            self._erase()
            self._end(DeviceWiped("your organisation has wiped this device"))
            return
        if self.store.command_done(command.command_id):
            await self._command_result(command.command_id, CommandStatus.DONE, "done before")
            return
        if command.kind is CommandKind.LOCK:
            if command.new_passcode is not None:
                await in_thread(self.store.change_passcode, command.new_passcode)
                self.store.put_secret("passcode", _facts(command.new_passcode))
            self.store.mark_command_done(command.command_id, self._clock())
            with contextlib.suppress(SealwireError, TimeoutError):
                await asyncio.wait_for(
                    self._command_result(command.command_id, CommandStatus.DONE, "locked"),
                    _COMMAND_RESULT_WAIT_S,
                )
            self.lock()
            self._end(DeviceLocked("your organisation has locked this device"))
            return
        if command.kind is CommandKind.RENEW_KEYS:
            await self.rotate_prekey()
            await self.renew_certificate()
            self.store.mark_command_done(command.command_id, self._clock())
            await self._command_result(command.command_id, CommandStatus.DONE, "keys renewed")

    async def _acknowledge_wipe(self, command_id: bytes) -> None:
        """Tell the server a wipe is being carried out, within a few seconds at most. A
        deprovisioned device is cut off by the relay right after its wipe arrives: then the
        result goes through the relay's activation channel, which still reaches the server."""
        try:
            await asyncio.wait_for(
                self._command_result(command_id, CommandStatus.DONE, "wiped"),
                _COMMAND_RESULT_WAIT_S,
            )
            return
        except (SealwireError, TimeoutError):
            pass
        result = CommandResult(command_id=command_id, status=CommandStatus.DONE, detail="wiped")
        envelope = self._seal(
            self._server_peer, payload_type_of(result), encode_management_message(result)
        )
        with contextlib.suppress(SealwireError, TimeoutError):
            async with asyncio.timeout(_COMMAND_RESULT_WAIT_S):
                conn = await RelayConnection.open_for_activation(self._directory.relay)
                try:
                    payload = encode_message(UnlockRequest(envelope=envelope))
                    await conn.send_activation(self._random(16), payload, self.server_address)
                    # No answer comes; give the relay a moment to pass it on before closing.
                    await asyncio.sleep(0.5)
                finally:
                    await conn.close()

    async def _command_result(self, command_id: bytes, status: CommandStatus, detail: str) -> None:
        result = CommandResult(command_id=command_id, status=status, detail=detail[:200])
        envelope = self._seal(
            self._server_peer, payload_type_of(result), encode_management_message(result)
        )
        await self._send_envelope(envelope)

    async def rotate_prekey(self) -> None:
        """Make a new prekey, publish it through the server, and schedule the old private
        prekeys for deletion one envelope lifetime from now (forward secrecy)."""
        now_s = self._clock() // 1000
        prekey = XWingPrivateKey.generate(self._random)
        prekey_id = int.from_bytes(self._random(4), "big")
        signed = sign_prekey(
            self._identity,
            prekey_id=prekey_id,
            public_key=prekey.public_key,
            not_after=now_s + _PREKEY_LIFETIME_FACTOR * self._policy.prekey_rotation_s,
        )
        self.store.add_prekey(prekey_id, prekey.seed(), created_at=now_s)
        answer = await self._ask_server(
            PublishPrekeys(request_id=self._random(REQUEST_ID_SIZE), prekeys=(signed.encode(),))
        )
        if isinstance(answer, PrekeysPublished):
            self.store.retire_prekeys(prekey_id, now_s + DEFAULT_LIFETIME_MS // 1000 + 3600)

    async def renew_certificate(self) -> None:
        """Ask the server for a fresh certificate (the current one authenticates the ask)."""
        answer = await self._ask_server(RenewCertificate(request_id=self._random(REQUEST_ID_SIZE)))
        if not isinstance(answer, CertificateRenewed):
            return
        try:
            leaf = self._verifier.verify(answer.chain, now=self._clock() // 1000, role=Role.DEVICE)
        except CryptoError:
            log.warning("the server's renewed certificate does not verify; keeping the old one")
            return
        if leaf.body.identity_key == self._identity.public_key:
            self.store.put_secret("chain", _join(answer.chain))
            self._chain = tuple(answer.chain)

    # --- directory ------------------------------------------------------------------------

    async def lookup(self, users: list[str], *, fresh: bool = False) -> dict[str, UserEntry]:
        """Directory entries for ``users`` (from the cache unless expired or ``fresh``).

        Raises:
            TransportError: the server could not be asked.
        """
        self._load()
        for user in users:
            _check_person(user)
        now_s = self._clock() // 1000
        found: dict[str, UserEntry] = {}
        missing = []
        for user in dict.fromkeys(users):
            remembered = None if fresh else self._entries.get(user)
            if remembered is not None and remembered[0] > now_s:
                found[user] = remembered[1]
                continue
            cached = None if fresh else self.store.cached_entry(user, now=now_s)
            if cached is not None:
                found[user] = UserEntry.decode(cached, max_size=64 * 1024)
                self._entries[user] = (now_s + 60, found[user])  # re-read the store each minute
            else:
                missing.append(user)
        for start in range(0, len(missing), MAX_USERS_PER_QUERY):
            chunk = tuple(missing[start : start + MAX_USERS_PER_QUERY])
            request_id = self._random(REQUEST_ID_SIZE)
            reply = await self._ask_server(DirectoryQuery(request_id=request_id, users=chunk))
            if not isinstance(reply, SignedDirectoryAnswer):
                raise TransportError("the server sent an unexpected answer")
            try:
                answer = reply.verify(self._server_key)
            except CryptoError:
                raise TransportError("the server's directory answer is not signed by it") from None
            if answer.request_id != request_id or answer.organisation != self.organisation:
                raise TransportError("the directory answer is for another question")
            # The organisation's policy says how long a directory answer may be used.
            lifetime = min(self._policy.directory_cache_s, _MAX_CACHE_S)
            expires = min(answer.expires_at, now_s + lifetime)
            for entry in answer.entries:
                if entry.user not in chunk:
                    continue
                found[entry.user] = entry
                if entry.devices and expires > now_s:
                    self._entries[entry.user] = (expires, entry)
                    self.store.cache_entry(entry.user, entry.encode(), expires)
                else:  # no device yet: ask again next time rather than remember "none"
                    self._forget(entry.user)
            for name in answer.unknown:
                self._forget(name)
        return found

    def _forget(self, user: str) -> None:
        """Drop ``user`` from the directory cache (memory and store)."""
        self._entries.pop(user, None)
        self._verified.pop(user, None)
        self.store.forget_entry(user)

    def _peers(self, entry: UserEntry) -> list[Peer]:
        """Verified devices of a directory entry (skipping any that fails a check). The result
        is remembered for this entry object until its first certificate or prekey expires."""
        now_s = self._clock() // 1000
        remembered = self._verified.get(entry.user)
        if remembered is not None and remembered[0] is entry and now_s < remembered[2]:
            return remembered[1]
        peers = []
        valid_until = now_s + 3600
        for device in entry.devices:
            try:
                leaf = self._verifier.verify(device.chain, now=now_s, role=Role.DEVICE)
                signed = verify_prekey(device.prekey, leaf.body.identity_key, now=now_s)
            except CryptoError:
                log.warning("skipping a directory device that does not verify")
                continue
            valid_until = min(
                valid_until, self._verifier.valid_until(device.chain), signed.prekey.not_after
            )
            peers.append(
                Peer(
                    leaf.body.subject,
                    signed.prekey.prekey_id,
                    XWingPublicKey(signed.prekey.public_key),
                )
            )
        self._verified[entry.user] = (entry, peers, valid_until)
        return peers

    async def devices(self, user: str | None = None) -> list[tuple[bytes, bool]]:
        """The active devices of ``user`` (default: our own person), fresh from the server:
        ``(address, is this device)``."""
        self._load()
        name = user or self.user
        entries = await self.lookup([name], fresh=True)
        if name not in entries:
            raise ConfigError(f"{name!r} is not a person of this organisation")
        return [(peer.address, peer.address == self.address) for peer in self._peers(entries[name])]

    # --- sending --------------------------------------------------------------------------

    async def send_message(self, user: str, text: str) -> bytes:
        """Seal ``text`` to every device of ``user`` and our own other devices; return the
        message id once the relay holds every copy durably.

        Raises:
            ConfigError: no such person, or they have no activated device.
            TransportError: the relay or server could not be reached (the message is kept and
                sent on the next connection if it was already sealed).
        """
        self._load()
        _check_text(text)
        entries = await self.lookup([user, self.user])
        if user not in entries:
            raise ConfigError(f"{user!r} is not a person of this organisation")
        peers = self._peers(entries[user])
        if not peers:
            raise ConfigError(f"{user!r} has no activated device yet")
        own = (
            [
                p
                for p in self._peers(entries.get(self.user, _empty(self.user)))
                if p.address != self.address
            ]
            if user != self.user
            else []
        )
        message_id = self._random(APP_MESSAGE_ID_SIZE)
        body = ChatMessage(message_id=message_id, sender=self.user, recipient=user, text=text)
        try:
            encoded = body.encode()  # the recipient's decoder enforces the same bounds
        except EncodeError as exc:
            raise ConfigError(f"the message cannot be sent: {exc.reason}") from None
        theirs = [peer for peer in peers if peer.address != self.address]
        envelopes = tuple(
            self._seal(peer, PayloadType.MESSAGE, encoded)
            for peer in theirs + [p for p in own if p.address != self.address]
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
            sender=self.user,
            recipient=user,
            text=text,
            sender_device=self.address,
        )
        stored = asyncio.ensure_future(self._write(_Outgoing(record, envelopes, now)))
        try:
            taken = await asyncio.gather(*(self._send_envelope(env) for env in envelopes))
        finally:
            await stored
        if not all(taken):
            # Our organisation ended some of these devices since we cached the directory.
            self._forget(user)
            self._forget(self.user)
            if theirs and not any(taken[: len(theirs)]):
                await self._write(lambda: self.store.message_failed(message_id))
                raise ConfigError(
                    f"not sent: {user!r}'s devices have been disabled by your organisation "
                    "(the relay refuses them)"
                )
        await self._write(_Sent(message_id))
        return message_id

    async def _write(self, step: Callable[[], T]) -> T:
        """Run a store step in the next group commit, in a worker thread (the event loop
        goes on with crypto and the network meanwhile). Steps queued while a commit runs
        share the next transaction: one fsync for all of them."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writes.append((step, future))
        if not self._committing:
            self._committing = True
            self._spawn(self._committer())
        result: T = await future
        return result

    async def _committer(self) -> None:
        try:
            while self._writes:
                writes, self._writes = self._writes, []
                try:
                    results = await asyncio.to_thread(self._run_steps, [s for s, _ in writes])
                except Exception as exc:
                    for _, future in writes:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(writes, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._committing = False

    def _run_steps(self, steps: list[Callable[[], Any]]) -> list[Any]:
        """Run store steps in one transaction; incoming messages among them are stored
        together (a few statements per batch rather than per message)."""
        with self.store.batch():
            incoming = [step for step in steps if isinstance(step, _Incoming)]
            added = iter(
                self.store.add_incoming(
                    [(step.record, step.envelope, step.now) for step in incoming]
                )
                if incoming
                else []
            )
            outgoing = [step for step in steps if isinstance(step, _Outgoing)]
            if outgoing:
                self.store.add_outgoing(
                    [(step.record, step.envelopes, step.now) for step in outgoing]
                )
            sent = [step.message_id for step in steps if isinstance(step, _Sent)]
            if sent:
                self.store.messages_sent(sent)
            results: list[Any] = []
            for step in steps:
                if isinstance(step, _Incoming):
                    results.append(step.record if next(added) else None)
                elif isinstance(step, _Outgoing | _Sent):
                    results.append(None)
                else:
                    results.append(step())
            return results

    async def _flush_outbox(self) -> None:
        """Hand every waiting envelope to the relay (after a reconnection: what the relay had
        not accepted before is sent again; recipients drop copies they already have)."""
        await self._send_queued(self.store.outbox())
        for message_id, envelopes in self.store.unsent_messages():
            taken = await asyncio.gather(*(self._send_envelope(env) for env in envelopes))
            if any(taken):
                self.store.messages_sent([message_id])
            else:  # every device it was for was disabled meanwhile: it will never arrive
                self.store.message_failed(message_id)

    async def _send_queued(self, queued: list[tuple[int, bytes]]) -> None:
        """Send outbox entries (receipts), skipping any another call is sending; once the
        relay holds them, drop them from the outbox."""
        mine = [(seq, env) for seq, env in queued if seq not in self._sending]
        self._sending.update(seq for seq, _ in mine)
        try:
            await asyncio.gather(*(self._send_envelope(env) for _, env in mine))
            await self._write(lambda: self.store.sent([seq for seq, _ in mine]))
        finally:
            self._sending.difference_update(seq for seq, _ in mine)

    async def send(self, user: str, text: str) -> bytes:
        """Connect, send one message, disconnect (what ``sealwire device send`` does)."""
        async with self.online():
            message_id = await self.send_message(user, text)
            await self._settle()
            return message_id

    # --- receiving ------------------------------------------------------------------------

    async def _process_inbound(self) -> None:
        """The message worker: takes what has arrived in batches, stores the whole batch in
        one transaction (one fsync), then acknowledges it.

        It never waits for the network before acknowledging: the relay's delivery window is
        bounded, and the directory answer needed to check a sender would queue behind the
        unacknowledged messages. A message whose sender cannot be checked from the directory
        cache is stored *unverified* (not shown), acknowledged, and checked in the background.
        """
        assert self._inbound is not None
        conn = self._connection()
        while True:
            batch = [await self._inbound.get()]
            while not self._inbound.empty() and len(batch) < 256:
                batch.append(self._inbound.get_nowait())
            steps: list[Callable[[], MessageRecord | None]] = []
            for _, opened in batch:
                try:
                    steps.append(self._check_peer(opened))
                except SealwireError as exc:
                    log.warning("dropped a message", extra={"reason": str(exc)})
                    envelope = (opened.message_id, opened.sent_at, self._horizon())
                    steps.append(functools.partial(self._seen_only, envelope))
            stored = await self._write(functools.partial(self._run_steps, steps))
            conn.ack([delivered.delivery_id for delivered, _ in batch])
            for _ in batch:
                self._inbound.task_done()
            self._announce([record for record in stored if record is not None])

    def _announce(self, records: list[MessageRecord]) -> None:
        """New messages: verified ones go to :attr:`on_message` and get delivery receipts
        (gathered for up to :data:`_RECEIPT_DELAY_S`, one per sending device); unverified
        ones are checked in the background first."""
        for record in records:
            if not record.verified:
                self._spawn(self._verify_later(record))
                continue
            if not record.outgoing:
                key = (record.sender, record.sender_device)
                self._delivered.setdefault(key, []).append(record.message_id)
                if not self._receipts_due:
                    self._receipts_due = True
                    asyncio.get_running_loop().call_later(_RECEIPT_DELAY_S, self._send_receipts)
            if self.on_message is not None:
                self.on_message(record)

    def _send_receipts(self) -> None:
        self._receipts_due = False
        delivered, self._delivered = self._delivered, {}
        for (user, device), ids in delivered.items():
            # A receipt not accepted stays in the outbox and goes on the next connection.
            self._spawn(self._receipt_quietly(user, device, ReceiptKind.DELIVERED, ids))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _verify_later(self, record: MessageRecord) -> None:
        try:
            genuine = await self._sender_is(record.sender, record.sender_device)
        except SealwireError as exc:  # checked again on the next connection
            log.info("sender not checked yet", extra={"reason": str(exc)})
            return
        if not genuine:
            log.warning("a message claims a sender its device does not belong to")
            await self._write(lambda: self.store.delete_message(record.message_id))
            return
        await self._write(lambda: self.store.mark_verified(record.message_id))
        self._announce([dataclasses.replace(record, verified=True)])

    def _seen_only(self, envelope: tuple[bytes, int, int]) -> None:
        self.store.first_seen(*envelope)

    def _known_sender(self, user: str, address: bytes) -> bool:
        """Whether the directory cache (no network) says ``address`` is a device of ``user``."""
        now_s = self._clock() // 1000
        remembered = self._entries.get(user)
        entry = remembered[1] if remembered is not None and remembered[0] > now_s else None
        if entry is None:
            cached = self.store.cached_entry(user, now=now_s)
            if cached is None:
                return False
            entry = UserEntry.decode(cached, max_size=64 * 1024)
            self._entries[user] = (now_s + 60, entry)
        return any(p.address == address for p in self._peers(entry))

    async def _sender_is(self, user: str, address: bytes) -> bool:
        if self._known_sender(user, address):
            return True
        # Unknown, or a device activated since we cached: ask the server, once for everyone
        # waiting on the same person.
        asking = self._asking.get(user)
        if asking is None:
            asking = asyncio.ensure_future(self.lookup([user], fresh=True))
            self._asking[user] = asking
            asking.add_done_callback(lambda _: self._asking.pop(user, None))
        entries = await asyncio.shield(asking)
        return user in entries and any(p.address == address for p in self._peers(entries[user]))

    def _check_peer(self, opened: OpenedEnvelope) -> Callable[[], MessageRecord | None]:
        """Decide what to do with an envelope from a person's device, without waiting for
        anything; return the store step that records it (run inside the batch's
        transaction)."""
        sender = opened.sender.body.subject
        envelope = (opened.message_id, opened.sent_at, self._horizon())
        if opened.payload_type is PayloadType.MESSAGE:
            message = ChatMessage.decode(opened.body, max_size=len(opened.body))
            outgoing = message.sender == self.user
            if not outgoing and message.recipient != self.user:
                return functools.partial(self._seen_only, envelope)
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
                verified=self._known_sender(message.sender, sender),
            )
            return _Incoming(record, envelope, self._clock())
        if opened.payload_type is PayloadType.RECEIPT:
            receipt = Receipt.decode(opened.body, max_size=len(opened.body))
            state = (
                MessageState.READ if receipt.kind is ReceiptKind.READ else MessageState.DELIVERED
            )
            if not self._known_sender(receipt.by, sender):
                # Receipts are advisory: checked in the background, applied if genuine.
                self._spawn(self._receipt_later(receipt, sender, state))
                return functools.partial(self._seen_only, envelope)

            def store_receipt() -> None:
                if self.store.first_seen(*envelope):
                    # Only the person a message went to may say it was delivered or read.
                    self.store.advance_state(list(receipt.message_ids), state, to=receipt.by)

            return store_receipt
        return functools.partial(self._seen_only, envelope)

    async def _receipt_later(self, receipt: Receipt, sender: bytes, state: MessageState) -> None:
        try:
            if not await self._sender_is(receipt.by, sender):
                return
        except SealwireError:
            return
        await self._write(
            lambda: self.store.advance_state(list(receipt.message_ids), state, to=receipt.by)
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
        entries = await self.lookup([user])
        peer = (
            next((p for p in self._peers(entries[user]) if p.address == device), None)
            if user in entries
            else None
        )
        if peer is None:
            return
        envelopes = [
            self._seal(
                peer,
                PayloadType.RECEIPT,
                Receipt(
                    kind=kind,
                    message_ids=tuple(message_ids[start : start + MAX_RECEIPT_IDS]),
                    by=self.user,
                ).encode(),
            )
            for start in range(0, len(message_ids), MAX_RECEIPT_IDS)
        ]
        seqs = await self._write(lambda: self.store.queue_envelopes(envelopes))
        await self._send_queued(list(zip(seqs, envelopes, strict=True)))

    async def _settle(self, quiet: float = 0.3, limit: float = 10.0) -> None:
        """Wait until nothing has arrived for ``quiet`` seconds and the worker is idle."""
        conn = self._connection()
        assert self._inbound is not None
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            before = conn.deliveries.qsize() + self._inbound.qsize()
            await asyncio.sleep(quiet)
            await asyncio.wait_for(self._inbound.join(), max(0.1, deadline - time.monotonic()))
            if self._background:
                await asyncio.wait(self._background, timeout=max(0.1, deadline - time.monotonic()))
            if conn.deliveries.empty() and self._inbound.empty() and before == 0:
                return

    async def sync(self) -> list[MessageRecord]:
        """Connect, take every waiting envelope, disconnect; return the new messages."""
        self._load()
        last = self.store.messages()
        after = last[-1].seq if last else 0
        async with self.online():
            await self._settle()
        return self.store.messages(after=after)

    async def mark_read(self, records: list[MessageRecord]) -> None:
        """Mark incoming messages read and tell their senders' devices (when online)."""
        unread = [r for r in records if not r.outgoing and r.state is MessageState.RECEIVED]
        self.store.advance_state([r.message_id for r in unread], MessageState.READ)
        if self._conn is None:
            return
        by_device: dict[tuple[str, bytes], list[bytes]] = {}
        for record in unread:
            by_device.setdefault((record.sender, record.sender_device), []).append(
                record.message_id
            )
        for (user, device), ids in by_device.items():
            await self._receipt(user, device, ReceiptKind.READ, ids)

    async def listen(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set; new messages go to :attr:`on_message`."""
        async with self.online():
            conn = self._connection()
            assert self._ended is not None
            stopped = asyncio.ensure_future(stop.wait())
            ended = asyncio.ensure_future(self._ended.wait())
            idle = asyncio.ensure_future(self._auto_lock())
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
            if self._end_reason is not None:
                raise self._end_reason
            if conn.ended.done() and not stop.is_set():
                why = conn.ended.result()
                if why.code == "revoked":
                    raise self._revoked()
                raise TransportError(f"the relay ended the session ({why.code})")

    async def _auto_lock(self) -> None:
        """Lock once the person has been idle for the policy's auto-lock delay."""
        while True:
            limit_ms = self._policy.auto_lock_s * 1000
            if limit_ms and self.store.idle_ms() >= limit_ms:
                self.lock()
                self._end(DeviceLocked("locked after the idle time your organisation allows"))
                return
            # At most a second: a new policy may shorten the delay at any time.
            await asyncio.sleep(
                1.0
                if not limit_ms
                else min(1.0, max(0.05, (limit_ms - self.store.idle_ms()) / 1000))
            )


async def _run_activation(
    relay: str, server: bytes, run: DeviceActivation, session: bytes, timeout: float
) -> ServerAnswer:
    conn = await RelayConnection.open_for_activation(relay)
    try:
        for data in run.data_to_send():
            await conn.send_activation(session, data, server)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError("the enterprise server did not answer the activation in time")
            getter = asyncio.ensure_future(conn.activations.get())
            waiters: list[asyncio.Future[Any]] = [getter, conn.ended]
            done, _ = await asyncio.wait(
                waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                if conn.ended.done():
                    why = conn.ended.result()
                    if why.code == "unavailable":
                        raise TransportError(
                            "the enterprise server is not connected to the relay right now; "
                            "try again later"
                        )
                    raise TransportError(f"the relay ended the activation ({why.code})")
                continue
            received = getter.result()
            events = await asyncio.to_thread(run.receive, received.payload)
            for data in run.data_to_send():
                await conn.send_activation(session, data, server)
            for event in events:
                if isinstance(event, ActivationCompleted):
                    return event.answer
                if isinstance(event, ActivationRefused):
                    raise ActivationFailed(_refusal_message(event.code))
                if isinstance(event, ServerNotConfirmed):
                    raise ActivationFailed(
                        "the activation did not confirm: the server could not prove it knows "
                        "the password, so something between you and the server altered the "
                        "exchange; nothing was kept. Try again; if it keeps failing, ask your "
                        "administrator for a new activation password"
                    )
                if isinstance(event, ActivationAborted):
                    raise ActivationFailed(f"the activation was aborted ({event.reason})")
    finally:
        await conn.close()


_MANAGEMENT_TYPES = (PayloadType.POLICY, PayloadType.COMMAND, PayloadType.CONTROL)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a background future's exception so that asyncio does not report it."""
    if not future.cancelled():
        future.exception()


def _refusal_message(code: RefusalCode) -> str:
    if code is RefusalCode.PASSWORD_REJECTED:
        return (
            "wrong activation password (each wrong try uses one of its attempts; after the "
            "last one it is burned and your administrator must issue a new one)"
        )
    if code is RefusalCode.UNKNOWN_TICKET:
        return (
            "this activation password is no longer valid: it has expired, was used, was "
            "replaced, or was burned by wrong attempts; ask your administrator for a new one"
        )
    if code is RefusalCode.NOT_PERMITTED:
        return "the server refused to activate this device (ask your administrator)"
    return "the activation failed: the server saw a malformed exchange"


@dataclass(frozen=True)
class _PasscodeFacts(Struct):
    """What the policy checks of the passcode, kept under the boot key (never the passcode)."""

    length: int = wire(0, min_value=0, max_value=1024)
    classes: int = wire(1, min_value=0, max_value=4)


def _facts(passcode: str) -> bytes:
    return _PasscodeFacts(length=len(passcode), classes=passcode_classes(passcode)).encode()


@dataclass(frozen=True)
class _Chain(Struct):
    certificates: tuple[bytes, ...] = wire(0, max_items=MAX_CHAIN, max_size=MAX_CERTIFICATE_SIZE)


def _join(chain: tuple[bytes, ...]) -> bytes:
    return _Chain(certificates=tuple(chain)).encode()


def _split(data: bytes) -> tuple[bytes, ...]:
    return _Chain.decode(data, max_size=4096).certificates


def _check_text(text: str) -> None:
    """Refuse, before anything is sealed, a text the recipient's decoder would refuse
    (:data:`~sealwire.protocol.messaging.MAX_TEXT`, the one definition both sides use)."""
    if len(text) > MAX_TEXT:
        raise ConfigError(
            f"the message is too long: {len(text):,} characters, and one message carries at "
            f"most {MAX_TEXT:,}; send it in parts"
        )


def _check_person(user: str) -> None:
    try:
        check_username(user)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _empty(user: str) -> UserEntry:
    return UserEntry(user=user, display_name=user, devices=())
