"""What a device knows of itself and its organisation, read from its store.

The identity key, the certificate chain, the organisation's root, the activation directory
(who we are, our relay, our server's prekey) and the policy in force live under the boot
key. :class:`Profile` reads them once the boot key is open, holds them for the feature
modules, and is the one place that replaces the chain (certificate renewal) or the policy
(a newer one applied). It also seals envelopes as this device (:meth:`Profile.seal`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from sealwire.errors import ConfigError
from sealwire.protocol.codec import Struct, wire
from sealwire.protocol.directory import ActivationDirectory, Policy, verify_prekey
from sealwire.protocol.envelope import PayloadType, seal
from sealwire.protocol.identity import (
    MAX_CERTIFICATE_SIZE,
    MAX_CHAIN,
    Certificate,
    ChainVerifier,
    address_of,
)
from sealwire.protocol.suite import SigningKey, XWingPublicKey

from .store import DeviceStore

__all__ = ["Peer", "Profile", "join_chain"]


@dataclass(frozen=True)
class Peer:
    """A device of a person, ready to seal to."""

    address: bytes
    prekey_id: int
    prekey: XWingPublicKey


@dataclass(frozen=True)
class _Known:
    """The profile as read from the store (replaced whole, never changed in place)."""

    identity: SigningKey
    address: bytes
    chain: tuple[bytes, ...]
    organisation: bytes
    directory: ActivationDirectory
    policy: Policy
    server_key: bytes
    server_peer: Peer
    verifier: ChainVerifier


class Profile:
    """The device's identity, organisation and policy, loaded from the store on demand.

    Args:
        store: the device's store (its boot key must be open to :meth:`load`).
        clock: Unix milliseconds.
        random: source of random bytes (for sealing).
    """

    def __init__(
        self, store: DeviceStore, *, clock: Callable[[], int], random: Callable[[int], bytes]
    ) -> None:
        self._store = store
        self._clock = clock
        self._random = random
        self._known: _Known | None = None
        self._fresh = False

    def load(self) -> None:
        """Read the profile from the store unless it was read since the last :meth:`unload`.

        Raises:
            DeviceLocked: the boot key is not open.
            ConfigError: the device is incomplete.
        """
        if self._fresh:
            return
        store = self._store
        seed = store.secret("identity")
        chain = store.secret("chain")
        root = store.secret("root")
        directory = store.secret("directory")
        policy = store.secret("policy")
        if seed is None or chain is None or root is None or directory is None or policy is None:
            raise ConfigError(f"the device in {store.home} is incomplete; activate again")
        identity = SigningKey.from_seed(seed)
        certificates = _split(chain)
        organisation = address_of(root)
        activation = ActivationDirectory.decode(directory, max_size=10 * 1024)
        server = Certificate.parse(certificates[-1])
        server_key = server.body.identity_key
        signed = verify_prekey(activation.server_prekey, server_key, now=self._clock() // 1000)
        self._known = _Known(
            identity=identity,
            address=address_of(identity.public_key),
            chain=certificates,
            organisation=organisation,
            directory=activation,
            policy=Policy.decode(policy, max_size=4096),
            server_key=server_key,
            server_peer=Peer(
                server.body.subject,
                signed.prekey.prekey_id,
                XWingPublicKey(signed.prekey.public_key),
            ),
            verifier=ChainVerifier({organisation: root}),
        )
        self._fresh = True

    def unload(self) -> None:
        """Read the store again on the next :meth:`load` (after a lock: what was read stays
        readable until then)."""
        self._fresh = False

    def _get(self) -> _Known:
        if self._known is None:
            self.load()
        assert self._known is not None
        return self._known

    # --- what it holds ------------------------------------------------------------------------

    @property
    def identity(self) -> SigningKey:
        """This device's signing key."""
        return self._get().identity

    @property
    def address(self) -> bytes:
        """This device's address."""
        return self._get().address

    @property
    def chain(self) -> tuple[bytes, ...]:
        """This device's certificate chain, leaf first."""
        return self._get().chain

    @property
    def organisation(self) -> bytes:
        """The organisation's address (of its root key)."""
        return self._get().organisation

    @property
    def directory(self) -> ActivationDirectory:
        """What activation told us: our person, our relay, the server's prekey."""
        return self._get().directory

    @property
    def user(self) -> str:
        """Our person's user name."""
        return self._get().directory.user

    @property
    def relay(self) -> str:
        """Our relay's URL."""
        return self._get().directory.relay

    @property
    def policy(self) -> Policy:
        """The policy in force."""
        return self._get().policy

    @property
    def server_key(self) -> bytes:
        """Our server's identity key (it signs policies, commands, directory answers)."""
        return self._get().server_key

    @property
    def server_address(self) -> bytes:
        """Our server's address."""
        return self._get().server_peer.address

    @property
    def server_peer(self) -> Peer:
        """Our server, ready to seal to."""
        return self._get().server_peer

    @property
    def verifier(self) -> ChainVerifier:
        """Verifies certificate chains of our organisation."""
        return self._get().verifier

    # --- changing it ------------------------------------------------------------------------

    def replace_chain(self, chain: tuple[bytes, ...]) -> None:
        """Keep a renewed certificate chain (stored first)."""
        self._store.put_secret("chain", join_chain(chain))
        self._known = dataclasses.replace(self._get(), chain=tuple(chain))

    def replace_policy(self, policy: Policy) -> None:
        """Keep a newer policy (stored first)."""
        self._store.put_secret("policy", policy.encode())
        self._known = dataclasses.replace(self._get(), policy=policy)

    # --- sealing --------------------------------------------------------------------------

    def seal(self, peer: Peer, payload_type: PayloadType, body: bytes) -> bytes:
        """Seal ``body`` to ``peer`` as this device."""
        known = self._get()
        return seal(
            sender=known.identity,
            sender_chain=known.chain,
            recipient=peer.address,
            prekey_id=peer.prekey_id,
            prekey=peer.prekey,
            payload_type=payload_type,
            body=body,
            now_ms=self._clock(),
            random=self._random,
        )

    def seal_to_server(self, payload_type: PayloadType, body: bytes) -> bytes:
        """Seal ``body`` to our server."""
        return self.seal(self._get().server_peer, payload_type, body)


@dataclass(frozen=True)
class _Chain(Struct):
    certificates: tuple[bytes, ...] = wire(0, max_items=MAX_CHAIN, max_size=MAX_CERTIFICATE_SIZE)


def join_chain(chain: tuple[bytes, ...]) -> bytes:
    """A certificate chain as it is stored."""
    return _Chain(certificates=tuple(chain)).encode()


def _split(data: bytes) -> tuple[bytes, ...]:
    return _Chain.decode(data, max_size=4096).certificates
