"""Locks the public names (``__all__``) of every module of ``sealwire.mls`` (codec, crypto,
key schedule, structures, tree, TreeKEM, framing, Welcome, group): modules build on each other,
so a change here must be deliberate."""

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
    "sealwire.mls.framing": {
        "membership_tag",
        "protect_private",
        "protect_public",
        "sign_content",
        "unprotect_private",
        "unprotect_public",
        "verify_signature",
    },
    "sealwire.mls.group": {
        "ApplicationReceived",
        "CommitApplied",
        "CredentialValidator",
        "EXTERNAL_PUB_EXTENSION",
        "Event",
        "Group",
        "ProposalReceived",
        "RATCHET_TREE_EXTENSION",
    },
    "sealwire.mls.structs": {
        "Add",
        "AuthenticatedContent",
        "Capabilities",
        "Commit",
        "Content",
        "ContentType",
        "Credential",
        "CredentialType",
        "EncryptedGroupSecrets",
        "Extension",
        "ExternalInit",
        "FramedContent",
        "FramedContentAuthData",
        "GroupContext",
        "GroupContextExtensions",
        "GroupInfo",
        "GroupSecrets",
        "HPKECiphertext",
        "KeyPackage",
        "LeafNode",
        "LeafNodeSource",
        "Lifetime",
        "MLSMessage",
        "MessageBody",
        "Node",
        "NodeType",
        "ParentNode",
        "PreSharedKey",
        "PreSharedKeyID",
        "PrivateMessage",
        "Proposal",
        "ProposalOrRef",
        "ProposalType",
        "ProtocolVersion",
        "PublicMessage",
        "ReInit",
        "Remove",
        "Sender",
        "SenderType",
        "Update",
        "UpdatePath",
        "UpdatePathNode",
        "Welcome",
        "WireFormat",
        "content_type_of",
        "read_content",
        "read_proposal",
        "read_ratchet_tree",
        "write_content",
        "write_proposal",
        "write_ratchet_tree",
    },
    "sealwire.mls.tree": {
        "RatchetTree",
        "verify_leaf_signature",
    },
    "sealwire.mls.treekem": {
        "PathResult",
        "apply_update_path",
        "create_update_path",
        "derive_path_secrets",
        "node_key_pair",
    },
    "sealwire.mls.welcome": {
        "create_welcome",
        "join_epoch_secrets",
        "open_welcome",
        "sign_group_info",
        "verify_group_info",
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
