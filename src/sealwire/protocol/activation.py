"""Device activation with the one-time activation password (DESIGN §7, docs/protocol/ACTIVATION.md).

The device (SPAKE2 side A) and the enterprise server (side B) run SPAKE2 (:mod:`.pake`) through
the relay, the device confirming first, then exchange under the PAKE key the device's public
keys and the server's answer::

    device                                              server
      ActivationStart{ticket id, pA}          ->
                                              <-        ActivationChallenge{pB}
      ActivationConfirm{cA, seal(DeviceKeys)} ->        checks cA: wrong -> PasswordRejected
                                                        DeviceKeysReceived -> application
                                              <-        ActivationAnswer{cB, seal(ServerAnswer)}
      checks cB: wrong -> ServerNotConfirmed            or ActivationRefusal{code}
      ActivationCompleted(answer)

Why the device confirms first: the server then sends nothing that depends on the password
before the device has proved it knows it (``pB`` is uniformly distributed whatever ``w`` is),
so an attempt is consumed exactly when a wrong ``cA`` arrives (:class:`PasswordRejected`), and
a run abandoned after the challenge tells nobody anything. Each run lets an active attacker
test one password guess, never more, and nothing lets a passive one test any. The device seals
its (public) keys under ``Ke`` before it has seen ``cB``: a peer that guessed wrong can no more
test other guesses against that ciphertext than against ``cA`` itself, since both need ``K``.

Encryption under the PAKE key ``Ke``: AES-256-GCM with keys
``hkdf(Ke, purpose="activation/device-keys")`` (device to server) and
``hkdf(Ke, purpose="activation/server-answer")`` (server to device). Each key encrypts exactly
one message in one run (``Ke`` is fresh per run, the ephemeral scalars being fresh), so the
fixed all-zero nonce is safe. The associated data is ``labelled(purpose, confirmation)``, the
confirmation sent in the same message.

Both machines are sans-IO: bytes in (:meth:`~DeviceActivation.receive`), events out, bytes to
send drained with :meth:`~DeviceActivation.data_to_send`; randomness comes from the caller.
Whatever arrives from the wire ends in events and, at worst, a terminal state: never an
exception. Calling a local method in the wrong state raises
:class:`~sealwire.errors.LocalProtocolError`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sealwire.errors import ActivationFailed, CryptoError, DecodeError, LocalProtocolError
from sealwire.protocol.codec import Struct, Variants, wire
from sealwire.protocol.frames import MAX_ACTIVATION_PAYLOAD
from sealwire.protocol.identity import ADDRESS_SIZE, MAX_CERTIFICATE_SIZE, MAX_CHAIN
from sealwire.protocol.pake import (
    CONFIRMATION_SIZE,
    SCALAR_SEED_SIZE,
    SHARE_SIZE,
    Side,
    Spake2,
    Spake2Keys,
    is_valid_share,
    password_scalar,
)
from sealwire.protocol.suite import (
    AEAD_NONCE_SIZE,
    ED25519_PUBLIC_KEY_SIZE,
    ED25519_SIGNATURE_SIZE,
    Argon2Params,
    RandomSource,
    SigningKey,
    aead_open,
    aead_seal,
    hkdf,
    labelled,
    verify_signature,
)

__all__ = [
    "DEVICE_TRANSITIONS",
    "MAX_ACTIVATION_MESSAGE",
    "MAX_UNLOCK_ENVELOPE",
    "MESSAGES",
    "SERVER_TRANSITIONS",
    "TICKET_ID_SIZE",
    "ActivationAborted",
    "ActivationAnswer",
    "ActivationChallenge",
    "ActivationCompleted",
    "ActivationConfirm",
    "ActivationEvent",
    "ActivationRefusal",
    "ActivationRefused",
    "ActivationStart",
    "ActivationTicket",
    "DeviceActivation",
    "DeviceInput",
    "DeviceKeys",
    "DeviceKeysReceived",
    "DeviceState",
    "PasswordRejected",
    "RefusalCode",
    "ServerActivation",
    "ServerAnswer",
    "ServerInput",
    "ServerNotConfirmed",
    "ServerState",
    "UnlockAnswer",
    "UnlockRequest",
    "decode_message",
    "encode_message",
    "normalise_password",
    "ticket_from_text",
    "ticket_to_text",
]

log = logging.getLogger(__name__)

TICKET_ID_SIZE = 16
MAX_ACTIVATION_MESSAGE = MAX_ACTIVATION_PAYLOAD
"""Largest encoded activation message (16 KiB): what one relay ``Activation`` frame carries."""
MAX_UNLOCK_ENVELOPE = MAX_ACTIVATION_PAYLOAD - 64
"""Largest envelope an unlock request or answer carries (they are a few KiB)."""
MAX_SIGNED_PREKEYS = 4
MAX_SIGNED_PREKEY_SIZE = 2048
MAX_POLICY_SIZE = 4 * 1024
MAX_DIRECTORY_SIZE = 10 * 1024
"""First directory data only; the rest follows in envelopes once the device is activated."""
_MAX_SEALED = MAX_ACTIVATION_MESSAGE - 128
_NONCE = bytes(AEAD_NONCE_SIZE)
_DEVICE_KEYS_PURPOSE = "activation/device-keys"
_ANSWER_PURPOSE = "activation/server-answer"
_POSSESSION_PURPOSE = "activation/possession"


# --- Wire structures -------------------------------------------------------------------------


class RefusalCode(enum.IntEnum):
    """Why the server refused (sent in the clear: an unauthenticated hint, never trusted)."""

    UNKNOWN_TICKET = 1
    """No such ticket, or it expired or was burned."""
    PASSWORD_REJECTED = 2
    """The device did not prove it knows the password (one attempt consumed)."""
    NOT_PERMITTED = 3
    """The password was right but the server will not activate this device (its decision)."""
    PROTOCOL = 4
    """A malformed or unexpected message."""


@dataclass(frozen=True)
class ActivationTicket(Struct):
    """What the administrator hands the person with the activation password (QR code, file).

    Nothing in it is secret; the password travels separately.
    """

    ticket_id: bytes = wire(0, size=TICKET_ID_SIZE)
    """Random ticket id: SPAKE2 identity ``A``."""
    server: bytes = wire(1, size=ADDRESS_SIZE)
    """The enterprise server's address: SPAKE2 identity ``B`` and where to send."""
    relay: str = wire(2, max_size=255)
    """The relay to connect to (``host:port``)."""
    params: Argon2Params = wire(3)
    """Argon2id parameters and salt for the password (chosen by the server)."""

    def password_scalar(self, password: str) -> bytes:
        """The SPAKE2 scalar ``w`` of ``password`` for this ticket (Argon2id: slow).

        Applications pass the password through :func:`normalise_password` first.
        """
        return password_scalar(password, self.params, id_a=self.ticket_id, id_b=self.server)


