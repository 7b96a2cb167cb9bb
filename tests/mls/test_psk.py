"""psk_secret (RFC 9420 §8.4) against the official psk_secret vectors."""

from __future__ import annotations

from typing import Any

import pytest

from sealwire.mls import psk
from sealwire.mls.crypto import MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 as SUITE1
from sealwire.mls.crypto import cipher_suite
from tests.mls.vectors import cases, h, unsupported_suites


@pytest.mark.vectors
@pytest.mark.parametrize("case", cases("psk_secret"))
def test_psk_secret_vectors(case: dict[str, Any]) -> None:
    suite = cipher_suite(case["cipher_suite"])
    psks = [
        (psk.external_psk_id(h(p["psk_id"]), h(p["psk_nonce"])), h(p["psk"])) for p in case["psks"]
    ]
    assert psk.psk_secret(suite, psks).hex() == case["psk_secret"]


def test_vectors_cover_several_psks() -> None:
    counts = {len(p.values[0]["psks"]) for p in cases("psk_secret")}  # type: ignore[index]
    assert {0, 1}.issubset(counts) and max(counts) >= 3
    assert unsupported_suites("psk_secret") == [2, 4, 5, 6, 7]


def test_psk_id_encodings() -> None:
    assert psk.external_psk_id(b"id", b"nn").hex() == "01" + "026964" + "026e6e"
    got = psk.resumption_psk_id(psk.ResumptionPSKUsage.BRANCH, b"g", 7, b"")
    assert got.hex() == "02" + "03" + "0167" + "0000000000000007" + "00"


def test_order_and_identity_matter() -> None:
    a = (psk.external_psk_id(b"a", bytes(32)), b"secret a")
    b = (psk.external_psk_id(b"b", bytes(32)), b"secret b")
    assert psk.psk_secret(SUITE1, []) == bytes(32)
    assert psk.psk_secret(SUITE1, [a, b]) != psk.psk_secret(SUITE1, [b, a])
    assert psk.psk_secret(SUITE1, [a]) != psk.psk_secret(SUITE1, [(b[0], a[1])])
