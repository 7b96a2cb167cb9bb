"""Security review of device management (DESIGN §8, THREAT-MODEL "Stolen or copied device",
docs/protocol/MANAGEMENT.md): attacks on commands, policies, the remote secret and the
wrong-passcode counter.

The first group are regressions: each failed before its fix (low-order reply keys ending the
server's relay link, a shorter grace or auto-lock not applying at once, a wiped device the relay
kept admitting, a session from the grace cache that never auto-locked, an unlock racing a lock
command, an active device told to erase itself over a lost server row). The others show an
attack that is defeated. Same harness as test_device_management.py: a real
relay process, an in-process EnterpriseServer with an injected clock, in-process devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from sealwire.device import Device
from sealwire.device.store import _Grace, _grace_path, _session_paths
from sealwire.errors import Conflict, DeviceLocked, DeviceWiped, SealwireError, WrongPasscode
from sealwire.protocol.activation import UnlockAnswer, UnlockRequest, decode_message, encode_message
from sealwire.protocol.directory import SignedPolicy
from sealwire.protocol.envelope import PayloadType
from sealwire.protocol.management import (
    Command,
    CommandKind,
    CommandResult,
    CommandStatus,
    FetchRemoteSecret,
    encode_management_message,
)
from sealwire.protocol.suite import XWingPrivateKey
from sealwire.server import EnterpriseServer
from sealwire.server.administration import PolicySettings
from sealwire.server.store import managed
from sealwire.transport import RelayConnection, SessionEnded

from ..relay.harness import RelayProcess
from .management_harness import ADMIN, PASSCODE, eventually, listening, organisation, run

pytestmark = pytest.mark.usefixtures("runtime_directory")


class RecordingConn:
    """Stands in for the server's relay link when a handler is called directly."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.activations: list[tuple[bytes, bytes]] = []

    async def send(self, envelope: bytes) -> None:
        self.sent.append(envelope)

    async def send_activation(self, session: bytes, payload: bytes, server: Any = None) -> None:
        self.activations.append((session, payload))

    async def revoke(self, addresses: Any) -> None:
        return None

    def ack(self, ids: Any) -> None:
        return None


def fetch_request(device: Device, reply_key: bytes | None = None) -> bytes:
    """A sealed CONTROL envelope from ``device`` to its server carrying FetchRemoteSecret."""
    if reply_key is None:
        reply_key = XWingPrivateKey.generate(device._random).public_key.raw
    request = FetchRemoteSecret(
        request_id=device._random(16), reply_prekey_id=7, reply_key=reply_key
    )
    return device._profile.seal(
        device._profile.server_peer, PayloadType.CONTROL, encode_management_message(request)
    )


def low_order_reply_key() -> bytes:
    """A well-formed X-Wing public key whose X25519 half is the all-zero (low-order) point:
    it parses, but sealing to it fails with a plain ``ValueError``."""
    good = XWingPrivateKey(bytes(range(32))).public_key.raw
    return good[:1184] + bytes(32)


def command_for(address: bytes, kind: CommandKind, **kw: Any) -> Command:
    return Command(
        command_id=bytes(16 * [kind.value]), device=address, kind=kind, issued_at=0, **kw
    )


async def unlock_via_server(device: Device) -> None:
    """Lock and unlock without the grace cache: the server must answer."""
    device.lock()
    device.store.forget_remote_secret()
    await device.unlock(PASSCODE)


# =================================================================================================
# Regressions from the review: each failed before its fix.
# =================================================================================================


def link_alive(server: EnterpriseServer) -> bool:
    """The server's relay-link task still runs (it reconnects by itself while it does)."""
    task = server.link.task
    return task is not None and not task.done()


