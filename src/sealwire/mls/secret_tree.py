"""The secret tree and its per-sender hash ratchets (RFC 9420 §9), and sender-data keys (§6.3.2).

The ``encryption_secret`` of an epoch sits at the root of a tree shaped like the ratchet tree;
each node's secret yields its children's (``ExpandWithLabel(secret, "tree", "left"|"right",
Nh)``) and each leaf secret starts two hash ratchets, ``handshake`` and ``application``. Step
``j`` of a ratchet yields the AEAD key and nonce of generation ``j`` (``DeriveTreeSecret(secret,
"key"|"nonce", j, Nk|Nn)``) and the next ratchet secret (``"secret"``, ``Nh``).

Forward secrecy (RFC 9420 §9.2): a node secret is deleted as soon as both children are
derived, a leaf secret once its two ratchets exist, and a ratchet secret once the next one is
derived. A key/nonce pair is handed out once and then deleted, so a generation can never be
used twice (that would be nonce reuse); asking again raises
:class:`~sealwire.mls.errors.SecretReuseError`. Receivers may jump ahead at most
``max_forward`` generations and keep at most ``max_skipped`` unused earlier keys per ratchet
(out-of-order delivery, §9.4); older skipped keys are dropped.

The caller applies the 4-byte ``reuse_guard`` of PrivateMessages with :func:`apply_reuse_guard`.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field

from . import tree_math
from .crypto import CipherSuite
from .errors import LocalError, SecretReuseError, ValidationError

__all__ = [
    "DEFAULT_MAX_FORWARD",
    "DEFAULT_MAX_SKIPPED",
    "RatchetType",
    "SecretTree",
    "apply_reuse_guard",
    "sender_data_key_nonce",
]

DEFAULT_MAX_FORWARD = 1024
"""How many generations a received message may skip ahead of the ratchet (§9.4 leaves this to
the application; this bounds the work a peer can make us do with one message)."""

DEFAULT_MAX_SKIPPED = 256
"""How many skipped, not-yet-used keys a receiving ratchet keeps for out-of-order messages."""


class RatchetType(enum.Enum):
    """Which of a leaf's two ratchets (RFC 9420 §9.1)."""

    HANDSHAKE = "handshake"
    """Proposals and commits sent as PrivateMessage."""
    APPLICATION = "application"
    """Application data."""


@dataclass
class _Ratchet:
    generation: int
    secret: bytes | None = field(repr=False)
    skipped: OrderedDict[int, tuple[bytes, bytes]] = field(default_factory=OrderedDict, repr=False)


