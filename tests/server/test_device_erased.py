"""A device that erased itself after the policy's limit of wrong passcodes (issue 15): it tells
the server when it can (it still holds its identity key from an earlier unlock), and the
server audits it, marks the device wiped (no remote secret, refused by the relay) and takes it
out of the directory at once (DirectoryChanged to the devices holding its person's entry), so
peers stop sealing to it. Before, it stayed "active" and peers went on sending to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealwire.errors import DeviceWiped, WrongPasscode
from sealwire.protocol.identity import short_address
from sealwire.server.administration import PolicySettings

from ..relay.harness import RelayProcess
from .management_harness import ADMIN, eventually, listening, organisation, run


def test_a_device_that_erased_itself_is_marked_wiped_and_leaves_the_directory(
    tmp_path: Path, relay: RelayProcess, runtime_directory: Path
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            await org.admin.put_policy(ADMIN, "default", PolicySettings(max_failed_attempts=3))
            alice = await org.person("alice")
            laptop = await org.person("carol")  # a bystander: her device is untouched
            bob = await org.person("bob")
            async with bob.online():
                assert [a for a, _ in await bob.devices("alice")] == [alice.address]
            task, stop = await listening(bob)  # Bob holds Alice's entry, and listens
            alice.lock()
            for n in range(2):
                with pytest.raises(WrongPasscode):
                    await alice.unlock(f"wrong guess {n}")
            with pytest.raises(DeviceWiped):
                await alice.unlock("wrong guess 2")
            assert not (alice.store.home / "device.key").exists()

            await eventually(lambda: org.device_view(alice).state == "wiped")
            await eventually(lambda: not bob._directory.remembers("alice"))  # told at once
            assert org.remote_secret_row(alice) is None
            assert org.device_view(laptop).state == "active"
            erased = [
                e for e in org.server.audit.entries(limit=1000) if e.action == "device.erased"
            ]
            assert [(e.actor, e.target, e.details["failed_attempts"]) for e in erased] == [
                (f"device:{short_address(alice.address)}", "alice", 3)
            ]
            await eventually(lambda: org.server.store.pending_revocations() == [])
            stop.set()
            await task
            async with bob.online():
                assert await bob.devices("alice") == []  # nobody seals to it any more

    run(scenario())