def test_a_low_order_reply_key_in_an_unlock_request_keeps_the_server_link(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            mallory = await org.person("mallory")
            bob = await org.person("bob")
            # Even a deprovisioned device (refused by the relay, a stolen copy with its
            # passcode) can use the activation channel.
            await org.admin.disable_user(ADMIN, "mallory")
            conn = await RelayConnection.open_for_activation(relay.url)
            try:
                request = UnlockRequest(envelope=fetch_request(mallory, low_order_reply_key()))
                await conn.send_activation(
                    b"\x01" * 16, encode_message(request), mallory.server_address
                )
                await asyncio.sleep(1.5)
            finally:
                await conn.close()
            # One bad request must not end the server's relay link ...
            assert link_alive(org.server), repr(org.server.link.task)
            # ... and it goes on answering other devices.
            await asyncio.wait_for(unlock_via_server(bob), 10)

    run(scenario())


def test_a_low_order_reply_key_in_the_delivery_stream_keeps_the_server_link(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            mallory = await org.person("mallory")
            bob = await org.person("bob")
            async with mallory.online():
                await mallory._link.send_envelope(fetch_request(mallory, low_order_reply_key()))
                await asyncio.sleep(1.5)
            assert link_alive(org.server), repr(org.server.link.task)
            async with bob.online():
                assert await asyncio.wait_for(bob.devices("bob"), 5)

    run(scenario())


def test_a_shorter_offline_grace_applies_to_the_secret_already_cached(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")  # default policy: 72 h grace, cached now
            await org.admin.put_policy(ADMIN, "default", PolicySettings(offline_grace_s=60))
            async with phone.online():
                pass
            assert phone.policy.offline_grace_s == 60  # applied and reported
            phone.lock()
            # Lost while locked: the administrator wipes it (the server deletes its secret).
            await org.admin.command(ADMIN, phone.address.hex(), "wipe")
            assert org.remote_secret_row(phone) is None
            org.clock.offset += 120_000  # twice the grace the policy now allows
            with pytest.raises(DeviceWiped):
                await phone.unlock(PASSCODE)

    run(scenario())


def test_a_wiped_device_that_never_acknowledges_is_refused_by_the_relay(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")
            identity, chain = phone._profile.identity, phone._profile.chain
            # The phone is lost (offline); the administrator wipes it.
            await org.admin.command(ADMIN, phone.address.hex(), "wipe")
            assert org.admin.device(phone.address.hex()).state == "wiped"
            refused = None
            for _ in range(30):  # the relay refuses it once the device's moment has passed
                try:
                    conn = await RelayConnection.open(relay.url, identity=identity, chain=chain)
                except SessionEnded as exc:
                    refused = exc
                    break
                await conn.close()
                await asyncio.sleep(0.3)
            assert refused is not None and refused.code == "revoked"

    run(scenario())


def test_a_shorter_auto_lock_takes_effect_while_listening(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")  # default policy: auto-lock after 900 s
            task, stop = await listening(phone)
            try:
                await org.admin.put_policy(ADMIN, "default", PolicySettings(auto_lock_s=60))
                await eventually(lambda: phone._profile.policy.auto_lock_s == 60)
                org.clock.offset += 120_000  # idle for twice the new limit
                with pytest.raises(DeviceLocked):
                    await asyncio.wait_for(asyncio.shield(task), 3)
                assert phone.locked
            finally:
                stop.set()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 5)

    run(scenario())


def test_an_active_device_whose_secret_row_is_missing_is_not_told_to_erase_itself(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")
            # The server's row lost its secret (bad restore, manual repair...); the device is
            # still active in every other respect.
            with org.server.store.db.transaction() as conn:
                conn.execute(
                    managed.update()
                    .where(managed.c.address == phone.address)
                    .values(remote_secret=None)
                )
            assert org.admin.device(phone.address.hex()).state == "active"
            with contextlib.suppress(SealwireError):
                await unlock_via_server(phone)
            assert (phone.store.home / "device.key").exists(), "an active device was erased"

    run(scenario())


# =================================================================================================
# Attacks that are defeated.
# =================================================================================================


def test_commands_for_another_device_forged_or_from_another_organisation_are_ignored(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with (
            organisation(tmp_path / "a", relay) as org,
            organisation(tmp_path / "b", relay) as other,
        ):
            alice = await org.person("alice")
            bob = await org.person("bob")
            async with bob.online():
                # Signed by our server, for Alice: replayed to Bob.
                for_alice = org.server.authority.sign_command(
                    command_for(alice.address, CommandKind.WIPE)
                )
                # For Bob, signature forged (one bit flipped).
                good = org.server.authority.sign_command(command_for(bob.address, CommandKind.WIPE))
                forged = dataclasses.replace(
                    good, signature=bytes([good.signature[0] ^ 1]) + good.signature[1:]
                )
                # For Bob, validly signed by another organisation's server.
                foreign = other.server.authority.sign_command(
                    command_for(bob.address, CommandKind.WIPE)
                )
                # A lock with a new passcode, by the other server.
                foreign_lock = other.server.authority.sign_command(
                    command_for(bob.address, CommandKind.LOCK, new_passcode="attacker 123")
                )
                await bob._management.run_commands([for_alice, forged, foreign, foreign_lock])
                assert bob._link.end_reason is None
            assert not bob.locked
            assert (bob.store.home / "device.key").exists()
            for signed in (for_alice, forged, foreign, foreign_lock):
                assert not bob.store.command_done(signed.command.command_id)
            bob.lock()
            with pytest.raises(WrongPasscode):
                await bob.unlock("attacker 123")
            await bob.unlock(PASSCODE)

    run(scenario())


def test_an_older_or_foreign_policy_is_not_applied(tmp_path: Path, relay: RelayProcess) -> None:
    async def scenario() -> None:
        async with (
            organisation(tmp_path / "a", relay) as org,
            organisation(tmp_path / "b", relay) as other,
        ):
            phone = await org.person("alice")
            await org.admin.put_policy(ADMIN, "default", PolicySettings(max_failed_attempts=3))
            async with phone.online():
                pass
            current = phone.policy
            assert current.max_failed_attempts == 3
            # An older policy (issued before the one applied), signed by our own server: a
            # replay of an earlier push.
            older = dataclasses.replace(
                current, issued_at=current.issued_at - 10, max_failed_attempts=10, version=9
            )
            await phone._management.policy_pushed(
                SignedPolicy.sign(older, org.server.authority.identity)
            )
            # A newer one from another organisation's server.
            newer = dataclasses.replace(
                current, issued_at=current.issued_at + 10, max_failed_attempts=10, version=9
            )
            await phone._management.policy_pushed(
                SignedPolicy.sign(newer, other.server.authority.identity)
            )
            assert phone.policy == current
            assert phone.store._attempts().limit == 3

    run(scenario())


def test_unlock_requests_replayed_foreign_or_from_wiped_devices(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with (
            organisation(tmp_path / "a", relay) as org,
            organisation(tmp_path / "b", relay) as other,
        ):
            alice = await org.person("alice")
            eve = await other.person("eve")
            server = org.server
            # An unlock request is answered once; the same envelope again is dropped.
            request = UnlockRequest(envelope=fetch_request(alice))
            first = server.dispatch.handle_unlock(request)
            assert first is not None and isinstance(decode_message(first), UnlockAnswer)
            assert server.dispatch.handle_unlock(request) is None
            # Another organisation's device, sealed to our server: dropped, both through the
            # activation channel and through the delivery stream.
            foreign = dataclasses.replace(alice._profile.server_peer)
            envelope = eve._profile.seal(
                foreign,
                PayloadType.CONTROL,
                encode_management_message(
                    FetchRemoteSecret(
                        request_id=bytes(16),
                        reply_prekey_id=1,
                        reply_key=XWingPrivateKey.generate(os.urandom).public_key.raw,
                    )
                ),
            )
            assert server.dispatch.handle_unlock(UnlockRequest(envelope=envelope)) is None
            recorder = RecordingConn()
            await server.dispatch.handle_envelope(recorder, envelope)
            assert recorder.sent == []
            # An invalid ML-KEM reply key: dropped, the server goes on.
            bad = b"\xff" * 1184 + XWingPrivateKey.generate(os.urandom).public_key.raw[1184:]
            assert (
                server.dispatch.handle_unlock(UnlockRequest(envelope=fetch_request(alice, bad)))
                is None
            )
            # A wiped device asking for its secret is told to erase itself.
            await org.admin.command(ADMIN, alice.address.hex(), "wipe")
            with pytest.raises(DeviceWiped):
                await unlock_via_server(alice)
            assert not (alice.store.home / "device.key").exists()

    run(scenario())


def test_a_command_result_for_another_devices_command_is_ignored(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            alice = await org.person("alice")
            mallory = await org.person("mallory")
            command = await org.admin.command(ADMIN, alice.address.hex(), "wipe")
            command_id = bytes.fromhex(command.command_id)
            recorder = RecordingConn()
            for _ in range(2):  # also the same result again
                result = CommandResult(command_id=command_id, status=CommandStatus.DONE, detail="")
                envelope = mallory._profile.seal(
                    mallory._profile.server_peer,
                    PayloadType.COMMAND,
                    encode_management_message(result),
                )
                await org.server.dispatch.handle_envelope(recorder, envelope)
            assert org.admin.command_status(command.command_id).state == "queued"
            assert mallory.address not in org.server.store.pending_revocations()

    run(scenario())


def test_commands_for_a_wiped_device_are_refused_and_weak_lock_passcodes_too(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            await org.admin.put_policy(
                ADMIN, "default", PolicySettings(passcode_min_length=12, passcode_classes=3)
            )
            phone = await org.person("alice", passcode="Correct horse 42")
            with pytest.raises(ValueError, match="does not meet"):
                await org.admin.command(
                    ADMIN, phone.address.hex(), "lock", new_passcode="simple passcode"
                )
            with pytest.raises(ValueError, match="does not meet"):
                await org.admin.command(ADMIN, phone.address.hex(), "lock", new_passcode="Ab1!")
            assert org.admin.commands(phone.address.hex()) == []
            await org.admin.command(ADMIN, phone.address.hex(), "wipe")
            for kind in ("lock", "renew-keys", "wipe"):
                with pytest.raises(Conflict, match="wiped"):
                    await org.admin.command(ADMIN, phone.address.hex(), kind)

    run(scenario())


def test_a_tampered_grace_cache_falls_back_to_the_server(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")
            cache = _grace_path(phone.store.home)
            assert cache is not None and cache.exists()
            real = _Grace.decode(cache.read_bytes(), max_size=128)
            tampered = [
                _Grace(secret=bytes(32), until=real.until).encode(),  # wrong secret
                cache.read_bytes()[:10],  # truncated
                b"\xa0" * (4 * 1024 * 1024),  # huge
            ]
            for content in tampered:
                phone.lock()
                cache.write_bytes(content)
                await phone.unlock(PASSCODE)  # asks the server instead
                assert not phone.locked
                again = _Grace.decode(cache.read_bytes(), max_size=128)
                assert again.secret == real.secret  # the cache is written afresh
            # With the server away, a wrong cached secret does not open the store (and
            # erases nothing).
            await org.server.stop()
            phone.lock()
            cache.write_bytes(_Grace(secret=bytes(32), until=real.until).encode())
            with pytest.raises(SealwireError):
                await phone.unlock(PASSCODE)
            assert phone.locked and (phone.store.home / "device.key").exists()
            org.server = EnterpriseServer.open(org.server.config, clock=org.clock)

    run(scenario())


def test_a_tampered_session_file_does_not_unlock(tmp_path: Path, relay: RelayProcess) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")
            session = _session_paths(phone.store.home)[0]
            assert session.exists()
            session.write_bytes(b"\x00" * 100)
            reopened = Device.open(phone.store.home, clock=org.clock)
            org.devices.append(reopened)
            assert reopened.locked
            await reopened.unlock(PASSCODE)
            assert not reopened.locked

    run(scenario())


def test_note_deleting_the_attempts_file_resets_the_wrong_passcode_count(
    tmp_path: Path, relay: RelayProcess
) -> None:
    """Expected (THREAT-MODEL: the counter is the device software's): whoever can write the
    home resets the count; against a copy the barriers are Argon2id and the remote secret."""

    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            await org.admin.put_policy(ADMIN, "default", PolicySettings(max_failed_attempts=3))
            phone = await org.person("alice")
            phone.lock()
            for _ in range(2):
                with pytest.raises(WrongPasscode):
                    await phone.unlock("wrong passcode")
            (phone.store.home / "attempts").unlink()
            with pytest.raises(WrongPasscode, match="9 attempts left"):  # limit back to 10
                await phone.unlock("wrong passcode")
            assert (phone.store.home / "device.key").exists()

    run(scenario())


def test_revocations_made_while_the_relay_link_is_down_are_sent_when_it_returns(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")
            identity, chain = phone._profile.identity, phone._profile.chain
            config = org.server.config
            await org.server.stop()
            org.server = EnterpriseServer.open(config, clock=org.clock)  # not started: no link
            await org.admin.disable_user(ADMIN, "alice")
            assert phone.address in org.server.store.pending_revocations()
            conn = await RelayConnection.open(relay.url, identity=identity, chain=chain)
            await conn.close()  # the relay does not know yet
            await org.server.start()
            await org.server.wait_connected(10)
            await eventually(lambda: not org.server.store.pending_revocations())
            with pytest.raises(SessionEnded) as refused:
                await RelayConnection.open(relay.url, identity=identity, chain=chain)
            assert refused.value.code == "revoked"
            with pytest.raises(DeviceWiped):
                await unlock_via_server(phone)

    run(scenario())


def test_no_secret_or_passcode_is_logged(
    tmp_path: Path, relay: RelayProcess, caplog: pytest.LogCaptureFixture
) -> None:
    new_passcode = "Helpdesk-set 4242"

    async def scenario() -> list[bytes]:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")
            cache = _grace_path(phone.store.home)
            assert cache is not None
            secret = _Grace.decode(cache.read_bytes(), max_size=128).secret
            with contextlib.suppress(WrongPasscode):
                await phone.unlock("wrong guess 1")
            task, _ = await listening(phone)
            await org.admin.command(ADMIN, phone.address.hex(), "lock", new_passcode=new_passcode)
            with pytest.raises(DeviceLocked):
                await asyncio.wait_for(task, 5)
            phone.store.forget_remote_secret()
            await phone.unlock(new_passcode)  # through the server
            boot, data = phone.store._boot, phone.store._key
            assert boot is not None and data is not None
            await org.admin.disable_user(ADMIN, "alice")
            with contextlib.suppress(SealwireError):
                await unlock_via_server(phone)
            audit = "\n".join(repr(entry) for entry in org.server.audit.entries())
            assert "command.lock" in audit and new_passcode not in audit
            return [secret, boot, data]

    with caplog.at_level(logging.DEBUG):
        keys = run(scenario())
    logged = []
    for record in caplog.records:
        logged.append(record.getMessage())
        logged.extend(repr(value) for value in record.__dict__.values())
    text = "\n".join(logged)
    names = {record.name for record in caplog.records}
    assert any(name.startswith("sealwire.server.") for name in names)
    assert any(name.startswith("sealwire.device.") for name in names)
    for needle in (PASSCODE, new_passcode, "wrong guess 1"):
        assert needle not in text
    for key in keys:
        for form in (key.hex(), repr(key), key.hex().upper()):
            assert form not in text


def test_a_session_opened_from_the_grace_cache_still_auto_locks(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            await org.admin.put_policy(ADMIN, "default", PolicySettings(auto_lock_s=60))
            phone = await org.person("alice")
            home = phone.store.home
            phone.lock()
            phone.close()
            # `sealwire device unlock` in one process (the secret comes from the grace cache),
            # another command later in another process.
            first = Device.open(home, clock=org.clock)
            await first.unlock(PASSCODE)
            assert first.policy.auto_lock_s == 60
            first.close()
            org.clock.offset += 120_000  # idle twice as long as the policy allows
            later = Device.open(home, clock=org.clock)
            org.devices.append(later)
            assert later.locked

    run(scenario())


def test_a_session_opened_through_the_server_auto_locks(
    tmp_path: Path, relay: RelayProcess
) -> None:
    """The same flow when the secret comes from the server (its answer carries the policy)."""

    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            await org.admin.put_policy(ADMIN, "default", PolicySettings(auto_lock_s=60))
            phone = await org.person("alice")
            home = phone.store.home
            phone.lock()
            phone.store.forget_remote_secret()
            phone.close()
            first = Device.open(home, clock=org.clock)
            await first.unlock(PASSCODE)
            first.close()
            org.clock.offset += 120_000
            later = Device.open(home, clock=org.clock)
            org.devices.append(later)
            assert later.locked

    run(scenario())


def test_an_unlock_racing_a_lock_command_does_not_leave_the_device_unlocked(
    tmp_path: Path, relay: RelayProcess
) -> None:
    async def scenario() -> None:
        async with organisation(tmp_path, relay) as org:
            phone = await org.person("alice")
            home = phone.store.home
            task, _ = await listening(phone)
            # A second process (say `sealwire device unlock` past the grace) has checked the
            # passcode and is waiting for the server's answer ...
            other = Device.open(home, clock=org.clock)
            org.devices.append(other)
            other.store._key = other.store._boot = None  # it has not unlocked yet
            other.store.forget_remote_secret()
            entered, release = asyncio.Event(), asyncio.Event()
            fetch = other._vault._fetch_remote_secret

            async def slow_fetch() -> bytes:
                entered.set()
                await release.wait()
                return await fetch()

            other._vault._fetch_remote_secret = slow_fetch  # type: ignore[method-assign]
            unlocking = asyncio.create_task(other.unlock(PASSCODE))
            await asyncio.wait_for(entered.wait(), 10)
            # ... when the administrator locks the device with a new passcode.
            command = await org.admin.command(
                ADMIN, phone.address.hex(), "lock", new_passcode="helpdesk-set 99"
            )
            with pytest.raises(DeviceLocked):
                await asyncio.wait_for(task, 5)
            await eventually(lambda: org.admin.command_status(command.command_id).state == "done")
            release.set()
            with contextlib.suppress(SealwireError):
                await unlocking
            # The lock the administrator saw done must hold: no session is left open.
            assert not any(path.exists() for path in _session_paths(home))
            assert Device.open(home, clock=org.clock).locked

    run(scenario())
