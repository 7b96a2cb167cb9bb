"""Array-based binary tree arithmetic for MLS ratchet trees (RFC 9420 §4.2, §7.1, Appendix C).

Nodes are numbered left to right in in-order: leaves have even indices (leaf ``i`` is node
``2*i``), parents odd ones; the *level* of a node is the number of trailing one bits of its
index. MLS trees are always full (RFC 9420 §7.8): the leaf count ``n`` is a power of two, so the
tree has ``2*n - 1`` nodes and root ``n - 1``. Functions taking ``n`` (leaf count) check it.

Every function raises :class:`~sealwire.mls.errors.LocalError` when asked about a node that has
no such relative (a leaf's children, the root's parent) or lies outside the tree: these indices
come from our own tree state, so a bad one is a caller bug.
"""

from __future__ import annotations

from .errors import LocalError

__all__ = [
    "common_ancestor",
    "copath",
    "direct_path",
    "is_leaf",
    "leaf_to_node",
    "left",
    "level",
    "log2",
    "node_to_leaf",
    "node_width",
    "parent",
    "right",
    "root",
    "sibling",
]


def log2(x: int) -> int:
    """Floor of the binary logarithm of ``x`` (0 for ``x == 0``)."""
    return x.bit_length() - 1 if x > 0 else 0


def level(x: int) -> int:
    """Level of node ``x``: 0 for leaves, number of trailing one bits otherwise (App. C)."""
    if x < 0:
        raise LocalError("negative node index")
    k = 0
    while (x >> k) & 1:
        k += 1
    return k


def is_leaf(x: int) -> bool:
    """True for leaf nodes (even indices)."""
    return x % 2 == 0


def leaf_to_node(leaf_index: int) -> int:
    """Node index of leaf ``leaf_index`` (RFC 9420 §4.2: ``2 * leaf_index``)."""
    return 2 * leaf_index


def node_to_leaf(x: int) -> int:
    """Leaf index of leaf node ``x``."""
    if not is_leaf(x):
        raise LocalError(f"node {x} is not a leaf")
    return x // 2


def _check_n(n: int) -> None:
    if n < 1 or n & (n - 1):
        raise LocalError(f"leaf count {n} is not a positive power of two")


def node_width(n: int) -> int:
    """Number of nodes in a tree with ``n`` leaves (``2n - 1``; 0 for ``n == 0``)."""
    return 0 if n == 0 else 2 * (n - 1) + 1


def root(n: int) -> int:
    """Root node of a tree with ``n`` leaves (Appendix C)."""
    _check_n(n)
    return (1 << log2(node_width(n))) - 1


def _check_node(x: int, n: int) -> None:
    _check_n(n)
    if not 0 <= x < node_width(n):
        raise LocalError(f"node {x} is outside a tree of {n} leaves")


def left(x: int) -> int:
    """Left child of parent node ``x`` (Appendix C)."""
    k = level(x)
    if k == 0:
        raise LocalError(f"leaf node {x} has no children")
    return x ^ (1 << (k - 1))


def right(x: int) -> int:
    """Right child of parent node ``x`` (Appendix C; full trees only)."""
    k = level(x)
    if k == 0:
        raise LocalError(f"leaf node {x} has no children")
    return x ^ (3 << (k - 1))


def parent(x: int, n: int) -> int:
    """Parent of node ``x`` in a tree with ``n`` leaves (Appendix C)."""
    _check_node(x, n)
    if x == root(n):
        raise LocalError("the root has no parent")
    k = level(x)
    # Set bit k (making x a child at level k+1) and clear bit k+1 if x was a right child.
    b = (x >> (k + 1)) & 1
    return (x | (1 << k)) ^ (b << (k + 1))


def sibling(x: int, n: int) -> int:
    """The other child of ``x``'s parent (Appendix C)."""
    p = parent(x, n)
    return right(p) if x < p else left(p)


def direct_path(x: int, n: int) -> list[int]:
    """Parents of ``x`` from its parent up to and including the root (RFC 9420 §4.1.2)."""
    _check_node(x, n)
    r = root(n)
    path: list[int] = []
    while x != r:
        x = parent(x, n)
        path.append(x)
    return path


def copath(x: int, n: int) -> list[int]:
    """Siblings of ``x`` and of each node of its direct path except the root (§4.1.2)."""
    _check_node(x, n)
    if x == root(n):
        return []
    chain = [x, *direct_path(x, n)[:-1]]
    return [sibling(y, n) for y in chain]


def common_ancestor(x: int, y: int) -> int:
    """Lowest common ancestor of nodes ``x`` and ``y`` (their lowest shared direct-path node,
    or one of them if it is an ancestor of the other; Appendix C ``common_ancestor_direct``)."""
    lx, ly = level(x) + 1, level(y) + 1
    if lx <= ly and x >> ly == y >> ly:
        return y
    if ly <= lx and x >> lx == y >> lx:
        return x
    k = 0
    while x != y:
        x, y = x >> 1, y >> 1
        k += 1
    return (x << k) + (1 << (k - 1)) - 1