TICKET_TEXT_PREFIX = "sealwire-ticket:"
_PASSWORD_SEPARATORS = str.maketrans("", "", " -\t")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def normalise_password(password: str) -> str:
    """Activation passwords are shown in groups (``K7QM-2XPA-9RTD``): people may type them in
    any case, with or without the dashes and spaces."""
    return password.translate(_PASSWORD_SEPARATORS).upper()


def ticket_to_text(ticket: ActivationTicket) -> str:
    """The ticket as one copy-and-paste line: ``sealwire-ticket:`` + base64url (no padding)."""
    return TICKET_TEXT_PREFIX + base64.urlsafe_b64encode(ticket.encode()).decode().rstrip("=")


def ticket_from_text(text: str) -> ActivationTicket:
    """Parse what :func:`ticket_to_text` made (surrounding white space is ignored).

    Raises:
        DecodeError: if ``text`` is not a valid ticket.
    """
    text = text.strip()
    if not text.startswith(TICKET_TEXT_PREFIX) or len(text) > 1024:
        raise DecodeError("not a Sealwire activation ticket (it starts with 'sealwire-ticket:')")
    body = text[len(TICKET_TEXT_PREFIX) :]
    if not _BASE64URL.fullmatch(body):
        raise DecodeError("the activation ticket is damaged (characters outside base64url)")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (ValueError, binascii.Error):
        raise DecodeError("the activation ticket is damaged (bad base64)") from None
    return ActivationTicket.decode(raw, max_size=1024)


