"""The TLS presentation-language codec (RFC 9420 §2.1): exact encodings, strict decoding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealwire.mls._tls import MAX_VARINT, MAX_VECTOR, Reader, Writer, decode, encode
from sealwire.mls.errors import DecodeError, LocalError, MLSError


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (37, "25"),
        (63, "3f"),
        (64, "4040"),
        (15293, "7bbd"),  # RFC 9000 §A.1 style example, 2-byte form
        (16383, "7fff"),
        (16384, "80004000"),
        (494878333, "9d7f3e7d"),
        (MAX_VARINT, "bfffffff"),
    ],
)
def test_varint_round_trip(value: int, encoded: str) -> None:
    assert Writer().varint(value).bytes().hex() == encoded
    r = Reader(bytes.fromhex(encoded))
    assert r.varint() == value
    r.finish()


@pytest.mark.parametrize(
    "encoded",
    [
        "4000",  # 0 in two bytes
        "403f",  # 63 in two bytes
        "80000000",  # 0 in four bytes
        "80003fff",  # 16383 in four bytes
        "c000000000000000",  # reserved 0b11 prefix
        "ff",
        "40",  # short
        "800000",  # short
        "",
    ],
)
def test_varint_rejects_non_minimal_reserved_and_short(encoded: str) -> None:
    with pytest.raises(DecodeError):
        Reader(bytes.fromhex(encoded)).varint()


@pytest.mark.parametrize("value", [-1, MAX_VARINT + 1])
def test_varint_out_of_range_is_a_local_error(value: int) -> None:
    with pytest.raises(LocalError):
        Writer().varint(value)


def test_fixed_width_integers() -> None:
    w = Writer().u8(0xAB).u16(0xBEEF).u32(0xDEADBEEF).u64(0x0102030405060708)
    assert w.bytes().hex() == "abbeefdeadbeef0102030405060708"
    r = Reader(w.bytes())
    assert (r.u8(), r.u16(), r.u32(), r.u64()) == (0xAB, 0xBEEF, 0xDEADBEEF, 0x0102030405060708)
    assert r.remaining() == 0
    r.finish()


@pytest.mark.parametrize(
    ("method", "bad"), [("u8", 256), ("u16", 1 << 16), ("u32", 1 << 32), ("u64", -1)]
)
def test_fixed_width_out_of_range(method: str, bad: int) -> None:
    with pytest.raises(LocalError):
        getattr(Writer(), method)(bad)


@pytest.mark.parametrize(("method", "size"), [("u8", 1), ("u16", 2), ("u32", 4), ("u64", 8)])
def test_fixed_width_short_reads(method: str, size: int) -> None:
    with pytest.raises(DecodeError):
        getattr(Reader(bytes(size - 1)), method)()


def test_opaque_and_raw() -> None:
    data = Writer().opaque(b"").opaque(b"abc").opaque(bytes(100)).raw(b"xy").bytes()
    assert data[:5].hex() == "0003616263"
    r = Reader(data)
    assert r.opaque() == b""
    assert r.opaque() == b"abc"
    assert r.opaque() == bytes(100)
    assert r.raw(2) == b"xy"
    r.finish()


def test_opaque_length_limits() -> None:
    with pytest.raises(DecodeError):
        Reader(Writer().opaque(b"abcd").bytes()).opaque(max_len=3)
    with pytest.raises(DecodeError):  # length claims more than is there
        Reader(bytes.fromhex("05616263")).opaque()
    # A length above MAX_VECTOR is refused before anything is read or allocated.
    with pytest.raises(DecodeError):
        Reader(Writer().varint(MAX_VECTOR + 1).bytes() + bytes(8)).opaque()
    with pytest.raises(LocalError):
        Writer().opaque(bytes(MAX_VECTOR + 1))


def test_vector_of_items() -> None:
    data = Writer().vector([1, 2, 0xFFFF], Writer.u16).bytes()
    assert data.hex() == "06" + "0001" + "0002" + "ffff"
    r = Reader(data)
    assert r.vector(Reader.u16) == [1, 2, 0xFFFF]
    r.finish()
    assert Reader(b"\x00").vector(Reader.u16) == []


def test_nested_vectors() -> None:
    def write_inner(w: Writer, item: list[bytes]) -> None:
        w.vector(item, Writer.opaque)

    value = [[b"a", b""], [], [b"bcd"]]
    data = Writer().vector(value, write_inner).bytes()
    r = Reader(data)
    assert r.vector(lambda rr: rr.vector(Reader.opaque)) == value
    r.finish()


def test_vector_item_overrunning_the_vector_is_rejected() -> None:
    # Byte length 3 but u16 items: the second item would straddle the vector's end.
    with pytest.raises(DecodeError):
        Reader(bytes.fromhex("03000100")).vector(Reader.u16)


def test_vector_item_reading_nothing_cannot_loop_forever() -> None:
    with pytest.raises(DecodeError):
        Reader(bytes.fromhex("0100")).vector(lambda r: None)


def test_optional() -> None:
    data = Writer().optional(None, Writer.u8).optional(7, Writer.u8).bytes()
    assert data.hex() == "000107"
    r = Reader(data)
    assert r.optional(Reader.u8) is None
    assert r.optional(Reader.u8) == 7
    r.finish()
    with pytest.raises(DecodeError):
        Reader(b"\x02\x07").optional(Reader.u8)


def test_finish_rejects_trailing_bytes() -> None:
    r = Reader(b"\x01\x02")
    r.u8()
    with pytest.raises(DecodeError):
        r.finish()


class _Pair:
    def __init__(self, a: int, b: bytes) -> None:
        self.a, self.b = a, b

    def write(self, w: Writer) -> None:
        w.u16(self.a).opaque(self.b)

    @classmethod
    def read(cls, r: Reader) -> _Pair:
        return cls(r.u16(), r.opaque())


def test_encode_decode_protocol() -> None:
    data = encode(_Pair(5, b"hi"))
    assert data.hex() == "0005026869"
    pair = decode(_Pair, data)
    assert (pair.a, pair.b) == (5, b"hi")
    with pytest.raises(DecodeError):
        decode(_Pair, data + b"\x00")


def test_reader_accepts_memoryview_and_bytearray() -> None:
    data = b"\x00\x05\x02hi"
    assert decode(_Pair, memoryview(data)).b == b"hi"
    assert decode(_Pair, bytearray(data)).a == 5


READERS: dict[str, Callable[[Reader], Any]] = {
    "u8": Reader.u8,
    "u16": Reader.u16,
    "u32": Reader.u32,
    "u64": Reader.u64,
    "varint": Reader.varint,
    "opaque": Reader.opaque,
    "opaque_max_3": lambda r: r.opaque(max_len=3),
    "raw_5": lambda r: r.raw(5),
    "vector_u16": lambda r: r.vector(Reader.u16),
    "vector_opaque": lambda r: r.vector(Reader.opaque),
    "vector_vector": lambda r: r.vector(lambda rr: rr.vector(Reader.varint)),
    "optional_u32": lambda r: r.optional(Reader.u32),
    "pair": _Pair.read,
    "finish": Reader.finish,
}


@given(data=st.binary(max_size=64), names=st.lists(st.sampled_from(sorted(READERS)), max_size=6))
def test_arbitrary_bytes_give_values_or_decode_error(data: bytes, names: list[str]) -> None:
    """The decoder invariant: any input yields values or DecodeError, never anything else."""
    r = Reader(data)
    for name in names:
        before = r.remaining()
        try:
            READERS[name](r)
        except DecodeError:
            return
        except MLSError as exc:  # pragma: no cover - the failure we are looking for
            pytest.fail(f"{name} raised {exc!r}")
        assert 0 <= r.remaining() <= before


@given(values=st.lists(st.integers(min_value=0, max_value=MAX_VARINT), max_size=10))
def test_varint_round_trip_property(values: list[int]) -> None:
    data = Writer().vector(values, Writer.varint).bytes()
    r = Reader(data)
    assert r.vector(Reader.varint) == values
    r.finish()
