"""Envelope seal/open rates next to the primitives they are made of, measured in one run.

Usage: python bench/crypto.py [--seconds S] [--rounds R] [--body BYTES]

A sealed envelope costs one X-Wing HPKE seal (of the padded inner plaintext) and one Ed25519
signature; opening costs one HPKE open and one Ed25519 verification (the sender's certificate
chain is verified once and cached). The *bound* is the rate those primitives alone allow when
run one after the other per envelope, on the same sizes (``prims_seal``, ``prims_open``). The
stricter figure against each primitive timed alone in a hot loop, 1 / (1/hpke + 1/ed25519),
is printed too. Rounds interleave every measurement, so machine speed swings hit all of them
alike; the ratio per round is reported as the median. Goal (issue 2): seal and open
each reach at least 85% of their bound.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

from sealwire.protocol.envelope import PayloadType, open_envelope, seal
from sealwire.protocol.identity import ChainVerifier, Role, address_of, issue_certificate
from sealwire.protocol.suite import SigningKey, XWingPrivateKey, hpke_open, hpke_seal, pad

GOAL = 0.85


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            fn()
        n += 50
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--body", type=int, default=1024, help="body size in bytes")
    args = parser.parse_args()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))

    root = SigningKey.generate(os.urandom)
    org = address_of(root.public_key)
    server = SigningKey.generate(os.urandom)
    sender = SigningKey.generate(os.urandom)
    recipient = SigningKey.generate(os.urandom)
    now = int(time.time())
    server_cert = issue_certificate(
        root,
        organisation=org,
        role=Role.SERVER,
        identity_key=server.public_key,
        serial=1,
        not_before=now - 60,
        not_after=now + 86400,
    )
    sender_cert = issue_certificate(
        server,
        organisation=org,
        role=Role.DEVICE,
        identity_key=sender.public_key,
        serial=2,
        not_before=now - 60,
        not_after=now + 86400,
    )
    chain = [sender_cert.encode(), server_cert.encode()]
    prekey = XWingPrivateKey.generate(os.urandom)
    to = address_of(recipient.public_key)
    body = os.urandom(args.body)
    now_ms = now * 1000
    verifier = ChainVerifier({org: root.public_key})

    def do_seal() -> bytes:
        return seal(
            sender=sender,
            sender_chain=chain,
            recipient=to,
            prekey_id=1,
            prekey=prekey.public_key,
            payload_type=PayloadType.MESSAGE,
            body=body,
            now_ms=now_ms,
            random=os.urandom,
        )

    envelope = do_seal()
    # The primitives on the same sizes the envelope uses.
    inner_size = len(envelope) - 1120 - 16 - 48  # roughly the padded plaintext
    plaintext = pad(os.urandom(inner_size - 200))
    ciphertext = hpke_seal(prekey.public_key, plaintext, purpose="bench", context=b"")
    message = os.urandom(len(plaintext) - 64)
    signature = sender.sign("bench", message)
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pub = ed25519.Ed25519PublicKey.from_public_bytes(sender.public_key)
    from sealwire.protocol.suite import labelled

    signed = labelled("bench", message)

    tests: dict[str, Callable[[], object]] = {
        "hpke_seal": lambda: hpke_seal(prekey.public_key, plaintext, purpose="bench", context=b""),
        "hpke_open": lambda: hpke_open(prekey, ciphertext, purpose="bench", context=b""),
        "ed25519_sign": lambda: sender.sign("bench", message),
        "ed25519_verify": lambda: pub.verify(signature, signed),
        "prims_seal": lambda: (
            sender.sign("bench", message),
            hpke_seal(prekey.public_key, plaintext, purpose="bench", context=b""),
        ),
        "prims_open": lambda: (
            hpke_open(prekey, ciphertext, purpose="bench", context=b""),
            pub.verify(signature, signed),
        ),
        "envelope_seal": do_seal,
        "envelope_open": lambda: open_envelope(
            envelope,
            recipient=to,
            prekeys=lambda i: prekey,
            verifier=verifier,
            now_ms=now_ms,
        ),
    }
    rates: dict[str, list[float]] = {k: [] for k in tests}
    seal_ratio: list[float] = []
    open_ratio: list[float] = []
    seal_isolated: list[float] = []
    open_isolated: list[float] = []
    for r in range(args.rounds):
        got = {name: rate(fn, args.seconds) for name, fn in tests.items()}
        for name, value in got.items():
            rates[name].append(value)
        seal_bound = 1 / (1 / got["hpke_seal"] + 1 / got["ed25519_sign"])
        open_bound = 1 / (1 / got["hpke_open"] + 1 / got["ed25519_verify"])
        seal_isolated.append(got["envelope_seal"] / seal_bound)
        open_isolated.append(got["envelope_open"] / open_bound)
        seal_ratio.append(got["envelope_seal"] / got["prims_seal"])
        open_ratio.append(got["envelope_open"] / got["prims_open"])
        print(
            f"round {r + 1}/{args.rounds}: seal {seal_ratio[-1]:.0%} of bound, "
            f"open {open_ratio[-1]:.0%} of bound",
            flush=True,
        )

    print(f"\nenvelope: {args.body}-byte body, {len(envelope)} bytes sealed")
    for name, values in rates.items():
        print(f"  {name:16s} {statistics.median(values):>9.0f} /s (median of {args.rounds})")
    s, o = statistics.median(seal_ratio), statistics.median(open_ratio)
    si, oi = statistics.median(seal_isolated), statistics.median(open_isolated)
    print("bound = the primitives alone, one after the other per envelope (prims_*):")
    print(f"  seal: {s:.1%} of the sign + HPKE-seal bound   (goal ≥ {GOAL:.0%})")
    print(f"  open: {o:.1%} of the HPKE-open + verify bound (goal ≥ {GOAL:.0%})")
    print("against each primitive timed alone in a hot loop (stricter; cache effects excluded):")
    print(f"  seal: {si:.1%}   open: {oi:.1%}")
    ok = s >= GOAL and o >= GOAL
    print("result:", "goal met" if ok else "goal NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
