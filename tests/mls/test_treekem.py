"""TreeKEM (RFC 9420 §7.4-§7.6, §12.4.2) against the official ``treekem`` vectors.

``treekem``: ``{cipher_suite, group_id, epoch, confirmed_transcript_hash, ratchet_tree,
leaves_private[{index, encryption_priv, signature_priv, path_secrets[{node, path_secret}]}],
update_paths[{sender, update_path, path_secrets[leaf] (null for the sender and blank leaves),
commit_secret, tree_hash_after}]}``. The provisional GroupContext used for encryption has the
case's group id, epoch and confirmed transcript hash, the tree hash after merging the path and
no extensions.

For every update path and every leaf with private keys we merge and decrypt, checking the
path secret, commit secret and tree hash; then each private leaf creates a new UpdatePath
(with fixed randomness) which every other private leaf processes to the same commit secret.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from sealwire.mls import structs as s
from sealwire.mls import tree_math as tm
from sealwire.mls._tls import decode, encode
from sealwire.mls.crypto import CipherSuite, cipher_suite
from sealwire.mls.errors import CryptoError, MLSError, ValidationError
from sealwire.mls.tree import RatchetTree
from sealwire.mls.treekem import apply_update_path, create_update_path, node_key_pair
from tests.mls.vectors import cases, h


def _context_for(case: dict[str, Any]) -> Callable[[bytes], bytes]:
    def context_for(tree_hash: bytes) -> bytes:
        return encode(
            s.GroupContext(
                case["cipher_suite"],
                h(case["group_id"]),
                case["epoch"],
                tree_hash,
                h(case["confirmed_transcript_hash"]),
            )
        )

    return context_for


def _private_keys(suite: CipherSuite, leaf: dict[str, Any]) -> dict[int, bytes]:
    keys = {tm.leaf_to_node(leaf["index"]): h(leaf["encryption_priv"])}
    for entry in leaf["path_secrets"]:
        keys[entry["node"]] = node_key_pair(suite, h(entry["path_secret"]))[0]
    return keys


def _random(seed: bytes) -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: hashlib.shake_256(seed + next(counter).to_bytes(4, "big")).digest(n)


@pytest.mark.vectors
@pytest.mark.parametrize("case", cases("treekem"))
def test_treekem_vectors(case: dict[str, Any]) -> None:
    suite = cipher_suite(case["cipher_suite"])
    group_id = h(case["group_id"])
    base = RatchetTree.decode(h(case["ratchet_tree"]))
    context_for = _context_for(case)
    # The private keys match the public tree.
    for leaf in case["leaves_private"]:
        for node, priv in _private_keys(suite, leaf).items():
            public = base.encryption_key(node)
            assert suite.hpke_public_key(priv) == public

    for up in case["update_paths"]:
        path = decode(s.UpdatePath, h(up["update_path"]))
        sender = up["sender"]
        for leaf in case["leaves_private"]:
            if leaf["index"] == sender:
                continue
            tree = base.copy()
            result = apply_update_path(
                suite,
                tree,
                sender,
                path,
                group_id,
                leaf["index"],
                _private_keys(suite, leaf),
                context_for,
            )
            assert tree.tree_hash(suite).hex() == up["tree_hash_after"]
            assert result.commit_secret.hex() == up["commit_secret"]
            lowest = next(iter(result.path_secrets))  # bottom-up order: the common ancestor
            assert result.path_secrets[lowest].hex() == up["path_secrets"][leaf["index"]]
            assert tree.is_parent_hash_valid(suite)

    # Each private leaf creates a fresh UpdatePath that every other one can process.
    for creator in case["leaves_private"]:
        tree = base.copy()
        leaf_node = tree.leaf(creator["index"])
        assert leaf_node is not None
        seed = bytes([creator["index"]])
        path, created = create_update_path(
            suite,
            tree,
            creator["index"],
            leaf_node,
            h(creator["signature_priv"]),
            group_id,
            hashlib.sha256(b"path" + seed).digest(),
            hashlib.sha256(b"leaf" + seed).digest(),
            context_for,
            _random(seed),
        )
        assert tree.is_parent_hash_valid(suite)
        tree.verify_leaf_signatures(suite, group_id)
        for receiver in case["leaves_private"]:
            if receiver["index"] == creator["index"]:
                continue
            other = base.copy()
            got = apply_update_path(
                suite,
                other,
                creator["index"],
                decode(s.UpdatePath, encode(path)),
                group_id,
                receiver["index"],
                _private_keys(suite, receiver),
                context_for,
            )
            assert got.commit_secret == created.commit_secret
            assert other.encode() == tree.encode()


def _first_case() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    for param in cases("treekem"):
        case = param.values[0]
        for up in case["update_paths"]:
            for leaf in case["leaves_private"]:
                if leaf["index"] != up["sender"] and up["path_secrets"][leaf["index"]]:
                    return case, up, leaf
    raise AssertionError("no usable case")


def _apply(case: dict[str, Any], up: dict[str, Any], leaf: dict[str, Any], path: Any) -> None:
    suite = cipher_suite(case["cipher_suite"])
    apply_update_path(
        suite,
        RatchetTree.decode(h(case["ratchet_tree"])),
        up["sender"],
        path,
        h(case["group_id"]),
        leaf["index"],
        _private_keys(suite, leaf),
        _context_for(case),
    )


def test_tampered_update_paths_are_rejected() -> None:
    case, up, leaf = _first_case()
    path = decode(s.UpdatePath, h(up["update_path"]))
    _apply(case, up, leaf, path)
    bad_sig = replace(path, leaf_node=replace(path.leaf_node, signature=bytes(64)))
    with pytest.raises(CryptoError):
        _apply(case, up, leaf, bad_sig)
    first = path.nodes[0]
    swapped_key = replace(
        path,
        nodes=(replace(first, encryption_key=first.encryption_key[::-1]), *path.nodes[1:]),
    )
    with pytest.raises(MLSError):  # parent hash (ValidationError) or signature (CryptoError)
        _apply(case, up, leaf, swapped_key)
    with pytest.raises(ValidationError):
        _apply(case, up, leaf, replace(path, nodes=path.nodes[:-1]))
