"""Each public module's ``__all__`` is locked here: a change to the public API is deliberate."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "sealwire.relay.backend": {
        "DEFAULT_LIFETIME_MS",
        "ActivationRoute",
        "BackendListener",
        "ExpiryNotice",
        "QueueLimits",
        "RelayBackend",
        "StoredEnvelope",
    },
    "sealwire.relay.config": {"ENV_PREFIX", "RelayServiceConfig", "load_config"},
    "sealwire.relay.service": {"Relay", "make_backend"},
    "sealwire.relay.metrics": {"RelayMetrics"},
    "sealwire.transport": {"RelayConnection", "RequestRefused", "SessionEnded"},
    "sealwire.logs": {"JsonFormatter", "configure_logging"},
    "sealwire.protocol.pake": {
        "CONFIRMATION_AAD",
        "CONFIRMATION_SIZE",
        "M",
        "N",
        "SCALAR_SEED_SIZE",
        "SCALAR_SIZE",
        "SHARED_KEY_SIZE",
        "SHARE_SIZE",
        "Side",
        "Spake2",
        "Spake2Keys",
        "password_scalar",
        "scalar_from_seed",
    },
    "sealwire.protocol.activation": {
        "ActivationAborted",
        "ActivationAnswer",
        "ActivationChallenge",
        "ActivationCompleted",
        "ActivationConfirm",
        "ActivationEvent",
        "ActivationRefusal",
        "ActivationRefused",
        "ActivationStart",
        "ActivationTicket",
        "DEVICE_TRANSITIONS",
        "DeviceActivation",
        "DeviceInput",
        "DeviceKeys",
        "DeviceKeysReceived",
        "DeviceState",
        "MAX_ACTIVATION_MESSAGE",
        "MESSAGES",
        "PasswordRejected",
        "RefusalCode",
        "SERVER_TRANSITIONS",
        "ServerActivation",
        "ServerAnswer",
        "ServerInput",
        "ServerNotConfirmed",
        "ServerState",
        "TICKET_ID_SIZE",
        "decode_message",
        "encode_message",
    },
    "sealwire.protocol.frames": {
        "Accepted",
        "Ack",
        "Activation",
        "Auth",
        "Challenge",
        "Deliver",
        "ERROR_CODES",
        "Error",
        "ErrorCode",
        "Expired",
        "FRAMES",
        "Frame",
        "Hello",
        "MAX_ACK_IDS",
        "MAX_ACTIVATION_PAYLOAD",
        "MAX_DELIVERY_ID_SIZE",
        "MAX_FRAME_SIZE",
        "MAX_REASON_SIZE",
        "MAX_REVOKE_ADDRESSES",
        "Mode",
        "NONCE_SIZE",
        "PROTOCOL_VERSION",
        "RELAY_ID_SIZE",
        "REQUEST_ERROR_CODES",
        "Ping",
        "Pong",
        "Ready",
        "Revoke",
        "SESSION_ID_SIZE",
        "Send",
        "auth_message",
        "canonical_origin",
        "decode_frame",
        "encode_frame",
        "relay_id_for",
    },
    "sealwire.protocol.session": {
        "CONNECTION_LOST",
        "ActivationReceived",
        "ActivationSubmitted",
        "ClientConfig",
        "ClientSession",
        "ClientState",
        "ClientVerified",
        "DeliveriesAcknowledged",
        "EnvelopeDelivered",
        "EnvelopeExpired",
        "EnvelopeSubmitted",
        "Event",
        "RelayConfig",
        "RelaySession",
        "RelayState",
        "RequestAccepted",
        "RequestRejected",
        "RevocationRequested",
        "SessionReady",
        "SessionTerminated",
    },
    "sealwire.errors": {
        "ActivationFailed",
        "ConfigError",
        "CryptoError",
        "DecodeError",
        "InvalidCertificate",
        "InvalidEnvelope",
        "InvalidSignature",
        "LocalProtocolError",
        "QueueFull",
        "RemoteProtocolError",
        "SealwireError",
        "StorageError",
        "TransportError",
    },
    "sealwire.protocol.codec": {
        "MAX_DEPTH",
        "MAX_ITEMS",
        "MAX_MESSAGE",
        "Struct",
        "Variants",
        "decode_value",
        "encode_value",
        "wire",
    },
    "sealwire.protocol.envelope": {
        "DEFAULT_LIFETIME_MS",
        "ENVELOPE_VERSION",
        "MAX_BODY_SIZE",
        "MAX_CLOCK_SKEW_MS",
        "MAX_ENVELOPE_SIZE",
        "MESSAGE_ID_SIZE",
        "Envelope",
        "EnvelopeContent",
        "OpenedEnvelope",
        "PayloadType",
        "ReplayGuard",
        "open_envelope",
        "peek_recipient",
        "seal",
        "signed_bytes",
    },
    "sealwire.protocol.identity": {
        "ADDRESS_SIZE",
        "CERTIFICATE_VERSION",
        "MAX_CERTIFICATE_SIZE",
        "MAX_CHAIN",
        "Certificate",
        "CertificateBody",
        "ChainVerifier",
        "Prekey",
        "Role",
        "SignedPrekey",
        "address_of",
        "issue_certificate",
        "parse_address",
        "short_address",
        "sign_prekey",
        "verify_chain",
    },
    "sealwire.protocol.suite": {
        "AEAD_KEY_SIZE",
        "AEAD_NONCE_SIZE",
        "ED25519_PUBLIC_KEY_SIZE",
        "ED25519_SIGNATURE_SIZE",
        "LABEL_PREFIX",
        "MIN_PADDED_SIZE",
        "SUITE_NAME",
        "XWING_ENC_SIZE",
        "XWING_PUBLIC_KEY_SIZE",
        "XWING_SEED_SIZE",
        "Argon2Params",
        "RandomSource",
        "SigningKey",
        "XWingPrivateKey",
        "XWingPublicKey",
        "aead_open",
        "aead_seal",
        "constant_time_equal",
        "derive_passcode_key",
        "hkdf",
        "hpke_open",
        "hpke_seal",
        "label",
        "labelled",
        "pad",
        "padded_size",
        "sha256",
        "unpad",
        "verify_signature",
    },
}


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_exported_members(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == EXPECTED[module]
    for name in mod.__all__:
        assert hasattr(mod, name), name


def test_sans_io_core_imports_no_services() -> None:
    """protocol/ and mls/ import nothing that does I/O or belongs to a service."""
    import ast
    import pathlib

    forbidden = {
        "asyncio",
        "socket",
        "sqlite3",
        "sqlalchemy",
        "websockets",
        "nats",
        "fastapi",
        "uvicorn",
        "os",
        "time",
        "random",
        "secrets",
        "threading",
        "subprocess",
    }
    services = (
        "sealwire.relay",
        "sealwire.server",
        "sealwire.device",
        "sealwire.transport",
        "sealwire.storage",
        "sealwire.cli",
        "sealwire.web",
    )
    root = pathlib.Path(__file__).parents[1] / "src" / "sealwire"
    checked = 0
    for package in ("protocol", "mls"):
        for path in (root / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
                    assert not name.startswith(services), f"{path.name} imports {name}"
                    if package == "mls":
                        assert not name.startswith("sealwire.") or name.startswith(
                            "sealwire.mls"
                        ), f"{path.name} imports {name}"
            checked += 1
    assert checked >= 4
