"""What reaches the server from devices (DESIGN §4, §7, §8): each envelope is opened once
(signature, certificate chain, lifetime and the replay check), then routed by its payload
type and message type through one table to the feature module that answers it.

Two ways in: the delivery stream (:meth:`Dispatcher.handle_envelope`) and the relay's
activation channel, which carries activation runs and, for locked devices that cannot read
their queue, unlock requests (:meth:`Dispatcher.activation_channel`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sealwire.errors import DecodeError, InvalidEnvelope, SealwireError
from sealwire.protocol.activation import UnlockAnswer, UnlockRequest, decode_message, encode_message
from sealwire.protocol.codec import decode_value
from sealwire.protocol.directory import (
    REQUEST_ID_SIZE,
    DirectoryQuery,
    PublishPrekeys,
    RenewCertificate,
    ServerRefusal,
    ServerRefusalCode,
    decode_directory_message,
    encode_directory_message,
)
from sealwire.protocol.envelope import (
    DEFAULT_LIFETIME_MS,
    OpenedEnvelope,
    PayloadType,
    open_envelope,
)
from sealwire.protocol.identity import ChainVerifier, Role, short_address
from sealwire.protocol.management import (
    CommandResult,
    DeviceErased,
    DeviceReport,
    FetchRemoteSecret,
    decode_management_message,
)
from sealwire.protocol.session import ActivationReceived
from sealwire.protocol.suite import XWingPrivateKey

from .authority import Authority
from .directory import DirectoryService
from .link import Sender
from .management import Management
from .store import LIVE_DEVICE_STATES, DeviceRecord, DeviceState, ServerStore

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

Handler = Callable[[DeviceRecord, Any], Awaitable[bytes | None]]
"""Answers one decoded message from a device: the envelope to send back, or ``None``."""


@dataclass(frozen=True)
class _Decoder:
    decode: Callable[[bytes], Any]
    states: frozenset[str]
    """The device states whose messages of this payload type are handled."""


_ALL_STATES = frozenset(DeviceState)


class Dispatcher:
    """Opens envelopes sealed to the server and routes them.

    Args:
        address: the server's address.
        prekey: the server's prekey (devices seal to it).
        prekey_id: its id.
        verifier: checks senders' certificate chains up to the organisation's root.
        store: the server's database (replay check, devices).
        authority: seals answers to devices.
        directory: directory queries, prekeys, certificate renewal.
        management: reports, command results, remote secrets.
        activation_step: feeds one activation-run message; returns what to send back.
        entry_changed: called with a person's name when one of their devices is listed.
        clock: Unix milliseconds.
    """

    def __init__(
        self,
        *,
        address: bytes,
        prekey: XWingPrivateKey,
        prekey_id: int,
        verifier: ChainVerifier,
        store: ServerStore,
        authority: Authority,
        directory: DirectoryService,
        management: Management,
        activation_step: Callable[[ActivationReceived], list[bytes]],
        entry_changed: Callable[[str], None],
        clock: Callable[[], int],
    ) -> None:
        self._address = address
        self._prekey = prekey
        self._prekey_id = prekey_id
        self._verifier = verifier
        self._store = store
        self._authority = authority
        self._activation_step = activation_step
        self._entry_changed = entry_changed
        self._clock = clock
        # Devices that were wiped or revoked are still answered on management payloads:
        # that is how they learn they must erase themselves.
        self._decoders: dict[PayloadType, _Decoder] = {
            PayloadType.DIRECTORY: _Decoder(
                decode_directory_message, frozenset({DeviceState.ACTIVE})
            ),
            **{
                payload_type: _Decoder(
                    functools.partial(decode_management_message, payload_type), _ALL_STATES
                )
                for payload_type in (PayloadType.POLICY, PayloadType.COMMAND, PayloadType.CONTROL)
            },
        }
        to_device = self._answer_to_device
        self._routes: dict[type, Handler] = {
            DirectoryQuery: to_device(directory.answer_query),
            PublishPrekeys: to_device(directory.publish_prekeys),
            RenewCertificate: to_device(directory.renew),
            FetchRemoteSecret: management.remote_secret,
            DeviceReport: management.report,
            CommandResult: management.command_result,
            DeviceErased: management.device_erased,
        }
        # Through the activation channel (a locked device, or one the relay cut off).
        self._unlock_routes: dict[type, Callable[[DeviceRecord, Any], bytes | None]] = {
            FetchRemoteSecret: management.remote_secret_envelope,
            CommandResult: management.record_result,
            DeviceErased: management.record_erased,
        }

    def _answer_to_device(self, answer: Callable[[DeviceRecord, Any], bytes]) -> Handler:
        async def handler(device: DeviceRecord, message: Any) -> bytes | None:
            return self._authority.seal_to(device, answer(device, message))

        return handler

    def open(self, data: bytes) -> OpenedEnvelope:
        """Open an envelope sealed to the server, once: a replayed one does not open.

        Raises:
            InvalidEnvelope: it does not open, or it was seen before.
        """
        now = self._clock()
        opened = open_envelope(
            data,
            recipient=self._address,
            prekeys=lambda pid: self._prekey if pid == self._prekey_id else None,
            verifier=self._verifier,
            now_ms=now,
        )
        if not self._store.first_seen(
            opened.message_id, opened.sent_at, horizon=now - DEFAULT_LIFETIME_MS
        ):
            raise InvalidEnvelope
        return opened

    async def handle_envelope(self, sender: Sender, data: bytes) -> None:
        """Open one envelope from the delivery stream, handle it, send the answer (if any)
        through ``sender``."""
        try:
            opened = self.open(data)
        except InvalidEnvelope:
            log.info("dropped an envelope that does not open")
            return
        signer = opened.sender.body
        if signer.role is not Role.DEVICE:
            return
        device = self._store.device(signer.subject)
        if device is not None and device.state == DeviceState.PENDING:
            self._store.confirm_device(device.address)
            device = self._store.device(signer.subject)
            if device is not None:  # listed from now on: caches holding its person go stale
                self._entry_changed(device.username)
        decoder = self._decoders.get(opened.payload_type)
        if device is None or decoder is None or device.state not in decoder.states:
            if device is None or device.state != DeviceState.ACTIVE:
                log.info("envelope from an unknown or disabled device", extra=_dev(signer.subject))
            return
        try:
            message = decoder.decode(opened.body)
        except DecodeError as exc:
            log.info("malformed device message", extra={"reason": exc.reason})
            if device.state in LIVE_DEVICE_STATES:
                await self._refuse(sender, device, opened.body, exc.reason)
            return
        handler = self._routes.get(type(message))
        if handler is None:
            return
        answer = await handler(device, message)
        if answer is not None:
            await sender.send(answer)

    async def _refuse(self, sender: Sender, device: DeviceRecord, body: bytes, reason: str) -> None:
        """Answer a request we cannot carry out with a :class:`ServerRefusal`, so the device
        is told at once rather than waiting in vain (when its request id can be read)."""
        request_id = _request_id_of(body)
        if request_id is None:
            return
        refusal = ServerRefusal(
            request_id=request_id, code=ServerRefusalCode.MALFORMED, reason=reason[:200]
        )
        await sender.send(self._authority.seal_to(device, encode_directory_message(refusal)))

    def handle_unlock(self, request: UnlockRequest) -> bytes | None:
        """A locked device's request (its remote secret, or a result it could not send
        otherwise) through the activation channel: the encoded :class:`UnlockAnswer` to send
        back, or ``None`` (dropped, or nothing to answer)."""
        try:
            opened = self.open(request.envelope)
            message = decode_management_message(opened.payload_type, opened.body)
        except (InvalidEnvelope, DecodeError):
            log.info("dropped an unlock request that does not open")
            return None
        signer = opened.sender.body
        device = self._store.device(signer.subject) if signer.role is Role.DEVICE else None
        route = self._unlock_routes.get(type(message))
        if device is None or route is None:
            return None
        try:
            envelope = route(device, message)
        except SealwireError as exc:  # e.g. a reply key that is not a valid X-Wing key
            log.info("dropped an unlock request", extra={"reason": str(exc)})
            return None
        return None if envelope is None else encode_message(UnlockAnswer(envelope=envelope))

    def activation_channel(self, received: ActivationReceived) -> list[bytes]:
        """One message from the activation channel: an unlock request, or a message of an
        activation run. Returns what to send back on the same session."""
        try:
            unlock = decode_message(received.payload)
        except DecodeError:
            unlock = None
        if not isinstance(unlock, UnlockRequest):
            return self._activation_step(received)
        try:
            answer = self.handle_unlock(unlock)
        except SealwireError as exc:  # never lose the link over one request
            log.warning("unlock request not handled", extra={"reason": str(exc)})
            return []
        except Exception:
            log.exception("unlock request handling failed")
            return []
        return [] if answer is None else [answer]


def _request_id_of(body: bytes) -> bytes | None:
    """The ``request_id`` (field 0) of a ``[code, {0: id, ...}]`` request that did not decode
    as a whole, if that much of it is well-formed."""
    try:
        value = decode_value(body, max_size=len(body))
    except DecodeError:
        return None
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], dict):
        request_id = value[1].get(0)
        if type(request_id) is bytes and len(request_id) == REQUEST_ID_SIZE:
            return request_id
    return None


def _dev(address: bytes) -> dict[str, str]:
    return {"device": short_address(address)}
