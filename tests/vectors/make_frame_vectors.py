"""Generate tests/vectors/frames.json: every relay frame, as the session machines exchange them.

Run from the repository root: ``python -m tests.vectors.make_frame_vectors``. Three sessions are
driven in memory with fixed keys, relay origin (hence relay id) and nonces (Ed25519 signatures are
deterministic, so every byte is reproducible): a device's authenticated session, an enterprise
server's session (registration, an activation answer, a revocation, an expiry notice) and an
activation-only session of a device without a certificate. Each frame is recorded in order with
its direction.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from sealwire.protocol.envelope import Envelope
from sealwire.protocol.frames import ErrorCode, canonical_origin, relay_id_for
from sealwire.protocol.identity import ChainVerifier, address_of
from sealwire.protocol.session import ClientConfig, ClientSession, RelayConfig, RelaySession
from tests.vectors.make_protocol_vectors import fixed_organisation

OUT = pathlib.Path(__file__).with_name("frames.json")
NOW = 1_800_000_000
NOW_MS = NOW * 1000
RELAY_ORIGIN = "wss://relay.example"
RELAY_ID = relay_id_for(RELAY_ORIGIN)


def _nonce(n: int) -> bytes:
    return bytes([n]) * 32


class _Recorder:
    """Moves frames between one client and one relay session, writing each one down."""

    def __init__(self, name: str, client: ClientSession, relay: RelaySession) -> None:
        self.name = name
        self.client = client
        self.relay = relay
        self.frames: list[dict[str, str]] = []

    def pump(self) -> None:
        while True:
            up = self.client.frames_to_send()
            down = self.relay.frames_to_send()
            if not up and not down:
                return
            for data in up:
                self.frames.append({"direction": "client-to-relay", "hex": data.hex()})
                self.relay.receive_frame(data, NOW_MS)
            for data in down:
                self.frames.append({"direction": "relay-to-client", "hex": data.hex()})
                self.client.receive_frame(data, NOW_MS)

    def record(self) -> dict[str, Any]:
        return {"session": self.name, "frames": self.frames}


def build() -> dict[str, Any]:
    fixed = fixed_organisation()
    root, server, device = fixed.root, fixed.server, fixed.device
    server_cert, device_cert = fixed.server_cert, fixed.device_cert
    org = address_of(root.public_key)
    verifier = ChainVerifier({org: root.public_key})
    config = RelayConfig(max_pending=8, max_unacked=8)
    client_config = ClientConfig(relay_id=RELAY_ID)
    recipient = address_of(server.public_key)
    envelope = Envelope(version=1, recipient=recipient, prekey_id=7, ciphertext=bytes(48)).encode()

    # 1. A device: handshake, send (accepted, then refused), delivery and ack, ping, goodbye.
    dev = _Recorder(
        "device",
        ClientSession(device, [device_cert.encode(), server_cert.encode()], config=client_config),
        RelaySession(
            relay_id=RELAY_ID, nonce=_nonce(1), verifier=verifier, now=NOW_MS, config=config
        ),
    )
    dev.client.connect(NOW_MS)
    dev.pump()
    dev.relay.admit(NOW_MS)
    dev.pump()
    first = dev.client.send_envelope(envelope)
    second = dev.client.send_envelope(envelope)
    dev.pump()
    dev.relay.accept(first)
    dev.relay.reject(second, ErrorCode.QUEUE_FULL, "recipient queue is full")
    dev.relay.deliver(b"\x00\x00\x00\x01", envelope)
    dev.pump()
    dev.client.ack([b"\x00\x00\x00\x01"])
    dev.client.handle_timer(NOW_MS + 30_000)
    dev.pump()
    dev.client.close()
    dev.pump()

    # 2. The enterprise server: registration, activation answer, revocation, expiry notice.
    srv = _Recorder(
        "server",
        ClientSession(server, [server_cert.encode()], root=root.public_key, config=client_config),
        RelaySession(
            relay_id=RELAY_ID, nonce=_nonce(2), verifier=verifier, now=NOW_MS, config=config
        ),
    )
    srv.client.connect(NOW_MS)
    srv.pump()
    srv.relay.admit(NOW_MS)
    srv.relay.send_activation(bytes([0x51]) * 16, b"device-to-server PAKE message")
    srv.pump()
    srv.client.send_activation(bytes([0x51]) * 16, b"server-to-device PAKE message")
    [ref] = srv.client.revoke([address_of(device.public_key)])
    srv.pump()
    srv.relay.accept(ref)
    srv.relay.notify_expired(recipient, bytes([0xEE]) * 32, NOW_MS - 7 * 86_400_000)
    srv.pump()

    # 3. A device without a certificate yet: activation only.
    act = _Recorder(
        "activation",
        ClientSession(config=client_config),
        RelaySession(
            relay_id=RELAY_ID, nonce=_nonce(3), verifier=verifier, now=NOW_MS, config=config
        ),
    )
    act.client.connect_for_activation(NOW_MS)
    act.pump()
    act.relay.admit(NOW_MS)
    act.pump()
    act.client.send_activation(bytes([0xA1]) * 16, b"device-to-server PAKE message", recipient)
    act.pump()
    act.relay.send_activation(bytes([0xA1]) * 16, b"server-to-device PAKE message")
    act.pump()

    return {
        "source": "tests/vectors/make_frame_vectors.py (fixed keys; docs/protocol/FRAMES.md)",
        "now_ms": NOW_MS,
        "relay_origin": canonical_origin(RELAY_ORIGIN),
        "relay_id": RELAY_ID.hex(),
        "seeds": {
            "root": bytes(range(32)).hex(),
            "server": bytes(range(32, 64)).hex(),
            "device": bytes(range(64, 96)).hex(),
        },
        "sessions": [dev.record(), srv.record(), act.record()],
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT}")
