"""Message framing (RFC 9420 §6) against the official ``message-protection`` vectors, plus
negative tests (wrong signature, membership tag, sender, replayed generation, tampering).

``message-protection``: ``{cipher_suite, group_id, epoch, tree_hash, confirmed_transcript_hash,
signature_priv, signature_pub, encryption_secret, sender_data_secret, membership_key,
proposal, proposal_priv, proposal_pub, commit, commit_priv, commit_pub, application,
application_priv}``. The GroupContext has no extensions; the secret tree has 2 leaves and the
sender is leaf 1. ``proposal`` is a serialized ``Proposal``, ``commit`` a ``Commit``,
``application`` the application data; ``*_priv``/``*_pub`` are ``MLSMessage``s.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from sealwire.mls import framing
from sealwire.mls import structs as s
from sealwire.mls._tls import Reader, decode, encode
from sealwire.mls.crypto import CipherSuite, cipher_suite
from sealwire.mls.errors import CryptoError, SecretReuseError, ValidationError
from sealwire.mls.secret_tree import SecretTree
from tests.mls.vectors import cases, h

SENDER = 1


def _context(case: dict[str, Any]) -> bytes:
    gc = s.GroupContext(
        case["cipher_suite"],
        h(case["group_id"]),
        case["epoch"],
        h(case["tree_hash"]),
        h(case["confirmed_transcript_hash"]),
    )
    return encode(gc)


def _tree(suite: CipherSuite, case: dict[str, Any]) -> SecretTree:
    return SecretTree(suite, h(case["encryption_secret"]), 2)


def _body(kind: str, case: dict[str, Any]) -> s.Content:
    data = h(case[kind])
    if kind == "application":
        return data
    if kind == "commit":
        return decode(s.Commit, data)
    r = Reader(data)
    proposal = s.read_proposal(r)
    r.finish()
    return proposal


def _check(kind: str, ac: s.AuthenticatedContent, case: dict[str, Any]) -> None:
    suite = cipher_suite(case["cipher_suite"])
    assert ac.content.content == _body(kind, case)
    assert ac.content.sender == s.Sender.member(SENDER)
    assert ac.content.group_id == h(case["group_id"])
    framing.verify_signature(suite, h(case["signature_pub"]), ac, _context(case))


def _private(case: dict[str, Any], data: bytes, tree: SecretTree) -> s.AuthenticatedContent:
    suite = cipher_suite(case["cipher_suite"])
    msg = decode(s.MLSMessage, data).body
    assert isinstance(msg, s.PrivateMessage)
    return framing.unprotect_private(
        suite, tree, h(case["sender_data_secret"]), msg, lambda i: i == SENDER
    )


def _public(case: dict[str, Any], data: bytes) -> s.AuthenticatedContent:
    suite = cipher_suite(case["cipher_suite"])
    msg = decode(s.MLSMessage, data).body
    assert isinstance(msg, s.PublicMessage)
    return framing.unprotect_public(suite, h(case["membership_key"]), msg, _context(case))


def _sign(case: dict[str, Any], kind: str, wf: s.WireFormat) -> s.AuthenticatedContent:
    suite = cipher_suite(case["cipher_suite"])
    body = _body(kind, case)
    tag = bytes(suite.kdf.Nh) if kind == "commit" else None
    content = s.FramedContent(h(case["group_id"]), case["epoch"], s.Sender.member(SENDER), body)
    return framing.sign_content(suite, h(case["signature_priv"]), wf, content, _context(case), tag)


KINDS = ["application", "proposal", "commit"]


@pytest.mark.vectors
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", cases("message-protection"))
def test_message_protection_vectors(case: dict[str, Any], kind: str) -> None:
    suite = cipher_suite(case["cipher_suite"])
    # Unprotect the official messages.
    _check(kind, _private(case, h(case[f"{kind}_priv"]), _tree(suite, case)), case)
    if kind != "application":  # application data is never sent as PublicMessage (§6.2)
        _check(kind, _public(case, h(case[f"{kind}_pub"])), case)
    # Protect our own and unprotect them with a fresh secret tree.
    ac = _sign(case, kind, s.WireFormat.PRIVATE_MESSAGE)
    priv = framing.protect_private(
        suite, _tree(suite, case), h(case["sender_data_secret"]), ac, b"\x01\x02\x03\x04", 7
    )
    _check(kind, _private(case, encode(s.MLSMessage(priv)), _tree(suite, case)), case)
    if kind != "application":
        ac = _sign(case, kind, s.WireFormat.PUBLIC_MESSAGE)
        pub = framing.protect_public(suite, h(case["membership_key"]), ac, _context(case))
        _check(kind, _public(case, encode(s.MLSMessage(pub))), case)


def _case() -> dict[str, Any]:
    case: dict[str, Any] = cases("message-protection")[0].values[0]
    return case


def test_replayed_generation_is_rejected() -> None:
    case = _case()
    suite = cipher_suite(case["cipher_suite"])
    tree = _tree(suite, case)
    _private(case, h(case["application_priv"]), tree)
    with pytest.raises(SecretReuseError):
        _private(case, h(case["application_priv"]), tree)


def test_sender_not_member_is_rejected() -> None:
    case = _case()
    suite = cipher_suite(case["cipher_suite"])
    msg = decode(s.MLSMessage, h(case["application_priv"])).body
    assert isinstance(msg, s.PrivateMessage)
    with pytest.raises(ValidationError):
        framing.unprotect_private(
            suite, _tree(suite, case), h(case["sender_data_secret"]), msg, lambda i: i != SENDER
        )


def test_tampered_private_message_is_rejected() -> None:
    case = _case()
    suite = cipher_suite(case["cipher_suite"])
    msg = decode(s.MLSMessage, h(case["application_priv"])).body
    assert isinstance(msg, s.PrivateMessage)
    for bad in (
        replace(msg, ciphertext=msg.ciphertext[:-1] + bytes([msg.ciphertext[-1] ^ 1])),
        replace(msg, authenticated_data=b"x"),
        replace(msg, epoch=msg.epoch + 1),
        replace(msg, encrypted_sender_data=bytes(len(msg.encrypted_sender_data))),
    ):
        with pytest.raises(CryptoError):
            framing.unprotect_private(
                suite, _tree(suite, case), h(case["sender_data_secret"]), bad, lambda i: True
            )


def test_wrong_membership_tag_and_signature_are_rejected() -> None:
    case = _case()
    suite = cipher_suite(case["cipher_suite"])
    msg = decode(s.MLSMessage, h(case["proposal_pub"])).body
    assert isinstance(msg, s.PublicMessage)
    with pytest.raises(CryptoError):
        framing.unprotect_public(suite, bytes(32), msg, _context(case))
    with pytest.raises(CryptoError):
        framing.unprotect_public(
            suite, h(case["membership_key"]), replace(msg, membership_tag=None), _context(case)
        )
    ac = framing.unprotect_public(suite, h(case["membership_key"]), msg, _context(case))
    bad_sig = replace(ac, auth=replace(ac.auth, signature=bytes(64)))
    with pytest.raises(CryptoError):
        framing.verify_signature(suite, h(case["signature_pub"]), bad_sig, _context(case))
    # Signature over another sender index does not verify either.
    moved = replace(ac, content=replace(ac.content, sender=s.Sender.member(0)))
    with pytest.raises(CryptoError):
        framing.verify_signature(suite, h(case["signature_pub"]), moved, _context(case))
    # A commit must carry a confirmation tag.
    commit = framing.unprotect_public(
        suite,
        h(case["membership_key"]),
        decode(s.MLSMessage, h(case["commit_pub"])).body,  # type: ignore[arg-type]
        _context(case),
    )
    no_tag = replace(commit, auth=replace(commit.auth, confirmation_tag=None))
    with pytest.raises(ValidationError):
        framing.verify_signature(suite, h(case["signature_pub"]), no_tag, _context(case))
