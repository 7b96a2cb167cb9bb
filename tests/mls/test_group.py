"""The Group state machine (RFC 9420 §11, §12): members driven in memory through create,
add, remove, update, application messages and joins, with negative tests and a Hypothesis
property test (random add/remove/update sequences over 2-50 members keep every member's
epoch secrets equal)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealwire.mls import framing
from sealwire.mls import structs as s
from sealwire.mls._tls import decode, encode
from sealwire.mls.crypto import CipherSuite, cipher_suite
from sealwire.mls.errors import (
    CryptoError,
    LocalError,
    MLSError,
    SecretReuseError,
    ValidationError,
)
from sealwire.mls.group import ApplicationReceived, CommitApplied, Group
from sealwire.mls.welcome import create_welcome, open_welcome, sign_group_info

SUITE = cipher_suite(1)


def rng(seed: bytes) -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)


class Member:
    """A would-be member: keys and a KeyPackage."""

    def __init__(self, name: str, suite: CipherSuite = SUITE) -> None:
        seed = name.encode()
        self.name = name
        self.suite = suite
        self.sig_priv, sig_pub = suite.signature_key_pair(hashlib.sha256(b"sig" + seed).digest())
        self.enc_priv, enc_pub = suite.derive_hpke_key_pair(hashlib.sha256(b"enc" + seed).digest())
        self.init_priv, init_pub = suite.derive_hpke_key_pair(
            hashlib.sha256(b"init" + seed).digest()
        )
        leaf = s.LeafNode(
            enc_pub,
            sig_pub,
            s.Credential.basic(seed),
            s.Capabilities(cipher_suites=(suite.value,)),
            s.LeafNodeSource.KEY_PACKAGE,
            lifetime=s.Lifetime(0, 2**63),
        )
        leaf = replace(
            leaf, signature=suite.sign_with_label(self.sig_priv, "LeafNodeTBS", leaf.to_be_signed())
        )
        kp = s.KeyPackage(suite.value, init_pub, leaf)
        self.key_package = replace(
            kp, signature=suite.sign_with_label(self.sig_priv, "KeyPackageTBS", kp.to_be_signed())
        )

    def create(self, group_id: bytes = b"group") -> Group:
        return Group.create(
            self.suite,
            group_id,
            self.key_package.leaf_node,
            self.enc_priv,
            self.sig_priv,
            rng(b"create" + self.name.encode()),
            accept,
        )

    def join(self, welcome: s.Welcome) -> Group:
        return Group.join(
            decode(s.MLSMessage, encode(s.MLSMessage(welcome))).body,  # type: ignore[arg-type]
            self.key_package,
            self.init_priv,
            self.enc_priv,
            self.sig_priv,
            accept,
        )


def accept(credential: s.Credential, key: bytes) -> bool:
    return True


def wire(msg: s.MLSMessage) -> s.MLSMessage:
    return decode(s.MLSMessage, encode(msg))


def assert_in_sync(groups: list[Group]) -> None:
    first = groups[0]
    for g in groups[1:]:
        assert g.epoch == first.epoch
        assert g.epoch_authenticator == first.epoch_authenticator
        assert g.export_secret("test", b"ctx", 32) == first.export_secret("test", b"ctx", 32)
        assert g.tree.encode() == first.tree.encode()


def add_members(
    groups: dict[int, Group], committer: int, new: list[Member], random: Callable[[int], bytes]
) -> None:
    commit, welcome = groups[committer].commit(random, add=[m.key_package for m in new])
    for idx, g in groups.items():
        if idx != committer:
            assert isinstance(g.process(wire(commit)), CommitApplied)
    assert welcome is not None
    for m in new:
        g = m.join(welcome)
        groups[g.leaf_index] = g


@pytest.mark.parametrize("suite_value", [1, 3, 0xF0A1])
def test_members_roundtrip(suite_value: int) -> None:
    suite = cipher_suite(suite_value)
    alice, bob, carol = Member("alice", suite), Member("bob", suite), Member("carol", suite)
    a = alice.create()
    r = rng(b"t")
    commit, welcome = a.commit(r, add=[bob.key_package], update=False)
    assert welcome is not None
    b = bob.join(welcome)
    assert_in_sync([a, b])
    msg = a.protect(b"hello", r, b"aad")
    event = b.process(wire(msg))
    assert event == ApplicationReceived(0, b"hello", b"aad")
    # Replay of the same generation.
    with pytest.raises(SecretReuseError):
        b.process(wire(msg))
    # Bob updates (private commit), then adds Carol.
    commit, _ = b.commit(r, private=True)
    assert isinstance(a.process(wire(commit)), CommitApplied)
    assert_in_sync([a, b])
    commit, welcome = b.commit(r, add=[carol.key_package])
    a.process(wire(commit))
    assert welcome is not None
    c = carol.join(welcome)
    assert_in_sync([a, b, c])
    # Alice removes Bob.
    commit, _ = a.commit(r, remove=[b.leaf_index])
    event = b.process(wire(commit))
    assert isinstance(event, CommitApplied) and event.removed and not b.active
    c.process(wire(commit))
    assert_in_sync([a, c])
    with pytest.raises(LocalError):
        b.protect(b"x", r)
    # A message from the old epoch is rejected.
    with pytest.raises(ValidationError):
        c.process(wire(msg))


def test_commit_negative() -> None:
    alice, bob = Member("alice"), Member("bob")
    a = alice.create()
    r = rng(b"neg")
    _, welcome = a.commit(r, add=[bob.key_package])
    assert welcome is not None
    b = bob.join(welcome)
    before = a.clone()
    commit, _ = a.commit(r)
    pub = commit.body
    assert isinstance(pub, s.PublicMessage)
    # Wrong membership tag.
    with pytest.raises(CryptoError):
        b.clone().process(s.MLSMessage(replace(pub, membership_tag=bytes(32))))
    # Wrong signature (membership tag recomputed so only the signature is wrong).
    ctx = encode(before.context)
    mk = before._secrets.membership_key

    def retag(ac: s.AuthenticatedContent) -> s.MLSMessage:
        return s.MLSMessage(framing.protect_public(SUITE, mk, ac, ctx))

    ac = s.AuthenticatedContent(s.WireFormat.PUBLIC_MESSAGE, pub.content, pub.auth)
    with pytest.raises(CryptoError):
        b.clone().process(retag(replace(ac, auth=replace(ac.auth, signature=bytes(64)))))
    # Wrong confirmation tag (signature and membership tag valid).
    with pytest.raises(ValidationError, match="confirmation tag"):
        b.clone().process(retag(replace(ac, auth=replace(ac.auth, confirmation_tag=bytes(32)))))
    # Sender index mismatch: claims to be leaf 1 (Bob) but signed by Alice.
    moved = replace(ac, content=replace(ac.content, sender=s.Sender.member(1)))
    with pytest.raises(CryptoError):  # Bob's key does not verify Alice's signature
        b.clone().process(retag(moved))
    # A sender index outside the tree.
    outside = replace(ac, content=replace(ac.content, sender=s.Sender.member(7)))
    with pytest.raises(ValidationError, match="not a member"):
        b.clone().process(retag(outside))
    # A committer removing itself.
    assert isinstance(pub.content.content, s.Commit)
    commit_path = pub.content.content.path
    self_remove = replace(
        ac,
        content=replace(ac.content, content=s.Commit((s.ProposalOrRef(s.Remove(0)),), commit_path)),
    )
    with pytest.raises(ValidationError, match="remove itself"):
        b.clone().process(
            retag(
                framing.sign_content(
                    SUITE,
                    alice.sig_priv,
                    s.WireFormat.PUBLIC_MESSAGE,
                    self_remove.content,
                    ctx,
                    bytes(32),
                )
            )
        )
    # The untouched commit is accepted.
    assert isinstance(b.process(commit), CommitApplied)
    assert_in_sync([a, b])


def test_removed_member_learns_it_when_an_add_reuses_its_leaf() -> None:
    m = [Member(f"reuse{i}") for i in range(4)]
    a = m[0].create()
    _, welcome = a.commit(rng(b"reuse1"), add=[m[1].key_package, m[2].key_package])
    assert welcome is not None
    b, c = m[1].join(welcome), m[2].join(welcome)
    # Removing leaf 2 frees it, and the Add of the same commit takes it at once.
    msg, welcome = a.commit(rng(b"reuse2"), remove=[2], add=[m[3].key_package])
    assert welcome is not None
    assert b.process(wire(msg)) == CommitApplied(2, 0)
    assert c.process(wire(msg)) == CommitApplied(2, 0, removed=True)
    d = m[3].join(welcome)
    assert d.leaf_index == 2
    assert_in_sync([a, b, d])
    with pytest.raises(LocalError):
        c.protect(b"x", rng(b"reuse3"))


def test_join_rejects_wrong_tree_hash() -> None:
    alice, bob = Member("alice"), Member("bob")
    a = alice.create()
    _, welcome = a.commit(rng(b"w"), add=[bob.key_package])
    assert welcome is not None
    # Re-sign a GroupInfo whose tree hash does not match the tree it carries.
    group_secrets, info, psk = open_welcome(
        SUITE, welcome, bob.key_package, bob.init_priv, lambda _: bytes(32)
    )

    bad_gc = replace(info.group_context, tree_hash=bytes(32))
    bad_info = sign_group_info(
        SUITE, alice.sig_priv, bad_gc, info.extensions, info.confirmation_tag, info.signer
    )
    bad = create_welcome(
        SUITE, bad_info, group_secrets.joiner_secret, psk, [(bob.key_package, None)], rng(b"x")
    )
    with pytest.raises(ValidationError):
        bob.join(bad)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "update"]), st.integers(0, 10**6), st.integers(1, 4)
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.integers(2, 50), ops=OPS, seed=st.binary(min_size=4, max_size=4))
def test_random_operations_keep_members_in_sync(
    initial: int, ops: list[tuple[str, int, int]], seed: bytes
) -> None:
    r = rng(seed)
    names = (f"m{i}" for i in itertools.count())
    founder = Member(next(names))
    groups: dict[int, Group] = {0: founder.create()}
    add_members(groups, 0, [Member(next(names)) for _ in range(initial - 1)], r)
    assert_in_sync(list(groups.values()))
    for op, pick, count in ops:
        committer = sorted(groups)[pick % len(groups)]
        if op == "add":
            add_members(groups, committer, [Member(next(names)) for _ in range(count)], r)
        elif op == "remove":
            others = [i for i in sorted(groups) if i != committer]
            if not others:
                continue
            victims = others[pick % len(others) :][:count]
            commit, _ = groups[committer].commit(r, remove=victims)
            for idx in list(groups):
                if idx != committer:
                    event = groups[idx].process(wire(commit))
                    assert isinstance(event, CommitApplied)
                    assert event.removed == (idx in victims)
            for v in victims:
                del groups[v]
        else:
            commit, _ = groups[committer].commit(r, private=bool(pick % 2))
            for idx, g in groups.items():
                if idx != committer:
                    g.process(wire(commit))
        assert_in_sync(list(groups.values()))
        assert sorted(groups) == groups[committer].members()


def test_credential_callback_and_lifetime_are_enforced() -> None:
    alice, bob = Member("alice"), Member("bob")
    a = alice.create()
    r = rng(b"cred")
    # KeyPackage lifetime: Member's lifetime is [0, 2**63]; a time beyond it is rejected.
    with pytest.raises(ValidationError, match="lifetime"):
        a.commit(r, add=[bob.key_package], now=2**64 - 1)
    _, welcome = a.commit(r, add=[bob.key_package], now=1_700_000_000)
    assert welcome is not None
    # Bob's application rejects Alice's credential: joining fails.
    with pytest.raises(ValidationError, match="credential"):
        Group.join(
            welcome,
            bob.key_package,
            bob.init_priv,
            bob.enc_priv,
            bob.sig_priv,
            lambda credential, key: credential.identity != b"alice",
        )
    # Alice's application rejects Carol: adding her fails and leaves the group unchanged.
    strict = Group.create(
        SUITE,
        b"g2",
        alice.key_package.leaf_node,
        alice.enc_priv,
        alice.sig_priv,
        r,
        lambda credential, key: credential.identity != b"carol",
    )
    with pytest.raises(ValidationError, match="credential"):
        strict.commit(r, add=[Member("carol").key_package])
    assert strict.epoch == 0 and strict.members() == [0]


def _two() -> tuple[Group, Group]:
    alice, bob = Member("alice"), Member("bob")
    a = alice.create()
    _, welcome = a.commit(rng(b"two"), add=[bob.key_package])
    assert welcome is not None
    return a, bob.join(welcome)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300), cut=st.integers(0, 400), flip=st.integers(0, 7))
def test_process_raises_only_mls_errors(data: bytes, cut: int, flip: int) -> None:
    """Arbitrary or tampered bytes given to a member yield an MLSError or an event, never
    anything else, and a failed message leaves the epoch unchanged."""
    a, b = _two()
    commit, _ = a.clone().commit(rng(b"fuzz"))
    wire_bytes = bytearray(encode(commit))
    if cut < len(wire_bytes):
        wire_bytes[cut] ^= 1 << flip
    for candidate in (data, bytes(wire_bytes)):
        with contextlib.suppress(MLSError):
            b.clone().process(decode(s.MLSMessage, candidate))
    epoch = b.epoch
    with contextlib.suppress(MLSError):
        b.process(decode(s.MLSMessage, data))
    assert b.epoch == epoch
