"""The device's keys at rest: unlocking, locking, the passcode, erasing (DESIGN §7).

Unlocking takes the passcode (the boot key; each wrong try counts against the policy's
limit, and the last one erases the device) and the remote secret (the data key): from the
runtime cache while the policy's offline grace lasts, else from the server through the
relay's activation channel, since a locked device cannot read its own queue. A server that
says the device was wiped, or its person deprovisioned, makes it erase itself.

Every path that erases the device goes through :meth:`Vault.erase`; every lock through
:meth:`Vault.lock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sealwire._argon2 import in_thread
from sealwire.errors import (
    DecodeError,
    DeviceLocked,
    DeviceWiped,
    InvalidEnvelope,
    SealwireError,
    StorageError,
    TransportError,
)
from sealwire.protocol.activation import UnlockAnswer, UnlockRequest, decode_message, encode_message
from sealwire.protocol.codec import Struct, wire
from sealwire.protocol.directory import REQUEST_ID_SIZE, Policy
from sealwire.protocol.envelope import PayloadType, open_envelope
from sealwire.protocol.management import (
    DeviceErased,
    FetchRemoteSecret,
    RemoteSecretAnswer,
    SecretStatus,
    decode_management_message,
    encode_management_message,
    passcode_classes,
    payload_type_of,
)
from sealwire.protocol.suite import XWingPrivateKey
from sealwire.transport import RelayConnection

from .link import ANSWER_TIMEOUT_S, ActivationChannel
from .profile import Profile
from .store import DeviceStore

__all__ = ["PasscodeFacts", "Vault", "passcode_facts"]

_REPORT_WAIT_S = 3.0
"""How long reporting an erasure may take before the wrong passcode is reported to the person."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PasscodeFacts(Struct):
    """What the policy checks of the passcode, kept under the boot key (never the passcode)."""

    length: int = wire(0, min_value=0, max_value=1024)
    classes: int = wire(1, min_value=0, max_value=4)


def passcode_facts(passcode: str) -> bytes:
    """The stored :class:`PasscodeFacts` of ``passcode``."""
    return PasscodeFacts(length=len(passcode), classes=passcode_classes(passcode)).encode()


