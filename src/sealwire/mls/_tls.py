"""The TLS presentation-language codec used by MLS (RFC 9420 §2.1, RFC 8446 §3), strict and bounded.

Every MLS wire structure is written with a :class:`Writer` and read back with a :class:`Reader`:

* fixed-width big-endian integers: ``u8``, ``u16``, ``u32``, ``u64``;
* variable-size lengths (RFC 9420 §2.1.2): ``varint``; the two top bits of the first byte give
  the width (``00`` → 1 byte, ``01`` → 2, ``10`` → 4); ``11`` is reserved and rejected, and the
  decoder rejects non-minimal encodings as §2.1.2 requires; values go up to ``2**30 - 1``;
* ``opaque<V>``: a varint byte length followed by the bytes (``opaque``);
* ``T items<V>``: a varint *byte* length followed by the items, which must consume exactly that
  many bytes (``vector`` with an item callback ``write_item(writer, item)`` /
  ``read_item(reader)``);
* ``optional<T>``: a ``u8`` presence flag (0 or 1, anything else is rejected) then the value;
* ``raw``: fixed-length bytes with no prefix.

Reading is strict: any short read, length above :data:`MAX_VECTOR`, invalid presence flag,
non-minimal varint or trailing byte (checked by :meth:`Reader.finish`) raises
:class:`sealwire.mls.errors.DecodeError` and nothing else. Writing a value out of range raises
:class:`sealwire.mls.errors.LocalError` (a caller bug, not peer input).

Structures may implement the :class:`TLSSerializable` protocol (``write(self, w)`` and a
classmethod ``read(cls, r)``); :func:`encode` and :func:`decode` then turn them into bytes and
back, ``decode`` insisting that the whole input is consumed::

    class Pair:
        def write(self, w: Writer) -> None: ...
        @classmethod
        def read(cls, r: Reader) -> Pair: ...

    data = encode(pair)
    pair2 = decode(Pair, data)
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Protocol, Self, TypeVar

from .errors import DecodeError, LocalError

__all__ = [
    "MAX_VARINT",
    "MAX_VECTOR",
    "Reader",
    "TLSSerializable",
    "Writer",
    "decode",
    "encode",
]

MAX_VARINT = (1 << 30) - 1
"""Largest value a RFC 9420 §2.1.2 variable-size integer can carry."""

MAX_VECTOR = 1 << 24
"""Largest byte length we accept for any single ``opaque<V>`` or vector (16 MiB).

RFC 9420 allows up to ``2**30 - 1``; we bound it lower so a peer cannot make us allocate
or iterate over a gigabyte from a four-byte prefix.
"""

T = TypeVar("T")

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Writer:
    """Accumulates a TLS-presentation encoding. Methods return ``self`` so calls may chain."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def _int(self, v: int, bits: int) -> None:
        if not isinstance(v, int) or not 0 <= v < (1 << bits):
            raise LocalError(f"value {v!r} does not fit in uint{bits}")

    def u8(self, v: int) -> Self:
        """Append ``uint8``."""
        self._int(v, 8)
        self._buf.append(v)
        return self

    def u16(self, v: int) -> Self:
        """Append big-endian ``uint16``."""
        self._int(v, 16)
        self._buf += _U16.pack(v)
        return self

    def u32(self, v: int) -> Self:
        """Append big-endian ``uint32``."""
        self._int(v, 32)
        self._buf += _U32.pack(v)
        return self

    def u64(self, v: int) -> Self:
        """Append big-endian ``uint64``."""
        self._int(v, 64)
        self._buf += _U64.pack(v)
        return self

    def varint(self, v: int) -> Self:
        """Append a variable-size integer in its minimal encoding (RFC 9420 §2.1.2).

        Raises:
            LocalError: ``v`` is negative or above :data:`MAX_VARINT`.
        """
        if not isinstance(v, int) or not 0 <= v <= MAX_VARINT:
            raise LocalError(f"value {v!r} does not fit in a variable-size integer")
        if v < 1 << 6:
            self._buf.append(v)
        elif v < 1 << 14:
            self._buf += _U16.pack(0x4000 | v)
        else:
            self._buf += _U32.pack(0x8000_0000 | v)
        return self

    def opaque(self, b: bytes) -> Self:
        """Append ``opaque data<V>``: varint length then the bytes.

        Raises:
            LocalError: ``b`` is longer than :data:`MAX_VECTOR`.
        """
        if len(b) > MAX_VECTOR:
            raise LocalError(f"opaque of {len(b)} bytes exceeds MAX_VECTOR")
        self.varint(len(b))
        self._buf += b
        return self

    def raw(self, b: bytes) -> Self:
        """Append bytes with no length prefix (fixed-size fields, pre-encoded structures)."""
        self._buf += b
        return self

    def vector(self, items: Iterable[T], write_item: Callable[[Writer, T], object]) -> Self:
        """Append ``T items<V>``: varint byte length around each item written by ``write_item``.

        Raises:
            LocalError: the encoded items exceed :data:`MAX_VECTOR` bytes.
        """
        inner = Writer()
        for item in items:
            write_item(inner, item)
        return self.opaque(inner.bytes())

    def optional(self, value: T | None, write_item: Callable[[Writer, T], object]) -> Self:
        """Append ``optional<T>``: ``u8`` 0 for ``None``, else 1 followed by the item."""
        if value is None:
            self._buf.append(0)
        else:
            self._buf.append(1)
            write_item(self, value)
        return self

    def bytes(self) -> bytes:
        """Return everything written so far."""
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)


