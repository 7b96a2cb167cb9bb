"""Generate tests/vectors/directory.json: one of each directory, policy and messaging structure.

Run from the repository root: ``python -m tests.vectors.make_directory_vectors``. Everything is
derived from fixed inputs: the organisation of ``make_protocol_vectors`` (Ed25519 seeds
``000102…1f`` root, ``202122…3f`` server, ``404142…5f`` device), X-Wing seed ``606162…7f`` for
the device's prekey and ``808182…9f`` for the server's, fixed request and message ids and times.
Ed25519 signatures are deterministic, so every byte is reproducible
(docs/protocol/DIRECTORY.md shows them all).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from sealwire.protocol.codec import Struct
from sealwire.protocol.directory import (
    ActivationDirectory,
    CertificateRenewed,
    DeviceEntry,
    DirectoryAnswer,
    DirectoryQuery,
    Policy,
    PrekeysPublished,
    PublishPrekeys,
    RenewCertificate,
    SignedDirectoryAnswer,
    SignedPolicy,
    UserEntry,
    encode_directory_message,
)
from sealwire.protocol.identity import address_of, sign_prekey
from sealwire.protocol.messaging import ChatMessage, Receipt, ReceiptKind
from sealwire.protocol.suite import XWingPrivateKey
from tests.vectors.make_protocol_vectors import fixed_organisation

OUT = pathlib.Path(__file__).with_name("directory.json")
NOW = 1_800_000_000
DEVICE_PREKEY_SEED = bytes(range(96, 128))
SERVER_PREKEY_SEED = bytes(range(128, 160))
REQUEST_ID = bytes([0x11]) * 16
MESSAGE_ID = bytes([0x22]) * 16


def structures() -> list[tuple[str, str, Struct]]:
    """``(name, how it is encoded, value)`` for every vector, in document order."""
    fixed = fixed_organisation()
    org = address_of(fixed.root.public_key)
    chain = (fixed.device_cert.encode(), fixed.server_cert.encode())
    device_prekey = sign_prekey(
        fixed.device,
        prekey_id=7,
        public_key=XWingPrivateKey(DEVICE_PREKEY_SEED).public_key,
        not_after=NOW + 14 * 86400,
    ).encode()
    server_prekey = sign_prekey(
        fixed.server,
        prekey_id=1,
        public_key=XWingPrivateKey(SERVER_PREKEY_SEED).public_key,
        not_after=NOW + 90 * 86400,
    ).encode()
    answer = DirectoryAnswer(
        request_id=REQUEST_ID,
        organisation=org,
        issued_at=NOW,
        expires_at=NOW + 3600,
        entries=(
            UserEntry(
                user="alice",
                display_name="Alice Example",
                devices=(DeviceEntry(chain=chain, prekey=device_prekey),),
            ),
        ),
        unknown=("mallory",),
    )
    policy = Policy(version=1, issued_at=NOW, prekey_rotation_s=7 * 86400, directory_cache_s=3600)
    directory = "directory"
    return [
        (
            "DirectoryQuery",
            directory,
            DirectoryQuery(request_id=REQUEST_ID, users=("alice", "mallory")),
        ),
        ("SignedDirectoryAnswer", directory, SignedDirectoryAnswer.sign(answer, fixed.server)),
        (
            "PublishPrekeys",
            directory,
            PublishPrekeys(request_id=REQUEST_ID, prekeys=(device_prekey,)),
        ),
        ("PrekeysPublished", directory, PrekeysPublished(request_id=REQUEST_ID)),
        ("RenewCertificate", directory, RenewCertificate(request_id=REQUEST_ID)),
        ("CertificateRenewed", directory, CertificateRenewed(request_id=REQUEST_ID, chain=chain)),
        ("SignedPolicy", "struct", SignedPolicy.sign(policy, fixed.server)),
        (
            "ActivationDirectory",
            "struct",
            ActivationDirectory(
                organisation_name="Example Ltd",
                user="alice",
                display_name="Alice Example",
                server_prekey=server_prekey,
                relay="wss://relay.example:443",
            ),
        ),
        (
            "ChatMessage",
            "struct",
            ChatMessage(message_id=MESSAGE_ID, sender="alice", recipient="bob", text="Hello, Bob!"),
        ),
        (
            "Receipt",
            "struct",
            Receipt(kind=ReceiptKind.READ, message_ids=(MESSAGE_ID,), by="bob"),
        ),
    ]


def build() -> dict[str, Any]:
    vectors = []
    for name, encoding, value in structures():
        data = encode_directory_message(value) if encoding == "directory" else value.encode()
        vectors.append({"name": name, "encoding": encoding, "hex": data.hex()})
    return {
        "source": "tests/vectors/make_directory_vectors.py (docs/protocol/DIRECTORY.md)",
        "now": NOW,
        "seeds": {
            "root": bytes(range(32)).hex(),
            "server": bytes(range(32, 64)).hex(),
            "device": bytes(range(64, 96)).hex(),
            "device_prekey": DEVICE_PREKEY_SEED.hex(),
            "server_prekey": SERVER_PREKEY_SEED.hex(),
        },
        "vectors": vectors,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT}")
