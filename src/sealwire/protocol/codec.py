"""The one codec: deterministic CBOR (RFC 8949 §4.2) for every Sealwire structure.

A structure is a frozen dataclass deriving from :class:`Struct`. Each field names its map key
with :func:`wire`; the encoding is a CBOR map from those small unsigned integers to values, in
the core deterministic encoding (shortest lengths, definite lengths, keys sorted bytewise).
Optional fields (``X | None``) are left out of the map when ``None``.

Decoding is strict. Any of these raises :class:`~sealwire.errors.DecodeError` with a reason:
input larger than the caller's bound, malformed CBOR, trailing bytes, indefinite lengths, tags,
floats, simple values other than true/false/null, integers outside 64 bits, nesting deeper than
:data:`MAX_DEPTH`, duplicate or unknown keys, missing required keys, wrong types, byte or text
strings outside their field's bounds, and any encoding that is not the deterministic one (so
every value has exactly one accepted encoding, and ``encode(decode(b)) == b``).

Field types understood: ``int`` (never ``bool``), ``bool``, ``bytes``, ``str``, an ``IntEnum``,
another ``Struct``, ``tuple[X, ...]`` of any of these, and ``X | None``.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self, TypeVar

import cbor2

from sealwire.errors import DecodeError

__all__ = [
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_MESSAGE",
    "Struct",
    "Variants",
    "decode_value",
    "encode_value",
    "wire",
]

MAX_DEPTH = 16
"""Deepest nesting of arrays and maps accepted anywhere."""

MAX_MESSAGE = 1 << 20
"""Default upper bound on one encoded structure (1 MiB); callers pass tighter bounds."""

MAX_ITEMS = 4096
"""Most elements in one array, and most entries in one map."""

_INT_MIN = -(1 << 64)
_INT_MAX = (1 << 64) - 1

T = TypeVar("T")


def wire(
    key: int,
    *,
    size: int | None = None,
    max_size: int | None = None,
    min_value: int | None = None,
    max_value: int | None = None,
    max_items: int | None = None,
    default: Any = dataclasses.MISSING,
) -> Any:
    """Declare a dataclass field's CBOR map key and its bounds.

    Args:
        key: the unsigned integer map key; unique within the structure and never reused.
        size: exact length in bytes (``bytes``) or characters (``str``).
        max_size: upper bound on that length.
        min_value: lower bound for an ``int`` field.
        max_value: upper bound for an ``int`` field.
        max_items: upper bound on the number of elements of a ``tuple`` field.
        default: default value (``None`` for optional fields).
    """
    meta = {
        "key": key,
        "size": size,
        "max_size": max_size,
        "min_value": min_value,
        "max_value": max_value,
        "max_items": max_items,
    }
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class _FieldSpec:
    name: str
    key: int
    tp: Any
    optional: bool
    size: int | None
    max_size: int | None
    min_value: int | None
    max_value: int | None
    max_items: int | None


class Struct:
    """Base class of every wire structure (use with ``@dataclass(frozen=True)``)."""

    __wire_fields__: ClassVar[tuple[_FieldSpec, ...]]

    def encode(self) -> bytes:
        """Return the deterministic CBOR encoding of this structure."""
        return encode_value(self.to_value())

    @classmethod
    def decode(cls, data: bytes, *, max_size: int = MAX_MESSAGE) -> Self:
        """Decode ``data`` strictly into this structure.

        Raises:
            DecodeError: if ``data`` is not exactly the deterministic encoding of a valid value.
        """
        return cls.from_value(decode_value(data, max_size=max_size))

    def to_value(self) -> dict[int, Any]:
        """Return the plain CBOR data model value (a map keyed by small integers)."""
        out: dict[int, Any] = {}
        for spec in _fields_of(type(self)):
            value = getattr(self, spec.name)
            if value is None:
                if not spec.optional:
                    raise ValueError(f"{type(self).__name__}.{spec.name} must not be None")
                continue
            out[spec.key] = _to_plain(value)
        return out

    @classmethod
    def from_value(cls, value: Any) -> Self:
        """Build this structure from a decoded CBOR value, checking keys, types and bounds."""
        name = cls.__name__
        if not isinstance(value, Mapping):
            raise DecodeError(f"{name}: expected a map")
        specs = _fields_of(cls)
        known = {spec.key for spec in specs}
        for key in value:
            if key not in known:
                raise DecodeError(f"{name}: unknown key {key!r}")
        kwargs: dict[str, Any] = {}
        for spec in specs:
            if spec.key not in value:
                if not spec.optional:
                    raise DecodeError(f"{name}: missing {spec.name}")
                kwargs[spec.name] = None
                continue
            kwargs[spec.name] = _from_plain(value[spec.key], spec.tp, spec, f"{name}.{spec.name}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"{name}: {exc}") from exc


def _fields_of(cls: type[Struct]) -> tuple[_FieldSpec, ...]:
    cached = cls.__dict__.get("__wire_fields__")
    if cached is not None:
        return typing.cast(tuple[_FieldSpec, ...], cached)
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if "key" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no wire key; declare it with wire()")
        tp = hints[f.name]
        optional = False
        args = typing.get_args(tp)
        if _is_union(tp) and type(None) in args:
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: unions are not supported")
            tp, optional = rest[0], True
        m = f.metadata
        specs.append(
            _FieldSpec(
                f.name,
                m["key"],
                tp,
                optional,
                m["size"],
                m["max_size"],
                m["min_value"],
                m["max_value"],
                m["max_items"],
            )
        )
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise TypeError(f"{cls.__name__}: duplicate wire keys")
    result = tuple(sorted(specs, key=lambda s: s.key))
    cls.__wire_fields__ = result
    return result


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Struct):
        return value.to_value()
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, enum.IntEnum):
        return int(value)
    return value


def _from_plain(value: Any, tp: Any, spec: _FieldSpec, where: str) -> Any:
    if isinstance(tp, type) and issubclass(tp, Struct):
        return tp.from_value(value)
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, ellipsis) = typing.get_args(tp)
        assert ellipsis is Ellipsis, "only tuple[X, ...] is supported"
        if not isinstance(value, list):
            raise DecodeError(f"{where}: expected an array")
        if spec.max_items is not None and len(value) > spec.max_items:
            raise DecodeError(f"{where}: more than {spec.max_items} items")
        return tuple(_from_plain(v, item_tp, spec, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise DecodeError(f"{where}: expected a boolean")
        return value
    if tp is int or (isinstance(tp, type) and issubclass(tp, enum.IntEnum)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise DecodeError(f"{where}: expected an integer")
        if spec.min_value is not None and value < spec.min_value:
            raise DecodeError(f"{where}: below {spec.min_value}")
        if spec.max_value is not None and value > spec.max_value:
            raise DecodeError(f"{where}: above {spec.max_value}")
        if tp is int:
            return value
        try:
            return tp(value)
        except ValueError as exc:
            raise DecodeError(f"{where}: unknown value {value}") from exc
    if tp is bytes or tp is str:
        if not isinstance(value, tp):
            raise DecodeError(f"{where}: expected {'bytes' if tp is bytes else 'text'}")
        if spec.size is not None and len(value) != spec.size:
            raise DecodeError(f"{where}: must be {spec.size} long")
        if spec.max_size is not None and len(value) > spec.max_size:
            raise DecodeError(f"{where}: longer than {spec.max_size}")
        return value
    raise TypeError(f"{where}: unsupported field type {tp!r}")


def encode_value(value: Any) -> bytes:
    """Encode a plain CBOR data-model value deterministically (RFC 8949 §4.2.1)."""
    return cbor2.dumps(value, canonical=True)


def decode_value(data: bytes, *, max_size: int = MAX_MESSAGE) -> Any:
    """Decode one deterministic CBOR item from ``data`` and check it strictly.

    Returns the plain value (ints, bools, None, bytes, str, lists, dicts keyed by int or str).

    Raises:
        DecodeError: on anything but exactly one well-formed, deterministic, tag-free,
            float-free item within the size, depth and item bounds.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("expected bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise DecodeError(f"larger than {max_size} bytes")
    if not data:
        raise DecodeError("empty input")
    try:
        value = cbor2.loads(
            data,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            str_errors="strict",
        )
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DecodeError(f"not valid CBOR: {_short(exc)}") from None
    _check_plain(value, 0)
    try:
        again = encode_value(value)
    except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:
        raise DecodeError(f"not re-encodable: {_short(exc)}") from None
    if again != data:
        # Covers trailing bytes, non-shortest lengths and unsorted keys alike.
        raise DecodeError("not in deterministic encoding, or trailing bytes")
    return value


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


def _check_plain(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise DecodeError("nested too deeply")
    if value is None or isinstance(value, bool | bytes | str):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise DecodeError("integer out of range")
        return
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise DecodeError("array too long")
        for item in value:
            _check_plain(item, depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise DecodeError("map too large")
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, int | str):
                raise DecodeError("map keys must be integers or text")
            _check_plain(key, depth + 1)
            _check_plain(item, depth + 1)
        return
    if isinstance(value, float):
        raise DecodeError("floats are not allowed")
    raise DecodeError(f"{type(value).__name__} values (tags or simple values) are not allowed")


S = TypeVar("S", bound=Struct)


class Variants:
    """A closed family of structures told apart by a small integer code (frames, payloads).

    The encoding is the CBOR array ``[code, body]`` where ``body`` is the structure's map.
    Codes are part of the wire format and never reused.

    Example::

        FRAMES = Variants("frame", {1: Hello, 2: Challenge})
        data = FRAMES.encode(Hello(...))
        frame = FRAMES.decode(data, max_size=MAX_FRAME)
    """

    def __init__(self, name: str, members: Mapping[int, type[Struct]]) -> None:
        self.name = name
        self._by_code = dict(members)
        self._by_type = {cls: code for code, cls in self._by_code.items()}
        if len(self._by_type) != len(self._by_code):
            raise TypeError(f"{name}: a structure appears under two codes")

    def code_of(self, value: Struct) -> int:
        """Return the code of ``value``'s structure (``LocalProtocolError`` if not a member)."""
        try:
            return self._by_type[type(value)]
        except KeyError:
            raise TypeError(f"{type(value).__name__} is not a {self.name}") from None

    def encode(self, value: Struct) -> bytes:
        """Encode ``value`` as ``[code, body]``."""
        return encode_value([self.code_of(value), value.to_value()])

    def decode(self, data: bytes, *, max_size: int = MAX_MESSAGE) -> Struct:
        """Decode one member strictly; unknown codes are a :class:`DecodeError`."""
        return self.from_value(decode_value(data, max_size=max_size))

    def from_value(self, value: Any) -> Struct:
        """Build a member from an already decoded ``[code, body]`` value."""
        if not isinstance(value, list) or len(value) != 2:
            raise DecodeError(f"{self.name}: expected [code, body]")
        code, body = value
        if isinstance(code, bool) or not isinstance(code, int):
            raise DecodeError(f"{self.name}: code must be an integer")
        cls = self._by_code.get(code)
        if cls is None:
            raise DecodeError(f"{self.name}: unknown code {code}")
        return cls.from_value(body)
