"""The device's keys in use: its prekeys (rotated, old ones deleted for forward secrecy) and
its certificate (renewed before it runs out), both through the server."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sealwire.errors import CryptoError
from sealwire.protocol.directory import (
    REQUEST_ID_SIZE,
    CertificateRenewed,
    PrekeysPublished,
    PublishPrekeys,
    RenewCertificate,
)
from sealwire.protocol.envelope import DEFAULT_LIFETIME_MS
from sealwire.protocol.identity import Certificate, Role, sign_prekey
from sealwire.protocol.suite import XWingPrivateKey

from .link import AskServer
from .profile import Profile
from .store import DeviceStore

__all__ = ["PREKEY_LIFETIME_FACTOR", "Keys"]

log = logging.getLogger(__name__)

PREKEY_LIFETIME_FACTOR = 2
"""A prekey is valid for this many rotation periods."""


class Keys:
    """Prekeys and the certificate of this device.

    Args:
        store: keeps the private prekeys.
        profile: our identity, chain and policy (the chain is replaced on renewal).
        ask: asks our server a question (:meth:`~sealwire.device.link.Link.ask`).
        clock: Unix milliseconds.
        random: source of random bytes.
    """

    def __init__(
        self,
        store: DeviceStore,
        profile: Profile,
        ask: AskServer,
        *,
        clock: Callable[[], int],
        random: Callable[[int], bytes],
    ) -> None:
        self._store = store
        self._profile = profile
        self._ask = ask
        self._clock = clock
        self._random = random
        self._prekeys: dict[int, XWingPrivateKey] = {}

    def private_prekey(self, prekey_id: int) -> XWingPrivateKey | None:
        """Our private prekey ``prekey_id``, if we still have it."""
        key = self._prekeys.get(prekey_id)
        if key is None:
            seed = self._store.prekey_seed(prekey_id)
            if seed is None:
                return None
            key = self._prekeys[prekey_id] = XWingPrivateKey(seed)
        return key

    async def maintain(self) -> None:
        """Delete retired prekeys; rotate the prekey and renew the certificate when due.

        Raises:
            TransportError: the server could not be asked (try on a later connection).
            RemoteProtocolError: the server refused.
        """
        now_s = self._clock() // 1000
        self._store.delete_retired_prekeys(now_s)
        self._prekeys.clear()
        kept = self._store.prekeys()
        if not kept or now_s - kept[0][1] >= self._profile.policy.prekey_rotation_s:
            await self.rotate_prekey()
        leaf = Certificate.parse(self._profile.chain[0]).body
        if leaf.not_after - now_s < (leaf.not_after - leaf.not_before) // 3:
            await self.renew_certificate()

    async def rotate_prekey(self) -> None:
        """Make a new prekey, publish it through the server, and schedule the old private
        prekeys for deletion one envelope lifetime from now (forward secrecy).

        Raises:
            TransportError: the server could not be asked.
            RemoteProtocolError: the server refused the prekey.
        """
        now_s = self._clock() // 1000
        prekey = XWingPrivateKey.generate(self._random)
        prekey_id = int.from_bytes(self._random(4), "big")
        signed = sign_prekey(
            self._profile.identity,
            prekey_id=prekey_id,
            public_key=prekey.public_key,
            not_after=now_s + PREKEY_LIFETIME_FACTOR * self._profile.policy.prekey_rotation_s,
        )
        self._store.add_prekey(prekey_id, prekey.seed(), created_at=now_s)
        request = PublishPrekeys(
            request_id=self._random(REQUEST_ID_SIZE), prekeys=(signed.encode(),)
        )
        await self._ask(request, PrekeysPublished)
        self._store.retire_prekeys(prekey_id, now_s + DEFAULT_LIFETIME_MS // 1000 + 3600)

    async def renew_certificate(self) -> None:
        """Ask the server for a fresh certificate (the current one authenticates the ask).

        Raises:
            TransportError: the server could not be asked.
            RemoteProtocolError: the server refused.
        """
        request = RenewCertificate(request_id=self._random(REQUEST_ID_SIZE))
        answer = await self._ask(request, CertificateRenewed)
        profile = self._profile
        try:
            leaf = profile.verifier.verify(
                answer.chain, now=self._clock() // 1000, role=Role.DEVICE
            )
        except CryptoError:
            log.warning("the server's renewed certificate does not verify; keeping the old one")
            return
        if leaf.body.identity_key == profile.identity.public_key:
            profile.replace_chain(tuple(answer.chain))