class Reader:
    """Reads a TLS-presentation encoding from ``data``, strictly.

    Every method raises :class:`~sealwire.mls.errors.DecodeError` on a short read or an invalid
    encoding; nothing else escapes for any input bytes.
    """

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self._data = view
        self._pos = 0
        self._end = len(self._data)

    def _take(self, n: int) -> bytes:
        if n < 0 or n > self._end - self._pos:
            raise DecodeError(f"need {n} bytes at offset {self._pos}, have {self._end - self._pos}")
        start = self._pos
        self._pos += n
        return bytes(self._data[start : self._pos])

    def u8(self) -> int:
        """Read ``uint8``."""
        if self._pos >= self._end:
            raise DecodeError(f"need 1 byte at offset {self._pos}, have 0")
        v = self._data[self._pos]
        self._pos += 1
        return v

    def u16(self) -> int:
        """Read big-endian ``uint16``."""
        return int(_U16.unpack(self._take(2))[0])

    def u32(self) -> int:
        """Read big-endian ``uint32``."""
        return int(_U32.unpack(self._take(4))[0])

    def u64(self) -> int:
        """Read big-endian ``uint64``."""
        return int(_U64.unpack(self._take(8))[0])

    def varint(self) -> int:
        """Read a variable-size integer (RFC 9420 §2.1.2).

        Raises:
            DecodeError: short read, the reserved ``0b11`` prefix, or a non-minimal encoding.
        """
        first = self.u8()
        prefix = first >> 6
        if prefix == 0:
            return first & 0x3F
        if prefix == 1:
            v = ((first & 0x3F) << 8) | self.u8()
            if v < 1 << 6:
                raise DecodeError("non-minimal variable-size integer")
            return v
        if prefix == 2:
            rest = self._take(3)
            v = ((first & 0x3F) << 24) | int.from_bytes(rest, "big")
            if v < 1 << 14:
                raise DecodeError("non-minimal variable-size integer")
            return v
        raise DecodeError("variable-size integer with reserved prefix 0b11")

    def _length(self, max_len: int) -> int:
        n = self.varint()
        if n > max_len or n > MAX_VECTOR:
            raise DecodeError(f"length {n} exceeds the maximum {min(max_len, MAX_VECTOR)}")
        if n > self._end - self._pos:
            raise DecodeError(f"length {n} at offset {self._pos} runs past the end of the input")
        return n

    def opaque(self, max_len: int = MAX_VECTOR) -> bytes:
        """Read ``opaque data<V>`` of at most ``max_len`` bytes."""
        return self._take(self._length(max_len))

    def raw(self, n: int) -> bytes:
        """Read exactly ``n`` bytes with no length prefix."""
        return self._take(n)

    def vector(self, read_item: Callable[[Reader], T], max_len: int = MAX_VECTOR) -> list[T]:
        """Read ``T items<V>``: a varint byte length, then items until exactly that many bytes.

        Raises:
            DecodeError: the length is too large, or an item runs past the vector's end.
        """
        n = self._length(max_len)
        sub = Reader(self._data[self._pos : self._pos + n])
        self._pos += n
        items: list[T] = []
        while sub._pos < sub._end:
            before = sub._pos
            items.append(read_item(sub))
            if sub._pos == before:
                # An item that consumes nothing would loop forever on peer-chosen input.
                raise DecodeError("vector item of zero length")
        return items

    def optional(self, read_item: Callable[[Reader], T]) -> T | None:
        """Read ``optional<T>``: a presence byte (0 or 1, else DecodeError) then the item."""
        flag = self.u8()
        if flag == 0:
            return None
        if flag == 1:
            return read_item(self)
        raise DecodeError(f"invalid optional presence flag {flag}")

    def remaining(self) -> int:
        """Number of unread bytes."""
        return self._end - self._pos

    def finish(self) -> None:
        """Check the input is fully consumed.

        Raises:
            DecodeError: bytes remain.
        """
        if self._pos != self._end:
            raise DecodeError(f"{self._end - self._pos} trailing bytes")


class TLSSerializable(Protocol):
    """A structure with a TLS-presentation encoding (see the module docstring)."""

    def write(self, w: Writer) -> None:
        """Append this structure's encoding to ``w``."""
        ...

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one structure from ``r`` (DecodeError on invalid input)."""
        ...


S = TypeVar("S", bound=TLSSerializable)


def encode(obj: TLSSerializable) -> bytes:
    """Serialize ``obj`` with its ``write`` method."""
    w = Writer()
    obj.write(w)
    return w.bytes()


def decode(cls: type[S], data: bytes | bytearray | memoryview) -> S:
    """Parse ``data`` as exactly one ``cls`` (which has a ``read`` classmethod).

    Raises:
        DecodeError: invalid encoding or trailing bytes.
    """
    r = Reader(data)
    obj = cls.read(r)
    r.finish()
    return obj
