"""Pinned protocol vectors (tests/vectors/protocol.json): any change to the wire format of
certificates, prekeys, padding or envelopes fails here and must be a deliberate new version."""

from __future__ import annotations

import json
import pathlib

import pytest

from sealwire.protocol.envelope import Envelope, open_envelope
from sealwire.protocol.identity import Certificate, ChainVerifier, SignedPrekey, verify_chain
from sealwire.protocol.suite import SigningKey, XWingPrivateKey
from tests.vectors.make_protocol_vectors import build

VECTORS = json.loads((pathlib.Path(__file__).parents[1] / "vectors" / "protocol.json").read_text())
pytestmark = pytest.mark.vectors


def test_deterministic_parts_are_reproduced_exactly() -> None:
    again = build(VECTORS["envelope"]["hex"])
    assert again == VECTORS


def test_pinned_certificates_verify() -> None:
    root = bytes.fromhex(VECTORS["identity"]["root_public_key"])
    device = Certificate.parse(bytes.fromhex(VECTORS["device_certificate"]))
    server = Certificate.parse(bytes.fromhex(VECTORS["server_certificate"]))
    leaf = verify_chain([device, server], root_key=root, now=VECTORS["now"])
    assert leaf.body.subject.hex() == VECTORS["identity"]["device_address"]


def test_pinned_prekey_verifies() -> None:
    peer = SigningKey.from_seed(bytes.fromhex(VECTORS["seeds"]["peer"]))
    spk = SignedPrekey.decode(bytes.fromhex(VECTORS["peer_signed_prekey"]))
    assert (
        spk.verify(peer.public_key, now=VECTORS["now"]).raw.hex() == VECTORS["peer_prekey_public"]
    )


def test_pinned_envelope_opens_to_pinned_content() -> None:
    v = VECTORS["envelope"]
    data = bytes.fromhex(v["hex"])
    assert Envelope.decode(data).encode() == data
    prekey = XWingPrivateKey(bytes.fromhex(VECTORS["seeds"]["peer_prekey"]))
    root = bytes.fromhex(VECTORS["identity"]["root_public_key"])
    opened = open_envelope(
        data,
        recipient=bytes.fromhex(v["recipient"]),
        prekeys={v["prekey_id"]: prekey}.get,
        verifier=ChainVerifier({bytes.fromhex(VECTORS["identity"]["organisation_id"]): root}),
        now_ms=v["sent_at"] + 1000,
    )
    assert opened.body.hex() == v["body"]
    assert opened.message_id.hex() == v["message_id"]
    assert opened.sent_at == v["sent_at"]
    assert int(opened.payload_type) == v["payload_type"]
    assert opened.sender.body.subject.hex() == v["sender"]
