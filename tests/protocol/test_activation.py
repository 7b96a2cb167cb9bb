"""Activation: the two machines against each other, pinned messages, tampering, decoders."""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import DecodeError, LocalProtocolError
from sealwire.protocol.activation import (
    DEVICE_TRANSITIONS,
    MAX_ACTIVATION_MESSAGE,
    SERVER_TRANSITIONS,
    ActivationAborted,
    ActivationAnswer,
    ActivationChallenge,
    ActivationCompleted,
    ActivationConfirm,
    ActivationEvent,
    ActivationRefusal,
    ActivationRefused,
    ActivationStart,
    ActivationTicket,
    DeviceActivation,
    DeviceInput,
    DeviceKeys,
    DeviceKeysReceived,
    DeviceState,
    PasswordRejected,
    RefusalCode,
    ServerActivation,
    ServerAnswer,
    ServerInput,
    ServerNotConfirmed,
    ServerState,
    decode_message,
    encode_message,
)
from sealwire.protocol.codec import Struct
from sealwire.protocol.suite import (
    Argon2Params,
    SigningKey,
    aead_seal,
    hkdf,
    labelled,
    sha256,
)
from tests.conftest import FixedRandom

VECTORS = json.loads((pathlib.Path(__file__).parents[1] / "vectors" / "pake.json").read_text())
DOC = (pathlib.Path(__file__).parents[2] / "docs" / "protocol" / "ACTIVATION.md").read_text()

PASSWORD = "tulip-4711-orbit"
PARAMS = Argon2Params(salt=bytes(range(16)), memory_kib=8, iterations=1, lanes=1)
"""Argon2id at the smallest parameters the suite accepts (8 KiB, 1 pass, 1 lane): fast tests."""
TICKET = ActivationTicket(
    ticket_id=bytes(range(100, 116)),
    server=sha256(b"server"),
    relay="relay.example:443",
    params=PARAMS,
)
W = TICKET.password_scalar(PASSWORD)
IDENTITY = SigningKey.from_seed(bytes([9]) * 32)
PREKEYS = (b"prekey one", b"prekey two")
ANSWER = ServerAnswer(
    certificate_chain=(b"device cert", b"server cert"),
    organisation_root_key=bytes([7]) * 32,
    policy=b"policy",
    directory=b"directory",
)
Tamper = Callable[[int, bytes], bytes]


def make_device(password: str = PASSWORD, seed: bytes = b"device") -> DeviceActivation:
    return DeviceActivation(
        TICKET, password, identity=IDENTITY, signed_prekeys=PREKEYS, random=FixedRandom(seed)
    )


def make_server(w: bytes | None = W, seed: bytes = b"server") -> ServerActivation:
    return ServerActivation(
        TICKET.server, password_scalars={TICKET.ticket_id: w}.get, random=FixedRandom(seed)
    )


@dataclass
class Run:
    device: DeviceActivation
    server: ServerActivation
    device_events: list[ActivationEvent] = field(default_factory=list)
    server_events: list[ActivationEvent] = field(default_factory=list)
    wire: list[tuple[str, bytes]] = field(default_factory=list)


def roundtrip_until_done(
    device: DeviceActivation,
    server: ServerActivation,
    *,
    tamper: Tamper | None = None,
    decide: Callable[[ServerActivation, DeviceKeysReceived], None] | None = None,
) -> Run:
    """Drive both machines in memory until nothing is left to send (at most 10 messages)."""
    run = Run(device, server)
    device.start()
    pending = [("device", m) for m in device.data_to_send()]
    while pending:
        assert len(run.wire) < 10, "round-trip guard: the machines keep talking"
        sender, data = pending.pop(0)
        if tamper is not None:
            data = tamper(len(run.wire), data)
        run.wire.append((sender, data))
        if sender == "device":
            events = server.receive(data)
            run.server_events += events
            for event in events:
                if isinstance(event, DeviceKeysReceived):
                    if decide is None:
                        server.send_answer(ANSWER)
                    else:
                        decide(server, event)
            pending += [("server", m) for m in server.data_to_send()]
        else:
            run.device_events += device.receive(data)
            pending += [("device", m) for m in device.data_to_send()]
    return run


