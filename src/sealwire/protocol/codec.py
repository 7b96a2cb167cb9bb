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

Encoding checks the same field bounds, from the same :func:`wire` declaration: a value the
receiver's decoder would refuse (a text longer than its field allows, too many items, an integer
out of range, a string that is not valid Unicode) raises :class:`~sealwire.errors.EncodeError`
on the sending side, before anything is sent. Sender and recipient share one definition of
every limit, so nothing a sender was allowed to seal is dropped by the recipient for its size.

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

from sealwire.errors import DecodeError, EncodeError

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


Convert = typing.Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class _FieldSpec:
    name: str
    """Attribute name."""
    key: int
    """CBOR map key."""
    optional: bool
    """``X | None``: left out of the map when ``None``."""
    convert: Convert
    """Checks one decoded value against the field's type and bounds and converts it."""
    plain: Convert | None
    """Turns the field's value into the CBOR data model (``None``: it already is)."""
    check: Convert
    """Raises :class:`EncodeError` for a value the decoder would refuse (its type or bounds)."""


class Struct:
    """Base class of every wire structure (use with ``@dataclass(frozen=True)``)."""

    __wire_fields__: ClassVar[tuple[_FieldSpec, ...]]

    def encode(self) -> bytes:
        """Return the deterministic CBOR encoding of this structure."""
        # to_value() builds every map in ascending unsigned key order, and cbor2 always writes
        # shortest heads and definite lengths: the plain encoder is deterministic here.
        return cbor2.dumps(self.to_value())

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
            try:
                spec.check(value)
                out[spec.key] = value if spec.plain is None else spec.plain(value)
            except EncodeError as exc:
                raise EncodeError(f"{type(self).__name__}.{spec.name}: {exc.reason}") from None
        return out

    @classmethod
    def from_value(cls, value: Any) -> Self:
        """Build this structure from a decoded CBOR value, checking keys, types and bounds."""
        if not isinstance(value, dict):
            raise DecodeError(f"{cls.__name__}: expected a map")
        specs = _fields_of(cls)
        kwargs: dict[str, Any] = {}
        found = 0
        for spec in specs:
            item = value.get(spec.key, _ABSENT)
            if item is _ABSENT:
                if not spec.optional:
                    raise DecodeError(f"{cls.__name__}: missing {spec.name}")
                kwargs[spec.name] = None
                continue
            found += 1
            try:
                kwargs[spec.name] = spec.convert(item)
            except DecodeError as exc:
                raise DecodeError(f"{cls.__name__}.{spec.name}: {exc.reason}") from None
        if found != len(value):
            unknown = sorted(str(k) for k in value if k not in {s.key for s in specs})
            raise DecodeError(f"{cls.__name__}: unknown keys {', '.join(unknown)}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"{cls.__name__}: {exc}") from None


_ABSENT = object()


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
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1 or len(args) != 2:
                raise TypeError(f"{cls.__name__}.{f.name}: only X | None unions are supported")
            tp, optional = rest[0], True
        m = f.metadata
        specs.append(
            _FieldSpec(f.name, m["key"], optional, _converter(tp, m), _plain(tp), _checker(tp, m))
        )
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise TypeError(f"{cls.__name__}: duplicate wire keys")
    result = tuple(sorted(specs, key=lambda s: s.key))
    cls.__wire_fields__ = result
    return result


def _plain(tp: Any) -> Convert | None:
    """Build the function that turns a field value of type ``tp`` into the data model."""
    if isinstance(tp, type) and issubclass(tp, Struct):
        return lambda value: value.to_value()
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return int
    if typing.get_origin(tp) is tuple:
        item = _plain(typing.get_args(tp)[0])
        if item is None:
            return list
        return lambda value: [item(v) for v in value]
    return None


def _converter(tp: Any, bounds: Mapping[str, Any]) -> Convert:
    """Build the function that checks and converts a decoded value of type ``tp``."""
    if isinstance(tp, type) and issubclass(tp, Struct):
        return tp.from_value
    if typing.get_origin(tp) is tuple:
        item_tp, ellipsis = typing.get_args(tp)
        if ellipsis is not Ellipsis:
            raise TypeError("only tuple[X, ...] is supported")
        item = _converter(item_tp, bounds)
        max_items = bounds["max_items"]

        def convert_tuple(value: Any) -> Any:
            if type(value) is not list:
                raise DecodeError("expected an array")
            if max_items is not None and len(value) > max_items:
                raise DecodeError(f"more than {max_items} items")
            return tuple(item(v) for v in value)

        return convert_tuple
    if tp is bool:

        def convert_bool(value: Any) -> Any:
            if type(value) is not bool:
                raise DecodeError("expected a boolean")
            return value

        return convert_bool
    if tp is int or (isinstance(tp, type) and issubclass(tp, enum.IntEnum)):
        low = bounds["min_value"] if bounds["min_value"] is not None else _INT_MIN
        high = bounds["max_value"] if bounds["max_value"] is not None else _INT_MAX
        enum_type = None if tp is int else tp

        def convert_int(value: Any) -> Any:
            if type(value) is not int:
                raise DecodeError("expected an integer")
            if not low <= value <= high:
                raise DecodeError(f"out of range [{low}, {high}]")
            if enum_type is None:
                return value
            try:
                return enum_type(value)
            except ValueError:
                raise DecodeError(f"unknown value {value}") from None

        return convert_int
    if tp is bytes or tp is str:
        size, max_size = bounds["size"], bounds["max_size"]
        kind = "bytes" if tp is bytes else "text"

        def convert_string(value: Any) -> Any:
            if type(value) is not tp:
                raise DecodeError(f"expected {kind}")
            if size is not None and len(value) != size:
                raise DecodeError(f"must be {size} long")
            if max_size is not None and len(value) > max_size:
                raise DecodeError(f"longer than {max_size}")
            return value

        return convert_string
    raise TypeError(f"unsupported field type {tp!r}")


def _checker(tp: Any, bounds: Mapping[str, Any]) -> Convert:
    """Build the function that checks a field value of type ``tp`` before encoding: the same
    type and bounds :func:`_converter` enforces on decoding, so that ``encode`` refuses exactly
    what the receiver's ``decode`` would (a nested structure checks its own fields when its
    ``to_value`` runs)."""
    if isinstance(tp, type) and issubclass(tp, Struct | enum.IntEnum):
        kind = tp

        def check_member(value: Any) -> None:
            if not isinstance(value, kind):
                raise EncodeError(f"expected {kind.__name__}, not {type(value).__name__}")

        return check_member
    if typing.get_origin(tp) is tuple:
        item = _checker(typing.get_args(tp)[0], bounds)
        max_items = bounds["max_items"]

        def check_tuple(value: Any) -> None:
            if type(value) is not tuple:
                raise EncodeError(f"expected a tuple, not {type(value).__name__}")
            if max_items is not None and len(value) > max_items:
                raise EncodeError(f"{len(value)} items, more than {max_items}")
            for element in value:
                item(element)

        return check_tuple
    if tp is bool:

        def check_bool(value: Any) -> None:
            if type(value) is not bool:
                raise EncodeError(f"expected a boolean, not {type(value).__name__}")

        return check_bool
    if tp is int:
        low = bounds["min_value"] if bounds["min_value"] is not None else _INT_MIN
        high = bounds["max_value"] if bounds["max_value"] is not None else _INT_MAX

        def check_int(value: Any) -> None:
            if type(value) is not int:
                raise EncodeError(f"expected an integer, not {type(value).__name__}")
            if not low <= value <= high:
                raise EncodeError(f"{value} is out of range [{low}, {high}]")

        return check_int
    if tp is bytes or tp is str:
        size, max_size = bounds["size"], bounds["max_size"]
        text = tp is str
        kind_name = "text" if text else "bytes"

        def check_string(value: Any) -> None:
            if type(value) is not tp:
                raise EncodeError(f"expected {kind_name}, not {type(value).__name__}")
            if size is not None and len(value) != size:
                raise EncodeError(f"must be {size} long, not {len(value)}")
            if max_size is not None and len(value) > max_size:
                raise EncodeError(f"{len(value)} long, longer than {max_size}")
            if text and not value.isascii():
                try:
                    typing.cast(str, value).encode("utf-8")
                except UnicodeEncodeError:
                    raise EncodeError("not valid Unicode text (a lone surrogate)") from None

        return check_string
    raise TypeError(f"unsupported field type {tp!r}")


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
    if type(data) is not bytes:
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
    sorted_keys = _check_plain(value)
    try:
        # With every map's keys already in deterministic order, cbor2's plain encoder (always
        # shortest heads, definite lengths) yields the deterministic encoding, and faster.
        again = cbor2.dumps(value) if sorted_keys else encode_value(value)
    except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:
        raise DecodeError(f"not re-encodable: {_short(exc)}") from None
    if again != data:
        # Covers trailing bytes, non-shortest lengths and unsorted keys alike.
        raise DecodeError("not in deterministic encoding, or trailing bytes")
    return value


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


_SCALARS = (bytes, str, bool, type(None))


def _check_plain(root: Any) -> bool:
    """Check the decoded data model; return whether every map's keys are unsigned integers
    in ascending order (then the plain encoding is the deterministic one)."""
    sorted_keys = True
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind in _SCALARS:
            continue
        if kind is int:
            if not _INT_MIN <= value <= _INT_MAX:
                raise DecodeError("integer out of range")
            continue
        if depth >= MAX_DEPTH:
            raise DecodeError("nested too deeply")
        if kind is list:
            if len(value) > MAX_ITEMS:
                raise DecodeError("array too long")
            stack.extend((item, depth + 1) for item in value)
            continue
        if kind is dict:
            if len(value) > MAX_ITEMS:
                raise DecodeError("map too large")
            previous = -1
            for key in value:
                if type(key) is int and key > previous:
                    previous = key
                elif type(key) is int or type(key) is str:
                    sorted_keys = False
                    if type(key) is int and not _INT_MIN <= key <= _INT_MAX:
                        raise DecodeError("integer out of range")
                else:
                    raise DecodeError("map keys must be integers or text")
            stack.extend((item, depth + 1) for item in value.values())
            continue
        if kind is float:
            raise DecodeError("floats are not allowed")
        raise DecodeError(f"{kind.__name__} values (tags or simple values) are not allowed")
    return sorted_keys


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
        return cbor2.dumps([self.code_of(value), value.to_value()])

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
