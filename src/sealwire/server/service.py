"""The enterprise server (DESIGN §1, §4, §7): it holds the organisation's root key, answers
activations and directory queries, and talks to nobody but its relay, which it dials out to
(no inbound port) and reconnects to with backoff.

Administrators reach the *running* server through a local admin endpoint (:mod:`.admin`); the
database is never opened behind the server's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import random as _random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealwire._argon2 import in_thread
from sealwire.errors import (
    ConfigError,
    CryptoError,
    DecodeError,
    InvalidEnvelope,
    SealwireError,
    TransportError,
)
from sealwire.protocol.activation import (
    ActivationTicket,
    DeviceKeysReceived,
    PasswordRejected,
    RefusalCode,
    ServerActivation,
    ServerAnswer,
    UnlockAnswer,
    UnlockRequest,
    decode_message,
    encode_message,
    normalise_password,
    ticket_to_text,
)
from sealwire.protocol.codec import Struct, decode_value
from sealwire.protocol.directory import (
    REQUEST_ID_SIZE,
    ActivationDirectory,
    CertificateRenewed,
    DeviceEntry,
    DirectoryAnswer,
    DirectoryChanged,
    DirectoryQuery,
    PrekeysPublished,
    PublishPrekeys,
    RenewCertificate,
    ServerRefusal,
    ServerRefusalCode,
    SignedDirectoryAnswer,
    SignedPolicy,
    UserEntry,
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
from sealwire.protocol.identity import (
    Certificate,
    ChainVerifier,
    Role,
    address_of,
    issue_certificate,
    short_address,
    sign_prekey,
)
from sealwire.protocol.management import (
    Command,
    CommandResult,
    CommandStatus,
    DeviceReport,
    FetchRemoteSecret,
    ManagementAnswer,
    RemoteSecretAnswer,
    SecretStatus,
    SignedCommand,
    decode_management_message,
    encode_management_message,
    payload_type_of,
)
from sealwire.protocol.session import ActivationReceived, EnvelopeDelivered
from sealwire.protocol.suite import (
    Argon2Params,
    SigningKey,
    XWingPrivateKey,
    XWingPublicKey,
    open_at_rest,
    seal_at_rest,
)
from sealwire.transport import Connector, RelayConnection, SessionEnded

from .accounts import AdminAccounts
from .administration import (
    COMMAND_PURPOSE,
    REMOTE_SECRET_PURPOSE,
    Administration,
    PolicySettings,
    effective_policy,
    issue_names,
)
from .audit import AuditLog
from .config import MAX_TICKET_LIFETIME_S, ServerConfig
from .keystore import ServerKeys, create_key_file, load_keys, save_keys
from .store import DeviceRecord, ServerStore, UnknownUser

__all__ = ["EnterpriseServer", "IssuedTicket"]

log = logging.getLogger(__name__)

_SERVER_CERT_S = 366 * 86400
_SERVER_PREKEY_ID = 1
_TICKET_PURPOSE = "server/ticket-scalar"
_RUN_LIFETIME_S = 120.0
_MAX_RUNS = 1024
_PASSWORD_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"  # noqa: S105 (an alphabet; no 0/O, 1/I/L, U)
_PASSWORD_GROUPS = 3
_BACKOFF_MAX_S = 30.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class IssuedTicket:
    """What an administrator hands a person: the ticket text and, separately, the password."""

    username: str
    ticket: str
    password: str
    expires_at: int
    """Unix seconds."""


def new_password() -> str:
    """A one-time activation password: 12 characters (~59 bits) in groups of four.

    With SPAKE2 only online guesses are possible, five per ticket.
    """
    groups = (
        "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(4))
        for _ in range(_PASSWORD_GROUPS)
    )
    return "-".join(groups)


class EnterpriseServer:
    """One enterprise server process. Make it with :meth:`open`, then :meth:`start`.

    Args:
        config: settings.
        keys: the server's opened keys.
        store: the server's database.
        clock: Unix milliseconds (tests inject one).
        random: source of random bytes.
    """

    def __init__(
        self,
        config: ServerConfig,
        keys: ServerKeys,
        store: ServerStore,
        *,
        clock: Callable[[], int] = _now_ms,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.keys = keys
        self.store = store
        self._clock = clock
        self._random = random
        self._identity: SigningKey = keys.identity
        self._root_public = keys.root.public_key
        self.organisation = address_of(self._root_public)
        self.address = address_of(self._identity.public_key)
        self._chain = (keys.server_certificate,)
        self._prekey: XWingPrivateKey = keys.prekey
        self._verifier = ChainVerifier({self.organisation: self._root_public})
        relay = store.setting("relay")
        name = store.setting("organisation_name")
        self.relay_url = config.relay or (relay.decode() if relay else "")
        if not self.relay_url:
            raise ConfigError("no relay is configured: give --relay URL on the first run")
        if relay is None or relay.decode() != self.relay_url:
            store.put_setting("relay", self.relay_url.encode())
        self.organisation_name = name.decode() if name else "Sealwire"
        self.audit = AuditLog(store.db, self._identity, clock=clock)
        self.accounts = AdminAccounts(
            store.db, self.audit, clock=clock, token_lifetime_s=config.admin_token_lifetime_s
        )
        with store.db.transaction() as conn:
            if store.policy_row(conn, "default") is None:
                settings = PolicySettings(
                    prekey_rotation_s=config.prekey_rotation_s,
                    directory_cache_s=config.directory_cache_s,
                ).check()
                store.put_policy(conn, "default", settings.to_json(), clock(), "system")
        self.administration = Administration(self)
        self.connector: Connector = RelayConnection
        """How the server reaches the relay (tests inject an in-process relay)."""
        self._conn: RelayConnection | None = None
        self._connected = asyncio.Event()
        self._runs: dict[bytes, tuple[ServerActivation, float]] = {}
        self._attempts: dict[bytes, tuple[bytes, int]] = {}
        """Per run session: the ticket it took an attempt from, and the attempts left then."""
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.activations = 0
        """Devices activated since start (for status and benchmarks)."""
        self._lock: int | None = None

    # --- creation -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        config: ServerConfig,
        *,
        passphrase: str | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> EnterpriseServer:
        """Open the server in ``config.data``, creating the organisation on the first run.

        Raises:
            ConfigError: a missing relay URL, wrong passphrase or key file.
            StorageError: the database or key file cannot be used.
        """
        directory = config.server_dir
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = _lock_data_directory(directory)
        try:
            server = cls._open_locked(config, passphrase=passphrase, clock=clock)
        except BaseException:
            os.close(lock)
            raise
        server._lock = lock
        return server

    @classmethod
    def _open_locked(
        cls, config: ServerConfig, *, passphrase: str | None, clock: Callable[[], int]
    ) -> EnterpriseServer:
        sealed = config.server_dir / "keys.sealed"
        if not sealed.exists():
            if not config.relay:
                raise ConfigError(
                    "first run: give the relay URL with --relay (e.g. ws://127.0.0.1:8443)"
                )
            store = ServerStore.open(config.database_url)
            if store.setting("organisation") is not None:
                store.close()
                raise ConfigError(
                    f"the database belongs to an organisation whose keys are not in {sealed}: "
                    "restore that file (and its key file or passphrase) from your backup"
                )
            keys = _new_keys(clock() // 1000)
            try:
                if config.passphrase:
                    if not passphrase:
                        raise ConfigError("give the new passphrase (SEALWIRE_SERVER_PASSPHRASE)")
                    save_keys(sealed, keys, passphrase=passphrase)
                else:
                    if not config.key_file_path.exists():
                        create_key_file(config.key_file_path)
                    save_keys(sealed, keys, key_file=config.key_file_path)
            except BaseException:
                store.close()
                raise
            store.put_setting("organisation", address_of(keys.root.public_key))
            store.put_setting("organisation_name", (config.organisation or "Sealwire").encode())
            log.info("organisation created", extra={"organisation": _short(keys)})
        else:
            keys = load_keys(
                sealed,
                key_file=config.key_file_path if not passphrase else None,
                passphrase=passphrase or None,
            )
            keys = _renew_server_certificate(sealed, keys, config, passphrase, clock() // 1000)
            store = ServerStore.open(config.database_url)
            organisation = store.setting("organisation")
            if organisation is None:
                store.put_setting("organisation", address_of(keys.root.public_key))
            elif organisation != address_of(keys.root.public_key):
                store.close()
                raise ConfigError("the database belongs to another organisation")
        return cls(config, keys, store, clock=clock)

    # --- running --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the relay link (in the background: it retries until the relay answers)."""
        self._tasks.append(asyncio.create_task(self._relay_link(), name="relay-link"))

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the relay link is up.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        await asyncio.wait_for(self._connected.wait(), timeout)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def stop(self) -> None:
        """Close the relay link and the database."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._conn is not None:
            await self._conn.close()
        self._runs.clear()
        for session in list(self._attempts):  # abandoned runs: their attempts are spent
            with contextlib.suppress(SealwireError):
                self._end_run(session)
        self.store.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    async def _relay_link(self) -> None:
        delay = 0.25
        while not self._stopping:
            try:
                conn = await self.connector.open(
                    self.relay_url,
                    identity=self._identity,
                    chain=self._chain,
                    root=self._root_public,
                )
            except SessionEnded as exc:
                log.warning("relay refused the server", extra={"code": exc.code})
            except TransportError as exc:
                log.warning("relay unreachable", extra={"reason": str(exc)})
            else:
                delay = 0.25
                self._conn = conn
                self._connected.set()
                log.info("connected to the relay", extra={"relay": self.relay_url})
                try:
                    await self._serve(conn)
                finally:
                    self._connected.clear()
                    self._conn = None
                    await conn.close()
                if self._stopping:
                    return
                why = conn.ended.result() if conn.ended.done() else None
                log.warning("relay link lost", extra={"code": why.code if why else "?"})
            await asyncio.sleep(delay * (0.5 + _random.random()))
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _serve(self, conn: RelayConnection) -> None:
        await self.send_revocations()  # any the relay has not confirmed (e.g. made while away)
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

    # --- envelopes to the server ------------------------------------------------------------

    async def _deliveries(self, conn: RelayConnection) -> None:
        while True:
            delivered = await conn.deliveries.get()
            try:
                await self._handle_envelope(conn, delivered)
            except SessionEnded:
                raise
            except SealwireError as exc:
                # Never lose the link over one envelope; it is acknowledged and dropped.
                log.warning("envelope not handled", extra={"reason": str(exc)})
            except Exception:  # a bug must not cost everyone the link either
                log.exception("envelope handling failed")
            conn.ack([delivered.delivery_id])

    def _open(self, data: bytes) -> OpenedEnvelope:
        now = self._clock()
        opened = open_envelope(
            data,
            recipient=self.address,
            prekeys=lambda pid: self._prekey if pid == _SERVER_PREKEY_ID else None,
            verifier=self._verifier,
            now_ms=now,
        )
        if not self.store.first_seen(
            opened.message_id, opened.sent_at, horizon=now - DEFAULT_LIFETIME_MS
        ):
            raise InvalidEnvelope
        return opened

    async def _handle_envelope(self, conn: RelayConnection, delivered: EnvelopeDelivered) -> None:
        try:
            opened = self._open(delivered.envelope)
        except InvalidEnvelope:
            log.info("dropped an envelope that does not open")
            return
        sender = opened.sender.body
        if sender.role is not Role.DEVICE:
            return
        device = self.store.device(sender.subject)
        if device is not None and device.state == "pending":
            self.store.confirm_device(device.address)
            device = self.store.device(sender.subject)
            if device is not None:  # listed from now on: caches holding its person go stale
                self._spawn(self.directory_changed([device.username]))
        if device is not None and opened.payload_type in _MANAGEMENT_TYPES:
            await self._handle_management(conn, device, opened)
            return
        if device is None or device.state != "active":
            log.info("envelope from an unknown or disabled device", extra=_dev(sender.subject))
            return
        if opened.payload_type is not PayloadType.DIRECTORY:
            return
        try:
            message = decode_directory_message(opened.body)
        except DecodeError as exc:
            log.info("malformed directory message", extra={"reason": exc.reason})
            await self._refuse(conn, device, opened.body, ServerRefusalCode.MALFORMED, exc.reason)
            return
        answer: bytes | None = None
        if isinstance(message, DirectoryQuery):
            answer = self._answer_query(device, message)
        elif isinstance(message, PublishPrekeys):
            answer = self._publish_prekeys(device, message)
        elif isinstance(message, RenewCertificate):
            answer = self._renew(device, message)
        if answer is not None:
            await conn.send(self._seal_to(device, answer))

    async def _refuse(
        self,
        conn: RelayConnection,
        device: DeviceRecord,
        body: bytes,
        code: ServerRefusalCode,
        reason: str,
    ) -> None:
        """Answer a request we cannot carry out with a :class:`ServerRefusal`, so the device
        is told at once rather than waiting in vain (when its request id can be read)."""
        request_id = _request_id_of(body)
        if request_id is None:
            return
        refusal = ServerRefusal(request_id=request_id, code=code, reason=reason[:200])
        await conn.send(self._seal_to(device, encode_directory_message(refusal)))

    # --- device management ------------------------------------------------------------------

    async def _handle_management(
        self, conn: RelayConnection, device: DeviceRecord, opened: OpenedEnvelope
    ) -> None:
        """Reports, command results and remote-secret requests. Devices that were wiped or
        revoked are still answered here: that is how they learn they must erase themselves."""
        try:
            message = decode_management_message(opened.payload_type, opened.body)
        except DecodeError as exc:
            log.info("malformed management message", extra={"reason": exc.reason})
            if device.state in ("pending", "active"):
                await self._refuse(
                    conn, device, opened.body, ServerRefusalCode.MALFORMED, exc.reason
                )
            return
        now = self._clock()
        if isinstance(message, FetchRemoteSecret):
            await conn.send(self._secret_envelope(device, message, now))
        elif isinstance(message, DeviceReport):
            await conn.send(self._seal_to(device, self._report_answer(device, message, now)))
        elif isinstance(message, CommandResult) and self._command_result(device, message, now):
            await self.send_revocations()

    def _secret_envelope(self, device: DeviceRecord, message: FetchRemoteSecret, now: int) -> bytes:
        answer = self._remote_secret_answer(device, message, now)
        return self._seal(
            device.address, message.reply_prekey_id, XWingPublicKey(message.reply_key), answer
        )

    def _unlock(self, request: UnlockRequest) -> bytes | None:
        """A locked device's request for its remote secret, through the activation channel;
        the encoded :class:`UnlockAnswer`, or ``None`` (dropped) if it does not check out."""
        try:
            opened = self._open(request.envelope)
            message = decode_management_message(opened.payload_type, opened.body)
        except (InvalidEnvelope, DecodeError):
            log.info("dropped an unlock request that does not open")
            return None
        sender = opened.sender.body
        device = self.store.device(sender.subject) if sender.role is Role.DEVICE else None
        if device is not None and isinstance(message, CommandResult):
            # A device cut off by the relay (deprovisioned right after its wipe was pushed)
            # acknowledges through this channel before it erases itself. Nothing is answered.
            self._command_result(device, message, self._clock())
            return None
        if device is None or not isinstance(message, FetchRemoteSecret):
            return None
        try:
            envelope = self._secret_envelope(device, message, self._clock())
        except SealwireError as exc:  # e.g. a reply key that is not a valid X-Wing key
            log.info("dropped an unlock request", extra={"reason": str(exc)})
            return None
        return encode_message(UnlockAnswer(envelope=envelope))

    def _remote_secret_answer(
        self, device: DeviceRecord, message: FetchRemoteSecret, now: int
    ) -> Struct:
        with self.store.db.transaction() as conn:
            row = self.store.managed_device(conn, device.address)
            self.store.seen_device(conn, device.address, now)
            if device.state not in ("pending", "active"):
                log.info(
                    "a wiped or revoked device asked for its secret", extra=_dev(device.address)
                )
                self.store.wipe_told(conn, device.address, now)
                return RemoteSecretAnswer(request_id=message.request_id, status=SecretStatus.WIPE)
            if row is None or not row.remote_secret:
                # Lost by the server (a restore, a repair): not a reason to erase the device.
                log.error("no remote secret for an active device", extra=_dev(device.address))
                return RemoteSecretAnswer(
                    request_id=message.request_id, status=SecretStatus.UNAVAILABLE
                )
            secret = open_at_rest(
                self.keys.ticket_key,
                bytes(row.remote_secret),
                purpose=REMOTE_SECRET_PURPOSE,
                context=device.address,
            )
            user_id = self.store.user_id(conn, device.username)
            policy = self._signed_policy(conn, user_id)
        return RemoteSecretAnswer(
            request_id=message.request_id,
            status=SecretStatus.GRANTED,
            secret=secret,
            policy=policy,
        )

    def _report_answer(self, device: DeviceRecord, report: DeviceReport, now: int) -> Struct:
        with self.store.db.transaction() as conn:
            self.store.seen_device(conn, device.address, now)
            self.store.report_compliance(
                conn,
                device.address,
                report.policy_name,
                report.policy_version,
                issue_names(report.issues),
            )
            policy = None
            if device.state in ("pending", "active"):
                user_id = self.store.user_id(conn, device.username)
                rules = effective_policy(self.store, conn, user_id)
                if (rules.name, rules.version) != (report.policy_name, report.policy_version):
                    policy = self._signed_policy(conn, user_id)
            commands = [
                SignedCommand.decode(
                    open_at_rest(
                        self.keys.ticket_key,
                        bytes(row.signed),
                        purpose=COMMAND_PURPOSE,
                        context=bytes(row.command_id),
                    ),
                    max_size=4096,
                )
                for row in self.store.command_rows(
                    conn, address=device.address, states=("queued",), limit=16
                )
            ]
        return ManagementAnswer(
            request_id=report.request_id, policy=policy, commands=tuple(commands)
        )

    def _command_result(self, device: DeviceRecord, result: CommandResult, now: int) -> bool:
        """Record a result; ``True`` when a wipe was carried out (the relay may now refuse the
        device for good)."""
        state = "done" if result.status is CommandStatus.DONE else "failed"
        with self.store.db.transaction() as conn:
            row = self.store.complete_command(
                conn, result.command_id, device.address, state, result.detail, now
            )
            if row is None:
                return False  # repeated, or not a command of this device
            self.audit.append(
                f"device:{short_address(device.address)}",
                "command.result",
                result.command_id.hex(),
                {"kind": row.kind, "state": state, "detail": result.detail},
                conn=conn,
            )
            wiped = row.kind == "wipe" and state == "done"
            if wiped:
                self.store.add_revocations(conn, [device.address], now)
        log.info("command result", extra={"kind": row.kind, "state": state, **_dev(device.address)})
        return wiped

    def _signed_policy(self, conn: Any, user_id: int) -> SignedPolicy:
        rules = effective_policy(self.store, conn, user_id)
        return SignedPolicy.sign(
            rules.settings.policy(rules.name, max(1, rules.version), self._clock() // 1000),
            self._identity,
        )

    def _seal_secret(self, address: bytes, secret: bytes) -> bytes:
        return seal_at_rest(
            self.keys.ticket_key,
            secret,
            purpose=REMOTE_SECRET_PURPOSE,
            context=address,
            random=self._random,
        )

    async def push_command(self, signed: SignedCommand) -> None:
        """Send a command to its device now if the relay link is up (the relay queues it for
        an offline device; the device also gets every unacknowledged command when it next
        reports, so nothing depends on this push)."""
        device = self.store.device(signed.command.device)
        if device is not None:
            await self._push(device, signed)

    async def push_policies(self) -> None:
        """Send each active device whose last reported policy is not its person's current
        one the policy it should apply."""
        if not self.connected:
            return
        pushes: list[tuple[bytes, SignedPolicy]] = []
        with self.store.db.transaction() as conn:
            for row in self.store.all_devices(conn):
                if row.state != "active":
                    continue
                user_id = self.store.user_id(conn, row.username)
                rules = effective_policy(self.store, conn, user_id)
                if (rules.name, rules.version) != (row.policy_name, row.policy_version):
                    pushes.append((bytes(row.address), self._signed_policy(conn, user_id)))
        for address, policy in pushes:
            device = self.store.device(address)
            if device is not None:
                await self._push(device, policy)

    async def _push(self, device: DeviceRecord, message: bytes | Struct) -> None:
        """Seal a directory message (encoded) or a management message to a device and hand
        it to the relay, if the link is up (best effort: every push has a fallback)."""
        conn = self._conn
        if conn is None or conn.closed or not device.prekeys:
            return
        try:
            await conn.send(self._seal_to(device, message))
        except SealwireError as exc:
            log.warning("push not sent", extra={"reason": str(exc), **_dev(device.address)})

    async def directory_changed(self, usernames: list[str]) -> None:
        """Tell every device that may hold one of these people's entries in its directory
        cache to drop it (deprovisioning, a device listed or ended): peers learn it at once,
        not when their caches expire. Devices offline now get it from the relay's queue."""
        if not usernames:
            return
        held = self.store.holders(usernames, now=self._clock() // 1000)
        for address, names in held.items():
            device = self.store.device(address)
            if device is None or device.state != "active":
                continue
            changed = DirectoryChanged(users=tuple(sorted(names)))
            await self._push(device, encode_directory_message(changed))

    def _spawn(self, coroutine: Any) -> None:
        """Run ``coroutine`` in the background until :meth:`stop`; a failure is logged."""
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def send_revocations(self) -> None:
        """Hand the relay every revocation it has not confirmed yet (on each connection and
        after each deprovisioning or wipe)."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        pending = self.store.pending_revocations()
        if not pending:
            return
        try:
            await conn.revoke(pending)
        except SealwireError as exc:
            log.warning("revocations not confirmed yet", extra={"reason": str(exc)})
            return
        self.store.revocations_done(pending)
        log.info("the relay refuses revoked devices", extra={"count": len(pending)})

    def revoke_soon(self, delay_s: float) -> None:
        """Send the pending revocations after ``delay_s`` seconds (they are in the database:
        a restart sends them at once)."""

        async def later() -> None:
            await asyncio.sleep(delay_s)
            await self.send_revocations()

        self._spawn(later())

    # --- helpers for the administration layer -------------------------------------------------

    def now_ms(self) -> int:
        return self._clock()

    def random(self, n: int) -> bytes:
        return self._random(n)

    def sign_command(self, command: Command) -> SignedCommand:
        return SignedCommand.sign(command, self._identity)

    def check_ticket_lifetime(self, lifetime_s: int | None) -> None:
        """Raises: ConfigError for a lifetime outside one minute to 30 days."""
        if lifetime_s is not None and not 60 <= lifetime_s <= MAX_TICKET_LIFETIME_S:
            raise ConfigError("an activation password lives between one minute and 30 days")

    def _answer_query(self, asker: DeviceRecord, query: DirectoryQuery) -> bytes:
        now_s = self._clock() // 1000
        with self.store.db.transaction() as conn:
            # The asking device's policy says how long it may keep the answer (DESIGN §8).
            cache_s = effective_policy(
                self.store, conn, self.store.user_id(conn, asker.username)
            ).settings.directory_cache_s
        names = list(dict.fromkeys(query.users))
        found = {record.username: record for record in self.store.users(names)}
        devices = self.store.devices_of(
            [n for n, r in found.items() if r.state == "active"], now=now_s
        )
        by_user: dict[str, list[DeviceEntry]] = {}
        for device in devices:
            if device.prekeys:
                by_user.setdefault(device.username, []).append(
                    DeviceEntry(chain=(device.certificate, *self._chain), prekey=device.prekeys[0])
                )
        entries = tuple(
            UserEntry(
                user=name,
                display_name=found[name].display_name,
                devices=tuple(by_user.get(name, ())),
            )
            for name in names
            if name in found and found[name].state == "active"
        )
        answer = DirectoryAnswer(
            request_id=query.request_id,
            organisation=self.organisation,
            issued_at=now_s,
            expires_at=now_s + cache_s,
            entries=entries,
            unknown=tuple(n for n in names if n not in {e.user for e in entries}),
        )
        # Devices cache only entries with a device; remember who holds which, to tell them.
        held = [entry.user for entry in entries if entry.devices]
        self.store.hold_entries(asker.address, held, now_s + cache_s)
        return encode_directory_message(SignedDirectoryAnswer.sign(answer, self._identity))

    def _publish_prekeys(self, device: DeviceRecord, message: PublishPrekeys) -> bytes:
        now_s = self._clock() // 1000
        checked: list[tuple[int, bytes, int]] = []
        for encoded in message.prekeys:
            try:
                signed = verify_prekey(encoded, device.identity_key, now=now_s)
            except CryptoError:
                log.info("refused a prekey that does not verify", extra=_dev(device.address))
                return _refusal(message.request_id, "a prekey does not verify")
            checked.append((signed.prekey.prekey_id, encoded, signed.prekey.not_after))
        if not checked:
            return _refusal(message.request_id, "no prekey to publish")
        self.store.publish_prekeys(device.address, checked)
        return encode_directory_message(PrekeysPublished(request_id=message.request_id))

    def _renew(self, device: DeviceRecord, message: RenewCertificate) -> bytes:
        certificate = self._issue_device_certificate(device.identity_key)
        return encode_directory_message(
            CertificateRenewed(
                request_id=message.request_id, chain=(certificate.encode(), *self._chain)
            )
        )

    def _issue_device_certificate(self, identity_key: bytes) -> Certificate:
        now_s = self._clock() // 1000
        server_not_after = self.keys.certificate.body.not_after
        return issue_certificate(
            self._identity,
            organisation=self.organisation,
            role=Role.DEVICE,
            identity_key=identity_key,
            serial=int.from_bytes(self._random(8), "big") >> 1,
            not_before=now_s - 300,  # tolerate devices whose clocks run a little behind
            not_after=min(now_s + self.config.device_certificate_s, server_not_after),
        )

    def _seal_to(self, device: DeviceRecord, message: bytes | Struct) -> bytes:
        """Seal a directory message (encoded) or a management message to a device."""
        if not device.prekeys:
            raise TransportError("the device has no valid prekey to seal to")
        signed = verify_prekey(device.prekeys[0], device.identity_key, now=self._clock() // 1000)
        return self._seal(
            device.address,
            signed.prekey.prekey_id,
            XWingPublicKey(signed.prekey.public_key),
            message,
        )

    def _seal(
        self, address: bytes, prekey_id: int, prekey: XWingPublicKey, message: bytes | Struct
    ) -> bytes:
        if isinstance(message, bytes):
            payload_type, body = PayloadType.DIRECTORY, message
        else:
            payload_type = payload_type_of(message)
            body = encode_management_message(message)
        return seal(
            sender=self._identity,
            sender_chain=self._chain,
            recipient=address,
            prekey_id=prekey_id,
            prekey=prekey,
            payload_type=payload_type,
            body=body,
            now_ms=self._clock(),
            random=self._random,
        )

    # --- activation -----------------------------------------------------------------------

    async def _activations(self, conn: RelayConnection) -> None:
        while True:
            received = await conn.activations.get()
            try:
                unlock = decode_message(received.payload)
            except DecodeError:
                unlock = None
            if isinstance(unlock, UnlockRequest):
                try:
                    answer = self._unlock(unlock)
                except SealwireError as exc:  # never lose the link over one request
                    log.warning("unlock request not handled", extra={"reason": str(exc)})
                    continue
                except Exception:
                    log.exception("unlock request handling failed")
                    continue
                if answer is not None:
                    await conn.send_activation(received.session, answer)
                continue
            for data in self._activation_step(received):
                await conn.send_activation(received.session, data)

    def _activation_step(self, received: ActivationReceived) -> list[bytes]:
        """Feed one activation message to its run; return what to send back."""
        now = time.monotonic()
        for session, (_, started) in list(self._runs.items()):
            if now - started > _RUN_LIFETIME_S:
                del self._runs[session]
                self._end_run(session)
        entry = self._runs.get(received.session)
        if entry is None:
            if len(self._runs) >= _MAX_RUNS:
                return []  # the relay rate-limits activations; this bounds memory regardless
            run = ServerActivation(
                self.address,
                password_scalars=functools.partial(self._password_scalar, received.session),
                random=self._random,
            )
            self._runs[received.session] = (run, now)
        else:
            run = entry[0]
        for event in run.receive(received.payload):
            if isinstance(event, PasswordRejected):
                # Counted when the run took its attempt (before the challenge went out).
                left = self._attempts.get(received.session, (b"", 0))[1]
                log.info("wrong activation password", extra={"attempts_left": left})
            elif isinstance(event, DeviceKeysReceived):
                self._answer_activation(run, event)
        out = run.data_to_send()
        if run.finished:
            self._runs.pop(received.session, None)
            self._end_run(received.session)
        return out

    def _password_scalar(self, session: bytes, ticket_id: bytes) -> bytes | None:
        # The attempt is taken durably before the scalar is used, so runs started at once
        # (here or on other instances) check at most the ticket's attempts between them.
        record = self.store.reserve_attempt(ticket_id, now=self._clock())
        if record is None:
            return None
        self._attempts[session] = (ticket_id, record.attempts_left)
        try:
            return open_at_rest(
                self.keys.ticket_key,
                record.sealed_scalar,
                purpose=_TICKET_PURPOSE,
                context=ticket_id,
            )
        except CryptoError:
            log.error("an activation ticket does not open under this server's ticket key")
            return None

    def _end_run(self, session: bytes) -> None:
        """A run ended (done, failed or abandoned): burn its ticket if that run held the last
        attempt and no other run here still holds one (a successful run used the ticket)."""
        held = self._attempts.pop(session, None)
        if held is None:
            return
        ticket_id = held[0]
        if all(other != ticket_id for other, _ in self._attempts.values()):
            self.store.burn_if_spent(ticket_id)

    def _answer_activation(self, run: ServerActivation, event: DeviceKeysReceived) -> None:
        keys = event.device_keys
        now_s = self._clock() // 1000
        address = address_of(keys.identity_key)
        checked: list[tuple[int, bytes, int]] = []
        try:
            for encoded in keys.signed_prekeys:
                signed = verify_prekey(encoded, keys.identity_key, now=now_s)
                checked.append((signed.prekey.prekey_id, encoded, signed.prekey.not_after))
        except CryptoError:
            checked = []
        record = self.store.ticket(event.ticket_id)
        if not checked or record is None:
            run.refuse(RefusalCode.NOT_PERMITTED)
            return
        certificate = self._issue_device_certificate(keys.identity_key)
        remote_secret = self._random(32)
        if not self.store.activate_device(
            ticket_id=event.ticket_id,
            address=address,
            identity_key=keys.identity_key,
            certificate=certificate.encode(),
            serial=certificate.body.serial,
            signed_prekeys=checked,
            now=self._clock(),
            max_devices=self.config.max_devices_per_user,
            remote_secret=self._seal_secret(address, remote_secret),
        ):
            run.refuse(RefusalCode.NOT_PERMITTED)
            return
        user = next(u for u in self.store.users() if u.id == record.user_id)
        with self.store.db.transaction() as conn:
            policy = self._signed_policy(conn, user.id)
            self.audit.append(
                "system",
                "device.activate",
                user.username,
                {"device": short_address(address)},
                conn=conn,
            )
        directory = ActivationDirectory(
            organisation_name=self.organisation_name,
            user=user.username,
            display_name=user.display_name,
            server_prekey=self.keys.signed_prekey,
            relay=self.relay_url,
        )
        run.send_answer(
            ServerAnswer(
                certificate_chain=(certificate.encode(), *self._chain),
                organisation_root_key=self._root_public,
                policy=policy.encode(),
                directory=directory.encode(),
                remote_secret=remote_secret,
            )
        )
        self.activations += 1
        log.info("device activated", extra={"user": user.username, **_dev(address)})

    # --- administration (called by the admin endpoint) --------------------------------------

    def add_user(self, username: str, display_name: str) -> int:
        """Add a person. Raises: UserExists."""
        return self.store.add_user(username, display_name, now=self._clock())

    async def issue_ticket(self, username: str, lifetime_s: int | None = None) -> IssuedTicket:
        """Make a new activation ticket and one-time password for ``username`` (any open
        ticket of theirs is withdrawn).

        Raises:
            UnknownUser: no such person.
            ConfigError: a lifetime beyond 30 days.
        """
        lifetime = self.config.ticket_lifetime_s if lifetime_s is None else lifetime_s
        self.check_ticket_lifetime(lifetime)
        user = self.store.user(username)
        if user.state != "active":
            raise UnknownUser(f"{username!r} is disabled")
        ticket = ActivationTicket(
            ticket_id=self._random(16),
            server=self.address,
            relay=self.relay_url,
            params=Argon2Params.default(self._random),
        )
        password = new_password()
        # Argon2id (64 MiB): off the event loop so the relay link keeps going.
        scalar = await in_thread(ticket.password_scalar, normalise_password(password))
        now = self._clock()
        expires_at = now + lifetime * 1000
        self.store.add_ticket(
            ticket_id=ticket.ticket_id,
            user_id=user.id,
            params=ticket.params.encode(),
            sealed_scalar=seal_at_rest(
                self.keys.ticket_key,
                scalar,
                purpose=_TICKET_PURPOSE,
                context=ticket.ticket_id,
                random=self._random,
            ),
            now=now,
            expires_at=expires_at,
            attempts=self.config.ticket_attempts,
        )
        return IssuedTicket(username, ticket_to_text(ticket), password, expires_at // 1000)

    def status(self) -> dict[str, object]:
        users = self.store.users()
        return {
            "organisation": self.organisation.hex(),
            "organisation_name": self.organisation_name,
            "server_address": short_address(self.address),
            "relay": self.relay_url,
            "relay_connected": self.connected,
            "users": len(users),
            "devices": sum(u.devices for u in users),
            "activations_since_start": self.activations,
            "database": self.store.db.dialect,
        }


_MANAGEMENT_TYPES = (PayloadType.POLICY, PayloadType.COMMAND, PayloadType.CONTROL)


def _lock_data_directory(directory: Path) -> int:
    """Hold ``server.lock`` for the life of the process: one server per data directory."""
    fd = os.open(directory / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"another enterprise server is running with the data directory {directory.parent}"
        ) from None
    return fd


def _new_keys(now_s: int) -> ServerKeys:
    root = SigningKey.generate(os.urandom)
    server = SigningKey.generate(os.urandom)
    organisation = address_of(root.public_key)
    certificate = issue_certificate(
        root,
        organisation=organisation,
        role=Role.SERVER,
        identity_key=server.public_key,
        serial=int.from_bytes(os.urandom(8), "big") >> 1,
        not_before=now_s - 300,
        not_after=now_s + _SERVER_CERT_S,
    )
    prekey = XWingPrivateKey.generate(os.urandom)
    signed = sign_prekey(
        server,
        prekey_id=_SERVER_PREKEY_ID,
        public_key=prekey.public_key,
        not_after=now_s + 10 * _SERVER_CERT_S,
    )
    return ServerKeys(
        root_seed=root.seed(),
        server_seed=server.seed(),
        server_certificate=certificate.encode(),
        prekey_seed=prekey.seed(),
        prekey_id=_SERVER_PREKEY_ID,
        signed_prekey=signed.encode(),
        ticket_key=os.urandom(32),
    )


def _renew_server_certificate(
    path: Path, keys: ServerKeys, config: ServerConfig, passphrase: str | None, now_s: int
) -> ServerKeys:
    """Renew the server's root-issued certificate when less than 60 days are left."""
    if keys.certificate.body.not_after - now_s > 60 * 86400:
        return keys
    certificate = issue_certificate(
        keys.root,
        organisation=address_of(keys.root.public_key),
        role=Role.SERVER,
        identity_key=keys.identity.public_key,
        serial=int.from_bytes(os.urandom(8), "big") >> 1,
        not_before=now_s - 300,
        not_after=now_s + _SERVER_CERT_S,
    )
    renewed = ServerKeys(
        root_seed=keys.root_seed,
        server_seed=keys.server_seed,
        server_certificate=certificate.encode(),
        prekey_seed=keys.prekey_seed,
        prekey_id=keys.prekey_id,
        signed_prekey=keys.signed_prekey,
        ticket_key=keys.ticket_key,
    )
    if passphrase:
        save_keys(path, renewed, passphrase=passphrase)
    else:
        save_keys(path, renewed, key_file=config.key_file_path)
    log.info("server certificate renewed")
    return renewed


def _short(keys: ServerKeys) -> str:
    return short_address(address_of(keys.root.public_key))


def _refusal(request_id: bytes, reason: str) -> bytes:
    return encode_directory_message(
        ServerRefusal(request_id=request_id, code=ServerRefusalCode.INVALID, reason=reason)
    )


def _request_id_of(body: bytes) -> bytes | None:
    """The ``request_id`` (field 0) of a ``[code, {0: id, ...}]`` request that did not decode
    as a whole, if that much of it is well-formed."""
    try:
        value = decode_value(body, max_size=len(body))
    except DecodeError:
        return None
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], dict):
        request_id = value[1].get(0)
        if type(request_id) is bytes and len(request_id) == REQUEST_ID_SIZE:
            return request_id
    return None


def _dev(address: bytes) -> dict[str, str]:
    return {"device": short_address(address)}
