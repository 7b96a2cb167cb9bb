"""The device's link to its relay: one connection at a time, what arrives on it, and the
questions it asks its server.

Every delivery is opened here. An envelope from a person's device goes to the message
worker (:attr:`Link.on_peer`). An envelope from our server is recorded as seen *first*
(:meth:`~sealwire.device.store.DeviceStore.first_seen`): a replayed one is dropped before
anything handles it, so a policy or a command is never processed twice. The rest is routed
by one table: the payload type picks the decoder, the message's type picks the handler a
feature module registered (:meth:`Link.on`); an answer to a question resolves the question
asked with :meth:`Link.ask`, matched by its request id and checked for the type expected
(a :class:`~sealwire.protocol.directory.ServerRefusal` becomes a clear error).

A locked device cannot read its own queue: :class:`ActivationChannel` reaches the server
through the relay's activation channel instead (unlocking, a wipe acknowledged after the
relay cut the device off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sealwire.errors import (
    DecodeError,
    InvalidEnvelope,
    RemoteProtocolError,
    SealwireError,
    TransportError,
)
from sealwire.protocol.codec import Struct
from sealwire.protocol.directory import (
    CertificateRenewed,
    DirectoryQuery,
    PrekeysPublished,
    PublishPrekeys,
    RenewCertificate,
    ServerRefusal,
    SignedDirectoryAnswer,
    decode_directory_message,
    encode_directory_message,
)
from sealwire.protocol.envelope import (
    DEFAULT_LIFETIME_MS,
    OpenedEnvelope,
    PayloadType,
    open_envelope,
)
from sealwire.protocol.frames import ErrorCode
from sealwire.protocol.management import (
    DeviceReport,
    ManagementAnswer,
    RemoteSecretAnswer,
    decode_management_message,
    encode_management_message,
    payload_type_of,
)
from sealwire.protocol.session import EnvelopeDelivered
from sealwire.protocol.suite import XWingPrivateKey
from sealwire.transport import Connector, RelayConnection, RequestRefused

from .profile import Profile
from .store import DeviceStore
from .tasks import consume

__all__ = ["ANSWER_TIMEOUT_S", "ActivationChannel", "AskServer", "Connector", "Link"]

log = logging.getLogger(__name__)
A = TypeVar("A")
M = TypeVar("M")

ANSWER_TIMEOUT_S = 15.0
"""How long a question to the server waits for its answer."""


class AskServer(Protocol):
    """What a feature module is given to ask our server (:meth:`Link.ask`)."""

    def __call__(self, request: Struct, expect: type[A]) -> Awaitable[A]:
        """Ask, and return the answer of type ``expect`` (or raise, as :meth:`Link.ask`)."""
        ...


_DECODERS: dict[PayloadType, Callable[[PayloadType, bytes], Struct]] = {
    PayloadType.DIRECTORY: lambda _, body: decode_directory_message(body),
    PayloadType.POLICY: decode_management_message,
    PayloadType.COMMAND: decode_management_message,
    PayloadType.CONTROL: decode_management_message,
}
"""How a message from the server is decoded, by its envelope's payload type (others are
ignored)."""

_REQUESTS: dict[type[Struct], tuple[Callable[[Struct], PayloadType], Callable[[Struct], bytes]]] = {
    DeviceReport: (payload_type_of, encode_management_message),
    DirectoryQuery: (lambda _: PayloadType.DIRECTORY, encode_directory_message),
    PublishPrekeys: (lambda _: PayloadType.DIRECTORY, encode_directory_message),
    RenewCertificate: (lambda _: PayloadType.DIRECTORY, encode_directory_message),
}
"""The questions a device asks its server: how each travels."""

_ANSWERS: dict[type[Struct], Callable[[Any], bytes]] = {
    ServerRefusal: lambda m: m.request_id,
    SignedDirectoryAnswer: lambda m: m.answer.request_id,
    PrekeysPublished: lambda m: m.request_id,
    CertificateRenewed: lambda m: m.request_id,
    ManagementAnswer: lambda m: m.request_id,
    RemoteSecretAnswer: lambda m: m.request_id,
}
"""The answers the server sends, and where each names the question it answers."""


class Link:
    """The relay connection of an unlocked device (one at a time).

    Args:
        store: records the server's envelopes as seen.
        profile: who we are (to open envelopes and seal questions).
        connector: opens relay connections.
        clock: Unix milliseconds.
        prekeys: our private prekey of an id, if we still have it.
    """

    def __init__(
        self,
        store: DeviceStore,
        profile: Profile,
        connector: Connector,
        *,
        clock: Callable[[], int],
        prekeys: Callable[[int], XWingPrivateKey | None],
    ) -> None:
        self._store = store
        self._profile = profile
        self._connector = connector
        self._clock = clock
        self._prekeys = prekeys
        self._conn: RelayConnection | None = None
        self._pending: dict[bytes, asyncio.Future[object]] = {}
        self._handlers: dict[type[Any], Callable[[Any], None]] = {}
        self.on_peer: Callable[[EnvelopeDelivered, OpenedEnvelope], Awaitable[None]] | None = None
        """Where envelopes from people's devices go (the message worker's queue)."""
        self._ended: asyncio.Event | None = None
        self._end_reason: SealwireError | None = None

    def on(self, kind: type[M], handler: Callable[[M], None]) -> None:
        """Hand every message of type ``kind`` the server pushes to ``handler`` (called on the
        reading task: it must not block; spawn what takes time)."""
        self._handlers[kind] = handler

    # --- the connection -------------------------------------------------------------------

    async def connect(self) -> RelayConnection:
        """Open the connection as this device.

        Raises:
            SessionEnded: the relay refused us (``revoked``...).
            TransportError: the relay is unreachable.
        """
        profile = self._profile
        conn = await self._connector.open(
            profile.relay, identity=profile.identity, chain=profile.chain
        )
        self._conn = conn
        self._ended = asyncio.Event()
        self._end_reason = None
        return conn

    async def disconnect(self, conn: RelayConnection) -> None:
        """Close the connection; every question still waiting fails."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TransportError("the relay connection closed"))
                consume(future)  # its asker may have stopped waiting
        self._pending.clear()
        self._conn = None
        await conn.close()

    @property
    def connected(self) -> bool:
        """Whether a connection is open (it may have ended since)."""
        return self._conn is not None

    def connection(self) -> RelayConnection:
        """The open connection.

        Raises:
            TransportError: not connected, or the relay ended the session.
        """
        if self._conn is None or self._conn.closed:
            why = self._conn.ended.result() if self._conn and self._conn.ended.done() else None
            raise TransportError("not connected to the relay" + (f" ({why.code})" if why else ""))
        return self._conn

    def end(self, reason: SealwireError) -> None:
        """Leave the connection on our own (a lock or wipe command, the auto-lock)."""
        self._end_reason = reason
        if self._ended is not None:
            self._ended.set()

    @property
    def end_reason(self) -> SealwireError | None:
        """Why the device left its connection on its own, if it did."""
        return self._end_reason

    async def wait_ended(self) -> None:
        """Return once :meth:`end` was called on this connection."""
        assert self._ended is not None
        await self._ended.wait()

    # --- sending and asking ---------------------------------------------------------------

    async def send_envelope(self, envelope: bytes) -> bool:
        """Hand one envelope to the relay.

        Returns:
            ``True`` once it holds it durably, ``False`` if the relay will never carry it
            (our organisation revoked the recipient's device).

        Raises:
            TransportError: not accepted now (retry on the next connection).
        """
        try:
            await self.connection().send(envelope)
        except RequestRefused as exc:
            if exc.code == ErrorCode.RECIPIENT_REVOKED:
                return False
            raise TransportError(f"the relay refused an envelope ({exc.code})") from exc
        return True

    async def ask(self, request: Struct, expect: type[A]) -> A:
        """Ask our server and wait for its answer.

        Returns:
            the answer, of type ``expect``.

        Raises:
            RemoteProtocolError: the server refused the request (its reason in the message).
            TransportError: not sent, no answer in time, or an answer of another type.
        """
        request_id: bytes = getattr(request, "request_id")  # noqa: B009
        payload_type, encode = _REQUESTS[type(request)]
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.send_envelope(
                self._profile.seal_to_server(payload_type(request), encode(request))
            )
            answer = await asyncio.wait_for(future, ANSWER_TIMEOUT_S)
        except TimeoutError:
            raise TransportError(
                "the enterprise server did not answer within "
                f"{ANSWER_TIMEOUT_S:.0f} s (is it running and connected to the relay?)"
            ) from None
        finally:
            self._pending.pop(request_id, None)
        if isinstance(answer, ServerRefusal):
            raise RemoteProtocolError(
                f"your organisation's server refused the request: {answer.reason}",
                code=answer.code.name.lower(),
            )
        if not isinstance(answer, expect):
            raise TransportError("the server sent an unexpected answer")
        return answer

    # --- what arrives ---------------------------------------------------------------------

    async def read(self, conn: RelayConnection) -> None:
        """Read deliveries until cancelled: server messages are handled at once (a question
        may be awaited by the message worker), everything else goes to :attr:`on_peer` in
        order."""
        assert self.on_peer is not None
        profile = self._profile
        while True:
            delivered = await conn.deliveries.get()
            try:
                opened = open_envelope(
                    delivered.envelope,
                    recipient=profile.address,
                    prekeys=self._prekeys,
                    verifier=profile.verifier,
                    now_ms=self._clock(),
                )
            except InvalidEnvelope:
                log.info("dropped an envelope that does not open")
                conn.ack([delivered.delivery_id])
                continue
            if opened.sender.body.subject != profile.server_address:
                await self.on_peer(delivered, opened)
                continue
            # Recorded before it is handled: a replay is dropped here, never handled again.
            horizon = self._clock() - DEFAULT_LIFETIME_MS
            if self._store.first_seen(opened.message_id, opened.sent_at, horizon):
                self._from_server(opened)
            else:
                log.info("dropped a replayed envelope from the server")
            conn.ack([delivered.delivery_id])

    def _from_server(self, opened: OpenedEnvelope) -> None:
        decode = _DECODERS.get(opened.payload_type)
        if decode is None:
            return
        try:
            message = decode(opened.payload_type, opened.body)
        except DecodeError:
            log.info("dropped a malformed message from the server")
            return
        handler = self._handlers.get(type(message))
        if handler is not None:
            handler(message)
            return
        answers = _ANSWERS.get(type(message))
        future = self._pending.pop(answers(message), None) if answers else None
        if future is not None and not future.done():
            future.set_result(message)