class SecretTree:
    """The secret tree of one epoch (RFC 9420 §9), deriving lazily and deleting as it goes.

    Args:
        suite: the group's cipher suite.
        encryption_secret: the epoch's ``encryption_secret`` (:class:`EpochSecrets`).
        n_leaves: number of leaves of the ratchet tree (a power of two, RFC 9420 §7.8).
        max_forward: largest allowed jump ahead of a ratchet's next generation.
        max_skipped: skipped keys kept per ratchet for out-of-order messages.
    """

    def __init__(
        self,
        suite: CipherSuite,
        encryption_secret: bytes,
        n_leaves: int,
        *,
        max_forward: int = DEFAULT_MAX_FORWARD,
        max_skipped: int = DEFAULT_MAX_SKIPPED,
    ) -> None:
        self._suite = suite
        self._n = n_leaves
        self._nodes: dict[int, bytes] = {tree_math.root(n_leaves): encryption_secret}
        self._ratchets: dict[tuple[int, RatchetType], _Ratchet] = {}
        self._max_forward = max_forward
        self._max_skipped = max_skipped

    @property
    def n_leaves(self) -> int:
        """Number of leaves the tree was built for."""
        return self._n

    def _leaf_secret(self, leaf: int) -> bytes:
        if not 0 <= leaf < self._n:
            raise ValidationError(f"leaf {leaf} is outside a tree of {self._n} leaves")
        x = tree_math.leaf_to_node(leaf)
        # Walk up to the nearest ancestor whose secret we still hold...
        path = [x, *tree_math.direct_path(x, self._n)]
        start = next((i for i, node in enumerate(path) if node in self._nodes), None)
        if start is None:
            raise SecretReuseError(f"the secrets of leaf {leaf} were already derived")
        # ...then derive down, keeping the siblings and deleting each consumed parent.
        for i in range(start, 0, -1):
            p = path[i]
            secret = self._nodes.pop(p)
            nh = self._suite.kdf.Nh
            self._nodes[tree_math.left(p)] = self._suite.expand_with_label(
                secret, "tree", b"left", nh
            )
            self._nodes[tree_math.right(p)] = self._suite.expand_with_label(
                secret, "tree", b"right", nh
            )
        return self._nodes.pop(x)

    def _ratchet(self, leaf: int, kind: RatchetType) -> _Ratchet:
        ratchet = self._ratchets.get((leaf, kind))
        if ratchet is None:
            leaf_secret = self._leaf_secret(leaf)
            nh = self._suite.kdf.Nh
            for k in RatchetType:
                self._ratchets[(leaf, k)] = _Ratchet(
                    0, self._suite.expand_with_label(leaf_secret, k.value, b"", nh)
                )
            ratchet = self._ratchets[(leaf, kind)]
        return ratchet

    def _step(self, ratchet: _Ratchet) -> tuple[int, bytes, bytes]:
        # RFC 9420 §9.1: key/nonce of this generation, then the next ratchet secret.
        secret = ratchet.secret
        if secret is None or ratchet.generation >= 0xFFFFFFFF:
            raise SecretReuseError("ratchet exhausted")
        suite, j = self._suite, ratchet.generation
        key = suite.derive_tree_secret(secret, "key", j, suite.aead.Nk)
        nonce = suite.derive_tree_secret(secret, "nonce", j, suite.aead.Nn)
        ratchet.secret = suite.derive_tree_secret(secret, "secret", j, suite.kdf.Nh)
        ratchet.generation = j + 1
        return j, key, nonce

    def next_key(self, leaf: int, kind: RatchetType) -> tuple[int, bytes, bytes]:
        """Key and nonce for *sending* the next message from our own ``leaf``.

        Returns:
            ``(generation, key, nonce)``; the generation goes into the sender data.
        """
        ratchet = self._ratchet(leaf, kind)
        return self._step(ratchet)

    def key_for(self, leaf: int, kind: RatchetType, generation: int) -> tuple[bytes, bytes]:
        """Key and nonce for *receiving* generation ``generation`` from ``leaf``; once only.

        Raises:
            ValidationError: ``leaf`` is outside the tree.
            SecretReuseError: the generation was already used or dropped, or lies more than
                ``max_forward`` generations ahead.
        """
        if not 0 <= generation <= 0xFFFFFFFF:
            raise ValidationError("generation out of range")
        ratchet = self._ratchet(leaf, kind)
        if generation < ratchet.generation:
            keys = ratchet.skipped.pop(generation, None)
            if keys is None:
                raise SecretReuseError(f"generation {generation} already used or deleted")
            return keys
        if generation - ratchet.generation > self._max_forward:
            raise SecretReuseError(f"generation {generation} is too far ahead")
        while ratchet.generation < generation:
            j, key, nonce = self._step(ratchet)
            ratchet.skipped[j] = (key, nonce)
            while len(ratchet.skipped) > self._max_skipped:
                ratchet.skipped.popitem(last=False)
        _, key, nonce = self._step(ratchet)
        return key, nonce

    def delete_ratchet_keys(self, leaf: int) -> None:
        """Forget everything held for ``leaf`` (e.g. it was removed; RFC 9420 §9.2)."""
        for kind in RatchetType:
            self._ratchets.pop((leaf, kind), None)


def sender_data_key_nonce(
    suite: CipherSuite, sender_data_secret: bytes, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """Key and nonce protecting a PrivateMessage's sender data (RFC 9420 §6.3.2).

    ``ciphertext_sample`` is the first ``Nh`` bytes of the content ciphertext (all of it when
    shorter).

    Returns:
        ``(sender_data_key, sender_data_nonce)``.
    """
    sample = ciphertext[: suite.kdf.Nh]
    key = suite.expand_with_label(sender_data_secret, "key", sample, suite.aead.Nk)
    nonce = suite.expand_with_label(sender_data_secret, "nonce", sample, suite.aead.Nn)
    return key, nonce


def apply_reuse_guard(nonce: bytes, reuse_guard: bytes) -> bytes:
    """XOR the 4-byte ``reuse_guard`` into the first bytes of ``nonce`` (RFC 9420 §6.3.1)."""
    if len(reuse_guard) != 4 or len(nonce) < 4:
        raise LocalError("reuse_guard is 4 bytes and the nonce at least 4")
    head = bytes(a ^ b for a, b in zip(nonce[:4], reuse_guard, strict=True))
    return head + nonce[4:]
