"""Envelopes: round trip, sealed sender, and every way an attacker might try to get one in."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealwire.errors import DecodeError, InvalidEnvelope
from sealwire.protocol.envelope import (
    DEFAULT_LIFETIME_MS,
    MAX_BODY_SIZE,
    MAX_CLOCK_SKEW_MS,
    Envelope,
    EnvelopeContent,
    PayloadType,
    ReplayGuard,
    open_envelope,
    peek_recipient,
    seal,
    signed_bytes,
)
from sealwire.protocol.identity import ChainVerifier, Role, issue_certificate
from sealwire.protocol.suite import XWingPrivateKey, hpke_seal, pad
from tests.conftest import FixedRandom
from tests.protocol.keys import DAY, NOW, NOW_MS, Device, Org, key, make_org

ORG = make_org()
ALICE = ORG.device(10)
BOB = ORG.device(11)


def seal_to(
    recipient: Device,
    body: bytes = b"hello bob",
    *,
    sender: Device = ALICE,
    now_ms: int = NOW_MS,
    payload_type: PayloadType = PayloadType.MESSAGE,
) -> bytes:
    return seal(
        sender=sender.key,
        sender_chain=sender.chain,
        recipient=recipient.address,
        prekey_id=recipient.prekey_id,
        prekey=recipient.prekey.public_key,
        payload_type=payload_type,
        body=body,
        now_ms=now_ms,
        random=os.urandom,
    )


def open_as(
    recipient: Device,
    data: bytes,
    *,
    now_ms: int = NOW_MS + 1000,
    guard: ReplayGuard | None = None,
    org: Org = ORG,
):
    keys = {recipient.prekey_id: recipient.prekey}
    return open_envelope(
        data,
        recipient=recipient.address,
        prekeys=keys.get,
        verifier=ChainVerifier({org.id: org.root.public_key}),
        now_ms=now_ms,
        guard=guard,
    )


def test_round_trip() -> None:
    data = seal_to(BOB, b"hello bob", payload_type=PayloadType.RECEIPT)
    opened = open_as(BOB, data, guard=ReplayGuard())
    assert opened.body == b"hello bob"
    assert opened.payload_type is PayloadType.RECEIPT
    assert opened.sent_at == NOW_MS
    assert opened.sender.body.subject == ALICE.address
    assert opened.sender.body.role is Role.DEVICE
    assert len(opened.message_id) == 16
    assert b"hello bob" not in repr(opened).encode()


def test_relay_sees_only_the_outer_header() -> None:
    data = seal_to(BOB, b"MARKER-PLAINTEXT")
    outer = peek_recipient(data)
    assert outer.recipient == BOB.address and outer.prekey_id == BOB.prekey_id
    assert set(outer.to_value()) == {0, 1, 2, 3}
    assert b"MARKER-PLAINTEXT" not in data
    assert ALICE.address not in data and ALICE.key.public_key not in data
    assert ALICE.cert.encode() not in data


def test_padding_hides_small_length_differences() -> None:
    sizes = {len(seal_to(BOB, b"x" * n)) for n in range(0, 400, 7)}
    assert len(sizes) == 1


def test_every_single_byte_flip_is_rejected() -> None:
    data = seal_to(BOB)
    guard = ReplayGuard()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(InvalidEnvelope):
            open_as(BOB, bytes(bad), guard=guard)
    # Nothing forged reached the replay guard; the real envelope still opens once.
    assert len(guard) == 0
    open_as(BOB, data, guard=guard)


def test_replay_is_rejected_and_guard_persists() -> None:
    data = seal_to(BOB)
    guard = ReplayGuard()
    open_as(BOB, data, guard=guard)
    with pytest.raises(InvalidEnvelope):
        open_as(BOB, data, guard=guard)
    restored = ReplayGuard(entries=guard.entries())
    with pytest.raises(InvalidEnvelope):
        open_as(BOB, data, guard=restored)
    # A guard forgets ids only once their envelopes are too old to be accepted anyway.
    assert restored.prune(NOW_MS + DEFAULT_LIFETIME_MS) == 0
    assert restored.prune(NOW_MS + DEFAULT_LIFETIME_MS + 1) == 1


def test_wrong_recipient_or_prekey() -> None:
    data = seal_to(BOB)
    with pytest.raises(InvalidEnvelope):
        open_as(ALICE, data)
    outer = Envelope.decode(data)
    # Same ciphertext, other prekey id in the header: the HPKE info no longer matches.
    for prekey_id in (outer.prekey_id + 1, 0):
        moved = Envelope(outer.version, outer.recipient, prekey_id, outer.ciphertext).encode()
        keys = {prekey_id: BOB.prekey}
        with pytest.raises(InvalidEnvelope):
            open_envelope(
                moved,
                recipient=BOB.address,
                prekeys=keys.get,
                verifier=ChainVerifier({ORG.id: ORG.root.public_key}),
                now_ms=NOW_MS,
            )
    # Unknown prekey id (deleted after rotation): rejected.
    with pytest.raises(InvalidEnvelope):
        open_envelope(
            data,
            recipient=BOB.address,
            prekeys=lambda _: None,
            verifier=ChainVerifier({ORG.id: ORG.root.public_key}),
            now_ms=NOW_MS,
        )


def test_signature_cannot_be_resealed_to_another_recipient() -> None:
    """Bob, a legitimate recipient, re-seals Alice's signed content to Carol."""
    carol = ORG.device(12)
    content = EnvelopeContent(
        payload_type=PayloadType.MESSAGE,
        message_id=b"\x01" * 16,
        sent_at=NOW_MS,
        sender_chain=tuple(ALICE.chain),
        body=b"signed for bob",
    ).encode()
    signature = ALICE.key.sign(
        "envelope-signature", signed_bytes(BOB.address, BOB.prekey_id, content)
    )
    header = Envelope(1, carol.address, carol.prekey_id, b"").header()
    ct = hpke_seal(
        carol.prekey.public_key, pad(signature + content), purpose="envelope", context=header
    )
    forged = Envelope(1, carol.address, carol.prekey_id, ct).encode()
    with pytest.raises(InvalidEnvelope):
        open_as(carol, forged)
    # The same construction with the right signature opens: the test can fail.
    good_sig = ALICE.key.sign(
        "envelope-signature", signed_bytes(carol.address, carol.prekey_id, content)
    )
    ct = hpke_seal(
        carol.prekey.public_key, pad(good_sig + content), purpose="envelope", context=header
    )
    assert (
        open_as(carol, Envelope(1, carol.address, carol.prekey_id, ct).encode()).body
        == b"signed for bob"
    )