# --- Complete runs ---------------------------------------------------------------------------


def test_activation_completes() -> None:
    run = roundtrip_until_done(make_device(), make_server())
    assert run.device.state is DeviceState.COMPLETED
    assert run.server.state is ServerState.COMPLETED
    assert run.device_events == [ActivationCompleted(ANSWER)]
    [received] = run.server_events
    assert isinstance(received, DeviceKeysReceived)
    assert received.ticket_id == TICKET.ticket_id
    assert received.device_keys.identity_key == IDENTITY.public_key
    assert received.device_keys.signed_prekeys == PREKEYS
    assert [type(decode_message(m)) for _, m in run.wire] == [
        ActivationStart,
        ActivationChallenge,
        ActivationConfirm,
        ActivationAnswer,
    ]
    assert all(len(m) <= MAX_ACTIVATION_MESSAGE for _, m in run.wire)


def test_nothing_private_travels_in_the_clear() -> None:
    run = roundtrip_until_done(make_device(), make_server())
    everything = b"".join(m for _, m in run.wire)
    for secret in (IDENTITY.public_key, PREKEYS[0], b"device cert", ANSWER.policy, W):
        assert secret not in everything
    assert PASSWORD.encode() not in everything


def test_secrets_are_dropped_at_the_end() -> None:
    run = roundtrip_until_done(make_device(), make_server())
    assert run.device._keys is None and run.device._pake is None and run.device._password is None
    assert run.server._keys is None


def test_largest_answer_fits_in_one_activation_frame() -> None:
    big = ServerAnswer(
        certificate_chain=(bytes(512), bytes(512)),
        organisation_root_key=bytes(32),
        policy=bytes(4 * 1024),
        directory=bytes(10 * 1024),
    )
    run = roundtrip_until_done(make_device(), make_server(), decide=lambda s, e: s.send_answer(big))
    assert run.device_events == [ActivationCompleted(big)]
    assert len(run.wire[-1][1]) <= MAX_ACTIVATION_MESSAGE


# --- Pinned messages -------------------------------------------------------------------------


@pytest.mark.vectors
@pytest.mark.parametrize("name", ["completed", "wrong_password"])
def test_pinned_runs_decode_and_reencode(name: str) -> None:
    run = VECTORS["activation"][name]
    for message in run["messages"]:
        data = bytes.fromhex(message["hex"])
        assert encode_message(decode_message(data)) == data


@pytest.mark.vectors
def test_pinned_server_messages_are_reproduced_from_pinned_device_messages() -> None:
    """A server with the pinned randomness answers the pinned device messages byte for byte."""
    from tests.vectors.make_pake_vectors import ANSWER as PINNED_ANSWER
    from tests.vectors.make_pake_vectors import counter_random, ticket

    t = ticket()
    assert t.encode().hex() == VECTORS["activation"]["ticket"]
    server = ServerActivation(
        t.server,
        password_scalars={t.ticket_id: bytes.fromhex(VECTORS["password_scalar"]["w"])}.get,
        random=counter_random(0xE0),
    )
    messages = VECTORS["activation"]["completed"]["messages"]
    sent: list[str] = []
    for message in messages:
        if message["from"] != "device":
            continue
        for event in server.receive(bytes.fromhex(message["hex"])):
            if isinstance(event, DeviceKeysReceived):
                server.send_answer(PINNED_ANSWER)
        sent += [m.hex() for m in server.data_to_send()]
    assert sent == [m["hex"] for m in messages if m["from"] == "server"]
    assert server.state is ServerState.COMPLETED


