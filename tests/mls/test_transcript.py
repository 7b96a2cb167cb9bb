"""Transcript hashes and confirmation tags (RFC 9420 §8.2, §6.1) against the official
transcript-hashes vectors.

``authenticated_content`` is a commit's serialized ``AuthenticatedContent``::

    uint16 wire_format; FramedContent content; opaque signature<V>; opaque confirmation_tag<V>;

``ConfirmedTranscriptHashInput`` is everything before ``confirmation_tag``. Until structs.py
parses whole commits for us, the test parses the FramedContent header (to check this really is
a commit) and takes the tag from the end, where it is an ``opaque<V>`` of exactly ``Nh`` bytes.
"""

from __future__ import annotations

from typing import Any

import pytest

from sealwire.mls import transcript
from sealwire.mls._tls import Reader
from sealwire.mls.crypto import CipherSuite, cipher_suite
from tests.mls.vectors import cases, h

COMMIT = 3  # ContentType.commit


def split_commit(suite: CipherSuite, authenticated_content: bytes) -> tuple[bytes, bytes]:
    """Return ``(ConfirmedTranscriptHashInput, confirmation_tag)``."""
    r = Reader(authenticated_content)
    r.u16()  # wire_format
    r.opaque()  # group_id
    r.u64()  # epoch
    if r.u8() in (1, 2):  # sender_type member / external carry a uint32 index
        r.u32()
    r.opaque()  # authenticated_data
    assert r.u8() == COMMIT
    nh = suite.kdf.Nh
    tail = authenticated_content[-(nh + 1) :]
    tag_reader = Reader(tail)
    tag = tag_reader.opaque()
    tag_reader.finish()
    assert len(tag) == nh
    return authenticated_content[: -(nh + 1)], tag


@pytest.mark.vectors
@pytest.mark.parametrize("case", cases("transcript-hashes"))
def test_transcript_hash_vectors(case: dict[str, Any]) -> None:
    suite = cipher_suite(case["cipher_suite"])
    confirmed_input, tag = split_commit(suite, h(case["authenticated_content"]))
    confirmed = transcript.confirmed_transcript_hash(
        suite, h(case["interim_transcript_hash_before"]), confirmed_input
    )
    assert confirmed.hex() == case["confirmed_transcript_hash_after"]
    key = h(case["confirmation_key"])
    assert transcript.confirmation_tag(suite, key, confirmed) == tag
    assert transcript.verify_confirmation_tag(suite, key, confirmed, tag)
    assert not transcript.verify_confirmation_tag(suite, key, confirmed, bytes(len(tag)))
    interim = transcript.interim_transcript_hash(suite, confirmed, tag)
    assert interim.hex() == case["interim_transcript_hash_after"]
