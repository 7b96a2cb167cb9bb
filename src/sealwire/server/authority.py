"""The server's signing authority: what it signs and seals with its identity key (device
certificates, policies, commands, envelopes to devices). Feature modules are handed this
object, never the server, so that only it touches the identity key.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from sealwire.errors import TransportError
from sealwire.protocol.codec import Struct
from sealwire.protocol.directory import SignedPolicy, verify_prekey
from sealwire.protocol.envelope import PayloadType, seal
from sealwire.protocol.identity import Certificate, Role, issue_certificate
from sealwire.protocol.management import (
    Command,
    SignedCommand,
    encode_management_message,
    payload_type_of,
)
from sealwire.protocol.suite import SigningKey, XWingPublicKey

from .policy import effective_policy
from .store import DeviceRecord, ServerStore

__all__ = ["Authority"]


class Authority:
    """Signs and seals as the server.

    Args:
        identity: the server's signing key.
        chain: the server's certificate chain (its root-issued certificate).
        organisation: the organisation's address.
        server_not_after: when the server's own certificate ends (device certificates end
            no later).
        device_certificate_s: the lifetime of a device certificate.
        store: for the policy that applies to a person.
        clock: Unix milliseconds.
        random: source of random bytes.
    """

    def __init__(
        self,
        *,
        identity: SigningKey,
        chain: tuple[bytes, ...],
        organisation: bytes,
        server_not_after: int,
        device_certificate_s: int,
        store: ServerStore,
        clock: Callable[[], int],
        random: Callable[[int], bytes],
    ) -> None:
        self._identity = identity
        self.chain = chain
        self.organisation = organisation
        self._server_not_after = server_not_after
        self._device_certificate_s = device_certificate_s
        self._store = store
        self._clock = clock
        self._random = random

    def issue_device_certificate(self, identity_key: bytes) -> Certificate:
        """A device certificate for ``identity_key``, valid from now (minus 5 minutes)."""
        now_s = self._clock() // 1000
        return issue_certificate(
            self._identity,
            organisation=self.organisation,
            role=Role.DEVICE,
            identity_key=identity_key,
            serial=int.from_bytes(self._random(8), "big") >> 1,
            not_before=now_s - 300,  # tolerate devices whose clocks run a little behind
            not_after=min(now_s + self._device_certificate_s, self._server_not_after),
        )

    def signed_policy(self, conn: sa.Connection, user_id: int) -> SignedPolicy:
        """The policy that applies to the person, signed now."""
        rules = effective_policy(self._store, conn, user_id)
        return SignedPolicy.sign(
            rules.settings.policy(rules.name, max(1, rules.version), self._clock() // 1000),
            self._identity,
        )

    def sign_command(self, command: Command) -> SignedCommand:
        """A command signed by the server."""
        return SignedCommand.sign(command, self._identity)

    @property
    def identity(self) -> SigningKey:
        """The signing key (for wire types that sign themselves, e.g. a directory answer)."""
        return self._identity

    def seal_to(self, device: DeviceRecord, message: bytes | Struct) -> bytes:
        """Seal a directory message (encoded) or a management message to a device.

        Raises:
            TransportError: the device has no valid prekey to seal to.
        """
        if not device.prekeys:
            raise TransportError("the device has no valid prekey to seal to")
        signed = verify_prekey(device.prekeys[0], device.identity_key, now=self._clock() // 1000)
        return self.seal(
            device.address,
            signed.prekey.prekey_id,
            XWingPublicKey(signed.prekey.public_key),
            message,
        )

    def seal(
        self, address: bytes, prekey_id: int, prekey: XWingPublicKey, message: bytes | Struct
    ) -> bytes:
        """Seal a directory message (encoded) or a management message to a prekey."""
        if isinstance(message, bytes):
            payload_type, body = PayloadType.DIRECTORY, message
        else:
            payload_type = payload_type_of(message)
            body = encode_management_message(message)
        return seal(
            sender=self._identity,
            sender_chain=self.chain,
            recipient=address,
            prekey_id=prekey_id,
            prekey=prekey,
            payload_type=payload_type,
            body=body,
            now_ms=self._clock(),
            random=self._random,
        )