@pytest.mark.vectors
def test_document_shows_the_pinned_vectors() -> None:
    flat = DOC.replace("\n", "").replace(" ", "")
    for case in VECTORS["spake2"]:
        for key in ("pA", "pB", "K", "Ke", "cA", "cB"):
            assert case[key] in flat, key
    for name in ("completed", "wrong_password"):
        for message in VECTORS["activation"][name]["messages"]:
            assert message["hex"] in flat, message["hex"][:40]


def test_document_names_every_state() -> None:
    for state in (*DeviceState, *ServerState):
        assert f"`{state.name}`" in DOC, state.name


# --- Wrong password --------------------------------------------------------------------------


def test_wrong_password_fails_on_both_sides_and_reveals_nothing_else() -> None:
    run = roundtrip_until_done(make_device(password=PASSWORD + "!"), make_server())
    assert run.server.state is ServerState.REJECTED
    assert run.server_events == [PasswordRejected(TICKET.ticket_id)]
    assert run.device.state is DeviceState.REFUSED
    assert run.device_events == [ActivationRefused(RefusalCode.PASSWORD_REJECTED)]
    # The refusal is one constant message, whatever the guess.
    refusal = run.wire[-1][1]
    assert refusal == encode_message(ActivationRefusal(RefusalCode.PASSWORD_REJECTED))
    other = roundtrip_until_done(make_device(password="something else"), make_server())
    assert other.wire[-1][1] == refusal
    # The server never sent anything keyed: only its share and the constant refusal.
    assert [type(decode_message(m)) for s, m in run.wire if s == "server"] == [
        ActivationChallenge,
        ActivationRefusal,
    ]


def test_server_that_does_not_know_the_password_is_not_confirmed() -> None:
    """An impostor server (wrong w) that answers anyway: the device ends SCARED."""
    impostor_w = ActivationTicket(
        ticket_id=TICKET.ticket_id, server=TICKET.server, relay=TICKET.relay, params=PARAMS
    ).password_scalar("guess")
    device = make_device()
    impostor = make_server(w=impostor_w)
    device.start()
    impostor.receive(device.data_to_send()[0])
    device.receive(impostor.data_to_send()[0])
    confirm = decode_message(device.data_to_send()[0])
    assert isinstance(confirm, ActivationConfirm)
    # The impostor cannot produce cB; it replays cA and some ciphertext.
    forged = ActivationAnswer(confirmation=confirm.confirmation, sealed_answer=confirm.sealed_keys)
    assert device.receive(encode_message(forged)) == [ServerNotConfirmed()]
    assert device.state is DeviceState.SCARED


def test_answer_from_another_run_is_not_confirmed() -> None:
    old = roundtrip_until_done(make_device(seed=b"d1"), make_server(seed=b"s1"))
    old_answer = old.wire[-1][1]
    device, server = make_device(seed=b"d2"), make_server(seed=b"s2")
    device.start()
    server.receive(device.data_to_send()[0])
    device.receive(server.data_to_send()[0])
    assert device.receive(old_answer) == [ServerNotConfirmed()]
    assert device.state is DeviceState.SCARED


def test_confirm_from_another_run_is_rejected() -> None:
    old = roundtrip_until_done(make_device(seed=b"d1"), make_server(seed=b"s1"))
    old_confirm = old.wire[2][1]
    device, server = make_device(seed=b"d2"), make_server(seed=b"s2")
    device.start()
    server.receive(device.data_to_send()[0])
    assert server.receive(old_confirm) == [PasswordRejected(TICKET.ticket_id)]
    assert server.state is ServerState.REJECTED


# --- Tampering -------------------------------------------------------------------------------


def _flip(index: int, position: int, mask: int) -> Tamper:
    def tamper(i: int, data: bytes) -> bytes:
        if i != index or position >= len(data):
            return data
        return data[:position] + bytes([data[position] ^ mask]) + data[position + 1 :]

    return tamper


REFERENCE = roundtrip_until_done(make_device(), make_server())


