"""Tree arithmetic (RFC 9420 Appendix C) against the official tree-math vectors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sealwire.mls import tree_math as tm
from sealwire.mls.errors import LocalError
from tests.mls.vectors import load


def _or_none(f: Callable[..., int], *args: int) -> int | None:
    try:
        return f(*args)
    except LocalError:
        return None


@pytest.mark.vectors
@pytest.mark.parametrize("case", load("tree-math"), ids=lambda c: f"n{c['n_leaves']}")
def test_tree_math_vectors(case: dict[str, Any]) -> None:
    n = case["n_leaves"]
    assert tm.node_width(n) == case["n_nodes"]
    assert tm.root(n) == case["root"]
    for x in range(case["n_nodes"]):
        assert _or_none(tm.left, x) == case["left"][x]
        assert _or_none(tm.right, x) == case["right"][x]
        assert _or_none(tm.parent, x, n) == case["parent"][x]
        assert _or_none(tm.sibling, x, n) == case["sibling"][x]


def test_small_tree_paths() -> None:
    # Eight leaves (RFC 9420 §4.2 figure): root 7, leaf A = node 0.
    assert tm.direct_path(0, 8) == [1, 3, 7]
    assert tm.copath(0, 8) == [2, 5, 11]
    assert tm.direct_path(10, 8) == [9, 11, 7]
    assert tm.copath(10, 8) == [8, 13, 3]
    assert tm.direct_path(7, 8) == [] and tm.copath(7, 8) == []
    assert tm.level(7) == 3 and tm.level(0) == 0 and tm.level(5) == 1
    assert (tm.leaf_to_node(5), tm.node_to_leaf(10)) == (10, 5)
    assert tm.is_leaf(4) and not tm.is_leaf(3)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 32])
def test_common_ancestor_is_the_lowest_shared_path_node(n: int) -> None:
    width = tm.node_width(n)
    for x in range(width):
        for y in range(width):
            px = [x, *tm.direct_path(x, n)]
            py = [y, *tm.direct_path(y, n)]
            expected = next(a for a in px if a in py)
            assert tm.common_ancestor(x, y) == expected


def test_invalid_queries_are_local_errors() -> None:
    for call in [
        lambda: tm.root(3),  # MLS trees are full: leaf counts are powers of two
        lambda: tm.root(0),
        lambda: tm.parent(7, 8),  # the root has no parent
        lambda: tm.parent(15, 8),  # outside the tree
        lambda: tm.left(4),
        lambda: tm.right(0),
        lambda: tm.node_to_leaf(3),
        lambda: tm.direct_path(-1, 4),
    ]:
        with pytest.raises(LocalError):
            call()
