"""Locks the public names (``__all__``) of the codec, crypto and key-schedule modules of
``sealwire.mls``: other modules (structs, framing, TreeKEM, the group) build on them, so a change
here must be deliberate."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "sealwire.mls": {
        "CryptoError",
        "DecodeError",
        "LocalError",
        "MLSError",
        "SecretReuseError",
        "UnsupportedError",
        "ValidationError",
    },
    "sealwire.mls.errors": {
        "CryptoError",
        "DecodeError",
        "LocalError",
        "MLSError",
        "SecretReuseError",
        "UnsupportedError",
        "ValidationError",
    },
    "sealwire.mls._tls": {
        "MAX_VARINT",
        "MAX_VECTOR",
        "Reader",
        "TLSSerializable",
        "Writer",
        "decode",
        "encode",
    },
    "sealwire.mls.hpke": {
        "AEAD_AES128GCM",
        "AEAD_AES256GCM",
        "AEAD_CHACHA20POLY1305",
        "KDF_HKDF_SHA256",
        "KEM_DHKEM_X25519",
        "Context",
        "HPKESuite",
        "hkdf_expand",
        "hkdf_extract",
    },
    "sealwire.mls.crypto": {
        "AEAD",
        "KDF",
        "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
        "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
        "SEALWIRE_256_XWING_AES256GCM_SHA256_Ed25519",
        "SUPPORTED_SUITES",
        "XWING_PRIVATE_KEY_SIZE",
        "XWING_PUBLIC_KEY_SIZE",
        "CipherSuite",
        "cipher_suite",
    },
    "sealwire.mls.tree_math": {
        "common_ancestor",
        "copath",
        "direct_path",
        "is_leaf",
        "leaf_to_node",
        "left",
        "level",
        "log2",
        "node_to_leaf",
        "node_width",
        "parent",
        "right",
        "root",
        "sibling",
    },
    "sealwire.mls.key_schedule": {
        "EpochSecrets",
        "derive_epoch_secrets",
        "derive_joiner_secret",
        "derive_welcome_secret",
        "external_init_receiver",
        "external_init_sender",
        "external_key_pair",
        "key_schedule",
        "mls_exporter",
        "welcome_key_nonce",
        "zero_secret",
    },
    "sealwire.mls.secret_tree": {
        "DEFAULT_MAX_FORWARD",
        "DEFAULT_MAX_SKIPPED",
        "RatchetType",
        "SecretTree",
        "apply_reuse_guard",
        "sender_data_key_nonce",
    },
    "sealwire.mls.psk": {
        "PSKType",
        "ResumptionPSKUsage",
        "external_psk_id",
        "psk_secret",
        "resumption_psk_id",
    },
    "sealwire.mls.transcript": {
        "confirmation_tag",
        "confirmed_transcript_hash",
        "interim_transcript_hash",
        "verify_confirmation_tag",
    },
}


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_exported_members(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == EXPECTED[module]
    for name in mod.__all__:
        assert hasattr(mod, name), name


def test_error_tree() -> None:
    from sealwire.mls import errors as e

    for cls in (e.DecodeError, e.CryptoError, e.ValidationError, e.UnsupportedError, e.LocalError):
        assert issubclass(cls, e.MLSError)
    assert issubclass(e.SecretReuseError, e.ValidationError)
    assert not issubclass(e.MLSError, ValueError)  # nothing is caught by accident
