"""A server envelope delivered again is dropped before anything handles it (issue 15).

The relay is blind but not trusted: it may deliver an envelope twice, or a hostile relay may
replay an old one. The device recorded a server envelope as seen only *after* handling it and
ignored the answer, so a replayed policy was applied (and reported) again and a replayed
command carried out again. Same harness as test_device_management.py: a real relay process,
an in-process EnterpriseServer, in-process devices; the replay is fed to the device's link
directly, as a relay would deliver it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sealwire.device import link as device_link
from sealwire.protocol.envelope import OpenedEnvelope, PayloadType
from sealwire.protocol.session import EnvelopeDelivered
from sealwire.server.administration import PolicySettings

from ..relay.harness import RelayProcess
from .management_harness import ADMIN, eventually, listening, organisation, run

pytestmark = pytest.mark.usefixtures("runtime_directory")


class ReplayingConn:
    """Stands in for the relay connection: delivers what is put in, records the acks."""

    def __init__(self) -> None:
        self.deliveries: asyncio.Queue[EnvelopeDelivered] = asyncio.Queue()
        self.acked: list[bytes] = []

    def ack(self, delivery_ids: list[bytes]) -> None:
        self.acked.extend(delivery_ids)


def test_a_replayed_policy_or_command_is_not_processed_again(
    tmp_path: Path, relay: RelayProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened_by_link: list[tuple[bytes, OpenedEnvelope]] = []
    real_open = device_link.open_envelope

    def recording_open(envelope: bytes, **kwargs: Any) -> OpenedEnvelope:
        opened = real_open(envelope, **kwargs)
        opened_by_link.append((envelope, opened))
        return opened

    monkeypatch.setattr(device_link, "open_envelope", recording_open)

    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")
            task, stop = await listening(phone)
            await org.admin.put_policy(ADMIN, "default", PolicySettings(auto_lock_s=60))
            await eventually(lambda: phone.policy.auto_lock_s == 60)
            command = await org.admin.command(ADMIN, phone.address.hex(), "renew-keys")
            await eventually(lambda: org.admin.command_status(command.command_id).state == "done")
            stop.set()
            await asyncio.wait_for(task, 10)

            pushed = {
                opened.payload_type: envelope
                for envelope, opened in opened_by_link
                if opened.payload_type in (PayloadType.POLICY, PayloadType.COMMAND)
            }
            assert set(pushed) == {PayloadType.POLICY, PayloadType.COMMAND}

            handled: list[str] = []

            async def policy_pushed(signed: Any) -> None:
                handled.append("policy")

            async def run_commands(commands: Any) -> None:
                handled.append("command")

            monkeypatch.setattr(phone._management, "policy_pushed", policy_pushed)
            monkeypatch.setattr(phone._management, "run_commands", run_commands)
            # The same envelopes again, as a relay would deliver them (new delivery ids).
            conn = ReplayingConn()
            for number, envelope in enumerate(pushed.values()):
                conn.deliveries.put_nowait(
                    EnvelopeDelivered(delivery_id=b"replay-%d" % number, envelope=envelope)
                )
            reader = asyncio.create_task(phone._link.read(conn))  # type: ignore[arg-type]
            try:
                await eventually(lambda: len(conn.acked) == 2, 5)
                await asyncio.sleep(0.2)  # anything spawned by a handler has started
            finally:
                reader.cancel()
            assert conn.acked == [b"replay-0", b"replay-1"]  # taken off the relay ...
            assert handled == []  # ... and handled by nobody

    run(scenario())
