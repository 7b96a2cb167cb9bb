"""Encodings that skip the codec's encode-side bounds: what a sender without those checks (an
old or hostile peer) would put on the wire, so that tests can show the decoder refuses it."""

from __future__ import annotations

import enum
from typing import Any

import cbor2

from sealwire.protocol.codec import Struct, Variants

__all__ = ["encode_unchecked", "value_unchecked"]


def value_unchecked(value: Any) -> Any:
    """The CBOR data model of ``value`` (a :class:`Struct` or a field value), bounds unchecked."""
    if isinstance(value, Struct):
        return {
            spec.key: value_unchecked(getattr(value, spec.name))
            for spec in type(value).__wire_fields__
            if getattr(value, spec.name) is not None
        }
    if isinstance(value, enum.IntEnum):
        return int(value)
    if isinstance(value, tuple):
        return [value_unchecked(item) for item in value]
    return value


def encode_unchecked(value: Struct, variants: Variants | None = None) -> bytes:
    """Encode ``value`` (as ``[code, body]`` with ``variants``) without the encode-side bounds."""
    body = value_unchecked(value)
    return cbor2.dumps(body if variants is None else [variants.code_of(value), body])
