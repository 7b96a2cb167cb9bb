"""Device management end to end (issue 5, DESIGN §8): a real relay process, an enterprise server
and devices in this process (so that one injected clock drives the server and the devices),
administered through :class:`~sealwire.server.administration.Administration`, the layer under
the admin API.

IT policy round trip, crypto-backed wipe of a lost device, wrong passcodes, lock and wipe
commands, deprovisioning while connected.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from sealwire.device import Device
from sealwire.device.store import _grace_path, _session_paths
from sealwire.errors import (
    AccessDenied,
    ConfigError,
    DeviceLocked,
    DeviceWiped,
    TransportError,
    WrongPasscode,
)
from sealwire.server.administration import PolicySettings
from sealwire.transport import RelayConnection, SessionEnded

from ..relay.harness import RelayProcess
from .management_harness import ADMIN, PASSCODE, eventually, listening, organisation, run

pytestmark = pytest.mark.usefixtures("runtime_directory")


# --- IT policy ---------------------------------------------------------------------------------


def test_policy_round_trip(tmp_path: Path, relay: RelayProcess, database_url: str) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay, database_url) as org:
            phone = await org.person("alice")
            async with phone.online():
                pass
            view = org.device_view(phone)
            assert view.policy == "default v1" and view.compliant is True

            # A stricter policy for Alice's group while her device is offline: three classes.
            await org.admin.put_policy(
                ADMIN,
                "strict",
                PolicySettings(passcode_min_length=12, passcode_classes=3, retention_days=30),
            )
            await org.admin.create_group(ADMIN, "finance", policy="strict")
            await org.admin.add_member(ADMIN, "finance", "alice")
            assert org.admin.user("alice").policy == "strict"

            # Next connection: applied and reported, and her passcode is too simple for it.
            async with phone.online():
                pass
            assert phone.policy.name == "strict" and phone.policy.retention_days == 30
            view = org.device_view(phone)
            assert view.policy == "strict v1"
            assert view.compliant is False and view.issues == ("passcode-too-simple",)

            # She sets a passcode that complies; the server hears it at once.
            with pytest.raises(ConfigError, match="at least 12 characters"):
                async with phone.online():
                    await phone.change_passcode("short horse")
            async with phone.online():
                await phone.change_passcode("Correct horse 42")
            assert org.device_view(phone).compliant is True

            # A change while she is connected is pushed, applied and reported without a new
            # connection; the new passcode opens the device.
            task, stop = await listening(phone)
            await org.admin.put_policy(
                ADMIN,
                "strict",
                PolicySettings(passcode_min_length=12, passcode_classes=3, export_allowed=False),
            )
            await eventually(lambda: org.device_view(phone).policy == "strict v2")
            assert org.device_view(phone).compliant is True
            assert phone.policy.export_allowed is False
            with pytest.raises(AccessDenied, match="does not allow exporting"):
                phone.export_messages()
            stop.set()
            await task
            phone.lock()
            with pytest.raises(WrongPasscode):
                await phone.unlock(PASSCODE)
            await phone.unlock("Correct horse 42")

    run(scenario())


def test_policy_changes_are_audited(tmp_path: Path, relay: RelayProcess) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            await org.admin.put_policy(ADMIN, "strict", PolicySettings(passcode_classes=2))
            await org.admin.create_group(ADMIN, "sec", policy="strict")
            actions = [(e.actor, e.action, e.target) for e in org.server.audit.entries()]
            assert (ADMIN, "policy.put", "strict") in actions
            assert (ADMIN, "group.create", "sec") in actions
            assert org.server.audit.verify().ok

    run(scenario())


# --- crypto-backed wipe ---------------------------------------------------------------------


def copy_device(device: Device, to: Path) -> Path:
    """What a thief takes: the home directory, and (to show the grace) the runtime cache."""
    shutil.copytree(device.store.home, to)
    cache = _grace_path(device.store.home)
    assert cache is not None and cache.exists()
    target = _grace_path(to)
    assert target is not None
    shutil.copy(cache, target)
    return to


def test_a_copy_of_a_wiped_device_cannot_be_unlocked_after_the_grace(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            await org.admin.put_policy(
                ADMIN, "default", PolicySettings(offline_grace_s=60, auto_lock_s=0)
            )
            phone = await org.person("alice")
            async with phone.online():
                pass
            assert phone.policy.offline_grace_s == 60
            phone.lock()
            await phone.unlock(PASSCODE)  # refreshes the cached secret under the new policy
            stolen = copy_device(phone, tmp_path / "stolen")

            # The administrator wipes the phone; it is connected and erases itself.
            task, _ = await listening(phone)
            command = await org.admin.command(ADMIN, phone.address.hex()[:16], "wipe")
            with pytest.raises(DeviceWiped):
                await asyncio.wait_for(task, 10)
            assert not (phone.store.home / "device.key").exists()
            assert not (phone.store.home / "device.db").exists()
            done = await eventually(
                lambda: org.admin.command_status(command.command_id).state == "done"
            )
            assert done
            assert org.device_view(phone).state == "wiped"
            assert org.remote_secret_row(phone) is None  # the server's half of the key is gone

            # Within the grace, the copy still opens with the right passcode (that is what the
            # grace is: the device works offline for that long) ...
            copy = Device.open(stolen, clock=org.clock)
            await copy.unlock(PASSCODE)
            assert copy.store.messages() == []
            copy.lock()
            # ... once it has passed, the right passcode is not enough: the server refuses and
            # the copy erases itself.
            org.clock.offset += 61_000
            with pytest.raises(DeviceWiped, match="wiped"):
                await copy.unlock(PASSCODE)
            assert not (stolen / "device.key").exists()

    run(scenario())


def test_after_the_grace_a_locked_device_needs_its_server(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            await org.admin.put_policy(ADMIN, "default", PolicySettings(offline_grace_s=60))
            phone = await org.person("alice")
            async with phone.online():
                pass
            phone.lock()
            await phone.unlock(PASSCODE)
            phone.lock()
            # The server is away: within the grace the device still unlocks ...
            await org.server.stop()
            await phone.unlock(PASSCODE)
            phone.lock()
            # ... after it, even the right passcode does not open it (nothing is erased).
            org.clock.offset += 61_000
            with pytest.raises(TransportError, match="offline grace has ended"):
                await phone.unlock(PASSCODE)
            assert phone.locked and (phone.store.home / "device.key").exists()

    run(scenario())


# --- passcodes and lock -------------------------------------------------------------------


def test_too_many_wrong_passcodes_wipe_the_device(tmp_path: Path, relay: RelayProcess) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            await org.admin.put_policy(ADMIN, "default", PolicySettings(max_failed_attempts=3))
            phone = await org.person("alice")
            async with phone.online():
                pass
            assert phone.policy.max_failed_attempts == 3
            phone.lock()
            # Two wrong, then the right one: the count starts again.
            for left in (2, 1):
                with pytest.raises(WrongPasscode, match=f"{left} attempt"):
                    await phone.unlock("wrong passcode")
            await phone.unlock(PASSCODE)
            phone.lock()
            for _ in range(2):
                with pytest.raises(WrongPasscode):
                    await phone.unlock("wrong passcode")
            with pytest.raises(DeviceWiped, match="3 wrong passcodes"):
                await phone.unlock("wrong passcode")
            assert not (phone.store.home / "device.key").exists()
            assert not (phone.store.home / "device.db").exists()
            for path in _session_paths(phone.store.home):
                assert not path.exists()
            with pytest.raises(ConfigError, match="no activated device"):
                Device.open(phone.store.home)

    run(scenario())


def test_a_lock_command_locks_a_connected_device_within_a_second(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")
            task, _ = await listening(phone)
            started = time.monotonic()
            command = await org.admin.command(
                ADMIN, phone.address.hex(), "lock", new_passcode="helpdesk-set 99"
            )
            with pytest.raises(DeviceLocked, match="locked this device"):
                await asyncio.wait_for(task, 10)
            # Generous for a busy machine; the latency itself (8.6 ms on an idle one, goal < 1 s)
            # is measured by bench/management.py.
            assert time.monotonic() - started < 10.0
            assert phone.locked
            assert not any(path.exists() for path in _session_paths(phone.store.home))
            await eventually(lambda: org.admin.command_status(command.command_id).state == "done")
            # The passcode the helpdesk set opens it; the old one does not.
            with pytest.raises(WrongPasscode):
                await phone.unlock(PASSCODE)
            await phone.unlock("helpdesk-set 99")
            # The same command again (say, redelivered) does not lock it again.
            async with phone.online():
                await phone._management.run_commands(
                    [
                        org.server.authority.sign_command(
                            _command(phone.address, bytes.fromhex(command.command_id))
                        )
                    ]
                )
            assert not phone.locked
            kinds = [e.action for e in org.server.audit.entries()]
            assert "command.lock" in kinds and "command.result" in kinds

    run(scenario())


def _command(address: bytes, command_id: bytes) -> Any:
    from sealwire.protocol.management import Command, CommandKind

    return Command(command_id=command_id, device=address, kind=CommandKind.LOCK, issued_at=0)


def test_a_command_for_an_offline_device_waits_for_it(tmp_path: Path, relay: RelayProcess) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")
            command = await org.admin.command(ADMIN, phone.address.hex(), "renew-keys")
            assert org.admin.command_status(command.command_id).state == "queued"
            before = {prekey_id for prekey_id, _, _ in phone.store.prekeys()}
            async with phone.online():
                pass
            await eventually(lambda: org.admin.command_status(command.command_id).state == "done")
            after = {pid for pid, _, retire_at in phone.store.prekeys() if not retire_at}
            assert after and not after & before  # a new prekey; the old one retires
            assert org.admin.commands(phone.address.hex())[0].detail == "keys renewed"

    run(scenario())


# --- deprovisioning ------------------------------------------------------------------------


def test_deprovisioning_a_connected_person(
    tmp_path: Path, relay: RelayProcess, database_url: str
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay, database_url) as org:
            alice = await org.person("alice")
            bob = await org.person("bob")
            carol = await org.person("carol")
            async with bob.online():
                await bob.send_message("alice", "hi alice")
            # Alice writes to Carol, who has never heard of her and is offline.
            async with alice.online():
                await alice.send_message("carol", "hello carol")

            identity, chain = alice._profile.identity, alice._profile.chain
            task, _ = await listening(alice)
            started = time.monotonic()
            await org.admin.disable_user(ADMIN, "alice")
            # Her connection drops at once. The device locks; if the wipe queued for it
            # arrived first, it has erased itself already.
            with pytest.raises((TransportError, DeviceWiped)) as ended:
                await asyncio.wait_for(task, 5)
            assert time.monotonic() - started < 2.0
            assert isinstance(ended.value, DeviceWiped) or "disabled by your" in str(ended.value)
            assert alice.locked
            # Her device can no longer send: the relay refuses it.
            with pytest.raises(SessionEnded) as refused:
                await RelayConnection.open(relay.url, identity=identity, chain=chain)
            assert refused.value.code == "revoked"
            # Unlocking asks the server, which answers with the queued wipe.
            with pytest.raises(DeviceWiped):
                await alice.unlock(PASSCODE)
            assert not (alice.store.home / "device.key").exists()
            assert not (alice.store.home / "device.db").exists()
            # ... other people's directory answers no longer include her ...
            async with bob.online():
                with pytest.raises(ConfigError, match="not a person"):
                    await bob.devices("alice")
                with pytest.raises(ConfigError, match="not a person"):
                    await bob.send_message("alice", "are you there?")
            # ... and what she sent cannot reach a new peer: Carol cannot check the sender.
            got = await carol.sync()
            assert [m.text for m in got] == []
            view = org.admin.user("alice")
            assert view.state == "disabled" and view.devices == 0
            assert org.device_view(alice).state == "revoked"
            assert [c.kind for c in org.admin.commands(alice.address.hex())] == ["wipe"]
            # Re-enabling needs a new activation: the old device stays refused.
            org.admin.enable_user(ADMIN, "alice")
            with pytest.raises(SessionEnded):
                await RelayConnection.open(relay.url, identity=identity, chain=chain)
            ticket = await org.admin.issue_ticket(ADMIN, "alice")
            laptop = await Device.activate(
                tmp_path / "alice-laptop", ticket.ticket, ticket.password, PASSCODE, clock=org.clock
            )
            org.devices.append(laptop)
            async with bob.online():
                assert [a for a, _ in await bob.devices("alice")] == [laptop.address]

    run(scenario())