@pytest.mark.parametrize("index", range(len(REFERENCE.wire)))
@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_any_altered_byte_of_any_message_causes_failure(index: int, mask: int) -> None:
    """Flip each bit-position class of each byte of each message: never a completion."""
    for position in range(len(REFERENCE.wire[index][1])):
        run = roundtrip_until_done(
            make_device(), make_server(), tamper=_flip(index, position, mask)
        )
        assert run.device.state is not DeviceState.COMPLETED, (index, position)
        assert not any(isinstance(e, ActivationCompleted) for e in run.device_events)
        assert run.device.finished
        if index < 3:  # the server had not answered yet
            assert run.server.state is not ServerState.COMPLETED
            assert not any(isinstance(e, DeviceKeysReceived) for e in run.server_events)


def test_altered_refusal_code_still_ends_without_activation() -> None:
    tamper = _flip(3, 4, 0x07)  # the refusal's code byte: 2 -> 5 (an unknown code)
    run = roundtrip_until_done(make_device(password="wrong"), make_server(), tamper=tamper)
    assert run.device.state in (DeviceState.REFUSED, DeviceState.ABORTED)


# --- Replays, order, terminal states ---------------------------------------------------------


def test_out_of_order_messages_abort() -> None:
    device = make_device()
    device.start()
    device.data_to_send()
    [event] = device.receive(REFERENCE.wire[3][1])  # an answer before the challenge
    assert isinstance(event, ActivationAborted)
    assert device.state is DeviceState.ABORTED

    server = make_server()
    [event] = server.receive(REFERENCE.wire[2][1])  # a confirm before the start
    assert isinstance(event, ActivationAborted)
    assert server.state is ServerState.ABORTED
    assert server.data_to_send() == [encode_message(ActivationRefusal(RefusalCode.PROTOCOL))]


def test_replayed_messages_abort() -> None:
    device, server = make_device(), make_server()
    device.start()
    start = device.data_to_send()[0]
    server.receive(start)
    challenge = server.data_to_send()[0]
    assert isinstance(server.receive(start)[0], ActivationAborted)  # start again
    device.receive(challenge)
    assert isinstance(device.receive(challenge)[0], ActivationAborted)  # challenge again
    assert device.state is DeviceState.ABORTED


def test_messages_a_peer_never_receives_abort() -> None:
    device = make_device()
    device.start()
    [event] = device.receive(REFERENCE.wire[0][1])  # its own start, reflected
    assert isinstance(event, ActivationAborted)
    server = make_server()
    [event] = server.receive(encode_message(ActivationRefusal(RefusalCode.PROTOCOL)))
    assert isinstance(event, ActivationAborted)


def test_while_the_application_decides_the_wire_is_ignored() -> None:
    decisions: list[DeviceKeysReceived] = []
    run = roundtrip_until_done(
        make_device(), make_server(), decide=lambda s, e: decisions.append(e)
    )
    assert run.server.state is ServerState.AWAIT_ANSWER
    for _, data in run.wire:
        assert run.server.receive(data) == []
    assert run.server.receive(b"garbage") == []
    assert run.server.data_to_send() == []
    run.server.send_answer(ANSWER)
    assert run.device.receive(run.server.data_to_send()[0]) == [ActivationCompleted(ANSWER)]


@pytest.mark.parametrize(
    "password", [PASSWORD, PASSWORD + "x"], ids=["after-completion", "after-rejection"]
)
def test_messages_after_a_terminal_state_are_ignored(password: str) -> None:
    run = roundtrip_until_done(make_device(password=password), make_server())
    assert run.device.finished and run.server.finished
    for _, data in run.wire:
        assert run.device.receive(data) == []
        assert run.server.receive(data) == []
    assert run.device.data_to_send() == [] and run.server.data_to_send() == []


def test_unknown_ticket_is_refused() -> None:
    run = roundtrip_until_done(make_device(), make_server(w=None))
    assert run.server.state is ServerState.REFUSED
    assert run.server_events == [ActivationAborted("unknown ticket")]
    assert run.device_events == [ActivationRefused(RefusalCode.UNKNOWN_TICKET)]
    assert run.device.state is DeviceState.REFUSED


