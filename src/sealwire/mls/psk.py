"""Pre-shared keys: ``PreSharedKeyID`` encodings and the ``psk_secret`` chain (RFC 9420 §8.4).

This module does not depend on the wire-structure module: :func:`psk_secret` takes each PSK's
``PreSharedKeyID`` already serialized (``structs.py`` produces it; :func:`external_psk_id` and
:func:`resumption_psk_id` build the same bytes directly).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from ._tls import Writer
from .crypto import CipherSuite
from .errors import LocalError

__all__ = [
    "PSKType",
    "ResumptionPSKUsage",
    "external_psk_id",
    "psk_secret",
    "resumption_psk_id",
]


class PSKType(enum.IntEnum):
    """``PSKType`` (RFC 9420 §8.4)."""

    EXTERNAL = 1
    RESUMPTION = 2


class ResumptionPSKUsage(enum.IntEnum):
    """``ResumptionPSKUsage`` (RFC 9420 §8.4)."""

    APPLICATION = 1
    REINIT = 2
    BRANCH = 3


def external_psk_id(psk_id: bytes, psk_nonce: bytes) -> bytes:
    """Serialize ``PreSharedKeyID`` for an external PSK (RFC 9420 §8.4)."""
    return Writer().u8(PSKType.EXTERNAL).opaque(psk_id).opaque(psk_nonce).bytes()


def resumption_psk_id(
    usage: ResumptionPSKUsage, psk_group_id: bytes, psk_epoch: int, psk_nonce: bytes
) -> bytes:
    """Serialize ``PreSharedKeyID`` for a resumption PSK (RFC 9420 §8.4)."""
    w = Writer().u8(PSKType.RESUMPTION).u8(usage).opaque(psk_group_id).u64(psk_epoch)
    return w.opaque(psk_nonce).bytes()


def psk_secret(suite: CipherSuite, psks: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Combine PSKs into ``psk_secret`` (RFC 9420 §8.4).

    Args:
        suite: the group's cipher suite.
        psks: ``(serialized PreSharedKeyID, psk value)`` pairs in the order the commit lists them.

    Returns:
        ``psk_secret``; ``Nh`` zero bytes when ``psks`` is empty (§8: no PSK in this epoch).
    """
    nh = suite.kdf.Nh
    count = len(psks)
    if count > 0xFFFF:
        raise LocalError("too many PSKs")
    secret = bytes(nh)  # psk_secret_[0] = 0
    for index, (psk_id, psk) in enumerate(psks):
        # psk_extracted_[i] = KDF.Extract(0, psk_[i])
        extracted = suite.kdf_extract(bytes(nh), psk)
        # struct { PreSharedKeyID id; uint16 index; uint16 count; } PSKLabel;
        label = Writer().raw(psk_id).u16(index).u16(count).bytes()
        psk_input = suite.expand_with_label(extracted, "derived psk", label, nh)
        # psk_secret_[i] = KDF.Extract(psk_input_[i], psk_secret_[i-1])
        secret = suite.kdf_extract(psk_input, secret)
    return secret
