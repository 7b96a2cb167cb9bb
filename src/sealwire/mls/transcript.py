"""Confirmed and interim transcript hashes, confirmation tags (RFC 9420 §8.2, §6.1).

The inputs are taken already serialized so this module needs no wire structures:

* ``ConfirmedTranscriptHashInput`` = ``wire_format || FramedContent || opaque signature<V>``,
  i.e. the commit's ``AuthenticatedContent`` without its trailing ``confirmation_tag``;
* ``InterimTranscriptHashInput`` = ``opaque confirmation_tag<V>`` (built here from the tag).

For a group's first epoch both hashes are the empty string (RFC 9420 §8.2); a new member
computes ``interim_transcript_hash`` from the ``confirmed_transcript_hash`` and the
``confirmation_tag`` of the ``GroupInfo`` it joined with.
"""

from __future__ import annotations

from ._tls import Writer
from .crypto import CipherSuite

__all__ = [
    "confirmation_tag",
    "confirmed_transcript_hash",
    "interim_transcript_hash",
    "verify_confirmation_tag",
]


def confirmed_transcript_hash(
    suite: CipherSuite, interim_transcript_hash_before: bytes, confirmed_input: bytes
) -> bytes:
    """``Hash(interim_transcript_hash_[n-1] || ConfirmedTranscriptHashInput_[n])`` (§8.2).

    Args:
        confirmed_input: serialized ``ConfirmedTranscriptHashInput`` of the commit.
    """
    return suite.hash(interim_transcript_hash_before + confirmed_input)


def interim_transcript_hash(
    suite: CipherSuite, confirmed_transcript_hash: bytes, confirmation_tag: bytes
) -> bytes:
    """``Hash(confirmed_transcript_hash_[n] || InterimTranscriptHashInput_[n])`` (§8.2)."""
    interim_input = Writer().opaque(confirmation_tag).bytes()
    return suite.hash(confirmed_transcript_hash + interim_input)


def confirmation_tag(
    suite: CipherSuite, confirmation_key: bytes, confirmed_transcript_hash: bytes
) -> bytes:
    """``MAC(confirmation_key, confirmed_transcript_hash)`` (RFC 9420 §6.1)."""
    return suite.mac(confirmation_key, confirmed_transcript_hash)


def verify_confirmation_tag(
    suite: CipherSuite, confirmation_key: bytes, confirmed_transcript_hash: bytes, tag: bytes
) -> bool:
    """Constant-time check of a received ``confirmation_tag`` (RFC 9420 §6.1, §12.4.2)."""
    return suite.verify_mac(confirmation_key, confirmed_transcript_hash, tag)
