"""Generate tests/vectors/pake.json: pinned SPAKE2 (RFC 9382, edwards25519) and activation runs.

Run from the repository root: ``python tests/vectors/make_pake_vectors.py``. RFC 9382 has test
vectors for P-256 only, so these are our own, derived from fixed inputs: everything (ephemeral
scalars, Argon2id salt, Ed25519 signatures, AES-GCM under fixed keys) is deterministic, and the
test checks that the code reproduces this file exactly.

Format: ``spake2`` lists runs with their inputs (identities, ``w``, the 64-byte seeds of ``x``
and ``y``) and every intermediate value of RFC 9382 §3.3-§4 (hex); ``password_scalar`` pins the
Argon2id → HKDF → mod p derivation of ``w``; ``activation`` pins every message of a complete
run and of a wrong-password run (hex of the encoded messages).
"""

from __future__ import annotations

import json
import pathlib
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealwire.protocol.activation import (
    ActivationTicket,
    DeviceActivation,
    ServerActivation,
    ServerAnswer,
)
from sealwire.protocol.pake import CONFIRMATION_AAD, M, N, Side, Spake2, scalar_from_seed
from sealwire.protocol.suite import Argon2Params, SigningKey, sha256

OUT = pathlib.Path(__file__).with_name("pake.json")
SUITE = "SPAKE2-edwards25519-SHA256-HKDF-HMAC"
TEST_PARAMS = {"memory_kib": 8, "iterations": 1, "lanes": 1}
"""Argon2id at its smallest, for speed; real tickets use RFC 9106's recommendation."""


def counter_random(start: int) -> Callable[[int], bytes]:
    state = {"n": start}

    def random(n: int) -> bytes:
        out = bytes((state["n"] + i) % 256 for i in range(n))
        state["n"] += n
        return out

    return random


def split_transcript(tt: bytes) -> list[bytes]:
    """Split ``len(a) || a || len(b) || b ...`` (8-byte little-endian lengths) into parts."""
    parts, i = [], 0
    while i < len(tt):
        (n,) = struct.unpack_from("<Q", tt, i)
        parts.append(tt[i + 8 : i + 8 + n])
        i += 8 + n
    return parts


def spake2_case(id_a: bytes, id_b: bytes, w_seed: bytes, seed_x: bytes, seed_y: bytes) -> dict:
    w = scalar_from_seed(w_seed)
    a = Spake2(Side.A, password_scalar=w, id_a=id_a, id_b=id_b, seed=seed_x)
    b = Spake2(Side.B, password_scalar=w, id_a=id_a, id_b=id_b, seed=seed_y)
    keys_a, keys_b = a.finish(b.share), b.finish(a.share)
    assert keys_a.transcript == keys_b.transcript
    assert (keys_a.confirmation_a, keys_a.confirmation_b) == (
        keys_b.confirmation_a,
        keys_b.confirmation_b,
    )
    tt = keys_a.transcript
    digest = sha256(tt)
    kc = HKDF(hashes.SHA256(), 32, None, b"ConfirmationKeys" + CONFIRMATION_AAD).derive(digest[16:])
    return {
        "A": id_a.hex(),
        "B": id_b.hex(),
        "w": w.hex(),
        "seed_x": seed_x.hex(),
        "seed_y": seed_y.hex(),
        "x": scalar_from_seed(seed_x).hex(),
        "y": scalar_from_seed(seed_y).hex(),
        "pA": a.share.hex(),
        "pB": b.share.hex(),
        "K": split_transcript(tt)[4].hex(),
        "TT": tt.hex(),
        "Ke": digest[:16].hex(),
        "Ka": digest[16:].hex(),
        "KcA": kc[:16].hex(),
        "KcB": kc[16:].hex(),
        "cA": keys_a.confirmation_a.hex(),
        "cB": keys_a.confirmation_b.hex(),
    }


def ticket() -> ActivationTicket:
    params = Argon2Params(salt=bytes(range(0x40, 0x50)), **TEST_PARAMS)
    return ActivationTicket(
        ticket_id=bytes(range(0x10, 0x20)),
        server=sha256(b"sealwire vector server"),
        relay="relay.example.org:443",
        params=params,
    )


ANSWER = ServerAnswer(
    certificate_chain=(b"device certificate", b"server certificate"),
    organisation_root_key=bytes(range(0x60, 0x80)),
    policy=b"policy",
    directory=b"directory",
)


def activation_run(password: str, stored_password: str) -> dict:
    t = ticket()
    w = t.password_scalar(stored_password)
    identity = SigningKey.from_seed(bytes(range(0x80, 0xA0)))
    device = DeviceActivation(
        t,
        password,
        identity=identity,
        signed_prekeys=(b"signed prekey",),
        random=counter_random(0xA0),
    )
    server = ServerActivation(
        t.server, password_scalars={t.ticket_id: w}.get, random=counter_random(0xE0)
    )
    messages: list[dict[str, str]] = []
    device.start()
    outgoing = [("device", m) for m in device.data_to_send()]
    while outgoing:
        sender, data = outgoing.pop(0)
        messages.append({"from": sender, "hex": data.hex()})
        if sender == "device":
            for event in server.receive(data):
                if type(event).__name__ == "DeviceKeysReceived":
                    server.send_answer(ANSWER)
            outgoing += [("server", m) for m in server.data_to_send()]
        else:
            device.receive(data)
            outgoing += [("device", m) for m in device.data_to_send()]
    return {
        "password": password,
        "device_state": device.state.value,
        "server_state": server.state.value,
        "messages": messages,
    }


def build() -> dict[str, object]:
    t = ticket()
    return {
        "source": "Sealwire make_pake_vectors.py (RFC 9382 has no edwards25519 vectors)",
        "suite": SUITE,
        "M": M.hex(),
        "N": N.hex(),
        "aad": CONFIRMATION_AAD.hex(),
        "spake2": [
            spake2_case(
                bytes(range(16)),
                sha256(b"server"),
                bytes([1]) * 64,
                bytes(range(64)),
                bytes(range(64, 128)),
            ),
            spake2_case(
                b"client", b"server", bytes(range(128, 192)), bytes([0xFF]) * 64, bytes([0x7F]) * 64
            ),
        ],
        "password_scalar": {
            "password": "correct horse 42",
            "ticket": t.encode().hex(),
            "w": t.password_scalar("correct horse 42").hex(),
        },
        "activation": {
            "ticket": t.encode().hex(),
            "identity_seed": bytes(range(0x80, 0xA0)).hex(),
            "answer": ANSWER.encode().hex(),
            "completed": activation_run("correct horse 42", "correct horse 42"),
            "wrong_password": activation_run("correct horse 41", "correct horse 42"),
        },
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")
