"""Device management as devices take part in it (DESIGN §8, docs/protocol/MANAGEMENT.md):
compliance reports (answered with the policy to apply and the commands waiting), command
results (audited), remote secrets (granted to live devices, refused with "wipe" to the
others), and devices that erased themselves after wrong passcodes (audited, marked wiped).
Administrators' side of it is :mod:`.administration`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sealwire.protocol.codec import Struct
from sealwire.protocol.identity import short_address
from sealwire.protocol.management import (
    CommandResult,
    CommandStatus,
    DeviceErased,
    DeviceReport,
    FetchRemoteSecret,
    ManagementAnswer,
    RemoteSecretAnswer,
    SecretStatus,
    SignedCommand,
)
from sealwire.protocol.suite import XWingPublicKey, open_at_rest

from .audit import AuditLog
from .authority import Authority
from .policy import COMMAND_PURPOSE, REMOTE_SECRET_PURPOSE, effective_policy, issue_names
from .store import LIVE_DEVICE_STATES, CommandState, DeviceRecord, DeviceState, ServerStore

__all__ = ["Management"]

log = logging.getLogger(__name__)


class Management:
    """Answers devices' management messages.

    Args:
        store: the server's database.
        audit: the audit log (command results are entered in it).
        authority: signs policies, seals answers.
        ticket_key: the at-rest key of remote secrets and queued commands.
        send_revocations: hands the relay the revocations it has not confirmed yet.
        revoke_soon: the same, in the background after a delay (seconds).
        entry_changed: tells, in the background, the devices holding a person's directory
            entry that it changed.
        clock: Unix milliseconds.
    """

    def __init__(
        self,
        *,
        store: ServerStore,
        audit: AuditLog,
        authority: Authority,
        ticket_key: bytes,
        send_revocations: Callable[[], Awaitable[None]],
        revoke_soon: Callable[[float], None],
        entry_changed: Callable[[str], None],
        clock: Callable[[], int],
    ) -> None:
        self._store = store
        self._audit = audit
        self._authority = authority
        self._ticket_key = ticket_key
        self._send_revocations = send_revocations
        self._revoke_soon = revoke_soon
        self._entry_changed = entry_changed
        self._clock = clock

    # --- remote secrets -----------------------------------------------------------------------

    async def remote_secret(self, device: DeviceRecord, message: FetchRemoteSecret) -> bytes:
        """The answer to a remote-secret request, sealed to the request's reply key."""
        return self.remote_secret_envelope(device, message)

    def remote_secret_envelope(self, device: DeviceRecord, message: FetchRemoteSecret) -> bytes:
        """As :meth:`remote_secret` (for the activation channel)."""
        answer = self._remote_secret_answer(device, message, self._clock())
        return self._authority.seal(
            device.address, message.reply_prekey_id, XWingPublicKey(message.reply_key), answer
        )

    def _remote_secret_answer(
        self, device: DeviceRecord, message: FetchRemoteSecret, now: int
    ) -> Struct:
        store = self._store
        with store.db.transaction() as conn:
            row = store.managed_device(conn, device.address)
            store.seen_device(conn, device.address, now)
            if device.state not in LIVE_DEVICE_STATES:
                log.info(
                    "a wiped or revoked device asked for its secret", extra=_dev(device.address)
                )
                store.wipe_told(conn, device.address, now)
                return RemoteSecretAnswer(request_id=message.request_id, status=SecretStatus.WIPE)
            if row is None or not row.remote_secret:
                # Lost by the server (a restore, a repair): not a reason to erase the device.
                log.error("no remote secret for an active device", extra=_dev(device.address))
                return RemoteSecretAnswer(
                    request_id=message.request_id, status=SecretStatus.UNAVAILABLE
                )
            secret = open_at_rest(
                self._ticket_key,
                bytes(row.remote_secret),
                purpose=REMOTE_SECRET_PURPOSE,
                context=device.address,
            )
            user_id = store.user_id(conn, device.username)
            policy = self._authority.signed_policy(conn, user_id)
        return RemoteSecretAnswer(
            request_id=message.request_id,
            status=SecretStatus.GRANTED,
            secret=secret,
            policy=policy,
        )

    # --- reports ------------------------------------------------------------------------------

    async def report(self, device: DeviceRecord, report: DeviceReport) -> bytes:
        """Record a compliance report; answer with the policy to apply (if the device's is
        not current) and the commands waiting for it."""
        store = self._store
        now = self._clock()
        with store.db.transaction() as conn:
            store.seen_device(conn, device.address, now)
            store.report_compliance(
                conn,
                device.address,
                report.policy_name,
                report.policy_version,
                issue_names(report.issues),
            )
            policy = None
            if device.state in LIVE_DEVICE_STATES:
                user_id = store.user_id(conn, device.username)
                rules = effective_policy(store, conn, user_id)
                if (rules.name, rules.version) != (report.policy_name, report.policy_version):
                    policy = self._authority.signed_policy(conn, user_id)
            commands = [
                SignedCommand.decode(
                    open_at_rest(
                        self._ticket_key,
                        bytes(row.signed),
                        purpose=COMMAND_PURPOSE,
                        context=bytes(row.command_id),
                    ),
                    max_size=4096,
                )
                for row in store.command_rows(
                    conn, address=device.address, states=(CommandState.QUEUED,), limit=16
                )
            ]
        answer = ManagementAnswer(
            request_id=report.request_id, policy=policy, commands=tuple(commands)
        )
        return self._authority.seal_to(device, answer)

    # --- command results ----------------------------------------------------------------------

    async def command_result(self, device: DeviceRecord, result: CommandResult) -> None:
        """Record a result; once a wipe was carried out the relay refuses the device."""
        if self._record(device, result):
            await self._send_revocations()

    def record_result(self, device: DeviceRecord, result: CommandResult) -> None:
        """Record a result that came through the activation channel (a device cut off by
        the relay acknowledges its wipe there before it erases itself). Nothing is
        answered."""
        self._record(device, result)

    def _record(self, device: DeviceRecord, result: CommandResult) -> bool:
        """``True`` when a wipe was carried out (the relay may now refuse the device for
        good)."""
        store = self._store
        now = self._clock()
        state = CommandState.DONE if result.status is CommandStatus.DONE else CommandState.FAILED
        with store.db.transaction() as conn:
            row = store.complete_command(
                conn, result.command_id, device.address, state, result.detail, now
            )
            if row is None:
                return False  # repeated, or not a command of this device
            self._audit.append(
                f"device:{short_address(device.address)}",
                "command.result",
                result.command_id.hex(),
                {"kind": row.kind, "state": str(state), "detail": result.detail},
                conn=conn,
            )
            wiped = row.kind == "wipe" and state == CommandState.DONE
            if wiped:
                store.add_revocations(conn, [device.address], now)
        log.info(
            "command result",
            extra={"kind": row.kind, "state": str(state), **_dev(device.address)},
        )
        return wiped

    # --- devices that erased themselves -------------------------------------------------------

    async def device_erased(self, device: DeviceRecord, message: DeviceErased) -> None:
        """The device erased itself after wrong passcodes: mark it wiped (out of the
        directory, its remote secret deleted), have the relay refuse it, tell its peers."""
        if self._erased(device, message):
            await self._send_revocations()

    def record_erased(self, device: DeviceRecord, message: DeviceErased) -> None:
        """As :meth:`device_erased`, through the activation channel (revocations sent in the
        background). Nothing is answered."""
        if self._erased(device, message):
            self._revoke_soon(0.0)

    def _erased(self, device: DeviceRecord, message: DeviceErased) -> bool:
        """``True`` when the device was live and is marked wiped now (with its audit entry,
        in one transaction)."""
        if device.state not in LIVE_DEVICE_STATES:
            return False  # wiped or revoked already: nothing is directed to it any more
        store = self._store
        now = self._clock()
        with store.db.transaction() as conn:
            store.end_devices(conn, [device.address], DeviceState.WIPED)
            store.add_revocations(conn, [device.address], now)
            self._audit.append(
                f"device:{short_address(device.address)}",
                "device.erased",
                device.username,
                {
                    "device": short_address(device.address),
                    "reason": "wrong-passcodes",
                    "failed_attempts": message.failed_attempts,
                },
                conn=conn,
            )
        log.warning(
            "a device erased itself after wrong passcodes",
            extra={"failed_attempts": message.failed_attempts, **_dev(device.address)},
        )
        self._entry_changed(device.username)  # peers' caches drop the device now
        return True


def _dev(address: bytes) -> dict[str, str]:
    return {"device": short_address(address)}