class ActivationChannel:
    """The relay's activation channel, to reach our server without a device session.

    Args:
        connector: opens relay connections.
        profile: our relay and server.
        random: source of random bytes (session ids).
    """

    def __init__(
        self, connector: Connector, profile: Profile, *, random: Callable[[int], bytes]
    ) -> None:
        self._connector = connector
        self._profile = profile
        self._random = random

    async def open(self) -> RelayConnection:
        """A connection to the activation channel of our relay.

        Raises:
            TransportError: the relay cannot be reached.
        """
        return await self._connector.open_for_activation(self._profile.relay)

    async def send(self, conn: RelayConnection, payload: bytes) -> None:
        """Send one activation-channel payload to our server on ``conn`` (a new session)."""
        await conn.send_activation(self._random(16), payload, self._profile.server_address)

    async def post(self, payload: bytes, *, timeout: float) -> RelayConnection | None:
        """Hand one payload that gets no answer (a wipe's result, an erasure notice) to the
        relay, within ``timeout`` seconds; the connection to :meth:`finish`, or ``None`` if
        the relay could not be reached (best effort: the caller goes on regardless)."""
        conn: RelayConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = await self.open()
                await self.send(conn, payload)
                return conn
        except (SealwireError, TimeoutError):
            if conn is not None:
                await conn.close()
            return None

    async def finish(self, conn: RelayConnection | None) -> None:
        """Close a connection from :meth:`post` once the relay has had a moment to pass the
        payload on (nothing is answered, so there is nothing else to wait for)."""
        if conn is None:
            return
        try:
            await asyncio.sleep(0.5)
        finally:  # closed even when the caller is cancelled meanwhile
            with contextlib.suppress(SealwireError):
                await conn.close()
