"""Wire structures (RFC 9420 §2.1.2, §6-§13) against the official ``deserialization`` and
``messages`` vectors, plus strictness checks on tampered encodings."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealwire.mls import structs as s
from sealwire.mls._tls import Reader, Writer, decode, encode
from sealwire.mls.errors import DecodeError, MLSError, UnsupportedError
from tests.mls.vectors import h, load


@pytest.mark.vectors
@pytest.mark.parametrize("case", load("deserialization"), ids=lambda c: str(c["length"]))
def test_deserialization_vectors(case: dict[str, Any]) -> None:
    # RFC 9420 §2.1.2: the header decodes to the length, and the length encodes minimally to it.
    header = h(case["vlbytes_header"])
    r = Reader(header)
    assert r.varint() == case["length"]
    r.finish()
    assert Writer().varint(case["length"]).bytes() == header


def _ratchet_tree(data: bytes) -> bytes:
    r = Reader(data)
    nodes = s.read_ratchet_tree(r)
    r.finish()
    w = Writer()
    s.write_ratchet_tree(w, nodes)
    return w.bytes()


def _roundtrip(cls: Any) -> Callable[[bytes], bytes]:
    return lambda data: encode(decode(cls, data))


ROUNDTRIPS: dict[str, Callable[[bytes], bytes]] = {
    "mls_welcome": _roundtrip(s.MLSMessage),
    "mls_group_info": _roundtrip(s.MLSMessage),
    "mls_key_package": _roundtrip(s.MLSMessage),
    "ratchet_tree": _ratchet_tree,
    "group_secrets": _roundtrip(s.GroupSecrets),
    "add_proposal": _roundtrip(s.Add),
    "update_proposal": _roundtrip(s.Update),
    "remove_proposal": _roundtrip(s.Remove),
    "pre_shared_key_proposal": _roundtrip(s.PreSharedKey),
    "re_init_proposal": _roundtrip(s.ReInit),
    "external_init_proposal": _roundtrip(s.ExternalInit),
    "group_context_extensions_proposal": _roundtrip(s.GroupContextExtensions),
    "commit": _roundtrip(s.Commit),
    "public_message_application": _roundtrip(s.MLSMessage),
    "public_message_proposal": _roundtrip(s.MLSMessage),
    "public_message_commit": _roundtrip(s.MLSMessage),
    "private_message": _roundtrip(s.MLSMessage),
}

EXPECTED_BODY = {
    "mls_welcome": s.Welcome,
    "mls_group_info": s.GroupInfo,
    "mls_key_package": s.KeyPackage,
    "public_message_application": s.PublicMessage,
    "public_message_proposal": s.PublicMessage,
    "public_message_commit": s.PublicMessage,
    "private_message": s.PrivateMessage,
}


@pytest.mark.vectors
def test_messages_vectors() -> None:
    """Every message of every case decodes and re-encodes byte-identically (300 cases)."""
    cases = load("messages")
    assert len(cases) == 300
    for i, case in enumerate(cases):
        assert set(case) == set(ROUNDTRIPS), i
        for name, roundtrip in ROUNDTRIPS.items():
            data = h(case[name])
            assert roundtrip(data) == data, (i, name)
        for name, body in EXPECTED_BODY.items():
            assert isinstance(decode(s.MLSMessage, h(case[name])).body, body)
        content = decode(s.MLSMessage, h(case["public_message_commit"])).body
        assert isinstance(content, s.PublicMessage)
        assert content.content.content_type == s.ContentType.COMMIT
        assert content.auth.confirmation_tag is not None


@pytest.mark.vectors
def test_messages_reject_truncation_and_trailing_bytes() -> None:
    case = load("messages")[0]
    for name in EXPECTED_BODY:
        data = h(case[name])
        with pytest.raises(DecodeError):
            decode(s.MLSMessage, data[:-1])
        with pytest.raises(DecodeError):
            decode(s.MLSMessage, data + b"\x00")


def test_strict_enums() -> None:
    msg = decode(s.MLSMessage, h(load("messages")[0]["mls_key_package"]))
    data = bytearray(encode(msg))
    bad_version = bytes([0, 2]) + bytes(data[2:])
    with pytest.raises(UnsupportedError):
        decode(s.MLSMessage, bad_version)
    bad_format = bytes(data[:2]) + bytes([0, 9]) + bytes(data[4:])
    with pytest.raises(DecodeError):
        decode(s.MLSMessage, bad_format)
    with pytest.raises(DecodeError):
        decode(s.Sender, b"\x05")
    with pytest.raises(DecodeError):
        decode(s.Node, b"\x03")
    with pytest.raises(UnsupportedError):
        decode(s.Credential, b"\x00\x07\x00")
    with pytest.raises(UnsupportedError):
        s.read_proposal(Reader(b"\x00\x08\x00"))


def test_ratchet_tree_must_not_end_blank() -> None:
    with pytest.raises(DecodeError):
        s.read_ratchet_tree(Reader(b"\x01\x00"))


def test_constructed_structures_roundtrip() -> None:
    leaf = s.LeafNode(
        encryption_key=b"e" * 32,
        signature_key=b"s" * 32,
        credential=s.Credential.basic(b"alice"),
        capabilities=s.Capabilities(cipher_suites=(1,)),
        leaf_node_source=s.LeafNodeSource.COMMIT,
        parent_hash=b"p" * 32,
        signature=b"x" * 64,
    )
    assert decode(s.LeafNode, encode(leaf)) == leaf
    content = s.FramedContent(
        b"g", 3, s.Sender.member(2), s.Commit((s.ProposalOrRef(s.Remove(1)),))
    )
    pub = s.PublicMessage(content, s.FramedContentAuthData(b"sig", b"tag"), b"mt")
    msg = s.MLSMessage(pub)
    assert decode(s.MLSMessage, encode(msg)) == msg
    assert msg.wire_format == s.WireFormat.PUBLIC_MESSAGE


@given(st.binary(max_size=200))
def test_decoders_raise_only_mls_errors(data: bytes) -> None:
    for cls in (s.MLSMessage, s.Commit, s.GroupSecrets, s.LeafNode):
        with contextlib.suppress(MLSError):
            decode(cls, data)  # type: ignore[type-var]
