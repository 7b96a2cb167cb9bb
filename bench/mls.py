"""MLS benchmark: commit create/process time by group size, in a fresh and in a steady-state
ratchet tree, and PrivateMessage protect/unprotect rates, for suite 1 (X25519/AES-128-GCM) and
the private X-Wing suite (0xF0A1).

Usage: python bench/mls.py [--quick] [--sizes 10,100,1000,5000] [--suites 1,0xf0a1]
                           [--trees fresh,steady] [--commits N] [--seconds S]

Per (suite, size), two trees, measured with the same two members, founder (leaf 0) and joiner
(leaf 1), which alternate: one creates a full commit (UpdatePath, no proposals) through
``Group.commit``, the other runs it through ``Group.process``; medians over ``--commits``.

* fresh: the founder adds ``size - 1`` members in one commit without a path and leaf 1 joins
  from the Welcome. Every parent node is blank, so an UpdatePath encrypts to every other member
  (``size - 1`` HPKE ciphertexts): TreeKEM's worst case, as after a mass add.
* steady: then one member of every leaf pair commits once (:func:`fill`), in bit-reversed pair
  order so the tree fills from the root down (O(n log n) encryptions in all). Every parent
  node with members below both children is then populated, as after every member has
  committed, and an UpdatePath encrypts to about ``log2 size`` nodes. Fill commits other than
  those of leaves 0 and 1 come from :func:`_as_member` states (a bench-only hook, documented
  there); founder and joiner process every one of them for real.

Setup (fresh) and fill (steady) times are printed separately and are not in the figures. The
run ends with the log-n comparison and the 50 ms goal check (suite 1, 1000 members, steady).
Protect/unprotect: 100-byte application messages between the two members.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sealwire.mls import structs as s
from sealwire.mls import tree_math as tm
from sealwire.mls.crypto import CipherSuite, cipher_suite
from sealwire.mls.group import Group
from sealwire.mls.tree import RatchetTree


def rng(seed: bytes) -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)


def member(suite: CipherSuite, i: int) -> tuple[s.KeyPackage, bytes, bytes, bytes]:
    """A KeyPackage and its (signature, encryption, init) private keys."""
    seed = i.to_bytes(4, "big")
    sig_priv, sig_pub = suite.signature_key_pair(hashlib.sha256(b"sig" + seed).digest())
    enc_priv, enc_pub = suite.derive_hpke_key_pair(hashlib.sha256(b"enc" + seed).digest())
    init_priv, init_pub = suite.derive_hpke_key_pair(hashlib.sha256(b"init" + seed).digest())
    leaf = s.LeafNode(
        enc_pub,
        sig_pub,
        s.Credential.basic(seed),
        s.Capabilities(cipher_suites=(suite.value,)),
        s.LeafNodeSource.KEY_PACKAGE,
        lifetime=s.Lifetime(0, 2**63),
    )
    leaf = replace(
        leaf, signature=suite.sign_with_label(sig_priv, "LeafNodeTBS", leaf.to_be_signed())
    )
    kp = s.KeyPackage(suite.value, init_pub, leaf)
    kp = replace(kp, signature=suite.sign_with_label(sig_priv, "KeyPackageTBS", kp.to_be_signed()))
    return kp, sig_priv, enc_priv, init_priv


def accept(credential: s.Credential, key: bytes) -> bool:
    return True


Member = tuple[s.KeyPackage, bytes, bytes, bytes]


def setup(suite: CipherSuite, size: int) -> tuple[Group, Group, list[Member]]:
    """The fresh group: the founder (leaf 0) adds everyone in one path-less commit and leaf 1
    joins from the Welcome. Every parent node is blank."""
    r = rng(b"setup")
    kp0, sig0, enc0, init0 = member(suite, 0)
    founder = Group.create(suite, b"bench", kp0.leaf_node, enc0, sig0, r, accept)
    members = [member(suite, i) for i in range(1, size)]
    _, welcome = founder.commit(r, add=[m[0] for m in members], update=False)
    assert welcome is not None
    kp, sig, enc, init = members[0]
    joiner = Group.join(welcome, kp, init, enc, sig, accept)
    assert joiner.epoch_authenticator == founder.epoch_authenticator
    return founder, joiner, [(kp0, sig0, enc0, init0), *members]


def _as_member(state: Group, leaf_index: int, who: Member) -> Group:
    """BENCH-ONLY HOOK, not library API: the state member ``leaf_index`` would hold in
    ``state``'s epoch, built from ``state`` rather than by replaying every commit to it.

    Every member of an epoch shares the public tree, the GroupContext, the epoch secrets and the
    transcript hashes, so those are copied (the tree object is shared: ``Group.commit`` works on
    a copy of it and only fills its hash cache). What is member-specific is replaced: the leaf
    index, the signature key and the HPKE private keys, of which only the member's own leaf key
    is given (creating a commit needs no other private key; the path keys the member would also
    know are only needed to *process* commits, which fillers never do).
    The filler's commit then goes through the real ``Group.commit``, and the two measured
    members run it through the real ``Group.process`` (signature, parent-hash, decryption and
    confirmation-tag checks), so a wrong shortcut here would fail loudly.
    """
    resumption = state._resumption  # one PSK (bytes) per past epoch: a flat copy is deep
    memo: dict[int, object] = {id(state.tree): state.tree, id(resumption): dict(resumption)}
    twin = copy.deepcopy(state, memo)
    leaf = state.tree.leaf(leaf_index)
    kp, sig_priv, enc_priv, _ = who
    assert leaf is not None and leaf == kp.leaf_node, "leaf order differs from the add order"
    twin.leaf_index = leaf_index
    twin._signature_priv = sig_priv  # bench-only, see the docstring
    twin._keys = {2 * leaf_index: (enc_priv, leaf.encryption_key)}
    return twin


def _bit_reversed(count: int) -> list[int]:
    bits = count.bit_length() - 1
    return [int(format(j, f"0{bits}b")[::-1], 2) if bits else 0 for j in range(count)]


def needed_parents(tree: RatchetTree) -> tuple[int, int]:
    """``(populated, needed)``: parent nodes with members on both sides (those a steady-state
    commit path covers; the others are skipped by every filtered direct path)."""
    populated = needed = 0
    for p in range(1, 2 * tree.n_leaves - 1, 2):
        k = tm.level(p)
        lo = (p >> (k + 1)) << k
        half = 1 << (k - 1)
        left = any(tree.leaf(i) is not None for i in range(lo, lo + half))
        right = any(tree.leaf(i) is not None for i in range(lo + half, lo + 2 * half))
        if left and right:
            needed += 1
            populated += tree.parent_node(p) is not None
    return populated, needed


def fill(founder: Group, joiner: Group, members: list[Member]) -> int:
    """Bring the fresh group to TreeKEM's steady state: one member of every leaf pair commits
    (an UpdatePath, no proposals), pairs taken in bit-reversed order so that the tree fills
    from the root down; each level then costs about n/2 HPKE encryptions in all, O(n log n)
    for the fill. Leaves 0 and 1 commit themselves; the other committers are
    :func:`_as_member` states. Founder and joiner process every commit. Returns the count."""
    r = rng(b"fill")
    real = {founder.leaf_index: founder, joiner.leaf_index: joiner}
    n = founder.tree.n_leaves
    count = 0
    for pair in _bit_reversed(max(n // 2, 1)):
        leaf = next(
            (i for i in (2 * pair, 2 * pair + 1) if i < n and founder.tree.leaf(i) is not None),
            None,
        )
        if leaf is None:
            continue
        sender = real.get(leaf) or _as_member(joiner, leaf, members[leaf])
        msg, _ = sender.commit(r)
        for g in real.values():
            if g is not sender:
                g.process(msg)
        count += 1
    assert founder.epoch_authenticator == joiner.epoch_authenticator
    populated, needed = needed_parents(founder.tree)
    assert populated == needed, f"steady state not reached: {populated}/{needed} parents"
    return count


def ciphertexts(msg: s.MLSMessage) -> int:
    """HPKE ciphertexts in a commit's UpdatePath."""
    body = msg.body
    assert isinstance(body, s.PublicMessage)
    commit = body.content.content
    assert isinstance(commit, s.Commit) and commit.path is not None
    return sum(len(node.encrypted_path_secret) for node in commit.path.nodes)


