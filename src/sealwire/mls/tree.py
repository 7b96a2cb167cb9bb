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

    The nodes are private and change only through the methods below, each of which drops the
    cached tree hashes and resolutions of the changed node and of its ancestors (:meth:`_set`,
    :meth:`_resize`); see :meth:`tree_hash` and :meth:`resolution`.

    Args:
        nodes: the nodes, possibly without trailing blanks; they are padded to full width.

    Raises:
        ValidationError: a leaf position holds a parent node or vice versa.
    """

    __slots__ = ("_hash_suite", "_hashes", "_nodes", "_resolutions")

    def __init__(self, nodes: Sequence[Node | None] = ()) -> None:
        n = _full_leaf_count(len(nodes)) if nodes else 0
        self._nodes: list[Node | None] = list(nodes) + [None] * (tm.node_width(n) - len(nodes))
        for i, node in enumerate(self._nodes):
            if node is None:
                continue
            # RFC 9420 §7.8: leaves at even indices, parents at odd ones.
            if (node.leaf is not None) != tm.is_leaf(i):
                raise ValidationError(f"node {i} has the wrong node type")
        # _hashes[x] is the tree hash of the subtree at x under _hash_suite, _resolutions[x] the
        # resolution of x; None when not known. Both depend on x's subtree only, so a cached
        # value equals a computation from scratch as long as every change of a node y clears
        # the entries of y and of all its ancestors (the only nodes whose subtree holds y).
        self._hashes: list[bytes | None] = [None] * len(self._nodes)
        self._hash_suite: CipherSuite | None = None
        self._resolutions: list[tuple[int, ...] | None] = [None] * len(self._nodes)

    @property
    def nodes(self) -> tuple[Node | None, ...]:
        """The nodes in node order, full width (a snapshot: change them with the methods)."""
        return tuple(self._nodes)

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
        end = len(self._nodes)
        while end and self._nodes[end - 1] is None:
            end -= 1
        return self._nodes[:end]

    def copy(self) -> RatchetTree:
        """An independent copy sharing the immutable nodes and cached values (bytes, tuples)."""
        other = RatchetTree.__new__(RatchetTree)
        other._nodes = list(self._nodes)
        other._hashes = list(self._hashes)
        other._hash_suite = self._hash_suite
        other._resolutions = list(self._resolutions)
        return other

    # -- accessors ----------------------------------------------------------------------------

    @property
    def n_leaves(self) -> int:
        """Leaf count of the full tree (a power of two, or 0)."""
        return (len(self._nodes) + 1) // 2

    def leaf(self, leaf_index: int) -> LeafNode | None:
        """The leaf node at ``leaf_index`` or ``None`` if blank."""
        node = self._nodes[tm.leaf_to_node(leaf_index)]
        return None if node is None else node.leaf

    def parent_node(self, node_index: int) -> ParentNode | None:
        """The parent node at node index ``node_index`` or ``None`` if blank."""
        node = self._nodes[node_index]
        return None if node is None else node.parent

    def encryption_key(self, node_index: int) -> bytes | None:
        """The HPKE public key held at ``node_index`` (leaf or parent), ``None`` if blank."""
        node = self._nodes[node_index] if node_index < len(self._nodes) else None
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

    # -- the only mutators of _nodes ----------------------------------------------------------

    def _set(self, index: int, node: Node | None) -> None:
        self._nodes[index] = node
        # The subtrees that contain `index` are those of its ancestors: drop their entries.
        hashes = self._hashes
        resolutions = self._resolutions
        x = index
        k = tm.level(x)
        top = tm.root(self.n_leaves)
        while True:
            hashes[x] = None
            resolutions[x] = None
            if x == top:
                break
            x = (x | (1 << k)) & ~(1 << (k + 1))  # parent (Appendix C), at level k + 1
            k += 1

    def _resize(self, n_leaves: int) -> None:
        """Grow with blank nodes or cut to the width of ``n_leaves`` leaves (RFC 9420 §7.7).

        Nodes that stay keep their subtree, hence their cached values; a new root starts
        uncached.
        """
        width = tm.node_width(n_leaves)
        if width >= len(self._nodes):
            grow = width - len(self._nodes)
            self._nodes += [None] * grow
            self._hashes += [None] * grow
            self._resolutions += [None] * grow
        else:
            del self._nodes[width:]
            del self._hashes[width:]
            del self._resolutions[width:]

    # -- node updates -------------------------------------------------------------------------

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
        full = self._resolution(x)
        return [y for y in full if y not in exclude] if exclude else list(full)

    def _resolution(self, x: int) -> tuple[int, ...]:
        # Cached per node (see __init__): a blank subtree costs its size once, not per call.
        # Excluding nodes commutes with the recursion, so `resolution` filters afterwards.
        cached = self._resolutions[x]
        if cached is None:
            node = self._nodes[x]
            if node is not None:
                cached = (x,)
                if node.parent is not None:
                    cached += tuple(tm.leaf_to_node(i) for i in node.parent.unmerged_leaves)
            elif tm.is_leaf(x):
                cached = ()
            else:
                cached = self._resolution(tm.left(x)) + self._resolution(tm.right(x))
            self._resolutions[x] = cached
        return cached

    # -- tree hash (RFC 9420 §7.8) ------------------------------------------------------------

    def tree_hash(self, suite: CipherSuite, x: int | None = None) -> bytes:
        """The tree hash of the subtree at node ``x`` (default: the root; RFC 9420 §7.8).

        Subtree hashes are cached per node and dropped along the path of every change, so
        after a change of ``k`` nodes the root hash costs ``O(k log n)`` hashes.
        """
        if not self._nodes:
            raise LocalError("an empty tree has no hash")
        if x is None:
            x = tm.root(self.n_leaves)
        self._bind(suite)
        return self._cached_hash(suite, x)

    def _bind(self, suite: CipherSuite) -> None:
        # The cache holds hashes under one suite; another suite starts it afresh.
        if suite != self._hash_suite:
            self._hashes = [None] * len(self._nodes)
            self._hash_suite = suite

    def _cached_hash(self, suite: CipherSuite, x: int) -> bytes:
        digest = self._hashes[x]
        if digest is None:
            digest = self._compute_hash(suite, x, frozenset())
            self._hashes[x] = digest
        return digest

    def _compute_hash(self, suite: CipherSuite, x: int, removed: frozenset[int]) -> bytes:
        # `removed` (leaf indices) implements the "original sibling" tree of §7.9.1: those
        # leaves blanked and dropped from every unmerged_leaves list.
        node = self._nodes[x]
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
            w.opaque(self._subtree_hash(suite, tm.left(x), removed))
            w.opaque(self._subtree_hash(suite, tm.right(x), removed))
        return suite.hash(w.bytes())

    def _subtree_hash(self, suite: CipherSuite, x: int, removed: frozenset[int]) -> bytes:
        """Tree hash of ``x`` with ``removed`` leaves taken out; a subtree holding none of
        them has its ordinary (cached) hash."""
        if removed:
            k = tm.level(x)
            lo = (x >> (k + 1)) << k  # leaves lo .. lo + 2^k - 1 are below x
            if any(lo <= i < lo + (1 << k) for i in removed):
                return self._compute_hash(suite, x, removed)
        return self._cached_hash(suite, x)

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
        self._bind(suite)
        sibling_hash = self._subtree_hash(suite, copath_child, frozenset(parent.unmerged_leaves))
        w = Writer().opaque(parent.encryption_key).opaque(parent.parent_hash)
        return suite.hash(w.opaque(sibling_hash).bytes())

    def _node_parent_hash(self, x: int) -> bytes | None:
        node = self._nodes[x]
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
        for p in range(1, len(self._nodes), 2):
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
        nodes = self._nodes
        index = next((x // 2 for x in range(0, len(nodes), 2) if nodes[x] is None), None)
        if index is None:
            # RFC 9420 §7.7: double the tree; the old root becomes the new root's left child.
            index = self.n_leaves
            self._resize(2 * index if index else 1)
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
            self._resize(half)


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
