"""Chat messages and receipts: strict decoders, round trips, bounds."""

from __future__ import annotations

from dataclasses import replace

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import DecodeError, EncodeError
from sealwire.protocol.codec import Struct
from sealwire.protocol.envelope import MAX_BODY_SIZE
from sealwire.protocol.messaging import (
    APP_MESSAGE_ID_SIZE,
    MAX_RECEIPT_IDS,
    MAX_TEXT,
    ChatMessage,
    Receipt,
    ReceiptKind,
)
from tests.protocol.unchecked import encode_unchecked

MESSAGE = ChatMessage(message_id=bytes(range(16)), sender="alice", recipient="bob", text="Hi Bob")
RECEIPT = Receipt(kind=ReceiptKind.DELIVERED, message_ids=(bytes(16), bytes([1]) * 16), by="bob")

usernames = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True)
message_ids = st.binary(min_size=APP_MESSAGE_ID_SIZE, max_size=APP_MESSAGE_ID_SIZE)
messages = st.builds(
    ChatMessage,
    message_id=message_ids,
    sender=usernames,
    recipient=usernames,
    text=st.text(max_size=300),
)
receipts = st.builds(
    Receipt,
    kind=st.sampled_from(ReceiptKind),
    message_ids=st.lists(message_ids, max_size=20).map(tuple),
    by=usernames,
)


def test_receipt_kinds_are_stable_wire_codes() -> None:
    assert {k.name: k.value for k in ReceiptKind} == {"DELIVERED": 1, "READ": 2}


def test_known_encoding() -> None:
    # {0: h'0001…0f', 1: "alice", 2: "bob", 3: "Hi Bob"}
    assert MESSAGE.encode() == bytes.fromhex(
        "a40050000102030405060708090a0b0c0d0e0f0165616c6963650263626f620366486920426f62"
    )


@given(st.binary(max_size=400))
def test_decoders_give_a_value_or_decode_error(data: bytes) -> None:
    for cls in (ChatMessage, Receipt):
        try:
            value = cls.decode(data)
        except DecodeError:
            continue
        assert value.encode() == data


@given(st.one_of(messages, receipts))
def test_round_trip(value: Struct) -> None:
    data = value.encode()
    assert type(value).decode(data) == value
    assert type(value).decode(data).encode() == data


@given(
    st.sampled_from([MESSAGE, RECEIPT]),
    st.integers(min_value=0),
    st.integers(0, 255),
    st.binary(min_size=1, max_size=8),
)
def test_mutated_encodings_decode_cleanly(
    value: Struct, position: int, byte: int, extra: bytes
) -> None:
    """Byte flips, truncation, appended bytes: DecodeError, or a value with exactly those bytes."""
    data = value.encode()
    i = position % len(data)
    for candidate in (data[:i] + bytes([byte]) + data[i + 1 :], data[:i], data + extra):
        try:
            decoded = type(value).decode(candidate)
        except DecodeError:
            continue
        assert decoded.encode() == candidate


# --- bounds: the limit is accepted, one more is not ------------------------------------------


@pytest.mark.parametrize(
    ("make", "limit"),
    [
        (lambda n: replace(MESSAGE, text="x" * n), MAX_TEXT),
        (lambda n: replace(MESSAGE, text="é" * n), MAX_TEXT),
        (lambda n: replace(MESSAGE, sender="a" * n), 64),
        (lambda n: replace(MESSAGE, recipient="a" * n), 64),
        (lambda n: replace(RECEIPT, by="a" * n), 64),
        (lambda n: replace(RECEIPT, message_ids=(bytes(16),) * n), MAX_RECEIPT_IDS),
    ],
    ids=["text", "text-2-byte", "sender", "recipient", "by", "receipt-ids"],
)
def test_size_limits_are_exact(make: object, limit: int) -> None:
    build = make  # a callable: size -> structure
    at_limit = build(limit)  # type: ignore[operator]
    assert type(at_limit).decode(at_limit.encode()) == at_limit
    over = build(limit + 1)  # type: ignore[operator]
    with pytest.raises(EncodeError):  # the sender refuses what the receiver would
        over.encode()
    with pytest.raises(DecodeError):
        type(over).decode(encode_unchecked(over))


@pytest.mark.parametrize(
    ("cls", "value"),
    [
        (ChatMessage, {0: bytes(15), 1: "a", 2: "b", 3: ""}),  # short id
        (ChatMessage, {0: bytes(17), 1: "a", 2: "b", 3: ""}),  # long id
        (ChatMessage, {0: bytes(16), 1: "a", 2: "b", 3: b"text"}),  # bytes for text
        (ChatMessage, {0: bytes(16), 1: "a", 2: "b"}),  # no text
        (ChatMessage, {0: bytes(16), 1: "a", 2: "b", 3: "", 4: 0}),  # unknown key
        (Receipt, {0: 3, 1: [], 2: "b"}),  # unknown kind
        (Receipt, {0: 0, 1: [], 2: "b"}),  # kind 0
        (Receipt, {0: True, 1: [], 2: "b"}),  # bool for kind
        (Receipt, {0: 1, 1: [bytes(17)], 2: "b"}),  # long id
        (Receipt, {0: 1, 1: bytes(16), 2: "b"}),  # one id, not an array
    ],
)
def test_invalid_structures_are_refused(cls: type[Struct], value: object) -> None:
    with pytest.raises(DecodeError):
        cls.decode(cbor2.dumps(value))


# --- bounds that once were wrong (found by these tests during issue 4) -----------------------


def test_receipt_ids_are_exactly_sixteen_bytes() -> None:
    short = Receipt(kind=ReceiptKind.READ, message_ids=(b"",), by="bob")
    with pytest.raises(EncodeError):
        short.encode()
    with pytest.raises(DecodeError):
        Receipt.decode(encode_unchecked(short))


def test_the_longest_text_fits_in_one_envelope_body() -> None:
    longest = replace(MESSAGE, text="\U0001d11e" * MAX_TEXT)  # four UTF-8 bytes each
    assert ChatMessage.decode(longest.encode()) == longest  # within the struct's bounds
    assert len(longest.encode()) <= MAX_BODY_SIZE