def bench_commits(a: Group, b: Group, commits: int) -> tuple[float, float, int]:
    """Median create and process seconds, and median HPKE ciphertexts, of ``commits`` full
    commits (UpdatePath, no proposals) alternately by ``b`` and ``a``."""
    r = rng(b"commits")
    create, process, cts = [], [], []
    for i in range(commits):
        sender, receiver = (b, a) if i % 2 == 0 else (a, b)
        t0 = time.perf_counter()
        msg, _ = sender.commit(r)
        t1 = time.perf_counter()
        receiver.process(msg)
        t2 = time.perf_counter()
        create.append(t1 - t0)
        process.append(t2 - t1)
        cts.append(ciphertexts(msg))
    assert a.epoch_authenticator == b.epoch_authenticator
    return statistics.median(create), statistics.median(process), int(statistics.median(cts))


def bench_messages(a: Group, b: Group, seconds: float) -> tuple[float, float]:
    r = rng(b"messages")
    data = bytes(100)
    protect_t = unprotect_t = 0.0
    n = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        msg = a.protect(data, r)
        t1 = time.perf_counter()
        b.process(msg)
        t2 = time.perf_counter()
        protect_t += t1 - t0
        unprotect_t += t2 - t1
        n += 1
    return n / protect_t, n / unprotect_t


