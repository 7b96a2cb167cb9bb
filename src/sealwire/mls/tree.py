"""The ratchet tree (RFC 9420 §4, §7): nodes, tree hash, parent hash, resolution and the tree
operations proposals perform.

A :class:`RatchetTree` is the array of optional :class:`~sealwire.mls.structs.Node` in node
order (see :mod:`.tree_math`), always kept at full width ``2n - 1`` for a power-of-two leaf
count ``n``; the wire form (:meth:`RatchetTree.encode`) drops trailing blank nodes
(RFC 9420 §12.4.3.3) and :meth:`RatchetTree.decode` pads them back.

Public-state only: HPKE private keys live with the member (TreeKEM), not here. Checks on peer
input raise :class:`~sealwire.mls.errors.ValidationError` (structure) or
:class:`~sealwire.mls.errors.CryptoError` (signatures).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from . import tree_math as tm
from ._tls import Reader, Writer
from .crypto import CipherSuite
from .errors import LocalError, ValidationError
from .structs import (
    LeafNode,
    Node,
    NodeType,
    ParentNode,
    read_ratchet_tree,
    write_ratchet_tree,
)

__all__ = ["RatchetTree", "verify_leaf_signature"]


def _write(w: Writer, item: LeafNode | ParentNode) -> None:
    item.write(w)


def _full_leaf_count(n_nodes: int) -> int:
    leaves = (n_nodes + 1) // 2
    n = 1
    while n < leaves:
        n *= 2
    return n


class RatchetTree:
    """A ratchet tree: node ``i`` is ``nodes[i]`` (``None`` when blank).

    Args:
        nodes: the nodes, possibly without trailing blanks; they are padded to full width.

    Raises:
        ValidationError: a leaf position holds a parent node or vice versa.
    """

    __slots__ = ("_hash_cache", "nodes")

    def __init__(self, nodes: Sequence[Node | None] = ()) -> None:
        n = _full_leaf_count(len(nodes)) if nodes else 0
        self.nodes: list[Node | None] = list(nodes) + [None] * (tm.node_width(n) - len(nodes))
        for i, node in enumerate(self.nodes):
            if node is None:
                continue
            # RFC 9420 §7.8: leaves at even indices, parents at odd ones.
            if (node.leaf is not None) != tm.is_leaf(i):
                raise ValidationError(f"node {i} has the wrong node type")
        self._hash_cache: dict[int, bytes] = {}

    # -- wire form ----------------------------------------------------------------------------

    @classmethod
    def decode(cls, data: bytes) -> RatchetTree:
        """Parse a serialized ``optional<Node> ratchet_tree<V>``.

        Raises:
            DecodeError: invalid encoding.
            ValidationError: node types in the wrong positions.
        """
        r = Reader(data)
        nodes = read_ratchet_tree(r)
        r.finish()
        return cls(nodes)

    def encode(self) -> bytes:
        """Serialize as ``optional<Node> ratchet_tree<V>`` without trailing blanks."""
        w = Writer()
        write_ratchet_tree(w, self._trimmed())
        return w.bytes()

    def _trimmed(self) -> list[Node | None]:
        end = len(self.nodes)
        while end and self.nodes[end - 1] is None:
            end -= 1
        return self.nodes[:end]

    def copy(self) -> RatchetTree:
        """A copy sharing the (immutable) nodes."""
        return RatchetTree(self.nodes)

    # -- accessors ----------------------------------------------------------------------------

    @property
    def n_leaves(self) -> int:
        """Leaf count of the full tree (a power of two, or 0)."""
        return (len(self.nodes) + 1) // 2

    def leaf(self, leaf_index: int) -> LeafNode | None:
        """The leaf node at ``leaf_index`` or ``None`` if blank."""
        node = self.nodes[tm.leaf_to_node(leaf_index)]
        return None if node is None else node.leaf

    def parent_node(self, node_index: int) -> ParentNode | None:
        """The parent node at node index ``node_index`` or ``None`` if blank."""
        node = self.nodes[node_index]
        return None if node is None else node.parent

    def encryption_key(self, node_index: int) -> bytes | None:
        """The HPKE public key held at ``node_index`` (leaf or parent), ``None`` if blank."""
        node = self.nodes[node_index] if node_index < len(self.nodes) else None
        if node is None:
            return None
        if node.leaf is not None:
            return node.leaf.encryption_key
        assert node.parent is not None
        return node.parent.encryption_key

    def leaves(self) -> Iterator[tuple[int, LeafNode]]:
        """``(leaf_index, leaf)`` for every non-blank leaf."""
        for i in range(self.n_leaves):
            leaf = self.leaf(i)
            if leaf is not None:
                yield i, leaf

    def _set(self, index: int, node: Node | None) -> None:
        self.nodes[index] = node
        self._hash_cache.clear()

    def set_leaf(self, leaf_index: int, leaf: LeafNode | None) -> None:
        """Replace (or blank) the leaf at ``leaf_index``."""
        self._set(tm.leaf_to_node(leaf_index), None if leaf is None else Node(leaf=leaf))

    def set_parent(self, node_index: int, parent: ParentNode | None) -> None:
        """Replace (or blank) the parent node at ``node_index``."""
        self._set(node_index, None if parent is None else Node(parent=parent))

    def direct_path(self, leaf_index: int) -> list[int]:
        """Node indices of the direct path of leaf ``leaf_index`` (RFC 9420 §4.1.2)."""
        return tm.direct_path(tm.leaf_to_node(leaf_index), self.n_leaves)

    def copath(self, leaf_index: int) -> list[int]:
        """Node indices of the copath of leaf ``leaf_index`` (RFC 9420 §4.1.2)."""
        return tm.copath(tm.leaf_to_node(leaf_index), self.n_leaves)

    def filtered_direct_path(self, leaf_index: int) -> list[tuple[int, int]]:
        """``(parent, copath_child)`` pairs of the filtered direct path (RFC 9420 §4.1.2):
        direct-path nodes whose copath child has a non-empty resolution."""
        return [
            (p, c)
            for p, c in zip(self.direct_path(leaf_index), self.copath(leaf_index), strict=True)
            if self.resolution(c)
        ]

    # -- resolution (RFC 9420 §4.1.1) ---------------------------------------------------------

    def resolution(self, x: int, exclude: frozenset[int] = frozenset()) -> list[int]:
        """The resolution of node ``x`` as node indices (RFC 9420 §4.1.1).

        Args:
            x: node index.
            exclude: leaf *node* indices to leave out (new members, RFC 9420 §12.4.2).

        Returns:
            Node indices, left to right.
        """
        node = self.nodes[x]
        if node is not None:
            out = [] if x in exclude else [x]
            if node.parent is not None:
                out += [
                    tm.leaf_to_node(i)
                    for i in node.parent.unmerged_leaves
                    if tm.leaf_to_node(i) not in exclude
                ]
            return out
        if tm.is_leaf(x):
            return []
        return self.resolution(tm.left(x), exclude) + self.resolution(tm.right(x), exclude)

    # -- tree hash (RFC 9420 §7.8) ------------------------------------------------------------

    def tree_hash(self, suite: CipherSuite, x: int | None = None) -> bytes:
        """The tree hash of the subtree at node ``x`` (default: the root; RFC 9420 §7.8)."""
        if not self.nodes:
            raise LocalError("an empty tree has no hash")
        if x is None:
            x = tm.root(self.n_leaves)
        cached = self._hash_cache.get(x)
        if cached is None:
            cached = self._tree_hash(suite, x, frozenset())
            self._hash_cache[x] = cached
        return cached

    def _tree_hash(self, suite: CipherSuite, x: int, removed: frozenset[int]) -> bytes:
        # `removed` (leaf indices) implements the "original sibling" tree of §7.9.1.
        if not removed and x in self._hash_cache:
            return self._hash_cache[x]
        node = self.nodes[x]
        w = Writer()
        if tm.is_leaf(x):
            leaf_index = tm.node_to_leaf(x)
            leaf = None if node is None or leaf_index in removed else node.leaf
            w.u8(NodeType.LEAF).u32(leaf_index).optional(leaf, _write)
        else:
            parent = None if node is None else node.parent
            if parent is not None and removed:
                kept = tuple(i for i in parent.unmerged_leaves if i not in removed)
                parent = replace(parent, unmerged_leaves=kept)
            w.u8(NodeType.PARENT).optional(parent, _write)
            w.opaque(self._tree_hash(suite, tm.left(x), removed))
            w.opaque(self._tree_hash(suite, tm.right(x), removed))
        digest = suite.hash(w.bytes())
        if not removed:
            self._hash_cache[x] = digest
        return digest

    # -- parent hash (RFC 9420 §7.9) ----------------------------------------------------------

    def parent_hash(self, suite: CipherSuite, p: int, copath_child: int) -> bytes:
        """The parent hash of parent node ``p`` with co-path child ``copath_child``: the value
        its other child (on the path) carries (RFC 9420 §7.9.1).

        Raises:
            LocalError: ``p`` is blank.
        """
        parent = self.parent_node(p)
        if parent is None:
            raise LocalError(f"parent node {p} is blank")
        sibling_hash = self._tree_hash(suite, copath_child, frozenset(parent.unmerged_leaves))
        w = Writer().opaque(parent.encryption_key).opaque(parent.parent_hash)
        return suite.hash(w.opaque(sibling_hash).bytes())

    def _node_parent_hash(self, x: int) -> bytes | None:
        node = self.nodes[x]
        if node is None:
            return None
        if node.parent is not None:
            return node.parent.parent_hash
        assert node.leaf is not None
        return node.leaf.parent_hash

    def is_parent_hash_valid(self, suite: CipherSuite) -> bool:
        """Whether every non-blank parent node is parent-hash valid (RFC 9420 §7.9.2).

        ``P`` is valid when, for one child ``C`` with sibling ``S``, some node ``D`` of the
        resolution of ``C`` that is not among ``P``'s unmerged leaves carries
        ``ParentHash(P, S)``.
        """
        for p in range(1, len(self.nodes), 2):
            parent = self.parent_node(p)
            if parent is None:
                continue
            unmerged = frozenset(tm.leaf_to_node(i) for i in parent.unmerged_leaves)
            valid = False
            for child, other in ((tm.left(p), tm.right(p)), (tm.right(p), tm.left(p))):
                expected = self.parent_hash(suite, p, other)
                if any(
                    self._node_parent_hash(d) == expected
                    for d in self.resolution(child, exclude=unmerged)
                ):
                    valid = True
                    break
            if not valid:
                return False
        return True

    def verify_parent_hashes(self, suite: CipherSuite) -> None:
        """Raise :class:`ValidationError` unless :meth:`is_parent_hash_valid` holds."""
        if not self.is_parent_hash_valid(suite):
            raise ValidationError("ratchet tree is not parent-hash valid")

    def verify_leaf_signatures(self, suite: CipherSuite, group_id: bytes) -> None:
        """Verify every non-blank leaf's signature (RFC 9420 §7.2).

        Raises:
            CryptoError: a leaf signature does not verify.
        """
        for i, leaf in self.leaves():
            verify_leaf_signature(suite, leaf, group_id, i)

    # -- operations (RFC 9420 §7.7, §12.1) ----------------------------------------------------

    def add_leaf(self, leaf: LeafNode) -> int:
        """Insert ``leaf`` at the leftmost blank leaf, extending the tree if needed
        (RFC 9420 §7.7), and record it as unmerged on its non-blank direct-path nodes.

        Returns:
            The new leaf's index.
        """
        index = next((i for i in range(self.n_leaves) if self.leaf(i) is None), None)
        if index is None:
            # RFC 9420 §7.7: double the tree; the old root becomes the new root's left child.
            index = self.n_leaves
            self.nodes += [None] * (len(self.nodes) + 1) if self.nodes else [None]
        self.set_leaf(index, leaf)
        for p in self.direct_path(index):
            parent = self.parent_node(p)
            if parent is not None:
                merged = tuple(sorted({*parent.unmerged_leaves, index}))
                self.set_parent(p, replace(parent, unmerged_leaves=merged))
        return index

    def blank_path(self, leaf_index: int) -> None:
        """Blank the direct path of ``leaf_index`` (RFC 9420 §12.1.2, §12.1.3)."""
        for p in self.direct_path(leaf_index):
            self._set(p, None)

    def update_leaf(self, leaf_index: int, leaf: LeafNode) -> None:
        """Apply an Update: replace the leaf and blank its direct path (RFC 9420 §12.1.2)."""
        self.set_leaf(leaf_index, leaf)
        self.blank_path(leaf_index)

    def remove_leaf(self, leaf_index: int) -> None:
        """Apply a Remove: blank the leaf and its direct path, then truncate (§12.1.3).

        Raises:
            ValidationError: the leaf is already blank or outside the tree.
        """
        if not 0 <= leaf_index < self.n_leaves or self.leaf(leaf_index) is None:
            raise ValidationError(f"Remove of blank or absent leaf {leaf_index}")
        self.set_leaf(leaf_index, None)
        self.blank_path(leaf_index)
        self.truncate()

    def truncate(self) -> None:
        """Halve the tree while its right half holds only blank leaves (RFC 9420 §7.7)."""
        while self.n_leaves > 1:
            half = self.n_leaves // 2
            if any(self.leaf(i) is not None for i in range(half, self.n_leaves)):
                break
            self.nodes = self.nodes[: tm.node_width(half)]
            self._hash_cache.clear()


def verify_leaf_signature(
    suite: CipherSuite, leaf: LeafNode, group_id: bytes, leaf_index: int
) -> None:
    """Verify a leaf node's signature over ``LeafNodeTBS`` (RFC 9420 §7.2).

    Raises:
        CryptoError: the signature does not verify.
    """
    suite.verify_with_label(
        leaf.signature_key, "LeafNodeTBS", leaf.to_be_signed(group_id, leaf_index), leaf.signature
    )
