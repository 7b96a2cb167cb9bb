"""MLS benchmark: commit create/process time by group size, and PrivateMessage protect/unprotect
rates, for suite 1 (X25519/AES-128-GCM) and the private X-Wing suite (0xF0A1).

Usage: python bench/mls.py [--sizes 10,100,1000,5000] [--suites 1,0xf0a1] [--commits N]
                           [--seconds S]

Setup per (suite, size): a founder adds ``size - 1`` members in one commit and one of them
joins from the Welcome (the setup time is printed but not part of the figures). Then the
joiner and the founder alternate: one creates a full commit (UpdatePath, no proposals), the
other processes it; the median over ``--commits`` commits is reported. In such a fresh group
most parent nodes are blank, so an UpdatePath encrypts to about ``size / 2`` members: this is
the expensive end of TreeKEM, not its steady state. Protect/unprotect: 100-byte application
messages between the two members.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from sealwire.mls import structs as s
from sealwire.mls.crypto import CipherSuite, cipher_suite
from sealwire.mls.group import Group


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


def setup(suite: CipherSuite, size: int) -> tuple[Group, Group]:
    r = rng(b"setup")
    kp0, sig0, enc0, _ = member(suite, 0)
    founder = Group.create(suite, b"bench", kp0.leaf_node, enc0, sig0, r, accept)
    members = [member(suite, i) for i in range(1, size)]
    _, welcome = founder.commit(r, add=[m[0] for m in members], update=False)
    assert welcome is not None
    kp, sig, enc, init = members[0]
    joiner = Group.join(welcome, kp, init, enc, sig, accept)
    assert joiner.epoch_authenticator == founder.epoch_authenticator
    return founder, joiner


def bench_commits(a: Group, b: Group, commits: int) -> tuple[float, float]:
    r = rng(b"commits")
    create, process = [], []
    for i in range(commits):
        sender, receiver = (b, a) if i % 2 == 0 else (a, b)
        t0 = time.perf_counter()
        msg, _ = sender.commit(r)
        t1 = time.perf_counter()
        receiver.process(msg)
        t2 = time.perf_counter()
        create.append(t1 - t0)
        process.append(t2 - t1)
    assert a.epoch_authenticator == b.epoch_authenticator
    return statistics.median(create), statistics.median(process)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--suites", default="1,0xf0a1")
    parser.add_argument("--commits", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    print("command:", " ".join([sys.executable, *sys.argv]))
    print(
        f"{'suite':>8} {'members':>8} {'setup s':>8} {'commit ms':>10} {'process ms':>11} "
        f"{'protect/s':>10} {'unprotect/s':>12}"
    )
    for suite_value in (int(x, 0) for x in args.suites.split(",")):
        suite = cipher_suite(suite_value)
        for size in (int(x) for x in args.sizes.split(",")):
            t0 = time.perf_counter()
            founder, joiner = setup(suite, size)
            setup_s = time.perf_counter() - t0
            create, process = bench_commits(founder, joiner, args.commits)
            protect, unprotect = bench_messages(joiner, founder, args.seconds)
            print(
                f"{suite_value:>#8x} {size:>8} {setup_s:>8.1f} {create * 1e3:>10.1f} "
                f"{process * 1e3:>11.1f} {protect:>10.0f} {unprotect:>12.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