class Vault:
    """Locks and unlocks the device's store, and erases it.

    Args:
        store: the device's store.
        profile: who we are (read once the boot key is open).
        channel: the relay's activation channel, to ask the server for the remote secret.
        clock: Unix milliseconds.
        random: source of random bytes.
        on_policy: applies a policy the server sent with the remote secret.
    """

    def __init__(
        self,
        store: DeviceStore,
        profile: Profile,
        channel: ActivationChannel,
        *,
        clock: Callable[[], int],
        random: Callable[[int], bytes],
        on_policy: Callable[[Policy], object],
    ) -> None:
        self._store = store
        self._profile = profile
        self._channel = channel
        self._clock = clock
        self._random = random
        self._on_policy = on_policy
        self._wiped = False

    @property
    def locked(self) -> bool:
        """Whether the store is locked."""
        return self._store.locked

    @property
    def wiped(self) -> bool:
        """Whether this device erased itself (in this process)."""
        return self._wiped

    async def unlock(self, passcode: str) -> None:
        """Unlock with the passcode and the remote secret.

        Raises:
            WrongPasscode: with the attempts left before the device erases itself.
            DeviceWiped: that was the last attempt, or the server says this device was wiped
                or its person deprovisioned: the device has erased itself.
            TransportError: the server could not be reached and no cached secret is left.
        """
        if self._wiped:
            raise DeviceWiped("this device was wiped: activate it again")
        store = self._store
        try:
            await in_thread(store.unlock_boot, passcode)
        except DeviceWiped:  # that was the last wrong passcode the policy allows
            self._wiped = True
            await self._report_erased()
            raise
        except StorageError:
            if self._wiped:  # erased meanwhile (a wipe command being carried out)
                raise DeviceWiped("your organisation has wiped this device") from None
            raise
        try:
            self._profile.load()
            policy = self._profile.policy
            store.set_policy_limits(
                attempt_limit=policy.max_failed_attempts, auto_lock_s=policy.auto_lock_s
            )
            secret = store.cached_remote_secret()
            if secret is not None:
                try:
                    store.unlock_data(secret)
                except StorageError:  # stale cache: ask the server
                    store.forget_remote_secret()
                    secret = None
            if secret is None:
                secret = await self._fetch_remote_secret()
                store.unlock_data(secret)
            self.record_passcode(passcode)
        except DeviceWiped:
            raise
        except BaseException as exc:
            if self._wiped:  # erased meanwhile (a wipe command being carried out)
                if isinstance(exc, Exception):
                    raise DeviceWiped("your organisation has wiped this device") from None
                raise  # a cancellation stays one; there is nothing left to lock
            self.lock()
            raise

    async def _report_erased(self) -> None:
        """Tell the server the device erased itself after too many wrong passcodes
        (``DeviceErased``, through the relay's activation channel, a few seconds at most), so
        that it marks the device wiped and peers stop sealing to it. Only possible when this
        process still holds the identity from an earlier unlock (an app that auto-locked): a
        one-shot ``sealwire device unlock`` has nothing left to sign with."""
        try:
            erased = DeviceErased(failed_attempts=self._profile.policy.max_failed_attempts)
            envelope = self._profile.seal_to_server(
                payload_type_of(erased), encode_management_message(erased)
            )
        except SealwireError:  # never unlocked in this process
            return
        posted = await self._channel.post(
            encode_message(UnlockRequest(envelope=envelope)), timeout=_REPORT_WAIT_S
        )
        await self._channel.finish(posted)

    def lock(self) -> None:
        """Forget the keys (the profile is read again on the next unlock)."""
        self._store.lock()
        self._profile.unload()

    def erase(self) -> None:
        """Erase the device: keys first, then everything else. Nothing opens it again."""
        self._wiped = True  # first: a call racing the erase reports the wipe, not a closed store
        self._profile.unload()
        self._store.erase()

    def revoked(self) -> TransportError:
        """The relay refuses this device for its organisation (deprovisioned or wiped): lock
        and drop the cached remote secret. Nothing is erased on the relay's word alone (a
        relay may lie); without the server's secret the store stays closed.

        Returns:
            the error to raise.
        """
        self._store.forget_remote_secret()
        self.lock()
        return TransportError(
            "this device has been disabled by your organisation (the relay refuses it); it is "
            "locked and cannot be unlocked without your organisation's server"
        )

    async def auto_lock(self, end: Callable[[SealwireError], None]) -> None:
        """Lock once the person has been idle for the policy's auto-lock delay, then ``end``
        the connection (runs until then)."""
        store = self._store
        while True:
            limit_ms = self._profile.policy.auto_lock_s * 1000
            if limit_ms and store.idle_ms() >= limit_ms:
                self.lock()
                end(DeviceLocked("locked after the idle time your organisation allows"))
                return
            # At most a second: a new policy may shorten the delay at any time.
            await asyncio.sleep(
                1.0 if not limit_ms else min(1.0, max(0.05, (limit_ms - store.idle_ms()) / 1000))
            )

    # --- the passcode ---------------------------------------------------------------------

    def record_passcode(self, passcode: str) -> None:
        """Keep what the policy checks of ``passcode`` (its length and classes)."""
        self._store.put_secret("passcode", passcode_facts(passcode))

    async def set_passcode(self, new_passcode: str) -> None:
        """Wrap the boot key under ``new_passcode`` (the store must be unlocked).

        Raises:
            ConfigError: shorter than the store accepts.
            DeviceLocked: the store is locked.
        """
        await in_thread(self._store.change_passcode, new_passcode)
        self.record_passcode(new_passcode)

    def passcode_facts(self) -> PasscodeFacts | None:
        """What was recorded of the passcode (``None``: never checked)."""
        raw = self._store.secret("passcode")
        return None if raw is None else PasscodeFacts.decode(raw, max_size=64)

    # --- the remote secret ----------------------------------------------------------------

    def policy_changed(self, policy: Policy) -> None:
        """Apply a new policy's limits: attempts, auto-lock, and the offline grace (a shorter
        grace shortens the cached remote secret's life; none drops it)."""
        store = self._store
        store.set_policy_limits(
            attempt_limit=policy.max_failed_attempts, auto_lock_s=policy.auto_lock_s
        )
        if policy.offline_grace_s == 0:
            store.forget_remote_secret()
        else:
            store.cap_remote_secret(self._clock() + policy.offline_grace_s * 1000)

    async def _fetch_remote_secret(self) -> bytes:
        profile = self._profile
        reply = XWingPrivateKey.generate(self._random)
        reply_id = int.from_bytes(self._random(4), "big")
        request = FetchRemoteSecret(
            request_id=self._random(REQUEST_ID_SIZE),
            reply_prekey_id=reply_id,
            reply_key=reply.public_key.raw,
        )
        envelope = profile.seal_to_server(PayloadType.CONTROL, encode_management_message(request))
        try:
            conn = await self._channel.open()
        except TransportError as exc:
            raise TransportError(
                f"cannot unlock: the offline grace has ended and the relay cannot be reached "
                f"to ask your organisation's server ({exc})"
            ) from None
        try:
            await self._channel.send(conn, encode_message(UnlockRequest(envelope=envelope)))
            answer = await asyncio.wait_for(
                self._unlock_answer(conn, reply_id, reply, request.request_id), ANSWER_TIMEOUT_S
            )
        except TimeoutError:
            raise TransportError(
                "cannot unlock: your organisation's server did not answer (the offline grace "
                "has ended, so the device needs it once); try again later"
            ) from None
        finally:
            await conn.close()
        if answer.policy is not None:
            self._on_policy(answer.policy.verify(profile.server_key))
        if answer.status is SecretStatus.UNAVAILABLE:
            raise StorageError(
                "your organisation's server has no key for this device (was its database "
                "restored from an older backup?): ask your administrator; nothing was erased"
            )
        if answer.status is SecretStatus.WIPE or answer.secret is None:
            self.erase()
            raise DeviceWiped(
                "your organisation has wiped this device (or disabled your account): its keys "
                "and messages are erased"
            )
        self._store.cache_remote_secret(
            answer.secret, self._clock() + profile.policy.offline_grace_s * 1000
        )
        return answer.secret

    async def _unlock_answer(
        self, conn: RelayConnection, reply_id: int, reply: XWingPrivateKey, request_id: bytes
    ) -> RemoteSecretAnswer:
        profile = self._profile
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
                    recipient=profile.address,
                    prekeys=lambda pid: reply if pid == reply_id else None,
                    verifier=profile.verifier,
                    now_ms=self._clock(),
                )
                if opened.sender.body.subject != profile.server_address:
                    continue
                answer = decode_management_message(opened.payload_type, opened.body)
            except (DecodeError, InvalidEnvelope):
                continue
            if isinstance(answer, RemoteSecretAnswer) and answer.request_id == request_id:
                return answer