def test_application_refusal_reaches_the_device() -> None:
    run = roundtrip_until_done(make_device(), make_server(), decide=lambda s, e: s.refuse())
    assert run.server.state is ServerState.REFUSED
    assert run.device_events == [ActivationRefused(RefusalCode.NOT_PERMITTED)]


IDENTITY_POINT = (1).to_bytes(32, "little")


def test_invalid_share_from_device_aborts_the_server() -> None:
    server = make_server()
    start = ActivationStart(ticket_id=TICKET.ticket_id, share=IDENTITY_POINT)
    assert server.receive(encode_message(start)) == [ActivationAborted("invalid share")]
    assert server.state is ServerState.ABORTED
    assert server.data_to_send() == [encode_message(ActivationRefusal(RefusalCode.PROTOCOL))]


def test_invalid_share_from_server_scares_the_device() -> None:
    device = make_device()
    device.start()
    device.data_to_send()
    challenge = encode_message(ActivationChallenge(share=IDENTITY_POINT))
    assert device.receive(challenge) == [ServerNotConfirmed()]
    assert device.state is DeviceState.SCARED
    assert device.data_to_send() == []


def test_possession_proof_is_checked() -> None:
    """A device that knows the password but presents keys it cannot sign for is rejected."""
    device, server = make_device(), make_server()
    device.start()
    server.receive(device.data_to_send()[0])
    device.receive(server.data_to_send()[0])
    device.data_to_send()
    keys = device._keys
    assert keys is not None
    bad = DeviceKeys(identity_key=IDENTITY.public_key, signed_prekeys=(), possession=bytes(64))
    sealed = aead_seal(
        hkdf(keys.shared_key, purpose="activation/device-keys"),
        bytes(12),
        bad.encode(),
        labelled("activation/device-keys", keys.confirmation),
    )
    confirm = ActivationConfirm(confirmation=keys.confirmation, sealed_keys=sealed)
    assert server.receive(encode_message(confirm)) == [PasswordRejected(TICKET.ticket_id)]


# --- Local misuse ----------------------------------------------------------------------------


def test_local_misuse_raises_local_protocol_error() -> None:
    device = make_device()
    device.start()
    with pytest.raises(LocalProtocolError, match=r"START.*device.*AWAIT_CHALLENGE"):
        device.start()
    server = make_server()
    with pytest.raises(LocalProtocolError, match=r"ANSWER_SENT.*server.*AWAIT_START"):
        server.send_answer(ANSWER)
    with pytest.raises(LocalProtocolError, match=r"REFUSAL_SENT.*server.*AWAIT_START"):
        server.refuse()
    assert server.state is ServerState.AWAIT_START and server.data_to_send() == []


def test_too_many_prekeys_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        DeviceActivation(
            TICKET, PASSWORD, identity=IDENTITY, signed_prekeys=[b"p"] * 5, random=FixedRandom()
        )


# --- Tables ----------------------------------------------------------------------------------


def test_tables_cover_every_state_and_terminal_states_are_final() -> None:
    assert set(DEVICE_TRANSITIONS) == set(DeviceState)
    assert set(SERVER_TRANSITIONS) == set(ServerState)
    terminal = {s for s, row in DEVICE_TRANSITIONS.items() if not row}
    assert terminal == {
        DeviceState.COMPLETED,
        DeviceState.REFUSED,
        DeviceState.SCARED,
        DeviceState.ABORTED,
    }
    for row in DEVICE_TRANSITIONS.values():
        assert set(row) <= set(DeviceInput)
    for row in SERVER_TRANSITIONS.values():
        assert set(row) <= set(ServerInput)
    # A failed confirmation always ends in the explicit terminal state for a suspected attack.
    for row in DEVICE_TRANSITIONS.values():
        if DeviceInput.CONFIRMATION_FAILED in row:
            assert row[DeviceInput.CONFIRMATION_FAILED] is DeviceState.SCARED
    for row in SERVER_TRANSITIONS.values():
        if ServerInput.CONFIRM_REJECTED in row:
            assert row[ServerInput.CONFIRM_REJECTED] is ServerState.REJECTED