@dataclass(frozen=True)
class ActivationStart(Struct):
    """Device → server: which ticket, and ``pA``."""

    ticket_id: bytes = wire(0, size=TICKET_ID_SIZE)
    share: bytes = wire(1, size=SHARE_SIZE)


@dataclass(frozen=True)
class ActivationChallenge(Struct):
    """Server → device: ``pB``."""

    share: bytes = wire(0, size=SHARE_SIZE)


@dataclass(frozen=True)
class ActivationConfirm(Struct):
    """Device → server: ``cA`` and the sealed :class:`DeviceKeys`."""

    confirmation: bytes = wire(0, size=CONFIRMATION_SIZE)
    sealed_keys: bytes = wire(1, max_size=_MAX_SEALED)


@dataclass(frozen=True)
class ActivationAnswer(Struct):
    """Server → device: ``cB`` and the sealed :class:`ServerAnswer`."""

    confirmation: bytes = wire(0, size=CONFIRMATION_SIZE)
    sealed_answer: bytes = wire(1, max_size=_MAX_SEALED)


@dataclass(frozen=True)
class ActivationRefusal(Struct):
    """Server → device: the run ends without activation (unauthenticated)."""

    code: RefusalCode = wire(0)


@dataclass(frozen=True)
class UnlockRequest(Struct):
    """Device → server, through the activation channel: a sealed envelope from an activated
    device (its ``FetchRemoteSecret``, docs/protocol/MANAGEMENT.md).

    A locked device cannot open what waits in its relay queue (its prekeys are under the key
    it is trying to unlock), so it asks outside its delivery stream: the relay routes this like
    any activation message and never sees inside. The envelope authenticates the device."""

    envelope: bytes = wire(0, max_size=MAX_UNLOCK_ENVELOPE)


@dataclass(frozen=True)
class UnlockAnswer(Struct):
    """Server → device: the sealed answer (to the request's one-time key)."""

    envelope: bytes = wire(0, max_size=MAX_UNLOCK_ENVELOPE)


MESSAGES = Variants(
    "activation message",
    {
        1: ActivationStart,
        2: ActivationChallenge,
        3: ActivationConfirm,
        4: ActivationAnswer,
        5: ActivationRefusal,
        6: UnlockRequest,
        7: UnlockAnswer,
    },
)
"""The activation messages: ``[code, body]``, codes 1-7 never reused (6 and 7 carry a locked
device's unlock request and its answer; they are not part of a PAKE run)."""


def encode_message(message: Struct) -> bytes:
    """Encode one activation message as ``[code, body]``."""
    return MESSAGES.encode(message)


def decode_message(data: bytes) -> Struct:
    """Decode one activation message strictly, within :data:`MAX_ACTIVATION_MESSAGE`.

    Raises:
        DecodeError: if ``data`` is not exactly one valid activation message.
    """
    return MESSAGES.decode(data, max_size=MAX_ACTIVATION_MESSAGE)


@dataclass(frozen=True)
class DeviceKeys(Struct):
    """What the device presents, sealed to the server inside :class:`ActivationConfirm`."""

    identity_key: bytes = wire(0, size=ED25519_PUBLIC_KEY_SIZE)
    """The device's Ed25519 identity public key (its address is derived from it)."""
    signed_prekeys: tuple[bytes, ...] = wire(
        1, max_items=MAX_SIGNED_PREKEYS, max_size=MAX_SIGNED_PREKEY_SIZE
    )
    """Encoded :class:`~.identity.SignedPrekey` values; the server application checks them."""
    possession: bytes = wire(2, size=ED25519_SIGNATURE_SIZE)
    """Signature by the identity key (label ``activation/possession``) over
    ``ticket id || server address || pA || pB``: proves the key is held and binds it to this run."""


