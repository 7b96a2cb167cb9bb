"""Management of a device by its organisation: the policy, compliance reports, and commands
(lock, wipe, renew keys), all signed by our server (DESIGN §8).

A device reports which policy it applies and whether it complies; the answer carries a newer
policy and the commands waiting for it. A policy or command may also be pushed at any time.
A command is carried out once (a command done before is only acknowledged) and its result
reported; a wipe is acknowledged first, through the activation channel if the relay has cut
the device off, since afterwards nothing can be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sealwire.errors import (
    ConfigError,
    CryptoError,
    DeviceLocked,
    DeviceWiped,
    SealwireError,
)
from sealwire.protocol.activation import UnlockRequest, encode_message
from sealwire.protocol.directory import REQUEST_ID_SIZE, Policy, SignedPolicy
from sealwire.protocol.management import (
    Command,
    CommandKind,
    CommandResult,
    CommandStatus,
    ComplianceIssue,
    DeviceReport,
    ManagementAnswer,
    SignedCommand,
    check_passcode,
    encode_management_message,
    payload_type_of,
)

from .keys import Keys
from .link import ActivationChannel, AskServer
from .profile import Profile
from .store import DeviceStore
from .vault import Vault

__all__ = ["COMMAND_RESULT_WAIT_S", "Management"]

log = logging.getLogger(__name__)

COMMAND_RESULT_WAIT_S = 3.0
"""How long a wipe or lock waits for its result to reach the relay before it goes ahead."""


class Management:
    """Policy, compliance and commands.

    Args:
        store: remembers the commands carried out.
        profile: our identity, server and the policy in force.
        vault: locks, erases, changes the passcode.
        keys: renews keys on command.
        ask: asks our server a question (:meth:`~sealwire.device.link.Link.ask`).
        send: hands one envelope to the relay (:meth:`~sealwire.device.link.Link.send_envelope`).
        channel: the relay's activation channel (a wipe acknowledged after a cut-off).
        end: leaves the connection on our own, with the reason.
        ended: whether the connection was left on our own.
        retention: applies a policy's retention to the messages.
        clock: Unix milliseconds.
        random: source of random bytes.
    """

    def __init__(
        self,
        store: DeviceStore,
        profile: Profile,
        vault: Vault,
        keys: Keys,
        *,
        ask: AskServer,
        send: Callable[[bytes], Awaitable[bool]],
        channel: ActivationChannel,
        end: Callable[[SealwireError], None],
        ended: Callable[[], bool],
        retention: Callable[[Policy], None],
        clock: Callable[[], int],
        random: Callable[[int], bytes],
    ) -> None:
        self._store = store
        self._profile = profile
        self._vault = vault
        self._keys = keys
        self._ask = ask
        self._send = send
        self._channel = channel
        self._end = end
        self._ended = ended
        self._retention = retention
        self._clock = clock
        self._random = random

    # --- the policy ---------------------------------------------------------------------------

    def compliance(self) -> tuple[ComplianceIssue, ...]:
        """What keeps this device from complying with its policy (empty: it complies)."""
        facts = self._vault.passcode_facts()
        if facts is None:
            return (ComplianceIssue.PASSCODE_NOT_CHECKED,)
        policy = self._profile.policy
        issues = []
        if facts.length < policy.passcode_min_length:
            issues.append(ComplianceIssue.PASSCODE_TOO_SHORT)
        if facts.classes < policy.passcode_classes:
            issues.append(ComplianceIssue.PASSCODE_TOO_SIMPLE)
        return tuple(issues)

    def apply_policy(self, policy: Policy) -> bool:
        """Apply a policy the server signed.

        Returns:
            ``False`` if it is older than the one we have (and was ignored).
        """
        if policy.issued_at < self._profile.policy.issued_at:
            return False
        self._profile.replace_policy(policy)
        self._vault.policy_changed(policy)
        if not self._store.locked:
            self._retention(policy)
        log.info("policy applied", extra={"policy": policy.name, "version": policy.version})
        return True

    def check_new_passcode(self, new_passcode: str) -> None:
        """Refuse a passcode that does not meet the policy.

        Raises:
            ConfigError: naming what the policy asks for.
        """
        policy = self._profile.policy
        if check_passcode(new_passcode, policy):
            raise ConfigError(
                f"your organisation's policy asks for at least "
                f"{policy.passcode_min_length} characters mixing "
                f"{policy.passcode_classes} of lower-case, upper-case, digits, other"
            )

    async def report(self) -> None:
        """Tell the server which policy we apply and whether we comply; apply the policy and
        carry out the commands its answer holds (then report again if the policy changed).

        Raises:
            TransportError: the server could not be asked.
            RemoteProtocolError: the server refused the report.
        """
        for _ in range(2):
            policy = self._profile.policy
            report = DeviceReport(
                request_id=self._random(REQUEST_ID_SIZE),
                policy_name=policy.name,
                policy_version=policy.version,
                policy_issued_at=policy.issued_at,
                issues=self.compliance(),
            )
            answer = await self._ask(report, ManagementAnswer)
            if answer.commands:
                await self.run_commands(list(answer.commands))
            if answer.policy is None or self._ended():
                return
            try:
                if not self.apply_policy(answer.policy.verify(self._profile.server_key)):
                    return
            except CryptoError:
                log.warning("a policy not signed by our server was ignored")
                return

    async def policy_pushed(self, signed: SignedPolicy) -> None:
        """A policy the server pushed: apply it if genuine and newer, then report."""
        try:
            policy = signed.verify(self._profile.server_key)
        except CryptoError:
            log.warning("a policy not signed by our server was ignored")
            return
        if self.apply_policy(policy):
            try:
                await self.report()
            except SealwireError as exc:
                log.info("policy applied; report postponed", extra={"reason": str(exc)})

    # --- commands -------------------------------------------------------------------------

    async def run_commands(self, commands: list[SignedCommand]) -> None:
        """Carry out commands signed by our server for this device, in order (others are
        ignored); a failure is reported as the command's result."""
        for signed in commands:
            if self._ended():
                return
            try:
                command = signed.verify(self._profile.server_key, self._profile.address)
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
            await self._wipe(command.command_id)
            return
        if self._store.command_done(command.command_id):
            await self._command_result(command.command_id, CommandStatus.DONE, "done before")
            return
        if command.kind is CommandKind.LOCK:
            if command.new_passcode is not None:
                await self._vault.set_passcode(command.new_passcode)
            self._store.mark_command_done(command.command_id, self._clock())
            with contextlib.suppress(SealwireError, TimeoutError):
                await asyncio.wait_for(
                    self._command_result(command.command_id, CommandStatus.DONE, "locked"),
                    COMMAND_RESULT_WAIT_S,
                )
            self._vault.lock()
            self._end(DeviceLocked("your organisation has locked this device"))
            return
        if command.kind is CommandKind.RENEW_KEYS:
            await self._keys.rotate_prekey()
            await self._keys.renew_certificate()
            self._store.mark_command_done(command.command_id, self._clock())
            await self._command_result(command.command_id, CommandStatus.DONE, "keys renewed")

    async def _wipe(self, command_id: bytes) -> None:
        """Acknowledge a wipe (within a few seconds at most), then erase. A deprovisioned
        device is cut off by the relay right after its wipe arrives: then the result, sealed
        while the keys still exist, goes through the relay's activation channel (which still
        reaches the server), handed over before the erase and flushed after it."""
        try:
            await asyncio.wait_for(
                self._command_result(command_id, CommandStatus.DONE, "wiped"),
                COMMAND_RESULT_WAIT_S,
            )
        except (SealwireError, TimeoutError):
            pass
        else:
            self._erase_now()
            return
        result = CommandResult(command_id=command_id, status=CommandStatus.DONE, detail="wiped")
        envelope = self._profile.seal_to_server(
            payload_type_of(result), encode_management_message(result)
        )
        posted = await self._channel.post(
            encode_message(UnlockRequest(envelope=envelope)), timeout=COMMAND_RESULT_WAIT_S
        )
        self._erase_now()
        await self._channel.finish(posted)

    def _erase_now(self) -> None:
        self._vault.erase()
        self._end(DeviceWiped("your organisation has wiped this device"))

    async def _command_result(self, command_id: bytes, status: CommandStatus, detail: str) -> None:
        result = CommandResult(command_id=command_id, status=status, detail=detail[:200])
        envelope = self._profile.seal_to_server(
            payload_type_of(result), encode_management_message(result)
        )
        await self._send(envelope)
