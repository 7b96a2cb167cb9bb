"""The codec: deterministic encoding, strict decoding, bounds; property tests."""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import DecodeError, EncodeError
from sealwire.protocol.codec import (
    MAX_DEPTH,
    MAX_ITEMS,
    Struct,
    Variants,
    decode_value,
    encode_value,
    wire,
)
from tests.protocol.unchecked import encode_unchecked


class Colour(enum.IntEnum):
    RED = 1
    BLUE = 2


@dataclass(frozen=True)
class Inner(Struct):
    n: int = wire(0, min_value=0, max_value=10)


@dataclass(frozen=True)
class Sample(Struct):
    number: int = wire(0)
    blob: bytes = wire(1, size=4)
    text: str = wire(2, max_size=8)
    flag: bool = wire(3)
    colour: Colour = wire(4)
    inner: Inner = wire(5)
    items: tuple[bytes, ...] = wire(6, max_items=3, max_size=2)
    note: str | None = wire(10, default=None)


GOOD = Sample(7, b"abcd", "hi", True, Colour.BLUE, Inner(3), (b"x", b"yz"))

VARIANTS = Variants("sample", {1: Sample, 2: Inner})


def test_round_trip_and_determinism() -> None:
    data = GOOD.encode()
    assert data == cbor2.dumps(GOOD.to_value(), canonical=True)
    assert Sample.decode(data) == GOOD
    assert Sample.decode(data).encode() == data
    with_note = Sample(**{**GOOD.__dict__, "note": "n"})
    assert Sample.decode(with_note.encode()).note == "n"


def test_known_bytes() -> None:
    # {0: 1, 1: h'00'} in the deterministic encoding
    assert encode_value({1: b"\x00", 0: 1}) == bytes.fromhex("a200010141" + "00")


def mutate(changes: dict[object, object]) -> bytes:
    value: dict[object, object] = dict(GOOD.to_value())
    value.update(changes)
    return cbor2.dumps(value, canonical=True)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (mutate({1: b"abc"}), "wrong size"),
        (mutate({2: "ninechars"}), "too long"),
        (mutate({3: 1}), "int for bool"),
        (mutate({0: True}), "bool for int"),
        (mutate({0: "7"}), "text for int"),
        (mutate({1: "abcd"}), "text for bytes"),
        (mutate({4: 9}), "unknown enum value"),
        (mutate({5: {0: 11}}), "nested bound"),
        (mutate({5: [3]}), "array for map"),
        (mutate({6: [b"a", b"b", b"c", b"d"]}), "too many items"),
        (mutate({6: [b"abc"]}), "item too long"),
        (mutate({9: 1}), "unknown key"),
        (mutate({"x": 1}), "text key"),
        (cbor2.dumps({k: v for k, v in GOOD.to_value().items() if k != 0}), "missing key"),
        (mutate({10: None}), "null for optional"),
    ],
)
def test_rejects_invalid_structures(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError):
        Sample.decode(data)


@pytest.mark.parametrize(
    ("hexdata", "why"),
    [
        ("", "empty"),
        ("f93c00", "half float"),
        ("fb3ff0000000000000", "double"),
        ("c11a514b67b0", "tag 1"),
        ("c24101", "bignum tag for a small number"),
        ("d82a4100", "unknown tag"),
        ("9f01ff", "indefinite array"),
        ("5f4100ff", "indefinite bytes"),
        ("bf0001ff", "indefinite map"),
        ("1800", "non-shortest integer"),
        ("5800", "non-shortest length"),
        ("a2010000 00".replace(" ", ""), "unsorted keys"),
        ("a200000000", "duplicate keys"),
        ("0000", "trailing bytes"),
        ("f7", "undefined"),
        ("f0", "simple value"),
        ("1bffffffffffffffff" + "", "fine: max uint64"),
        ("c349010000000000000000", "negative bignum"),
        ("a1a10000 00".replace(" ", ""), "map as key"),
        ("62c328", "invalid utf-8"),
        ("1a", "truncated"),
    ],
)
def test_rejects_non_deterministic_or_forbidden_cbor(hexdata: str, why: str) -> None:
    data = bytes.fromhex(hexdata)
    if why.startswith("fine"):
        assert decode_value(data) == (1 << 64) - 1
        return
    with pytest.raises(DecodeError):
        decode_value(data)


