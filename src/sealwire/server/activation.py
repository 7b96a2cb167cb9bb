"""Device activation on the server's side (DESIGN §7, docs/protocol/ACTIVATION.md): one SPAKE2
run per relay activation session, the ticket's attempt reserved durably before the password
scalar is used, and the answer (certificate, policy, directory, remote secret) once the
device's keys check out. Every activation and every wrong password is audited, the
activation in the same transaction as the new device.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sealwire.errors import CryptoError, SealwireError
from sealwire.protocol.activation import (
    DeviceKeysReceived,
    PasswordRejected,
    RefusalCode,
    ServerActivation,
    ServerAnswer,
)
from sealwire.protocol.directory import ActivationDirectory, verify_prekey
from sealwire.protocol.identity import address_of, short_address
from sealwire.protocol.session import ActivationReceived
from sealwire.protocol.suite import open_at_rest, seal_at_rest

from .audit import AuditLog
from .authority import Authority
from .policy import REMOTE_SECRET_PURPOSE
from .store import ServerStore
from .tickets import TICKET_PURPOSE

__all__ = ["ActivationSettings", "Activations"]

log = logging.getLogger(__name__)

_RUN_LIFETIME_S = 120.0
_MAX_RUNS = 1024


@dataclass(frozen=True)
class ActivationSettings:
    """What the answer to a device carries besides its certificate."""

    organisation_name: str
    relay: str
    server_prekey: bytes
    """The server's signed prekey (encoded)."""
    root_public_key: bytes
    max_devices_per_user: int


class Activations:
    """The activation runs in progress on this server.

    Args:
        address: the server's address.
        store: the server's database.
        audit: the audit log.
        authority: issues certificates, signs policies.
        ticket_key: the at-rest key of password scalars and remote secrets.
        settings: what the answer carries.
        clock: Unix milliseconds.
        random: source of random bytes.
    """

    def __init__(
        self,
        *,
        address: bytes,
        store: ServerStore,
        audit: AuditLog,
        authority: Authority,
        ticket_key: bytes,
        settings: ActivationSettings,
        clock: Callable[[], int],
        random: Callable[[int], bytes],
    ) -> None:
        self._address = address
        self._store = store
        self._audit = audit
        self._authority = authority
        self._ticket_key = ticket_key
        self._settings = settings
        self._clock = clock
        self._random = random
        self._runs: dict[bytes, tuple[ServerActivation, float]] = {}
        self._attempts: dict[bytes, tuple[bytes, int]] = {}
        """Per run session: the ticket it took an attempt from, and the attempts left then."""
        self.completed = 0
        """Devices activated since start (for status and benchmarks)."""

    def step(self, received: ActivationReceived) -> list[bytes]:
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
                self._address,
                password_scalars=functools.partial(self._password_scalar, received.session),
                random=self._random,
            )
            self._runs[received.session] = (run, now)
        else:
            run = entry[0]
        for event in run.receive(received.payload):
            if isinstance(event, PasswordRejected):
                self._password_rejected(received.session)
            elif isinstance(event, DeviceKeysReceived):
                self._answer(run, event)
        out = run.data_to_send()
        if run.finished:
            self._runs.pop(received.session, None)
            self._end_run(received.session)
        return out

    def abandon_all(self) -> None:
        """The server stops: every open run is abandoned (its attempt is spent)."""
        self._runs.clear()
        for session in list(self._attempts):
            with contextlib.suppress(SealwireError):
                self._end_run(session)

    def _password_rejected(self, session: bytes) -> None:
        # Counted when the run took its attempt (before the challenge went out).
        ticket_id, left = self._attempts.get(session, (b"", 0))
        log.info("wrong activation password", extra={"attempts_left": left})
        record = self._store.ticket(ticket_id) if ticket_id else None
        username = "" if record is None else self._store.username_of(record.user_id)
        self._audit.append("system", "activation.failed", username, {"attempts_left": left})

    def _password_scalar(self, session: bytes, ticket_id: bytes) -> bytes | None:
        # The attempt is taken durably before the scalar is used, so runs started at once
        # (here or on other instances) check at most the ticket's attempts between them.
        record = self._store.reserve_attempt(ticket_id, now=self._clock())
        if record is None:
            return None
        self._attempts[session] = (ticket_id, record.attempts_left)
        try:
            return open_at_rest(
                self._ticket_key,
                record.sealed_scalar,
                purpose=TICKET_PURPOSE,
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
            self._store.burn_if_spent(ticket_id)

    def _answer(self, run: ServerActivation, event: DeviceKeysReceived) -> None:
        keys = event.device_keys
        store = self._store
        now = self._clock()
        address = address_of(keys.identity_key)
        checked: list[tuple[int, bytes, int]] = []
        try:
            for encoded in keys.signed_prekeys:
                signed = verify_prekey(encoded, keys.identity_key, now=now // 1000)
                checked.append((signed.prekey.prekey_id, encoded, signed.prekey.not_after))
        except CryptoError:
            checked = []
        record = store.ticket(event.ticket_id)
        if not checked or record is None:
            run.refuse(RefusalCode.NOT_PERMITTED)
            return
        certificate = self._authority.issue_device_certificate(keys.identity_key)
        remote_secret = self._random(32)
        sealed_secret = seal_at_rest(
            self._ticket_key,
            remote_secret,
            purpose=REMOTE_SECRET_PURPOSE,
            context=address,
            random=self._random,
        )
        user = next(u for u in store.users() if u.id == record.user_id)
        # The device, its policy and its audit entry: one transaction (DESIGN §8).
        with store.db.transaction() as conn:
            if not store.activate_device(
                ticket_id=event.ticket_id,
                address=address,
                identity_key=keys.identity_key,
                certificate=certificate.encode(),
                serial=certificate.body.serial,
                signed_prekeys=checked,
                now=now,
                max_devices=self._settings.max_devices_per_user,
                remote_secret=sealed_secret,
                conn=conn,
            ):
                activated = False
            else:
                activated = True
                policy = self._authority.signed_policy(conn, user.id)
                self._audit.append(
                    "system",
                    "device.activate",
                    user.username,
                    {"device": short_address(address)},
                    conn=conn,
                )
        if not activated:
            run.refuse(RefusalCode.NOT_PERMITTED)
            return
        settings = self._settings
        directory = ActivationDirectory(
            organisation_name=settings.organisation_name,
            user=user.username,
            display_name=user.display_name,
            server_prekey=settings.server_prekey,
            relay=settings.relay,
        )
        run.send_answer(
            ServerAnswer(
                certificate_chain=(certificate.encode(), *self._authority.chain),
                organisation_root_key=settings.root_public_key,
                policy=policy.encode(),
                directory=directory.encode(),
                remote_secret=remote_secret,
            )
        )
        self.completed += 1
        log.info(
            "device activated",
            extra={"user": user.username, "device": short_address(address)},
        )
