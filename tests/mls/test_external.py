"""External commits (RFC 9420 §12.4.3.2, §8.3, §12.2): a member publishes a GroupInfo with the
``external_pub`` extension, an outsider joins by external commit (or a member resyncs), every
member processes it and all agree; malformed external commits and GroupInfos are rejected.

No official vector family exercises external commits (the passive-client families only carry
member commits), so these are round-trip tests. Reject tests re-sign the spoiled commit with the
joiner's key, as an attacker could, so that they reach the semantic checks rather than failing
on the signature.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealwire.mls import framing
from sealwire.mls import structs as s
from sealwire.mls._tls import Writer, decode, encode
from sealwire.mls.crypto import cipher_suite
from sealwire.mls.errors import (
    CryptoError,
    LocalError,
    MLSError,
    UnsupportedError,
    ValidationError,
)
from sealwire.mls.group import (
    EXTERNAL_PUB_EXTENSION,
    RATCHET_TREE_EXTENSION,
    ApplicationReceived,
    CommitApplied,
    Group,
)
from sealwire.mls.key_schedule import external_key_pair
from sealwire.mls.welcome import sign_group_info
from tests.mls.test_group import Member, accept, add_members, assert_in_sync, rng, wire

SUITE = cipher_suite(1)


def three(suite_value: int = 1) -> tuple[dict[int, Group], list[Member]]:
    """Alice, Bob and Carol in one group (leaves 0, 1, 2)."""
    suite = cipher_suite(suite_value)
    alice, bob, carol = (Member(n, suite) for n in ("alice", "bob", "carol"))
    groups = {0: alice.create()}
    add_members(groups, 0, [bob, carol], rng(b"setup"))
    assert_in_sync(list(groups.values()))
    return groups, [alice, bob, carol]


def published(group: Group, **kwargs: bool) -> s.GroupInfo:
    """``group.group_info()`` as it arrives over the wire."""
    info = decode(s.MLSMessage, encode(s.MLSMessage(group.group_info(**kwargs)))).body
    assert isinstance(info, s.GroupInfo)
    return info


def join(member: Member, info: s.GroupInfo, **kwargs: object) -> tuple[Group, s.MLSMessage]:
    return Group.join_external(
        info,
        member.key_package.leaf_node,
        member.sig_priv,
        rng(b"external" + member.name.encode()),
        accept,
        **kwargs,  # type: ignore[arg-type]
    )


def everyone_processes(groups: dict[int, Group], commit: s.MLSMessage) -> None:
    for g in groups.values():
        event = g.process(wire(commit))
        assert isinstance(event, CommitApplied) and not event.removed


# -- joining ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suite_value", [1, 3, 0xF0A1])
def test_external_join_three_members(suite_value: int) -> None:
    groups, _ = three(suite_value)
    info = published(groups[1])  # any member may publish it; here Bob
    assert {e.extension_type for e in info.extensions} == {
        EXTERNAL_PUB_EXTENSION,
        RATCHET_TREE_EXTENSION,
    }
    dave = Member("dave", cipher_suite(suite_value))
    d, commit = join(dave, info)
    assert commit.wire_format == s.WireFormat.PUBLIC_MESSAGE
    assert isinstance(commit.body, s.PublicMessage)
    assert commit.body.content.sender.sender_type == s.SenderType.NEW_MEMBER_COMMIT
    assert commit.body.membership_tag is None
    assert d.epoch == info.group_context.epoch + 1 and d.leaf_index == 3
    everyone_processes(groups, commit)
    groups[d.leaf_index] = d
    assert_in_sync(list(groups.values()))
    # Application messages both ways, then a commit from the newcomer and one to it.
    r = rng(b"app")
    msg = d.protect(b"hi from dave", r)
    for i in (0, 1, 2):
        assert groups[i].process(wire(msg)) == ApplicationReceived(3, b"hi from dave", b"")
    msg = groups[0].protect(b"hi dave", r, b"ad")
    assert d.process(wire(msg)) == ApplicationReceived(0, b"hi dave", b"ad")
    commit, _ = d.commit(r)
    for i in (0, 1, 2):
        assert isinstance(groups[i].process(wire(commit)), CommitApplied)
    commit, _ = groups[2].commit(r, private=True)
    for i in (0, 1, 3):
        assert isinstance(groups[i].process(wire(commit)), CommitApplied)
    assert_in_sync(list(groups.values()))
    # The newcomer can itself publish a GroupInfo for the next external joiner.
    e, commit = join(Member("erin", cipher_suite(suite_value)), published(d))
    for g in groups.values():
        assert g.process(wire(commit)) == CommitApplied(e.epoch, 4)
    assert_in_sync([*groups.values(), e])


def test_external_join_takes_leftmost_blank_leaf() -> None:
    groups, _ = three()
    commit, _ = groups[0].commit(rng(b"rm"), remove=[1])
    assert isinstance(groups[2].process(wire(commit)), CommitApplied)
    del groups[1]
    d, commit = join(Member("dave"), published(groups[2]))
    assert d.leaf_index == 1
    everyone_processes(groups, commit)
    assert_in_sync([*groups.values(), d])


def test_external_join_into_one_member_group_and_out_of_band_tree() -> None:
    alice = Member("alice")
    a = alice.create()
    info = published(a, ratchet_tree=False)
    assert [e.extension_type for e in info.extensions] == [EXTERNAL_PUB_EXTENSION]
    with pytest.raises(ValidationError, match="no ratchet tree"):
        join(Member("bob"), info)
    b, commit = join(Member("bob"), info, ratchet_tree=a.tree)
    assert isinstance(a.process(wire(commit)), CommitApplied)
    assert_in_sync([a, b])


def test_member_rejects_joiner_credential() -> None:
    groups, _ = three()
    _, commit = join(Member("mallory"), published(groups[0]))
    g = groups[1]
    g._validate = lambda credential, key: credential.identity != b"mallory"
    with pytest.raises(ValidationError, match="credential"):
        g.process(wire(commit))
    assert isinstance(groups[2].process(wire(commit)), CommitApplied)


def test_external_pub_is_derived_from_external_secret() -> None:
    groups, _ = three()
    info = groups[0].group_info()
    ext = next(e for e in info.extensions if e.extension_type == EXTERNAL_PUB_EXTENSION)
    pub = external_key_pair(SUITE, groups[0]._secrets.external_secret)[1]
    assert ext.extension_data == Writer().opaque(pub).bytes()
    assert groups[2].group_info().extensions[0] == ext  # same epoch, same key
    assert not [
        e
        for e in groups[0].group_info(external_pub=False).extensions
        if e.extension_type == EXTERNAL_PUB_EXTENSION
    ]


def test_external_join_with_external_psk() -> None:
    groups, _ = three()
    dave = Member("dave")
    psk_id, psk = b"shared", b"k" * 32
    d, commit = join(dave, published(groups[0]), external_psks={psk_id: psk})
    inner = commit.body.content.content  # type: ignore[union-attr]
    assert isinstance(inner, s.Commit)
    assert [type(p.proposal) for p in inner.proposals] == [s.ExternalInit, s.PreSharedKey]
    # A member without the PSK cannot follow; with it, everyone agrees.
    with pytest.raises(UnsupportedError, match="pre-shared key"):
        groups[0].clone().process(wire(commit))
    for g in groups.values():
        g.add_external_psk(psk_id, psk)
    everyone_processes(groups, commit)
    assert_in_sync([*groups.values(), d])


def test_resync_replaces_own_old_leaf() -> None:
    groups, members = three()
    carol = members[2]
    old_carol = groups.pop(2)
    c, commit = join(carol, published(groups[0]), resync=2)
    assert c.leaf_index == 2
    everyone_processes(groups, commit)
    # The stale state of Carol sees its own leaf removed.
    event = old_carol.process(wire(commit))
    assert isinstance(event, CommitApplied) and event.removed and not old_carol.active
    groups[2] = c
    assert_in_sync(list(groups.values()))
    assert c.tree.leaf(2) != old_carol.tree.leaf(2)
    msg = c.protect(b"back", rng(b"m"))
    assert groups[1].process(wire(msg)) == ApplicationReceived(2, b"back", b"")


def test_resync_of_another_members_leaf_is_refused_locally() -> None:
    groups, members = three()
    with pytest.raises(LocalError):
        join(members[2], published(groups[0]), resync=1)  # Bob's leaf, not Carol's
    with pytest.raises(LocalError):
        join(members[2], published(groups[0]), resync=7)
    with pytest.raises(LocalError, match="signature"):
        Group.join_external(
            published(groups[0]),
            members[2].key_package.leaf_node,
            members[1].sig_priv,
            rng(b"x"),
            accept,
        )


XWING = 0xF0A1


def test_xwing_external_join_and_resync() -> None:
    """X-Wing external init: SetupBaseS/Export through our HPKE with KEM 0x647A (xwing.py)."""
    groups, members = three(XWING)
    info = published(groups[0])
    d, commit = join(Member("dave", cipher_suite(XWING)), info)
    inner = commit.body.content.content  # type: ignore[union-attr]
    assert isinstance(inner, s.Commit)
    init = inner.proposals[0].proposal
    assert isinstance(init, s.ExternalInit) and len(init.kem_output) == 1120
    everyone_processes(groups, commit)
    groups[d.leaf_index] = d
    assert_in_sync(list(groups.values()))
    # Carol loses her state and resyncs from a GroupInfo that Dave publishes.
    old_carol = groups.pop(2)
    c, commit = join(members[2], published(d), resync=2)
    everyone_processes(groups, commit)
    event = old_carol.process(wire(commit))
    assert isinstance(event, CommitApplied) and event.removed
    groups[2] = c
    assert_in_sync(list(groups.values()))
    msg = c.protect(b"back", rng(b"m"))
    assert d.process(wire(msg)) == ApplicationReceived(2, b"back", b"")


def test_xwing_external_commit_with_bad_kem_output_is_rejected() -> None:
    suite = cipher_suite(XWING)
    groups, _ = three(XWING)
    dave = Member("dave", suite)
    _, commit = join(dave, published(groups[1]))
    body = commit.body
    assert isinstance(body, s.PublicMessage) and isinstance(body.content.content, s.Commit)
    inner = body.content.content
    init = inner.proposals[0].proposal
    assert isinstance(init, s.ExternalInit)
    ctx = encode(groups[0].context)

    def with_kem_output(kem_output: bytes) -> s.MLSMessage:
        proposals = (s.ProposalOrRef(proposal=s.ExternalInit(kem_output)), *inner.proposals[1:])
        content = replace(body.content, content=replace(inner, proposals=proposals))
        ac = framing.sign_content(suite, dave.sig_priv, s.WireFormat.PUBLIC_MESSAGE, content, ctx)
        return s.MLSMessage(
            s.PublicMessage(
                ac.content, replace(ac.auth, confirmation_tag=body.auth.confirmation_tag)
            )
        )

    ko = init.kem_output
    # A flipped bit in ct_M (ML-KEM rejects implicitly) or ct_X gives another init_secret.
    for pos in (0, 1000, 1088, 1119):
        bad = with_kem_output(ko[:pos] + bytes([ko[pos] ^ 1]) + ko[pos + 1 :])
        _check_rejected(groups, bad, ValidationError, "confirmation tag")
    # Wrong sizes, a DHKEM-sized output, and a small-order X25519 part fail decapsulation.
    for bad_output in (ko[:-1], ko + b"\x00", bytes(32), b"", ko[:1088] + bytes(32)):
        _check_rejected(groups, with_kem_output(bad_output), CryptoError, None)
    everyone_processes(groups, commit)


# -- GroupInfo validation by the joiner -------------------------------------------------------


def test_join_external_rejects_tampered_group_info() -> None:
    groups, members = three()
    info = published(groups[0])
    dave = Member("dave")
    bad_sig = replace(info, signature=bytes([info.signature[0] ^ 1]) + info.signature[1:])
    with pytest.raises(CryptoError):
        join(dave, bad_sig)
    # Same content, other signer index: the signature is checked with that leaf's key.
    with pytest.raises(CryptoError):
        join(dave, replace(info, signer=1))
    with pytest.raises(ValidationError, match="signer"):
        join(dave, replace(info, signer=9))
    # Validly signed by Alice, but the tree hash does not match the tree.
    bad_gc = replace(info.group_context, tree_hash=bytes(32))
    bad_hash = sign_group_info(
        SUITE, members[0].sig_priv, bad_gc, info.extensions, info.confirmation_tag, 0
    )
    with pytest.raises(ValidationError, match="tree hash"):
        join(dave, bad_hash)
    no_pub = published(groups[0], external_pub=False)
    with pytest.raises(ValidationError, match="external_pub"):
        join(dave, no_pub)
    malformed = sign_group_info(
        SUITE,
        members[0].sig_priv,
        info.group_context,
        [s.Extension(EXTERNAL_PUB_EXTENSION, b"\x05abc"), *info.extensions[1:]],
        info.confirmation_tag,
        0,
    )
    with pytest.raises(ValidationError, match="external_pub"):
        join(dave, malformed)
    short_key = sign_group_info(
        SUITE,
        members[0].sig_priv,
        info.group_context,
        [s.Extension(EXTERNAL_PUB_EXTENSION, b"\x03abc"), *info.extensions[1:]],
        info.confirmation_tag,
        0,
    )
    with pytest.raises(CryptoError):
        join(dave, short_key)
    with pytest.raises(ValidationError, match="credential"):
        Group.join_external(
            info, dave.key_package.leaf_node, dave.sig_priv, rng(b"x"), lambda c, k: False
        )


# -- invalid external commits -----------------------------------------------------------------


def respoiled(
    commit: s.MLSMessage, context: bytes, sig_priv: bytes, **changes: object
) -> s.MLSMessage:
    """The external commit with FramedContent fields changed, re-signed with ``sig_priv``."""
    body = commit.body
    assert isinstance(body, s.PublicMessage)
    content = replace(body.content, **changes)  # type: ignore[arg-type]
    ac = framing.sign_content(SUITE, sig_priv, s.WireFormat.PUBLIC_MESSAGE, content, context)
    return s.MLSMessage(
        s.PublicMessage(ac.content, replace(ac.auth, confirmation_tag=body.auth.confirmation_tag))
    )


@pytest.fixture
def scenario() -> tuple[dict[int, Group], Member, s.MLSMessage, s.Commit, bytes]:
    groups, _ = three()
    dave = Member("dave")
    _, commit = join(dave, published(groups[1]))
    assert isinstance(commit.body, s.PublicMessage)
    inner = commit.body.content.content
    assert isinstance(inner, s.Commit)
    return groups, dave, commit, inner, encode(groups[0].context)


def _check_rejected(
    groups: dict[int, Group], bad: s.MLSMessage, error: type[Exception], match: str | None
) -> None:
    for g in groups.values():
        with pytest.raises(error, match=match):
            g.process(wire(bad))


def test_external_commit_proposal_list_rules(
    scenario: tuple[dict[int, Group], Member, s.MLSMessage, s.Commit, bytes],
) -> None:
    groups, dave, commit, inner, ctx = scenario
    init = inner.proposals[0]
    assert isinstance(init.proposal, s.ExternalInit)

    def with_proposals(*proposals: s.ProposalOrRef) -> s.MLSMessage:
        return respoiled(commit, ctx, dave.sig_priv, content=replace(inner, proposals=proposals))

    cases: list[tuple[s.MLSMessage, str]] = [
        (with_proposals(), "exactly one ExternalInit"),
        (with_proposals(init, init), "exactly one ExternalInit"),
        (with_proposals(init, s.ProposalOrRef(reference=bytes(32))), "by reference"),
        (
            with_proposals(init, s.ProposalOrRef(proposal=s.Add(Member("eve").key_package))),
            "not allowed",
        ),
        (
            with_proposals(
                init,
                s.ProposalOrRef(proposal=s.GroupContextExtensions(())),
            ),
            "not allowed",
        ),
        (
            with_proposals(
                init,
                s.ProposalOrRef(proposal=s.Remove(1)),
                s.ProposalOrRef(proposal=s.Remove(2)),
            ),
            "more than one Remove",
        ),
        # Dave may only remove an old leaf of his own, not Bob.
        (with_proposals(init, s.ProposalOrRef(proposal=s.Remove(1))), "another member"),
        (with_proposals(init, s.ProposalOrRef(proposal=s.Remove(3))), "blank or absent"),
        (respoiled(commit, ctx, dave.sig_priv, content=replace(inner, path=None)), "path"),
        # A different kem_output yields another init_secret: the confirmation tag fails.
        (
            with_proposals(s.ProposalOrRef(proposal=s.ExternalInit(bytes([9]) + bytes(31)))),
            "confirmation tag",
        ),
    ]
    for bad, match in cases:
        _check_rejected(groups, bad, ValidationError, match)
    # A small-order or wrongly sized kem_output fails HPKE decapsulation.
    for kem_output in (bytes(32), bytes(31)):
        bad = with_proposals(s.ProposalOrRef(proposal=s.ExternalInit(kem_output)))
        _check_rejected(groups, bad, CryptoError, None)
    # Nothing above changed any state: the genuine commit still applies.
    everyone_processes(groups, commit)


def test_external_commit_framing_rules(
    scenario: tuple[dict[int, Group], Member, s.MLSMessage, s.Commit, bytes],
) -> None:
    groups, dave, commit, inner, ctx = scenario
    body = commit.body
    assert isinstance(body, s.PublicMessage)
    # Bad signature: content changed, not re-signed; or signed by someone else.
    _check_rejected(
        groups,
        s.MLSMessage(replace(body, content=replace(body.content, authenticated_data=b"x"))),
        CryptoError,
        None,
    )
    _check_rejected(groups, respoiled(commit, ctx, Member("eve").sig_priv), CryptoError, None)
    # Wrong epoch (re-signed over the right context, so only the epoch is wrong).
    for epoch in (body.content.epoch - 1, body.content.epoch + 1):
        _check_rejected(
            groups, respoiled(commit, ctx, dave.sig_priv, epoch=epoch), ValidationError, "epoch"
        )
    # A membership tag on a new_member_commit PublicMessage (only possible in memory).
    tagged = s.MLSMessage(replace(body, membership_tag=bytes(32)))
    for g in groups.values():
        with pytest.raises(ValidationError, match="membership tag"):
            g.process(tagged)
    # A new_member_commit sender with a proposal instead of a commit.
    proposal = respoiled(commit, ctx, dave.sig_priv, content=inner.proposals[0].proposal)
    with pytest.raises(ValidationError, match="no commit"):
        groups[0].process(proposal)
    everyone_processes(groups, commit)
    # Replaying the processed commit: wrong epoch now.
    _check_rejected(groups, commit, ValidationError, "epoch")


def test_external_init_in_member_commit_or_alone_is_rejected() -> None:
    groups, members = three()
    a = groups[0]
    ctx = encode(a.context)
    ext_init = s.ExternalInit(bytes(32))

    def member_message(content: s.Commit | s.ExternalInit) -> s.MLSMessage:
        fc = s.FramedContent(a.group_id, a.epoch, s.Sender.member(0), content)
        ac = framing.sign_content(SUITE, members[0].sig_priv, s.WireFormat.PUBLIC_MESSAGE, fc, ctx)
        if isinstance(content, s.Commit):
            ac = replace(ac, auth=replace(ac.auth, confirmation_tag=bytes(32)))
        return s.MLSMessage(framing.protect_public(SUITE, a._secrets.membership_key, ac, ctx))

    commit = s.Commit((s.ProposalOrRef(proposal=ext_init),), None)
    for i in (1, 2):
        with pytest.raises(ValidationError, match="ExternalInit in a member commit"):
            groups[i].process(wire(member_message(commit)))
        with pytest.raises(ValidationError, match="ExternalInit proposal outside"):
            groups[i].process(wire(member_message(ext_init)))


_FUZZ_GROUPS, _ = three()
_FUZZ_COMMIT = encode(join(Member("dave"), published(_FUZZ_GROUPS[0]))[1])


@settings(max_examples=80, deadline=None)
@given(cut=st.integers(0, len(_FUZZ_COMMIT) - 1), flip=st.integers(0, 7))
def test_tampered_external_commit_raises_only_mls_errors(cut: int, flip: int) -> None:
    """Any single bit flipped in a valid external commit yields an MLSError (or, where the bit
    does not matter, an applied commit), never another exception."""
    tampered = bytearray(_FUZZ_COMMIT)
    tampered[cut] ^= 1 << flip
    g = _FUZZ_GROUPS[2].clone()
    with contextlib.suppress(MLSError):
        g.process(decode(s.MLSMessage, bytes(tampered)))
