"""Activating a new device: a ticket and its one-time password, SPAKE2 with the server through
the relay's activation channel (DESIGN §7), then a new store with what the server sent.

The new store is created only once the server has answered and its answer checks out: a
failed activation leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sealwire._argon2 import in_thread
from sealwire.errors import (
    ActivationFailed,
    ConfigError,
    CryptoError,
    DecodeError,
    TransportError,
)
from sealwire.protocol.activation import (
    ActivationAborted,
    ActivationCompleted,
    ActivationRefused,
    DeviceActivation,
    RefusalCode,
    ServerAnswer,
    ServerNotConfirmed,
    normalise_password,
    ticket_from_text,
)
from sealwire.protocol.directory import ActivationDirectory, SignedPolicy, verify_prekey
from sealwire.protocol.identity import Certificate, ChainVerifier, Role, sign_prekey
from sealwire.protocol.suite import SigningKey, XWingPrivateKey
from sealwire.transport import Connector

from .keys import PREKEY_LIFETIME_FACTOR
from .profile import join_chain
from .store import MIN_PASSCODE, DeviceStore
from .vault import passcode_facts

__all__ = ["create_activated_store"]


async def create_activated_store(
    home: Path,
    ticket_text: str,
    password: str,
    passcode: str,
    *,
    connector: Connector,
    clock: Callable[[], int],
    random: Callable[[int], bytes],
    timeout: float,
) -> DeviceStore:
    """Activate with the server and create the device's store in ``home``.

    Returns:
        the new store, unlocked.

    Raises:
        ActivationFailed: wrong password, burned or expired ticket, refusal or tampering
            (the message says which, as far as the device can know).
        TransportError: the relay or the server could not be reached.
        ConfigError: bad ticket, short passcode, or ``home`` holds a device already.
    """
    if DeviceStore.exists(home):
        raise ConfigError(f"{home} holds an activated device already")
    if len(passcode) < MIN_PASSCODE:
        raise ConfigError(f"a passcode has at least {MIN_PASSCODE} characters")
    try:
        ticket = ticket_from_text(ticket_text)
    except DecodeError as exc:
        raise ConfigError(f"that is not a valid activation ticket: {exc.reason}") from None
    identity = SigningKey.generate(random)
    prekey = XWingPrivateKey.generate(random)
    now_s = clock() // 1000
    prekey_id = int.from_bytes(random(4), "big")
    signed = sign_prekey(
        identity,
        prekey_id=prekey_id,
        public_key=prekey.public_key,
        not_after=now_s + PREKEY_LIFETIME_FACTOR * 7 * 86400,
    )
    run = DeviceActivation(
        ticket,
        normalise_password(password),
        identity=identity,
        signed_prekeys=[signed.encode()],
        random=random,
    )
    await in_thread(run.start)  # Argon2id: off the event loop
    answer = await _exchange(connector, ticket.relay, ticket.server, run, random(16), timeout)
    verifier = ChainVerifier({})
    verifier.add_root(answer.organisation_root_key)
    try:
        leaf = verifier.verify(answer.certificate_chain, now=now_s, role=Role.DEVICE)
        if leaf.body.identity_key != identity.public_key:
            raise ActivationFailed("the server certified another key")
        directory = ActivationDirectory.decode(answer.directory, max_size=10 * 1024)
        server = Certificate.parse(answer.certificate_chain[-1])
        policy = SignedPolicy.decode(answer.policy, max_size=4096).verify(server.body.identity_key)
        verify_prekey(directory.server_prekey, server.body.identity_key, now=now_s)
    except (CryptoError, DecodeError) as exc:
        raise ActivationFailed(f"the server's answer does not check out: {exc}") from None
    if answer.remote_secret is None:
        raise ActivationFailed("the server sent no remote secret: it needs an upgrade")
    store = await in_thread(
        functools.partial(
            DeviceStore.create,
            home,
            passcode,
            answer.remote_secret,
            random=random,
            clock=clock,
            attempt_limit=policy.max_failed_attempts,
        )
    )
    store.put_secret("identity", identity.seed())
    store.put_secret("chain", join_chain(answer.certificate_chain))
    store.put_secret("root", answer.organisation_root_key)
    store.put_secret("directory", answer.directory)
    store.put_secret("policy", policy.encode())
    store.put_secret("passcode", passcode_facts(passcode))
    store.set_policy_limits(
        attempt_limit=policy.max_failed_attempts, auto_lock_s=policy.auto_lock_s
    )
    store.cache_remote_secret(answer.remote_secret, clock() + policy.offline_grace_s * 1000)
    store.add_prekey(prekey_id, prekey.seed(), created_at=now_s)
    return store


async def _exchange(
    connector: Connector,
    relay: str,
    server: bytes,
    run: DeviceActivation,
    session: bytes,
    timeout: float,
) -> ServerAnswer:
    conn = await connector.open_for_activation(relay)
    try:
        for data in run.data_to_send():
            await conn.send_activation(session, data, server)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError("the enterprise server did not answer the activation in time")
            getter = asyncio.ensure_future(conn.activations.get())
            waiters: list[asyncio.Future[Any]] = [getter, conn.ended]
            done, _ = await asyncio.wait(
                waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                if conn.ended.done():
                    why = conn.ended.result()
                    if why.code == "unavailable":
                        raise TransportError(
                            "the enterprise server is not connected to the relay right now; "
                            "try again later"
                        )
                    raise TransportError(f"the relay ended the activation ({why.code})")
                continue
            received = getter.result()
            events = await asyncio.to_thread(run.receive, received.payload)
            for data in run.data_to_send():
                await conn.send_activation(session, data, server)
            for event in events:
                if isinstance(event, ActivationCompleted):
                    return event.answer
                if isinstance(event, ActivationRefused):
                    raise ActivationFailed(_refusal_message(event.code))
                if isinstance(event, ServerNotConfirmed):
                    raise ActivationFailed(
                        "the activation did not confirm: the server could not prove it knows "
                        "the password, so something between you and the server altered the "
                        "exchange; nothing was kept. Try again; if it keeps failing, ask your "
                        "administrator for a new activation password"
                    )
                if isinstance(event, ActivationAborted):
                    raise ActivationFailed(f"the activation was aborted ({event.reason})")
    finally:
        await conn.close()


_REFUSALS = {
    RefusalCode.PASSWORD_REJECTED: (
        "wrong activation password (each wrong try uses one of its attempts; after the "
        "last one it is burned and your administrator must issue a new one)"
    ),
    RefusalCode.UNKNOWN_TICKET: (
        "this activation password is no longer valid: it has expired, was used, was "
        "replaced, or was burned by wrong attempts; ask your administrator for a new one"
    ),
    RefusalCode.NOT_PERMITTED: (
        "the server refused to activate this device (ask your administrator)"
    ),
}


def _refusal_message(code: RefusalCode) -> str:
    return _REFUSALS.get(code, "the activation failed: the server saw a malformed exchange")