def test_depth_and_size_bounds() -> None:
    nested: object = 0
    for _ in range(MAX_DEPTH):
        nested = [nested]
    decode_value(encode_value(nested))
    with pytest.raises(DecodeError):
        decode_value(encode_value([nested]))
    with pytest.raises(DecodeError):
        decode_value(b"\x81" * 100_000 + b"\x00")
    with pytest.raises(DecodeError):
        decode_value(encode_value(list(range(MAX_ITEMS + 1))))
    with pytest.raises(DecodeError, match="larger than"):
        decode_value(encode_value(b"x" * 100), max_size=50)


def test_variants() -> None:
    data = VARIANTS.encode(Inner(1))
    assert data == bytes.fromhex("8202a10001")
    assert VARIANTS.decode(data) == Inner(1)
    for bad in ("8203a10001", "8302a1000100", "82f5a10001", "a10001"):
        with pytest.raises(DecodeError):
            VARIANTS.decode(bytes.fromhex(bad))


plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1)
    | st.binary(max_size=20)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.integers(min_value=0, max_value=30) | st.text(max_size=4), children, max_size=4
        )
    ),
    max_leaves=20,
)


@given(plain_values)
def test_every_value_has_one_encoding(value: object) -> None:
    data = encode_value(value)
    try:
        decoded = decode_value(data)
    except DecodeError as exc:
        assert "nested too deeply" in exc.reason
        return
    assert decoded == value
    assert encode_value(decoded) == data


@given(st.binary(max_size=300))
def test_decode_value_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_value(data)


@given(st.binary(max_size=300))
def test_struct_and_variants_decoders_arbitrary_bytes(data: bytes) -> None:
    for decoder in (Sample.decode, Inner.decode, VARIANTS.decode):
        with contextlib.suppress(DecodeError):
            decoder(data)


@given(st.binary(min_size=1, max_size=60), st.integers(min_value=0))
def test_mutated_valid_structure(noise: bytes, position: int) -> None:
    data = bytearray(GOOD.encode())
    i = position % len(data)
    data[i : i + len(noise)] = noise
    try:
        value = Sample.decode(bytes(data))
    except DecodeError:
        return
    assert value.encode() == bytes(data)


# --- encode-side bounds: the sender refuses exactly what the receiver's decoder would ----------


_VALUES = st.builds(
    Sample,
    number=st.integers(min_value=-(1 << 65), max_value=1 << 65),
    blob=st.binary(min_size=3, max_size=5),
    text=st.text(max_size=10) | st.just("\ud800"),  # a lone surrogate is not Unicode
    flag=st.booleans(),
    colour=st.sampled_from(Colour),
    inner=st.builds(Inner, n=st.integers(min_value=-2, max_value=12)),
    items=st.lists(st.binary(max_size=3), max_size=5).map(tuple),
    note=st.none() | st.text(max_size=3),
)


@given(_VALUES)
def test_encode_refuses_exactly_what_decode_refuses(value: Sample) -> None:
    """One definition of every bound: ``encode`` raises ``EncodeError`` if and only if the
    receiver's decoder refuses the same value written without the encode-side checks."""
    with contextlib.suppress(UnicodeEncodeError):  # cbor2 itself cannot write the surrogate
        unchecked = encode_unchecked(value)
        try:
            Sample.decode(unchecked)
            accepted = True
        except DecodeError:
            accepted = False
        try:
            assert Sample.decode(value.encode()) == value
            refused = False
        except EncodeError:
            refused = True
        assert refused is not accepted
        return
    with pytest.raises(EncodeError):  # a surrogate, and perhaps another bound too
        value.encode()


def test_encode_error_names_the_field_and_the_bound_not_the_value() -> None:
    secret = "s3cr3t-text"
    over = Sample(
        number=1,
        blob=b"abcd",
        text=secret,
        flag=True,
        colour=Colour.RED,
        inner=Inner(n=1),
        items=(),
    )
    with pytest.raises(EncodeError) as raised:
        over.encode()
    assert raised.value.reason == "Sample.text: 11 long, longer than 8"
    assert secret not in str(raised.value)
    nested = Sample(
        number=1, blob=b"abcd", text="", flag=True, colour=Colour.RED, inner=Inner(n=11), items=()
    )
    with pytest.raises(EncodeError, match=r"Sample\.inner: Inner\.n: 11 is out of range"):
        nested.encode()