def test_sender_certificate_checks() -> None:
    other = make_org(root_seed=30, server_seed=31)
    mallory = other.device(10)
    data = seal_to(BOB, sender=mallory)
    with pytest.raises(InvalidEnvelope):
        open_as(BOB, data)  # organisation not trusted here
    expired = ORG.device(13, not_after=NOW - 1)
    with pytest.raises(InvalidEnvelope):
        open_as(BOB, seal_to(BOB, sender=expired))
    # A key that claims Alice's chain but is not Alice's key.
    impostor = Device(key(50), ALICE.cert, ALICE.chain, ALICE.prekey, ALICE.prekey_id)
    with pytest.raises(InvalidEnvelope):
        open_as(BOB, seal_to(BOB, sender=impostor))
    # A device certificate issued by another organisation's server into our chain.
    rogue_cert = issue_certificate(
        other.server,
        organisation=ORG.id,
        role=Role.DEVICE,
        identity_key=key(51).public_key,
        serial=1,
        not_before=NOW - DAY,
        not_after=NOW + DAY,
    )
    rogue = Device(
        key(51), rogue_cert, [rogue_cert.encode(), ORG.server_cert.encode()], ALICE.prekey, 1
    )
    with pytest.raises(InvalidEnvelope):
        open_as(BOB, seal_to(BOB, sender=rogue))


def test_freshness_window() -> None:
    data = seal_to(BOB, now_ms=NOW_MS)
    open_as(BOB, data, now_ms=NOW_MS + DEFAULT_LIFETIME_MS)
    with pytest.raises(InvalidEnvelope):
        open_as(BOB, data, now_ms=NOW_MS + DEFAULT_LIFETIME_MS + 1)
    future = seal_to(BOB, now_ms=NOW_MS + MAX_CLOCK_SKEW_MS + 1)
    with pytest.raises(InvalidEnvelope):
        open_as(BOB, future, now_ms=NOW_MS)


def test_one_opaque_error() -> None:
    data = seal_to(BOB)
    messages = set()
    for attempt in (b"", b"\x00" * 10, data[:-1], data[:50] + b"\x00" + data[51:]):
        with pytest.raises(InvalidEnvelope) as info:
            open_as(BOB, attempt)
        messages.add((str(info.value), info.value.__cause__, info.value.__suppress_context__))
    with pytest.raises(InvalidEnvelope) as info:
        open_as(ALICE, data)
    messages.add((str(info.value), info.value.__cause__, info.value.__suppress_context__))
    assert messages == {("envelope rejected", None, True)}


def test_body_bound() -> None:
    seal_to(BOB, b"x" * MAX_BODY_SIZE)
    with pytest.raises(ValueError):
        seal_to(BOB, b"x" * (MAX_BODY_SIZE + 1))


def test_fixed_random_gives_fixed_ids() -> None:
    a = seal(
        sender=ALICE.key,
        sender_chain=ALICE.chain,
        recipient=BOB.address,
        prekey_id=BOB.prekey_id,
        prekey=BOB.prekey.public_key,
        payload_type=PayloadType.MESSAGE,
        body=b"x",
        now_ms=NOW_MS,
        random=FixedRandom(),
    )
    assert open_as(BOB, a).message_id == FixedRandom()(16)


@settings(max_examples=100)
@given(st.binary(max_size=3000))
def test_open_arbitrary_bytes(data: bytes) -> None:
    with pytest.raises(InvalidEnvelope):
        open_as(BOB, data)


@given(st.binary(max_size=400))
def test_outer_decoder_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        peek_recipient(data)


def test_hostile_inner_content_with_valid_hpke() -> None:
    """An attacker who knows Bob's prekey (it is public) can HPKE-seal anything to him."""
    header = Envelope(1, BOB.address, BOB.prekey_id, b"").header()
    for inner in (
        b"",
        b"\x00" * 64,
        bytes(64) + b"\xa0",
        pad(bytes(64) + b"\xff" * 100)[:-1],
        bytes(64)
        + EnvelopeContent(
            PayloadType.MESSAGE, b"\x00" * 16, NOW_MS, tuple(ALICE.chain), b"no signature"
        ).encode(),
    ):
        ct = hpke_seal(BOB.prekey.public_key, pad(inner), purpose="envelope", context=header)
        with pytest.raises(InvalidEnvelope):
            open_as(BOB, Envelope(1, BOB.address, BOB.prekey_id, ct).encode())


def test_prekey_of_another_device_cannot_open() -> None:
    stranger_prekey = XWingPrivateKey(b"\x77" * 32)
    data = seal_to(BOB)
    with pytest.raises(InvalidEnvelope):
        open_envelope(
            data,
            recipient=BOB.address,
            prekeys=lambda _: stranger_prekey,
            verifier=ChainVerifier({ORG.id: ORG.root.public_key}),
            now_ms=NOW_MS,
        )