@dataclass
class Row:
    suite: int
    size: int
    tree: str
    setup_s: float
    create_ms: float
    process_ms: float
    cts: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,5000", help="member counts")
    parser.add_argument("--suites", default="1,0xf0a1", help="cipher suite code points")
    parser.add_argument("--trees", default="fresh,steady", help="fresh, steady or both")
    parser.add_argument("--commits", type=int, default=10, help="measured commits per case")
    parser.add_argument("--seconds", type=float, default=1.0, help="protect/unprotect time")
    parser.add_argument(
        "--quick", action="store_true", help="sizes 10,100,1000, 4 commits, 0.3 s messages"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.commits, args.seconds = "10,100,1000", 4, 0.3
    trees = args.trees.split(",")
    print("command:", " ".join([sys.executable, *sys.argv]))
    print(f"python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} cpus")
    print(
        "setup s: fresh = create + add everyone + join; steady = the fill commits after that\n"
        "ct/commit: HPKE ciphertexts in one UpdatePath (fresh ~ n, steady ~ log2 n)"
    )
    head = (
        f"{'suite':>6} {'members':>7} {'tree':>6} {'setup s':>8} {'fill':>5} "
        f"{'commit ms':>10} {'process ms':>11} {'ct/commit':>9} {'protect/s':>10} "
        f"{'unprotect/s':>12}"
    )
    print(head)
    rows: list[Row] = []
    for suite_value in (int(x, 0) for x in args.suites.split(",")):
        suite = cipher_suite(suite_value)
        for size in (int(x) for x in args.sizes.split(",")):
            t0 = time.perf_counter()
            founder, joiner, members = setup(suite, size)
            fresh_setup = time.perf_counter() - t0
            results: list[tuple[str, float, int, tuple[float, float, int]]] = []
            if "fresh" in trees:
                results.append(
                    ("fresh", fresh_setup, 0, bench_commits(founder, joiner, args.commits))
                )
            if "steady" in trees:
                t0 = time.perf_counter()
                fills = fill(founder, joiner, members)
                fill_s = time.perf_counter() - t0
                results.append(
                    ("steady", fill_s, fills, bench_commits(founder, joiner, args.commits))
                )
            protect, unprotect = bench_messages(joiner, founder, args.seconds)
            for i, (tree, setup_s, fills, (create, process, cts)) in enumerate(results):
                rows.append(Row(suite_value, size, tree, setup_s, create * 1e3, process * 1e3, cts))
                msgs = f"{protect:>10.0f} {unprotect:>12.0f}" if i == len(results) - 1 else ""
                print(
                    f"{suite_value:>#6x} {size:>7} {tree:>6} {setup_s:>8.1f} "
                    f"{fills if fills else '':>5} {create * 1e3:>10.1f} {process * 1e3:>11.1f} "
                    f"{cts:>9} {msgs}",
                    flush=True,
                )
    report(rows)


def report(rows: list[Row]) -> None:
    """The log-n comparison and the goal check, from this run's figures."""
    print("\nlog n comparison: ms / log2(n), and growth from the smallest size vs log2 growth")
    print(
        f"{'suite':>6} {'tree':>6} {'members':>7} {'log2 n':>7} {'commit/log2n':>13} "
        f"{'process/log2n':>14} {'commit x':>9} {'process x':>10} {'log2 x':>7} {'n x':>7}"
    )
    for (suite, tree), group in itertools.groupby(
        sorted(rows, key=lambda r: (r.suite, r.tree, r.size)), key=lambda r: (r.suite, r.tree)
    ):
        case = list(group)
        base = case[0]
        for row in case:
            lg = math.log2(row.size)
            print(
                f"{suite:>#6x} {tree:>6} {row.size:>7} {lg:>7.2f} {row.create_ms / lg:>13.2f} "
                f"{row.process_ms / lg:>14.2f} {row.create_ms / base.create_ms:>9.1f} "
                f"{row.process_ms / base.process_ms:>10.1f} {lg / math.log2(base.size):>7.1f} "
                f"{row.size / base.size:>7.0f}"
            )
    goal = next((r for r in rows if (r.suite, r.size, r.tree) == (1, 1000, "steady")), None)
    if goal is None:
        print("\ngoal: not measured (needs suite 1, size 1000, steady tree)")
        return
    ok = goal.create_ms < 50 and goal.process_ms < 50
    print(
        f"\ngoal: suite 0x1, 1000 members, steady-state commit under 50 ms: create "
        f"{goal.create_ms:.1f} ms, process {goal.process_ms:.1f} ms -> {'MET' if ok else 'NOT MET'}"
    )
    fresh = next((r for r in rows if (r.suite, r.size, r.tree) == (1, 1000, "fresh")), None)
    if fresh is not None:
        print(
            f"      (fresh tree, TreeKEM's worst case: create {fresh.create_ms:.1f} ms, "
            f"process {fresh.process_ms:.1f} ms, {fresh.cts} ciphertexts)"
        )


if __name__ == "__main__":
    main()
