"""Fixtures of the device-management scenario tests (see ``management_harness.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..relay.harness import RelayProcess


@pytest.fixture
def runtime_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runtime directory (as ``$XDG_RUNTIME_DIR`` is on a desktop): sessions and the
    remote-secret cache go there, never into a device's home."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("SEALWIRE_SESSION_DIR", str(runtime))
    return runtime


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay process for the module. Every unlock past the offline grace asks the server
    through the activation channel, so its per-source activation limit is raised."""
    process = RelayProcess(
        tmp_path_factory.mktemp("relay"),
        env={
            "SEALWIRE_RELAY_ACTIVATION_RATE_PER_MINUTE": "6000",
            "SEALWIRE_RELAY_ACTIVATION_BURST": "1000",
        },
    ).start()
    try:
        yield process
    finally:
        process.stop()
