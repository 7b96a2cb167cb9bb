"""Shared fixtures: deterministic randomness and a small organisation of keys."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "sealwire", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile("sealwire")


class FixedRandom:
    """A deterministic byte stream (SHA-256 in counter mode over a seed), for tests only."""

    def __init__(self, seed: bytes = b"sealwire-tests") -> None:
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = self._seed + self._counter.to_bytes(8, "big")
            self._buffer += hashlib.sha256(block).digest()
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


@pytest.fixture
def fixed_random() -> FixedRandom:
    return FixedRandom()
