"""Generate tests/vectors/management.json: one of each device-management message.

Run from the repository root: ``python -m tests.vectors.make_management_vectors``. Everything is
derived from fixed inputs: the organisation of ``make_protocol_vectors`` (Ed25519 seeds
``000102…1f`` root, ``202122…3f`` server, ``404142…5f`` device), X-Wing seed ``a0a1a2…bf`` for
the one-time reply key, and fixed request ids, command ids, remote secret and times. Ed25519
signatures are deterministic, so every byte is reproducible (docs/protocol/MANAGEMENT.md shows
them all).

Each vector is ``{"name", "type", "payload_type", "hex"}``: ``hex`` is the ``[code, body]``
encoding (``encode_management_message``), ``type`` the structure it decodes to and
``payload_type`` the envelope payload type it travels under.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from sealwire.protocol.codec import Struct
from sealwire.protocol.directory import Policy, SignedPolicy
from sealwire.protocol.identity import address_of
from sealwire.protocol.management import (
    Command,
    CommandKind,
    CommandResult,
    CommandStatus,
    ComplianceIssue,
    DeviceReport,
    FetchRemoteSecret,
    ManagementAnswer,
    RemoteSecretAnswer,
    SecretStatus,
    SignedCommand,
    encode_management_message,
    payload_type_of,
)
from sealwire.protocol.suite import XWingPrivateKey
from tests.vectors.make_protocol_vectors import fixed_organisation

OUT = pathlib.Path(__file__).with_name("management.json")
NOW = 1_800_000_000
REPLY_KEY_SEED = bytes(range(160, 192))
REQUEST_ID = bytes([0x11]) * 16
LOCK_ID = bytes([0x44]) * 16
WIPE_ID = bytes([0x55]) * 16
REMOTE_SECRET = bytes([0x33]) * 32
NEW_PASSCODE = "Temp-2027-lock"


def policy() -> Policy:
    """The policy of the vectors: every field set, none at its default."""
    return Policy(
        version=4,
        issued_at=NOW - 3600,
        prekey_rotation_s=7 * 86400,
        directory_cache_s=3600,
        name="finance",
        passcode_min_length=10,
        passcode_classes=3,
        max_failed_attempts=5,
        auto_lock_s=300,
        offline_grace_s=24 * 3600,
        retention_days=365,
        export_allowed=False,
    )


def structures() -> list[tuple[str, Struct]]:
    """``(name, value)`` for every vector, in document order."""
    fixed = fixed_organisation()
    device = address_of(fixed.device.public_key)
    signed_policy = SignedPolicy.sign(policy(), fixed.server)
    lock = SignedCommand.sign(
        Command(
            command_id=LOCK_ID,
            device=device,
            kind=CommandKind.LOCK,
            issued_at=NOW - 60,
            new_passcode=NEW_PASSCODE,
        ),
        fixed.server,
    )
    wipe = SignedCommand.sign(
        Command(command_id=WIPE_ID, device=device, kind=CommandKind.WIPE, issued_at=NOW),
        fixed.server,
    )
    return [
        (
            "DeviceReport",
            DeviceReport(
                request_id=REQUEST_ID,
                policy_name="default",
                policy_version=1,
                policy_issued_at=NOW - 86400,
                issues=(ComplianceIssue.PASSCODE_TOO_SHORT, ComplianceIssue.PASSCODE_TOO_SIMPLE),
            ),
        ),
        (
            "ManagementAnswer",
            ManagementAnswer(request_id=REQUEST_ID, policy=signed_policy, commands=(lock,)),
        ),
        ("SignedPolicy", signed_policy),
        ("SignedCommand", wipe),
        (
            "CommandResult",
            CommandResult(command_id=LOCK_ID, status=CommandStatus.DONE, detail="locked"),
        ),
        (
            "FetchRemoteSecret",
            FetchRemoteSecret(
                request_id=REQUEST_ID,
                reply_prekey_id=0xFFFF0001,
                reply_key=XWingPrivateKey(REPLY_KEY_SEED).public_key.raw,
            ),
        ),
        (
            "RemoteSecretAnswer",
            RemoteSecretAnswer(
                request_id=REQUEST_ID,
                status=SecretStatus.GRANTED,
                secret=REMOTE_SECRET,
                policy=signed_policy,
            ),
        ),
        (
            "RemoteSecretAnswer/wipe",
            RemoteSecretAnswer(request_id=REQUEST_ID, status=SecretStatus.WIPE),
        ),
    ]


def build() -> dict[str, Any]:
    fixed = fixed_organisation()
    vectors = [
        {
            "name": name,
            "type": type(value).__name__,
            "payload_type": payload_type_of(value).name,
            "hex": encode_management_message(value).hex(),
        }
        for name, value in structures()
    ]
    return {
        "source": "tests/vectors/make_management_vectors.py (docs/protocol/MANAGEMENT.md)",
        "now": NOW,
        "seeds": {
            "root": bytes(range(32)).hex(),
            "server": bytes(range(32, 64)).hex(),
            "device": bytes(range(64, 96)).hex(),
            "reply_key": REPLY_KEY_SEED.hex(),
        },
        "device": address_of(fixed.device.public_key).hex(),
        "remote_secret": REMOTE_SECRET.hex(),
        "new_passcode": NEW_PASSCODE,
        "vectors": vectors,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT}")