@dataclass(frozen=True)
class ServerAnswer(Struct):
    """What the server gives an activated device, sealed inside :class:`ActivationAnswer`."""

    certificate_chain: tuple[bytes, ...] = wire(
        0, max_items=MAX_CHAIN, max_size=MAX_CERTIFICATE_SIZE
    )
    """The device's certificate chain, leaf first (encoded certificates)."""
    organisation_root_key: bytes = wire(1, size=ED25519_PUBLIC_KEY_SIZE)
    """The organisation's root public key: the device's trust anchor from now on."""
    policy: bytes = wire(2, max_size=MAX_POLICY_SIZE)
    """The signed IT policy (encoded)."""
    directory: bytes = wire(3, max_size=MAX_DIRECTORY_SIZE)
    """First directory data (encoded)."""
    remote_secret: bytes | None = wire(4, size=32, default=None)
    """The device's *remote secret* (DESIGN §8): half of what its storage key is made from;
    the server keeps it and deletes it on wipe. Servers always send it; a device refuses an
    answer without it."""


def _possession_message(ticket_id: bytes, server: bytes, share_a: bytes, share_b: bytes) -> bytes:
    return ticket_id + server + share_a + share_b


# --- Events (facts) --------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationCompleted:
    """Device: the server proved it knows the password and sent its answer."""

    answer: ServerAnswer


@dataclass(frozen=True)
class ActivationRefused:
    """Device: the server refused (an unauthenticated hint: it may come from the network)."""

    code: RefusalCode


@dataclass(frozen=True)
class ServerNotConfirmed:
    """Device: the peer did not prove it knows the password (an impostor or altered messages).

    The device is in :attr:`DeviceState.SCARED`: it must not trust anything from this run.
    """


@dataclass(frozen=True)
class DeviceKeysReceived:
    """Server: the device proved it knows the password; the application must now answer with
    :meth:`ServerActivation.send_answer` or :meth:`ServerActivation.refuse`."""

    ticket_id: bytes
    device_keys: DeviceKeys


@dataclass(frozen=True)
class PasswordRejected:
    """Server: the device did not prove it knows the password (wrong password, or its
    confirmation was altered). Count one attempt against the ticket."""

    ticket_id: bytes


@dataclass(frozen=True)
class ActivationAborted:
    """Either side: a malformed or unexpected message, or an unknown ticket, ended the run.

    ``reason`` is for logs; it holds no secret.
    """

    reason: str


ActivationEvent = (
    ActivationCompleted
    | ActivationRefused
    | ServerNotConfirmed
    | DeviceKeysReceived
    | PasswordRejected
    | ActivationAborted
)


# --- State tables ----------------------------------------------------------------------------


class DeviceState(enum.Enum):
    """States of :class:`DeviceActivation`."""

    READY = "ready"
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_ANSWER = "await-answer"
    COMPLETED = "completed"
    """Terminal: activated."""
    REFUSED = "refused"
    """Terminal: the server refused (or someone said it did)."""
    SCARED = "scared"
    """Terminal: the peer failed key confirmation or sent an invalid share: suspected attack."""
    ABORTED = "aborted"
    """Terminal: a malformed or unexpected message."""


class DeviceInput(enum.Enum):
    """What can happen to a device machine (the table's column headings)."""

    START = "start"
    """Local: :meth:`DeviceActivation.start`."""
    CHALLENGE_RECEIVED = "challenge-received"
    ANSWER_CONFIRMED = "answer-confirmed"
    CONFIRMATION_FAILED = "confirmation-failed"
    REFUSAL_RECEIVED = "refusal-received"
    PROTOCOL_VIOLATION = "protocol-violation"


_D, _DI = DeviceState, DeviceInput
DEVICE_TRANSITIONS: Mapping[DeviceState, Mapping[DeviceInput, DeviceState]] = {
    _D.READY: {_DI.START: _D.AWAIT_CHALLENGE, _DI.PROTOCOL_VIOLATION: _D.ABORTED},
    _D.AWAIT_CHALLENGE: {
        _DI.CHALLENGE_RECEIVED: _D.AWAIT_ANSWER,
        _DI.CONFIRMATION_FAILED: _D.SCARED,
        _DI.REFUSAL_RECEIVED: _D.REFUSED,
        _DI.PROTOCOL_VIOLATION: _D.ABORTED,
    },
    _D.AWAIT_ANSWER: {
        _DI.ANSWER_CONFIRMED: _D.COMPLETED,
        _DI.CONFIRMATION_FAILED: _D.SCARED,
        _DI.REFUSAL_RECEIVED: _D.REFUSED,
        _DI.PROTOCOL_VIOLATION: _D.ABORTED,
    },
    _D.COMPLETED: {},
    _D.REFUSED: {},
    _D.SCARED: {},
    _D.ABORTED: {},
}
"""The device's one transition table; a state with no entries is terminal."""