# --- Decoders: arbitrary bytes give a value or DecodeError -----------------------------------

EXAMPLES: list[Struct] = [
    ActivationStart(ticket_id=bytes(16), share=bytes(32)),
    ActivationChallenge(share=bytes(range(32))),
    ActivationConfirm(confirmation=bytes(32), sealed_keys=b"sealed"),
    ActivationAnswer(confirmation=bytes(32), sealed_answer=b""),
    ActivationRefusal(code=RefusalCode.UNKNOWN_TICKET),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_messages_round_trip(message: Struct) -> None:
    data = encode_message(message)
    assert decode_message(data) == message
    assert encode_message(decode_message(data)) == data


def test_ticket_and_payloads_round_trip() -> None:
    for value in (
        TICKET,
        ANSWER,
        DeviceKeys(identity_key=bytes(32), signed_prekeys=(), possession=bytes(64)),
    ):
        assert type(value).decode(value.encode()) == value


def _value_or_decode_error(decoder: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decoder(data)


@given(st.binary(max_size=300))
def test_decoders_give_a_value_or_decode_error(data: bytes) -> None:
    _value_or_decode_error(decode_message, data)
    _value_or_decode_error(ActivationTicket.decode, data)
    _value_or_decode_error(DeviceKeys.decode, data)
    _value_or_decode_error(ServerAnswer.decode, data)


@given(st.sampled_from(REFERENCE.wire), st.integers(0, 400), st.binary(max_size=8))
def test_decoders_on_mutated_valid_messages(
    item: tuple[str, bytes], at: int, insert: bytes
) -> None:
    data = item[1]
    at %= len(data) + 1
    for mutated in (
        data[:at],
        data[:at] + insert + data[at:],
        data[:at] + insert + data[at + len(insert) :],
    ):
        _value_or_decode_error(decode_message, mutated)


MESSAGE_STRATEGY = st.one_of(
    st.builds(
        ActivationStart,
        ticket_id=st.binary(min_size=16, max_size=16),
        share=st.binary(min_size=32, max_size=32),
    ),
    st.builds(ActivationChallenge, share=st.binary(min_size=32, max_size=32)),
    st.builds(
        ActivationConfirm,
        confirmation=st.binary(min_size=32, max_size=32),
        sealed_keys=st.binary(max_size=64),
    ),
    st.builds(
        ActivationAnswer,
        confirmation=st.binary(min_size=32, max_size=32),
        sealed_answer=st.binary(max_size=64),
    ),
    st.builds(ActivationRefusal, code=st.sampled_from(RefusalCode)),
)


def _machines_in_every_state() -> list[DeviceActivation | ServerActivation]:
    device_ready = make_device()
    device_waiting = make_device()
    device_waiting.start()
    device_answering = make_device()
    device_answering.start()
    server_confirming = make_server()
    server_confirming.receive(device_answering.data_to_send()[0])
    device_answering.receive(server_confirming.data_to_send()[0])
    return [device_ready, device_waiting, device_answering, make_server(), server_confirming]


@given(st.integers(0, 4), st.one_of(st.binary(max_size=200), MESSAGE_STRATEGY.map(encode_message)))
def test_machines_turn_any_bytes_into_events(which: int, data: bytes) -> None:
    """h11's fuzz invariant: whatever arrives, the machines return events and never raise."""
    machine = _machines_in_every_state()[which]
    events = machine.receive(data)
    assert isinstance(events, list)
    assert not any(isinstance(e, ActivationCompleted | DeviceKeysReceived) for e in events)
    for message in machine.data_to_send():
        decode_message(message)
