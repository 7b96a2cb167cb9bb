"""The cached tree hashes and resolutions of :class:`RatchetTree` against a from-scratch
reference.

The tree caches the hash and the resolution of every subtree and drops the cached values along
the path of each change. Hypothesis drives random sequences of every public mutation (add,
update, remove, blank a path, set or blank a parent with unmerged leaves, truncate, copy),
interleaved with queries that fill the cache at random moments; after every step each node's
cached tree hash, resolution and parent hash must equal the values computed by the
straightforward recursive definitions of RFC 9420 §4.1.1/§7.8/§7.9 written out below, which
share no code with the cache. A Group-level test checks the same after real commits.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from sealwire.mls import structs as s
from sealwire.mls import tree_math as tm
from sealwire.mls._tls import Writer
from sealwire.mls.crypto import CipherSuite, cipher_suite
from sealwire.mls.group import Group
from sealwire.mls.tree import RatchetTree
from tests.mls.test_group import Member as GroupMember
from tests.mls.test_group import rng, wire

SUITE = cipher_suite(1)


def _leaf(tag: int) -> s.LeafNode:
    return s.LeafNode(
        tag.to_bytes(32, "big"),
        bytes(32),
        s.Credential.basic(tag.to_bytes(4, "big")),
        s.Capabilities(cipher_suites=(1,)),
        s.LeafNodeSource.KEY_PACKAGE,
        lifetime=s.Lifetime(0, tag),
    )


def _ref_hash(
    suite: CipherSuite, nodes: tuple[s.Node | None, ...], x: int, removed: frozenset[int]
) -> bytes:
    """RFC 9420 §7.8 TreeHashInput, with ``removed`` leaves taken out (§7.9.1)."""
    node = nodes[x]
    w = Writer()
    if x % 2 == 0:
        leaf = None if node is None or x // 2 in removed else node.leaf
        w.u8(s.NodeType.LEAF).u32(x // 2)
        if leaf is None:
            w.u8(0)
        else:
            w.u8(1)
            leaf.write(w)
    else:
        parent = None if node is None else node.parent
        w.u8(s.NodeType.PARENT)
        if parent is None:
            w.u8(0)
        else:
            kept = tuple(i for i in parent.unmerged_leaves if i not in removed)
            w.u8(1)
            replace(parent, unmerged_leaves=kept).write(w)
        w.opaque(_ref_hash(suite, nodes, tm.left(x), removed))
        w.opaque(_ref_hash(suite, nodes, tm.right(x), removed))
    return suite.hash(w.bytes())


def _ref_parent_hash(suite: CipherSuite, nodes: tuple[s.Node | None, ...], p: int, c: int) -> bytes:
    node = nodes[p]
    assert node is not None and node.parent is not None
    sibling = _ref_hash(suite, nodes, c, frozenset(node.parent.unmerged_leaves))
    w = Writer().opaque(node.parent.encryption_key).opaque(node.parent.parent_hash)
    return suite.hash(w.opaque(sibling).bytes())


def _ref_resolution(nodes: tuple[s.Node | None, ...], x: int) -> list[int]:
    """RFC 9420 §4.1.1."""
    node = nodes[x]
    if node is not None:
        unmerged = node.parent.unmerged_leaves if node.parent is not None else ()
        return [x, *(2 * i for i in unmerged)]
    if x % 2 == 0:
        return []
    return _ref_resolution(nodes, tm.left(x)) + _ref_resolution(nodes, tm.right(x))


def _check(tree: RatchetTree) -> None:
    nodes = tree.nodes
    if not nodes:
        return
    for x in range(len(nodes)):
        assert tree.tree_hash(SUITE, x) == _ref_hash(SUITE, nodes, x, frozenset()), x
        expected = _ref_resolution(nodes, x)
        assert tree.resolution(x) == expected, x
        leaves = frozenset(range(0, len(nodes), 4))  # every other leaf node
        assert tree.resolution(x, leaves) == [y for y in expected if y not in leaves]
    assert tree.tree_hash(SUITE) == _ref_hash(SUITE, nodes, tm.root(tree.n_leaves), frozenset())
    for p in range(1, len(nodes), 2):
        if nodes[p] is not None:
            for c in (tm.left(p), tm.right(p)):
                assert tree.parent_hash(SUITE, p, c) == _ref_parent_hash(SUITE, nodes, p, c)
    # A fresh tree over the same nodes (empty cache) agrees too.
    assert RatchetTree(nodes).tree_hash(SUITE) == tree.tree_hash(SUITE)


OPS = ("add", "add", "update", "remove", "parent", "blank_parent", "blank_path", "truncate")


@settings(max_examples=120)
@given(st.data())
def test_cached_hashes_match_a_fresh_computation(data: st.DataObject) -> None:
    tree = RatchetTree()
    snapshots: list[tuple[RatchetTree, tuple[s.Node | None, ...]]] = []
    for tag in range(1, data.draw(st.integers(1, 30), label="steps") + 1):
        members = [i for i, _ in tree.leaves()]
        op = data.draw(st.sampled_from(OPS if members else ("add",)), label="op")
        if op == "add":
            tree.add_leaf(_leaf(tag))
        elif op == "update":
            tree.update_leaf(data.draw(st.sampled_from(members)), _leaf(tag))
        elif op == "remove" and len(members) > 1:
            tree.remove_leaf(data.draw(st.sampled_from(members)))
        elif op in ("parent", "blank_parent") and tree.n_leaves > 1:
            p = data.draw(st.sampled_from(range(1, len(tree.nodes), 2)), label="parent")
            if op == "blank_parent":
                tree.set_parent(p, None)
            else:
                k = tm.level(p)
                lo = (p >> (k + 1)) << k
                below = [i for i in members if lo <= i < lo + (1 << k)]
                unmerged = data.draw(
                    st.lists(st.sampled_from(below), unique=True) if below else st.just([])
                )
                tree.set_parent(
                    p,
                    s.ParentNode(
                        tag.to_bytes(32, "big"), bytes([tag % 256]), tuple(sorted(unmerged))
                    ),
                )
        elif op == "blank_path":
            tree.blank_path(data.draw(st.sampled_from(members)))
        elif op == "truncate":
            tree.truncate()
        if data.draw(st.booleans(), label="query"):
            _check(tree)  # fills the cache before the next mutation
        if data.draw(st.integers(0, 4), label="copy") == 0:
            # A copy (or a deep copy) must not share the cache with the original.
            twin = tree.copy() if data.draw(st.booleans()) else copy.deepcopy(tree)
            if data.draw(st.booleans(), label="swap"):
                tree, twin = twin, tree  # go on with the copy, keep the original still
            snapshots.append((twin, twin.nodes))
    _check(tree)
    for twin, nodes in snapshots:
        assert twin.nodes == nodes  # later changes of the other tree did not leak in
        _check(twin)


def test_nodes_is_a_read_only_snapshot() -> None:
    tree = RatchetTree()
    tree.add_leaf(_leaf(1))
    nodes = tree.nodes
    assert isinstance(nodes, tuple)
    before = tree.tree_hash(SUITE)
    tree.add_leaf(_leaf(2))
    assert nodes != tree.nodes and tree.tree_hash(SUITE) != before


def test_commit_rehashes_only_the_changed_path() -> None:
    # After the first full hash, changing one leaf recomputes one hash per level.
    tree = RatchetTree()
    for i in range(64):
        tree.add_leaf(_leaf(i + 1))
    tree.tree_hash(SUITE)
    calls = 0

    class Counting(CipherSuite):
        def hash(self, data: bytes) -> bytes:
            nonlocal calls
            calls += 1
            return super().hash(data)

    counting = Counting(**{f: getattr(SUITE, f) for f in ("value", "name", "kdf", "aead")})
    tree.tree_hash(counting)  # another suite object: the cache starts afresh
    assert calls == 127
    calls = 0
    tree.update_leaf(17, _leaf(100))
    tree.tree_hash(counting)
    assert calls == 7  # the leaf and its 6 ancestors


def _fresh_hash_agrees(group: Group) -> None:
    fresh = RatchetTree(group.tree.nodes)  # same nodes, nothing cached
    assert group.tree.tree_hash(group.suite) == fresh.tree_hash(group.suite)
    assert group.context.tree_hash == fresh.tree_hash(group.suite)
    fresh.verify_parent_hashes(group.suite)


def test_group_trees_agree_with_a_fresh_computation() -> None:
    # Commits, removes and adds through the Group façade, every member checked after each.
    members = [GroupMember(f"cache-{i}") for i in range(7)]
    groups = [members[0].create()]
    _, welcome = groups[0].commit(rng(b"c0"), add=[m.key_package for m in members[1:5]])
    assert welcome is not None
    groups += [m.join(welcome) for m in members[1:5]]
    steps: list[tuple[int, dict[str, object]]] = [
        (1, {}),
        (3, {"remove": [0]}),
        (2, {"add": [members[5].key_package]}),
        (4, {}),
        (1, {"remove": [2]}),
        (3, {"add": [members[6].key_package]}),
        (4, {}),
    ]
    for n, (committer, kwargs) in enumerate(steps):
        by_leaf = {g.leaf_index: g for g in groups}
        msg, welcome = by_leaf[committer].commit(rng(b"step%d" % n), **kwargs)  # type: ignore[arg-type]
        for g in groups:
            if g is not by_leaf[committer]:
                g.process(wire(msg))
        groups = [g for g in groups if g.active]
        if welcome is not None:
            joiner = members[5] if n == 2 else members[6]  # leaves 0, then 2
            groups.append(joiner.join(welcome))
        for g in groups:
            _fresh_hash_agrees(g)
        assert len({g.epoch_authenticator for g in groups}) == 1