class ServerState(enum.Enum):
    """States of :class:`ServerActivation`."""

    AWAIT_START = "await-start"
    AWAIT_CONFIRM = "await-confirm"
    AWAIT_ANSWER = "await-answer"
    """The application decides: :meth:`ServerActivation.send_answer` or ``refuse``."""
    COMPLETED = "completed"
    """Terminal: the answer was sent."""
    REFUSED = "refused"
    """Terminal: unknown ticket, or the application refused."""
    REJECTED = "rejected"
    """Terminal: the device failed key confirmation (one attempt consumed)."""
    ABORTED = "aborted"
    """Terminal: a malformed or unexpected message, or an invalid share."""


class ServerInput(enum.Enum):
    """What can happen to a server machine (the table's column headings)."""

    START_ACCEPTED = "start-accepted"
    TICKET_UNKNOWN = "ticket-unknown"
    CONFIRM_VERIFIED = "confirm-verified"
    CONFIRM_REJECTED = "confirm-rejected"
    ANSWER_SENT = "answer-sent"
    """Local: :meth:`ServerActivation.send_answer`."""
    REFUSAL_SENT = "refusal-sent"
    """Local: :meth:`ServerActivation.refuse`."""
    PROTOCOL_VIOLATION = "protocol-violation"


_S, _SI = ServerState, ServerInput
SERVER_TRANSITIONS: Mapping[ServerState, Mapping[ServerInput, ServerState]] = {
    _S.AWAIT_START: {
        _SI.START_ACCEPTED: _S.AWAIT_CONFIRM,
        _SI.TICKET_UNKNOWN: _S.REFUSED,
        _SI.PROTOCOL_VIOLATION: _S.ABORTED,
    },
    _S.AWAIT_CONFIRM: {
        _SI.CONFIRM_VERIFIED: _S.AWAIT_ANSWER,
        _SI.CONFIRM_REJECTED: _S.REJECTED,
        _SI.PROTOCOL_VIOLATION: _S.ABORTED,
    },
    # Nothing from the wire moves this state: the device sends nothing while the application
    # decides, so whatever arrives is a replay or an injection, and is ignored.
    _S.AWAIT_ANSWER: {_SI.ANSWER_SENT: _S.COMPLETED, _SI.REFUSAL_SENT: _S.REFUSED},
    _S.COMPLETED: {},
    _S.REFUSED: {},
    _S.REJECTED: {},
    _S.ABORTED: {},
}
"""The server's one transition table; a state with no entries is terminal."""


StateT = TypeVar("StateT", bound=enum.Enum)
InputT = TypeVar("InputT", bound=enum.Enum)


class _Machine(Generic[StateT, InputT]):
    """Shared mechanics: the one mutator, the outbox."""

    role: str

    def __init__(self, initial: StateT, table: Mapping[StateT, Mapping[InputT, StateT]]) -> None:
        self._state = initial
        self._table = table
        self._outbox: list[bytes] = []

    @property
    def state(self) -> StateT:
        """The current state."""
        return self._state

    @property
    def finished(self) -> bool:
        """Whether the machine is in a terminal state."""
        return not self._table[self._state]

    def data_to_send(self) -> list[bytes]:
        """Return (and forget) the encoded messages waiting to be sent, oldest first."""
        out, self._outbox = self._outbox, []
        return out

    def _require(self, event: InputT) -> None:
        if event not in self._table[self._state]:
            raise LocalProtocolError(
                f"{event.name} is not allowed for the {self.role} in state {self._state.name}"
            )

    def _transition(self, event: InputT) -> None:
        """The one mutator: apply ``event`` by the table and log the transition."""
        self._require(event)
        new = self._table[self._state][event]
        log.debug("%s: %s --%s--> %s", self.role, self._state.name, event.name, new.name)
        self._state = new
        if self.finished:
            self._forget_secrets()

    def _send(self, message: Struct) -> None:
        self._outbox.append(encode_message(message))

    def _forget_secrets(self) -> None:
        """Drop key material once the run is over."""


