"""Relay frames: strict decoding, round trips, pinned vectors (tests/vectors/frames.json)."""

from __future__ import annotations

import contextlib
import json
import pathlib

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import ConfigError, DecodeError, EncodeError
from sealwire.protocol.envelope import MAX_ENVELOPE_SIZE
from sealwire.protocol.frames import (
    ERROR_CODES,
    FRAMES,
    MAX_ACK_IDS,
    MAX_ACTIVATION_PAYLOAD,
    MAX_DELIVERY_ID_SIZE,
    MAX_FRAME_SIZE,
    MAX_REASON_SIZE,
    MAX_REVOKE_ADDRESSES,
    REQUEST_ERROR_CODES,
    Accepted,
    Ack,
    Activation,
    Auth,
    Challenge,
    Deliver,
    Error,
    ErrorCode,
    Expired,
    Hello,
    Mode,
    Ping,
    Pong,
    Ready,
    Revoke,
    Send,
    auth_message,
    canonical_origin,
    decode_frame,
    encode_frame,
    relay_id_for,
)
from sealwire.protocol.suite import sha256
from tests.protocol.unchecked import encode_unchecked
from tests.vectors.make_frame_vectors import build

VECTORS = json.loads((pathlib.Path(__file__).parents[1] / "vectors" / "frames.json").read_text())
DOC = (pathlib.Path(__file__).parents[2] / "docs" / "protocol" / "FRAMES.md").read_text()

EXAMPLES = [
    Hello(version=1, mode=Mode.AUTHENTICATE),
    Hello(version=1, mode=Mode.ACTIVATE),
    Challenge(relay_id=bytes(32), nonce=bytes(range(32))),
    Auth(chain=(b"leaf", b"issuer"), signature=bytes(64)),
    Auth(chain=(b"server",), signature=bytes(64), root=bytes(32)),
    Ready(address=bytes(32), time=1, max_pending=3),
    Ready(address=None),
    Send(ref=0, envelope=b"sealed"),
    Accepted(ref=(1 << 63) - 1),
    Deliver(delivery_id=b"\x01", envelope=b"sealed"),
    Ack(delivery_ids=(b"\x01", b"\x02")),
    Error(code="queue-full", reason="later", ref=4),
    Error(code="malformed"),
    Ping(data=9),
    Pong(data=9),
    Activation(session=bytes(16), payload=b"pake", server=bytes(32)),
    Activation(session=bytes(16), payload=b"pake"),
    Revoke(ref=2, addresses=(bytes(32),)),
    Expired(recipient=bytes(32), digest=bytes(32), accepted_at=5),
]


@pytest.mark.parametrize("frame", EXAMPLES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: object) -> None:
    data = encode_frame(frame)  # type: ignore[arg-type]
    assert decode_frame(data) == frame


def test_every_frame_kind_has_an_example() -> None:
    codes = {FRAMES.code_of(f) for f in EXAMPLES}
    assert codes == set(range(1, 15))


def test_error_codes_are_stable() -> None:
    # Wire codes never change meaning; adding one is fine, renaming one is a new version.
    assert {
        "malformed",
        "version",
        "unexpected",
        "auth-failed",
        "not-admitted",
        "revoked",
        "too-large",
        "timeout",
        "too-many",
        "rate-limited",
        "queue-full",
        "unknown-server",
        "unavailable",
        "shutdown",
        "internal",
    } <= ERROR_CODES
    assert all(len(c) <= 32 and c.isascii() for c in ERROR_CODES)


@pytest.mark.parametrize(
    "value",
    [
        [99, {}],  # unknown code
        [1, {0: 1, 1: 1, 7: 0}],  # unknown key
        [1, {0: 1}],  # missing key
        [1, {0: 1, 1: 3}],  # unknown mode
        [1, {0: 0, 1: 1}],  # version 0
        [2, {0: bytes(31), 1: bytes(32)}],  # short relay id
        [3, {0: [b"a", b"b", b"c"], 1: bytes(64)}],  # chain too long
        [8, {0: [b"x"] * (MAX_ACK_IDS + 1)}],  # too many ids
        [8, {0: [bytes(33)]}],  # delivery id too long
        [9, {0: "x" * 33}],  # code too long
        [10, {0: -1}],  # negative
        [10, {0: True}],  # bool is not an int
        [13, {0: 1, 1: [bytes(31)]}],  # short address
        [1, [1, 1]],  # body not a map
        [1],  # not a pair
        {1: 2},  # not an array
    ],
)
def test_invalid_frames_are_rejected(value: object) -> None:
    with pytest.raises(DecodeError):
        decode_frame(cbor2.dumps(value))


def test_oversized_frame_is_rejected() -> None:
    frame = Send(ref=1, envelope=bytes(MAX_FRAME_SIZE))
    with pytest.raises(DecodeError):
        decode_frame(encode_unchecked(frame, FRAMES))


def test_non_canonical_encoding_is_rejected() -> None:
    data = encode_frame(Ping(data=1))
    # the same value with a two-byte integer head for 1
    longer = data[:-1] + b"\x18\x01"
    assert cbor2.loads(longer) == cbor2.loads(data)
    with pytest.raises(DecodeError):
        decode_frame(longer)


def test_auth_message_binds_relay_nonce_and_address() -> None:
    a, n, addr = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
    assert auth_message(a, n, addr) == a + n + addr


