"""The ratchet tree (RFC 9420 §4, §7) against the official ``tree-validation`` and
``tree-operations`` vectors, plus tampering checks.

``tree-validation``: ``{cipher_suite, tree, group_id, resolutions[node][], tree_hashes[node]}``;
the tree must be parent-hash valid and every leaf signature must verify.
``tree-operations``: ``{cipher_suite, tree_before, proposal, proposal_sender, tree_after,
tree_hash_before, tree_hash_after}``; ``proposal`` is a serialized ``Proposal``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from sealwire.mls import structs as s
from sealwire.mls._tls import Reader
from sealwire.mls.crypto import cipher_suite
from sealwire.mls.errors import CryptoError, ValidationError
from sealwire.mls.tree import RatchetTree
from tests.mls.vectors import cases, h


@pytest.mark.vectors
@pytest.mark.parametrize("case", cases("tree-validation"))
def test_tree_validation_vectors(case: dict[str, Any]) -> None:
    suite = cipher_suite(case["cipher_suite"])
    tree = RatchetTree.decode(h(case["tree"]))
    assert tree.encode() == h(case["tree"])
    assert len(case["tree_hashes"]) == len(tree.nodes)
    for x, expected in enumerate(case["tree_hashes"]):
        assert tree.tree_hash(suite, x).hex() == expected, x
    for x, expected in enumerate(case["resolutions"]):
        assert tree.resolution(x) == expected, x
    assert tree.is_parent_hash_valid(suite)
    tree.verify_leaf_signatures(suite, h(case["group_id"]))


def _first_parent(tree: RatchetTree) -> int | None:
    return next((i for i in range(1, len(tree.nodes), 2) if tree.nodes[i] is not None), None)


@pytest.mark.vectors
def test_tree_validation_rejects_tampering() -> None:
    checked = 0
    for param in cases("tree-validation"):
        case = param.values[0]
        suite = cipher_suite(case["cipher_suite"])
        group_id = h(case["group_id"])
        tree = RatchetTree.decode(h(case["tree"]))
        # A wrong group id breaks the signature of every update/commit-sourced leaf.
        idx, leaf = next(tree.leaves())
        bad = tree.copy()
        bad.set_leaf(idx, replace(leaf, signature=bytes(64)))
        with pytest.raises(CryptoError):
            bad.verify_leaf_signatures(suite, group_id)
        p = _first_parent(tree)
        if p is not None:
            parent = tree.parent_node(p)
            assert parent is not None
            bad = tree.copy()
            bad.set_parent(p, replace(parent, encryption_key=bytes(len(parent.encryption_key))))
            with pytest.raises(ValidationError):
                bad.verify_parent_hashes(suite)
            checked += 1
    assert checked > 0


@pytest.mark.vectors
@pytest.mark.parametrize("case", cases("tree-operations"))
def test_tree_operations_vectors(case: dict[str, Any]) -> None:
    suite = cipher_suite(case["cipher_suite"])
    tree = RatchetTree.decode(h(case["tree_before"]))
    assert tree.tree_hash(suite).hex() == case["tree_hash_before"]
    r = Reader(h(case["proposal"]))
    proposal = s.read_proposal(r)
    r.finish()
    if isinstance(proposal, s.Add):
        tree.add_leaf(proposal.key_package.leaf_node)
    elif isinstance(proposal, s.Update):
        tree.update_leaf(case["proposal_sender"], proposal.leaf_node)
    else:
        assert isinstance(proposal, s.Remove)
        tree.remove_leaf(proposal.removed)
    assert tree.encode() == h(case["tree_after"])
    assert tree.tree_hash(suite).hex() == case["tree_hash_after"]


def test_remove_blank_leaf_is_rejected() -> None:
    case = cases("tree-operations")[0].values[0]
    tree = RatchetTree.decode(h(case["tree_before"]))
    with pytest.raises(ValidationError):
        tree.remove_leaf(tree.n_leaves + 5)
