"""TreeKEM (RFC 9420 §7.4-§7.6, §12.4.1-§12.4.2): creating an UpdatePath for a commit and
applying a received one.

Path secrets run up the sender's *filtered* direct path::

    path_secret[0]      random (from the caller)
    path_secret[i+1]  = DeriveSecret(path_secret[i], "path")
    node_priv[i]      = DeriveKeyPair(DeriveSecret(path_secret[i], "node"))
    commit_secret     = path_secret[n]          (n = length of the filtered direct path)

Each ``path_secret[i]`` is encrypted with ``EncryptWithLabel(.., "UpdatePathNode",
GroupContext)`` to every node of the resolution of the matching copath child, except the
leaves of members added by the same commit. The GroupContext is the provisional one of the new
epoch, which contains the tree hash *after* the path is merged, so both sides merge first and
ask the caller for the serialized context (``context_for(tree_hash)``).

The tree is modified in place; callers that may reject the commit pass a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from . import tree_math as tm
from .crypto import CipherSuite
from .errors import CryptoError, ValidationError
from .structs import (
    HPKECiphertext,
    LeafNode,
    LeafNodeSource,
    ParentNode,
    UpdatePath,
    UpdatePathNode,
)
from .tree import RatchetTree, verify_leaf_signature

__all__ = [
    "PathResult",
    "apply_update_path",
    "create_update_path",
    "derive_path_secrets",
    "node_key_pair",
]

_LABEL = "UpdatePathNode"


def node_key_pair(suite: CipherSuite, path_secret: bytes) -> tuple[bytes, bytes]:
    """The HPKE key pair of a node from its path secret (RFC 9420 §7.4)."""
    return suite.derive_hpke_key_pair(suite.derive_secret(path_secret, "node"))


@dataclass(frozen=True)
class PathResult:
    """What a member learns from an UpdatePath (created or applied)."""

    commit_secret: bytes
    """The ``commit_secret`` fed to the key schedule."""
    private_keys: dict[int, bytes]
    """HPKE private keys of the path nodes this member now knows, by node index."""
    path_secrets: dict[int, bytes]
    """Path secrets by node index, bottom-up (needed for ``path_secret`` in a Welcome)."""


def derive_path_secrets(
    suite: CipherSuite, nodes: list[int], start: int, secret: bytes
) -> tuple[dict[int, bytes], dict[int, bytes], bytes]:
    """Run the path-secret chain (RFC 9420 §7.4) from ``nodes[start]`` (holding ``secret``)
    to the top of ``nodes`` (a filtered direct path, bottom-up).

    Returns:
        ``(path_secrets, private_keys, commit_secret)``, the dicts keyed by node index.
    """
    secrets, keys, _, commit_secret = _derive_path(suite, nodes, start, secret)
    return secrets, keys, commit_secret


def _derive_path(
    suite: CipherSuite, nodes: list[int], start: int, secret: bytes
) -> tuple[dict[int, bytes], dict[int, bytes], dict[int, bytes], bytes]:
    # derive_path_secrets, also returning the public keys (derived once, with the private).
    secrets: dict[int, bytes] = {}
    keys: dict[int, bytes] = {}
    public: dict[int, bytes] = {}
    for p in nodes[start:]:
        secrets[p] = secret
        keys[p], public[p] = node_key_pair(suite, secret)
        secret = suite.derive_secret(secret, "path")
    return secrets, keys, public, secret


def _merge_path(
    suite: CipherSuite, tree: RatchetTree, sender: int, public_keys: list[bytes]
) -> tuple[list[tuple[int, int]], bytes]:
    """Install new parent nodes on the filtered direct path, blank the rest of the direct path
    and compute parent hashes top-down (RFC 9420 §7.9); return the path and the leaf's
    parent hash."""
    filtered = tree.filtered_direct_path(sender)
    if len(filtered) != len(public_keys):
        raise ValidationError("UpdatePath length differs from the filtered direct path")
    tree.blank_path(sender)
    for (p, _), key in zip(filtered, public_keys, strict=True):
        tree.set_parent(p, ParentNode(key))
    parent_hash = b""
    # RFC 9420 §7.9: from the root down, each node carries the hash of the one above.
    for p, c in reversed(filtered):
        node = tree.parent_node(p)
        assert node is not None
        tree.set_parent(p, replace(node, parent_hash=parent_hash))
        parent_hash = tree.parent_hash(suite, p, c)
    return filtered, parent_hash


def create_update_path(
    suite: CipherSuite,
    tree: RatchetTree,
    sender: int,
    leaf: LeafNode,
    signature_priv: bytes,
    group_id: bytes,
    path_secret: bytes,
    leaf_secret: bytes,
    context_for: Callable[[bytes], bytes],
    random: Callable[[int], bytes],
    new_members: Collection[int] = (),
) -> tuple[UpdatePath, PathResult]:
    """Create an UpdatePath from leaf ``sender`` and merge it into ``tree`` (RFC 9420 §7.5).

    Args:
        suite: the group's cipher suite.
        tree: the tree after the commit's proposals; modified in place.
        sender: the committer's leaf index.
        leaf: the committer's leaf node as a template (credential, capabilities, extensions,
            signature key are kept; key, source, parent hash and signature are replaced).
        signature_priv: the committer's signature private key.
        group_id: the group id (signed into the leaf).
        path_secret: ``path_secret[0]``, fresh random (``Nh`` bytes).
        leaf_secret: fresh random ikm for the new leaf HPKE key pair.
        context_for: maps the new tree hash to the serialized provisional GroupContext.
        random: returns ``n`` fresh random bytes (HPKE encryption randomness).
        new_members: leaf indices added by this commit (they get the Welcome instead).

    Returns:
        ``(update_path, result)``; ``result.private_keys`` includes the new leaf key.
    """
    filtered = tree.filtered_direct_path(sender)
    nodes = [p for p, _ in filtered]
    secrets, keys, public, commit_secret = _derive_path(suite, nodes, 0, path_secret)
    public_keys = [public[p] for p in nodes]
    filtered, leaf_parent_hash = _merge_path(suite, tree, sender, public_keys)
    leaf_priv, leaf_pub = suite.derive_hpke_key_pair(leaf_secret)
    new_leaf = replace(
        leaf,
        encryption_key=leaf_pub,
        leaf_node_source=LeafNodeSource.COMMIT,
        lifetime=None,
        parent_hash=leaf_parent_hash,
        signature=b"",
    )
    signature = suite.sign_with_label(
        signature_priv, "LeafNodeTBS", new_leaf.to_be_signed(group_id, sender)
    )
    new_leaf = replace(new_leaf, signature=signature)
    tree.set_leaf(sender, new_leaf)
    context = context_for(tree.tree_hash(suite))
    exclude = frozenset(tm.leaf_to_node(i) for i in new_members)
    path_nodes = []
    for (p, c), pub in zip(filtered, public_keys, strict=True):
        ciphertexts = []
        for x in tree.resolution(c, exclude):
            key = tree.encryption_key(x)
            assert key is not None  # resolutions hold non-blank nodes only
            kem_output, ct = suite.encrypt_with_label(
                key, _LABEL, context, secrets[p], randomness=random(32)
            )
            ciphertexts.append(HPKECiphertext(kem_output, ct))
        path_nodes.append(UpdatePathNode(pub, tuple(ciphertexts)))
    keys[tm.leaf_to_node(sender)] = leaf_priv
    return UpdatePath(new_leaf, tuple(path_nodes)), PathResult(commit_secret, keys, secrets)


def apply_update_path(
    suite: CipherSuite,
    tree: RatchetTree,
    sender: int,
    path: UpdatePath,
    group_id: bytes,
    receiver: int,
    private_keys: dict[int, bytes],
    context_for: Callable[[bytes], bytes],
    new_members: Collection[int] = (),
) -> PathResult:
    """Verify a received UpdatePath, merge it into ``tree`` and decrypt our path secret
    (RFC 9420 §12.4.2).

    Args:
        suite: the group's cipher suite.
        tree: the tree after the commit's proposals; modified in place.
        sender: the committer's leaf index.
        path: the received UpdatePath.
        group_id: the group id.
        receiver: our leaf index.
        private_keys: HPKE private keys we hold, by node index (our leaf and path nodes).
        context_for: maps the new tree hash to the serialized provisional GroupContext.
        new_members: leaf indices added by this commit.

    Returns:
        The commit secret and the private keys/path secrets we learn.

    Raises:
        ValidationError: wrong leaf source or parent hash, wrong path length, or no
            ciphertext for us.
        CryptoError: the leaf signature or the HPKE decryption fails, or a derived public key
            does not match the UpdatePath.
    """
    if sender == receiver:
        raise ValidationError("cannot apply our own UpdatePath")
    leaf = path.leaf_node
    # RFC 9420 §7.3 / §12.4.2: a committer's leaf is sourced "commit" and signed in place.
    if leaf.leaf_node_source != LeafNodeSource.COMMIT or leaf.parent_hash is None:
        raise ValidationError("UpdatePath leaf node must have source commit")
    verify_leaf_signature(suite, leaf, group_id, sender)
    # Copath resolutions are computed before the merge (the merge only touches the path).
    filtered = tree.filtered_direct_path(sender)
    resolutions = [
        tree.resolution(c, frozenset(map(tm.leaf_to_node, new_members))) for _, c in filtered
    ]
    _, leaf_parent_hash = _merge_path(suite, tree, sender, [n.encryption_key for n in path.nodes])
    if leaf_parent_hash != leaf.parent_hash:
        raise ValidationError("UpdatePath leaf parent hash mismatch")  # RFC 9420 §7.9.2
    tree.set_leaf(sender, leaf)
    context = context_for(tree.tree_hash(suite))
    receiver_node = tm.leaf_to_node(receiver)
    for i, (p, _) in enumerate(filtered):
        if receiver_node not in _subtree_leaves(p, tree.n_leaves):
            continue
        node = path.nodes[i]
        resolution = resolutions[i]
        if len(node.encrypted_path_secret) != len(resolution):
            raise ValidationError("UpdatePathNode ciphertext count differs from the resolution")
        j = next((k for k, x in enumerate(resolution) if x in private_keys), None)
        if j is None:
            raise ValidationError("no ciphertext in the UpdatePath for us")
        ct = node.encrypted_path_secret[j]
        secret = suite.decrypt_with_label(
            private_keys[resolution[j]], _LABEL, context, ct.kem_output, ct.ciphertext
        )
        nodes = [q for q, _ in filtered]
        secrets, keys, public, commit_secret = _derive_path(suite, nodes, i, secret)
        for q, sent in zip(nodes[i:], path.nodes[i:], strict=True):
            # RFC 9420 §12.4.2: the derived public keys must match those sent.
            if public[q] != sent.encryption_key:
                raise CryptoError("derived path key does not match the UpdatePath")
        return PathResult(commit_secret, keys, secrets)
    raise ValidationError("receiver is not below the sender's filtered direct path")


def _subtree_leaves(x: int, n_leaves: int) -> range:
    lvl = tm.level(x)
    start = x - ((1 << lvl) - 1)
    return range(start, x + (1 << lvl), 2)