@given(st.binary(max_size=512))
def test_decoder_property_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary bytes give a frame or DecodeError, nothing else."""
    try:
        frame = decode_frame(data)
    except DecodeError:
        return
    assert encode_frame(frame) == data


@given(st.sampled_from([encode_frame(f) for f in EXAMPLES]), st.data())
def test_decoder_property_mutated_frames(data: bytes, draw: st.DataObject) -> None:
    """Valid frames with one byte changed, or cut short, still decode to a frame or fail cleanly."""
    i = draw.draw(st.integers(0, len(data) - 1))
    mutated = data[:i] + bytes([draw.draw(st.integers(0, 255))]) + data[i + 1 :]
    for candidate in (mutated, data[:i]):
        with contextlib.suppress(DecodeError):
            decode_frame(candidate)


# --- pinned vectors ---------------------------------------------------------------------------


def test_vectors_are_reproduced_exactly() -> None:
    assert build() == VECTORS


def test_vector_relay_id_is_derived_from_its_origin() -> None:
    assert VECTORS["relay_origin"] == "wss://relay.example:443"
    assert bytes.fromhex(VECTORS["relay_id"]) == relay_id_for(VECTORS["relay_origin"])
    challenges = [
        decode_frame(bytes.fromhex(f["hex"]))
        for s in VECTORS["sessions"]
        for f in s["frames"]
        if f["direction"] == "relay-to-client"
    ]
    assert {c.relay_id for c in challenges if isinstance(c, Challenge)} == {
        relay_id_for("wss://relay.example")
    }


def test_vectors_cover_every_frame_kind() -> None:
    codes = {
        cbor2.loads(bytes.fromhex(f["hex"]))[0] for s in VECTORS["sessions"] for f in s["frames"]
    }
    assert codes == set(range(1, 15))


def test_vectors_decode_and_reencode() -> None:
    for session in VECTORS["sessions"]:
        for f in session["frames"]:
            data = bytes.fromhex(f["hex"])
            assert encode_frame(decode_frame(data)) == data


def test_every_vector_is_in_the_documentation() -> None:
    for session in VECTORS["sessions"]:
        for f in session["frames"]:
            assert f["hex"] in DOC.replace("\n", "").replace(" ", ""), f["hex"][:40]


def test_error_code_enum_matches_set() -> None:
    assert {c.value for c in ErrorCode} == ERROR_CODES


# --- relay ids --------------------------------------------------------------------------------


def test_relay_id_is_sha256_of_the_labelled_canonical_origin() -> None:
    expected = sha256(b"sealwire/v1/relay-id\x00wss://relay.example:443")
    for spelling in (
        "wss://relay.example",
        "wss://relay.example:443",
        "WSS://Relay.Example:443/",
        "relay.example",
        "relay.example:443",
    ):
        assert canonical_origin(spelling) == "wss://relay.example:443"
        assert relay_id_for(spelling) == expected
    assert relay_id_for("wss://[0:0::1]") == relay_id_for("wss://[::1]:443")
    ids = {
        relay_id_for(o)
        for o in (
            "wss://relay.example",
            "wss://relay.example:8443",
            "ws://relay.example:443",
            "wss://relay2.example",
            "wss://relay.example.org",
        )
    }
    assert len(ids) == 5


@pytest.mark.parametrize(
    "origin",
    [
        "",
        "https://relay.example",
        "wss://relay.example/path",
        "wss://relay.example?x=1",
        "wss://user@relay.example",
        "wss://relay.example:0",
        "wss://relay.example:65536",
        "wss://-relay.example",
        "wss://relay..example",
        "wss://rélay.example",
        "wss://[::g]",
        "wss://" + "a" * 64 + ".example",
    ],
)
def test_invalid_relay_origins_are_refused(origin: str) -> None:
    with pytest.raises(ConfigError, match="relay origin"):
        relay_id_for(origin)


def test_request_error_codes_are_the_per_request_ones() -> None:
    assert {c.value for c in REQUEST_ERROR_CODES} == {
        "rate-limited",
        "queue-full",
        "unknown-server",
        "unavailable",
        "recipient-revoked",
    }


# --- bounds: the limit is accepted, one more is not ----------------------------------------


@pytest.mark.parametrize(
    ("make", "limit"),
    [
        (lambda n: Send(ref=0, envelope=bytes(n)), MAX_ENVELOPE_SIZE),
        (lambda n: Deliver(delivery_id=bytes(n), envelope=b""), MAX_DELIVERY_ID_SIZE),
        (lambda n: Deliver(delivery_id=b"\x01", envelope=bytes(n)), MAX_ENVELOPE_SIZE),
        (lambda n: Ack(delivery_ids=(b"\x01",) * n), MAX_ACK_IDS),
        (lambda n: Revoke(ref=0, addresses=(bytes(32),) * n), MAX_REVOKE_ADDRESSES),
        (lambda n: Activation(session=bytes(16), payload=bytes(n)), MAX_ACTIVATION_PAYLOAD),
        (lambda n: Error(code="x" * n), 32),
        (lambda n: Error(code="x", reason="é" * n), MAX_REASON_SIZE),
    ],
    ids=["send", "delivery-id", "deliver", "ack", "revoke", "activation", "code", "reason"],
)
def test_size_limits_are_exact(make: object, limit: int) -> None:
    build_frame = make  # a callable: size -> frame
    at_limit = encode_frame(build_frame(limit))  # type: ignore[operator]
    assert len(at_limit) <= MAX_FRAME_SIZE
    assert decode_frame(at_limit) == build_frame(limit)  # type: ignore[operator]
    over = build_frame(limit + 1)  # type: ignore[operator]
    with pytest.raises(EncodeError):  # the sender refuses what the receiver would
        encode_frame(over)
    with pytest.raises(DecodeError):
        decode_frame(encode_unchecked(over, FRAMES))
