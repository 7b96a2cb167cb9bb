"""The organisation's directory as devices see it (DESIGN §7): look-ups (each answer signed,
its holders remembered so that they can be told when an entry changes), prekeys published
by devices, and device certificate renewal. Every method answers one request from an active
device with the encoded directory message to seal back to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sealwire.errors import CryptoError
from sealwire.protocol.directory import (
    CertificateRenewed,
    DeviceEntry,
    DirectoryAnswer,
    DirectoryQuery,
    PrekeysPublished,
    PublishPrekeys,
    RenewCertificate,
    ServerRefusal,
    ServerRefusalCode,
    SignedDirectoryAnswer,
    UserEntry,
    encode_directory_message,
    verify_prekey,
)
from sealwire.protocol.identity import short_address

from .authority import Authority
from .policy import effective_policy
from .store import DeviceRecord, ServerStore, UserState

__all__ = ["DirectoryService"]

log = logging.getLogger(__name__)


class DirectoryService:
    """Answers directory requests.

    Args:
        store: the server's database.
        authority: signs answers and certificates.
        clock: Unix milliseconds.
    """

    def __init__(
        self, *, store: ServerStore, authority: Authority, clock: Callable[[], int]
    ) -> None:
        self._store = store
        self._authority = authority
        self._clock = clock

    def answer_query(self, asker: DeviceRecord, query: DirectoryQuery) -> bytes:
        """The signed entries of the people asked for (active people, devices with a valid
        prekey), cacheable for as long as the asker's policy allows."""
        store = self._store
        now_s = self._clock() // 1000
        with store.db.transaction() as conn:
            # The asking device's policy says how long it may keep the answer (DESIGN §8).
            cache_s = effective_policy(
                store, conn, store.user_id(conn, asker.username)
            ).settings.directory_cache_s
        names = list(dict.fromkeys(query.users))
        found = {record.username: record for record in store.users(names)}
        active = {n for n, r in found.items() if r.state == UserState.ACTIVE}
        chain = self._authority.chain
        by_user: dict[str, list[DeviceEntry]] = {}
        for device in store.devices_of(sorted(active), now=now_s):
            if device.prekeys:
                by_user.setdefault(device.username, []).append(
                    DeviceEntry(chain=(device.certificate, *chain), prekey=device.prekeys[0])
                )
        entries = tuple(
            UserEntry(
                user=name,
                display_name=found[name].display_name,
                devices=tuple(by_user.get(name, ())),
            )
            for name in names
            if name in active
        )
        answer = DirectoryAnswer(
            request_id=query.request_id,
            organisation=self._authority.organisation,
            issued_at=now_s,
            expires_at=now_s + cache_s,
            entries=entries,
            unknown=tuple(n for n in names if n not in {e.user for e in entries}),
        )
        # Devices cache only entries with a device; remember who holds which, to tell them.
        held = [entry.user for entry in entries if entry.devices]
        store.hold_entries(asker.address, held, now_s + cache_s)
        signed = SignedDirectoryAnswer.sign(answer, self._authority.identity)
        return encode_directory_message(signed)

    def publish_prekeys(self, device: DeviceRecord, message: PublishPrekeys) -> bytes:
        """Store the device's new signed prekeys (all of them verify, or none is stored)."""
        now_s = self._clock() // 1000
        checked: list[tuple[int, bytes, int]] = []
        for encoded in message.prekeys:
            try:
                signed = verify_prekey(encoded, device.identity_key, now=now_s)
            except CryptoError:
                log.info(
                    "refused a prekey that does not verify",
                    extra={"device": short_address(device.address)},
                )
                return _refusal(message.request_id, "a prekey does not verify")
            checked.append((signed.prekey.prekey_id, encoded, signed.prekey.not_after))
        if not checked:
            return _refusal(message.request_id, "no prekey to publish")
        self._store.publish_prekeys(device.address, checked)
        return encode_directory_message(PrekeysPublished(request_id=message.request_id))

    def renew(self, device: DeviceRecord, message: RenewCertificate) -> bytes:
        """A new certificate for the device's identity key."""
        certificate = self._authority.issue_device_certificate(device.identity_key)
        return encode_directory_message(
            CertificateRenewed(
                request_id=message.request_id,
                chain=(certificate.encode(), *self._authority.chain),
            )
        )


def _refusal(request_id: bytes, reason: str) -> bytes:
    return encode_directory_message(
        ServerRefusal(request_id=request_id, code=ServerRefusalCode.INVALID, reason=reason)
    )