# --- The device ------------------------------------------------------------------------------


class DeviceActivation(_Machine[DeviceState, DeviceInput]):
    """The device's side of one activation run (SPAKE2 side A).

    Usage::

        device = DeviceActivation(ticket, password, identity=key, signed_prekeys=[...],
                                  random=os.urandom)
        device.start()
        send(device.data_to_send())
        for data in incoming:
            for event in device.receive(data): ...
            send(device.data_to_send())
    """

    role = "device"

    def __init__(
        self,
        ticket: ActivationTicket,
        password: str,
        *,
        identity: SigningKey,
        signed_prekeys: Sequence[bytes] = (),
        random: RandomSource,
    ) -> None:
        """Prepare a run; nothing is computed or sent until :meth:`start`.

        Args:
            ticket: the activation ticket (server address, Argon2id parameters).
            password: the activation password as the person typed it.
            identity: the device's new identity key (its public key goes to the server).
            signed_prekeys: encoded signed prekeys to publish (at most 4).
            random: source of the 64 bytes of the ephemeral scalar.
        """
        super().__init__(DeviceState.READY, DEVICE_TRANSITIONS)
        if len(signed_prekeys) > MAX_SIGNED_PREKEYS:
            raise ValueError(f"at most {MAX_SIGNED_PREKEYS} signed prekeys")
        self.ticket = ticket
        self._password: str | None = password
        self._identity = identity
        self._signed_prekeys = tuple(bytes(p) for p in signed_prekeys)
        self._random = random
        self._pake: Spake2 | None = None
        self._keys: Spake2Keys | None = None

    def start(self) -> None:
        """Derive ``w`` (Argon2id), make ``pA`` and queue :class:`ActivationStart`.

        Raises:
            LocalProtocolError: if already started.
        """
        self._require(DeviceInput.START)
        assert self._password is not None
        w = self.ticket.password_scalar(self._password)
        self._password = None
        self._pake = Spake2(
            Side.A,
            password_scalar=w,
            id_a=self.ticket.ticket_id,
            id_b=self.ticket.server,
            seed=self._random(SCALAR_SEED_SIZE),
        )
        self._transition(DeviceInput.START)
        self._send(ActivationStart(ticket_id=self.ticket.ticket_id, share=self._pake.share))

    def receive(self, data: bytes) -> list[ActivationEvent]:
        """Feed one message from the server; return what happened.

        Never raises for anything the peer or the network sends. After a terminal state every
        message is ignored (returns ``[]``).
        """
        if self.finished:
            return []
        try:
            message = decode_message(data)
        except DecodeError as exc:
            return self._abort(f"malformed message: {exc.reason}")
        if self._state is DeviceState.READY:
            return self._abort(f"{type(message).__name__} before start")
        if isinstance(message, ActivationRefusal):
            self._transition(DeviceInput.REFUSAL_RECEIVED)
            return [ActivationRefused(message.code)]
        if self._state is DeviceState.AWAIT_CHALLENGE and isinstance(message, ActivationChallenge):
            return self._on_challenge(message)
        if self._state is DeviceState.AWAIT_ANSWER and isinstance(message, ActivationAnswer):
            return self._on_answer(message)
        return self._abort(f"unexpected {type(message).__name__} in state {self._state.name}")

    def _on_challenge(self, message: ActivationChallenge) -> list[ActivationEvent]:
        assert self._pake is not None
        try:
            keys = self._pake.finish(message.share)
        except ActivationFailed:
            self._transition(DeviceInput.CONFIRMATION_FAILED)
            return [ServerNotConfirmed()]
        ticket = self.ticket
        proof = self._identity.sign(
            _POSSESSION_PURPOSE,
            _possession_message(ticket.ticket_id, ticket.server, self._pake.share, message.share),
        )
        device_keys = DeviceKeys(
            identity_key=self._identity.public_key,
            signed_prekeys=self._signed_prekeys,
            possession=proof,
        )
        sealed = aead_seal(
            hkdf(keys.shared_key, purpose=_DEVICE_KEYS_PURPOSE),
            _NONCE,
            device_keys.encode(),
            labelled(_DEVICE_KEYS_PURPOSE, keys.confirmation),
        )
        self._keys = keys
        self._transition(DeviceInput.CHALLENGE_RECEIVED)
        self._send(ActivationConfirm(confirmation=keys.confirmation, sealed_keys=sealed))
        return []

    def _on_answer(self, message: ActivationAnswer) -> list[ActivationEvent]:
        keys = self._keys
        assert keys is not None
        try:
            keys.verify(message.confirmation)
            plain = aead_open(
                hkdf(keys.shared_key, purpose=_ANSWER_PURPOSE),
                _NONCE,
                message.sealed_answer,
                labelled(_ANSWER_PURPOSE, message.confirmation),
            )
        except CryptoError:
            self._transition(DeviceInput.CONFIRMATION_FAILED)
            return [ServerNotConfirmed()]
        try:
            answer = ServerAnswer.decode(plain, max_size=MAX_ACTIVATION_MESSAGE)
        except DecodeError as exc:
            return self._abort(f"malformed answer: {exc.reason}")
        self._transition(DeviceInput.ANSWER_CONFIRMED)
        return [ActivationCompleted(answer)]

    def _abort(self, reason: str) -> list[ActivationEvent]:
        self._transition(DeviceInput.PROTOCOL_VIOLATION)
        return [ActivationAborted(reason)]

    def _forget_secrets(self) -> None:
        self._pake = None
        self._keys = None
        self._password = None


