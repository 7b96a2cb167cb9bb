"""The key schedule (RFC 9420 §8) against the official key-schedule vectors: five chained
epochs per suite, GroupContext serialization, external key pair and the exporter (§8.5)."""

from __future__ import annotations

from typing import Any

import pytest

from sealwire.mls import key_schedule as ks
from sealwire.mls._tls import Writer
from sealwire.mls.crypto import MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 as SUITE1
from sealwire.mls.crypto import cipher_suite
from tests.mls.vectors import cases, h, unsupported_suites

EPOCH_FIELDS = [
    "joiner_secret",
    "welcome_secret",
    "sender_data_secret",
    "encryption_secret",
    "exporter_secret",
    "external_secret",
    "confirmation_key",
    "membership_key",
    "resumption_psk",
    "epoch_authenticator",
    "init_secret",
]


def group_context(
    suite_value: int, group_id: bytes, epoch: int, tree_hash: bytes, confirmed: bytes
) -> bytes:
    """``GroupContext`` (RFC 9420 §8.1) with no extensions, serialized with our codec."""
    w = Writer().u16(1).u16(suite_value).opaque(group_id).u64(epoch)
    return w.opaque(tree_hash).opaque(confirmed).vector([], Writer.raw).bytes()


@pytest.mark.vectors
@pytest.mark.parametrize("case", cases("key-schedule"))
def test_key_schedule_vectors(case: dict[str, Any]) -> None:
    suite = cipher_suite(case["cipher_suite"])
    init_secret = h(case["initial_init_secret"])
    for epoch, e in enumerate(case["epochs"]):
        gc = group_context(
            suite.value,
            h(case["group_id"]),
            epoch,
            h(e["tree_hash"]),
            h(e["confirmed_transcript_hash"]),
        )
        assert gc.hex() == e["group_context"]
        secrets = ks.key_schedule(suite, init_secret, h(e["commit_secret"]), h(e["psk_secret"]), gc)
        for name in EPOCH_FIELDS:
            assert getattr(secrets, name).hex() == e[name], (epoch, name)
        # A joiner who got joiner_secret from a Welcome reaches the same epoch.
        joined = ks.derive_epoch_secrets(suite, h(e["joiner_secret"]), h(e["psk_secret"]), gc)
        assert joined == secrets
        assert ks.derive_welcome_secret(suite, secrets.joiner_secret, h(e["psk_secret"])) == (
            secrets.welcome_secret
        )
        assert ks.external_key_pair(suite, secrets.external_secret)[1].hex() == e["external_pub"]
        x = e["exporter"]
        # The vectors feed the hex text of the label itself to MLS-Exporter (see vectors.py).
        exported = ks.mls_exporter(
            suite, secrets.exporter_secret, x["label"], h(x["context"]), x["length"]
        )
        assert exported.hex() == x["secret"]
        init_secret = secrets.init_secret


def test_unsupported_suites_listed() -> None:
    assert unsupported_suites("key-schedule") == [2, 4, 5, 6, 7]


def test_welcome_key_nonce_and_zero_secret() -> None:
    key, nonce = ks.welcome_key_nonce(SUITE1, bytes(32))
    assert (len(key), len(nonce)) == (16, 12)
    assert key == SUITE1.expand_with_label(bytes(32), "key", b"", 16)
    assert ks.zero_secret(SUITE1) == bytes(32)


def test_each_input_changes_every_output() -> None:
    base = ks.key_schedule(SUITE1, bytes(32), bytes(32), bytes(32), b"gc")
    for changed in [
        ks.key_schedule(SUITE1, b"\x01" * 32, bytes(32), bytes(32), b"gc"),
        ks.key_schedule(SUITE1, bytes(32), b"\x01" * 32, bytes(32), b"gc"),
        ks.key_schedule(SUITE1, bytes(32), bytes(32), b"\x01" * 32, b"gc"),
        ks.key_schedule(SUITE1, bytes(32), bytes(32), bytes(32), b"gC"),
    ]:
        for name in EPOCH_FIELDS:
            if name == "joiner_secret" and changed.joiner_secret == base.joiner_secret:
                continue  # the PSK enters after the joiner secret
            assert getattr(changed, name) != getattr(base, name), name


def test_secrets_are_not_in_repr() -> None:
    secrets = ks.key_schedule(SUITE1, bytes(32), bytes(32), bytes(32), b"gc")
    assert secrets.init_secret.hex() not in repr(secrets)


def test_external_init_round_trip() -> None:
    secrets = ks.key_schedule(SUITE1, bytes(32), bytes(32), bytes(32), b"gc")
    priv, pub = ks.external_key_pair(SUITE1, secrets.external_secret)
    kem_output, init_secret = ks.external_init_sender(SUITE1, pub, randomness=bytes([5]) * 32)
    assert len(init_secret) == 32
    assert ks.external_init_receiver(SUITE1, priv, kem_output) == init_secret
    # The exporter label matters: a plain Export with another label gives another secret.
    other = SUITE1.hpke_export_receiver(priv, kem_output, b"", b"MLS 1.0 other", 32)
    assert other != init_secret


def test_external_init_round_trip_xwing() -> None:
    from sealwire.mls.crypto import SEALWIRE_256_XWING_AES256GCM_SHA256_Ed25519 as XWING
    from sealwire.mls.errors import CryptoError

    secrets = ks.key_schedule(XWING, bytes(32), bytes(32), bytes(32), b"gc")
    priv, pub = ks.external_key_pair(XWING, secrets.external_secret)
    kem_output, init_secret = ks.external_init_sender(XWING, pub, randomness=bytes([5]) * 32)
    assert len(kem_output) == 1120 and len(init_secret) == 32
    assert ks.external_init_receiver(XWING, priv, kem_output) == init_secret
    # ML-KEM's encapsulation randomness is fresh (pyca draws it): a second join differs.
    assert ks.external_init_sender(XWING, pub, randomness=bytes([5]) * 32)[1] != init_secret
    other = XWING.hpke_export_receiver(priv, kem_output, b"", b"MLS 1.0 other", 32)
    assert other != init_secret
    for bad in (bytes(1120), kem_output[:-1], bytes(32)):
        with pytest.raises(CryptoError):
            ks.external_init_receiver(XWING, priv, bad)
    with pytest.raises(CryptoError):
        ks.external_init_sender(XWING, pub[:-1], randomness=bytes(32))