# --- The server ------------------------------------------------------------------------------


class ServerActivation(_Machine[ServerState, ServerInput]):
    """The server's side of one activation run (SPAKE2 side B).

    Usage::

        run = ServerActivation(server_address, password_scalars=store.take_attempt,
                               random=os.urandom)
        for event in run.receive(data):
            if isinstance(event, PasswordRejected): log_failure(event.ticket_id)
            if isinstance(event, DeviceKeysReceived): run.send_answer(issue(event))
        send(run.data_to_send())

    ``password_scalars`` is asked once per run, only for a start with a valid share: count
    the attempt there, durably and atomically, before returning ``w``. Then runs started at
    once against one ticket check at most its attempts between them, and neither a crash nor
    an abandoned run hands an attempt back.
    """

    role = "server"

    def __init__(
        self,
        server_address: bytes,
        *,
        password_scalars: Callable[[bytes], bytes | None],
        random: RandomSource,
    ) -> None:
        """Prepare to answer one device.

        Args:
            server_address: this server's address (SPAKE2 identity ``B``).
            password_scalars: takes one attempt from a ticket id and returns its stored
                ``w`` (see :meth:`ActivationTicket.password_scalar`), or ``None`` if the
                ticket is unknown, expired, burned or has no attempt left.
            random: source of the 64 bytes of the ephemeral scalar.
        """
        super().__init__(ServerState.AWAIT_START, SERVER_TRANSITIONS)
        if len(server_address) != ADDRESS_SIZE:
            raise ValueError("a server address is 32 bytes")
        self.server_address = bytes(server_address)
        self._password_scalars = password_scalars
        self._random = random
        self.ticket_id: bytes | None = None
        """The ticket this run is for, once the start arrived."""
        self._shares: tuple[bytes, bytes] | None = None
        self._keys: Spake2Keys | None = None

    def receive(self, data: bytes) -> list[ActivationEvent]:
        """Feed one message from the device; return what happened.

        Never raises for anything the peer or the network sends. While the application decides
        (:attr:`ServerState.AWAIT_ANSWER`) and after a terminal state every message is ignored
        (returns ``[]``).
        """
        if self.finished or self._state is ServerState.AWAIT_ANSWER:
            return []
        try:
            message = decode_message(data)
        except DecodeError as exc:
            return self._abort(f"malformed message: {exc.reason}")
        if self._state is ServerState.AWAIT_START and isinstance(message, ActivationStart):
            return self._on_start(message)
        if self._state is ServerState.AWAIT_CONFIRM and isinstance(message, ActivationConfirm):
            return self._on_confirm(message)
        return self._abort(f"unexpected {type(message).__name__} in state {self._state.name}")

    def _on_start(self, message: ActivationStart) -> list[ActivationEvent]:
        self.ticket_id = message.ticket_id
        if not is_valid_share(message.share):
            return self._abort("invalid share")  # before asking for w: no attempt taken
        w = self._password_scalars(message.ticket_id)
        if w is None:
            self._transition(ServerInput.TICKET_UNKNOWN)
            self._send(ActivationRefusal(RefusalCode.UNKNOWN_TICKET))
            return [ActivationAborted("unknown ticket")]
        pake = Spake2(
            Side.B,
            password_scalar=w,
            id_a=message.ticket_id,
            id_b=self.server_address,
            seed=self._random(SCALAR_SEED_SIZE),
        )
        try:
            self._keys = pake.finish(message.share)
        except ActivationFailed:
            return self._abort("invalid share")
        self._shares = (message.share, pake.share)
        self._transition(ServerInput.START_ACCEPTED)
        self._send(ActivationChallenge(share=pake.share))
        return []

    def _on_confirm(self, message: ActivationConfirm) -> list[ActivationEvent]:
        keys, shares, ticket_id = self._keys, self._shares, self.ticket_id
        assert keys is not None and shares is not None and ticket_id is not None
        try:
            # One opaque check: confirmation, decryption, decoding, proof of possession.
            keys.verify(message.confirmation)
            plain = aead_open(
                hkdf(keys.shared_key, purpose=_DEVICE_KEYS_PURPOSE),
                _NONCE,
                message.sealed_keys,
                labelled(_DEVICE_KEYS_PURPOSE, message.confirmation),
            )
            device_keys = DeviceKeys.decode(plain, max_size=MAX_ACTIVATION_MESSAGE)
            verify_signature(
                device_keys.identity_key,
                _POSSESSION_PURPOSE,
                _possession_message(ticket_id, self.server_address, *shares),
                device_keys.possession,
            )
        except (CryptoError, DecodeError):
            self._transition(ServerInput.CONFIRM_REJECTED)
            self._send(ActivationRefusal(RefusalCode.PASSWORD_REJECTED))
            return [PasswordRejected(ticket_id)]
        self._transition(ServerInput.CONFIRM_VERIFIED)
        return [DeviceKeysReceived(ticket_id, device_keys)]

    def send_answer(self, answer: ServerAnswer) -> None:
        """Seal ``answer`` under the PAKE key and queue :class:`ActivationAnswer` with ``cB``.

        Raises:
            LocalProtocolError: unless the device's keys were just received.
        """
        self._require(ServerInput.ANSWER_SENT)
        keys = self._keys
        assert keys is not None
        sealed = aead_seal(
            hkdf(keys.shared_key, purpose=_ANSWER_PURPOSE),
            _NONCE,
            answer.encode(),
            labelled(_ANSWER_PURPOSE, keys.confirmation),
        )
        message = ActivationAnswer(confirmation=keys.confirmation, sealed_answer=sealed)
        if len(encode_message(message)) > MAX_ACTIVATION_MESSAGE:
            raise ValueError("the answer does not fit in one activation message")
        self._transition(ServerInput.ANSWER_SENT)
        self._send(message)

    def refuse(self, code: RefusalCode = RefusalCode.NOT_PERMITTED) -> None:
        """Queue :class:`ActivationRefusal` instead of an answer.

        Raises:
            LocalProtocolError: unless the device's keys were just received.
        """
        self._transition(ServerInput.REFUSAL_SENT)
        self._send(ActivationRefusal(code))

    def _abort(self, reason: str) -> list[ActivationEvent]:
        self._transition(ServerInput.PROTOCOL_VIOLATION)
        self._send(ActivationRefusal(RefusalCode.PROTOCOL))
        return [ActivationAborted(reason)]

    def _forget_secrets(self) -> None:
        self._keys = None
