"""Device management on the wire: strict decoders for every management message, payload types,
signed commands and policies, passcode rules, secrets kept out of ``repr``; pinned vectors
(tests/vectors/management.json, docs/protocol/MANAGEMENT.md)."""

from __future__ import annotations

import json
import pathlib
from dataclasses import replace
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import DecodeError, InvalidSignature
from sealwire.protocol.activation import MAX_POLICY_SIZE, ServerAnswer
from sealwire.protocol.codec import Struct
from sealwire.protocol.directory import (
    MAX_FAILED_ATTEMPTS,
    MAX_OFFLINE_GRACE_S,
    MAX_POLICY_NAME,
    MIN_FAILED_ATTEMPTS,
    REQUEST_ID_SIZE,
    Policy,
    SignedPolicy,
)
from sealwire.protocol.envelope import MAX_BODY_SIZE, PayloadType
from sealwire.protocol.identity import MAX_TIME, address_of
from sealwire.protocol.management import (
    COMMAND_ID_SIZE,
    MANAGEMENT_MESSAGES,
    MAX_PENDING_COMMANDS,
    MIN_PASSCODE,
    REMOTE_SECRET_SIZE,
    Command,
    CommandKind,
    CommandResult,
    CommandStatus,
    ComplianceIssue,
    DeviceErased,
    DeviceReport,
    FetchRemoteSecret,
    ManagementAnswer,
    RemoteSecretAnswer,
    SecretStatus,
    SignedCommand,
    check_passcode,
    decode_management_message,
    encode_management_message,
    passcode_classes,
    payload_type_of,
)
from sealwire.protocol.suite import XWING_PUBLIC_KEY_SIZE, SigningKey, XWingPrivateKey
from tests.protocol.keys import NOW, key, make_org
from tests.vectors.make_management_vectors import build, structures

VECTORS = json.loads(
    (pathlib.Path(__file__).parents[1] / "vectors" / "management.json").read_text()
)
DOC = (pathlib.Path(__file__).parents[2] / "docs" / "protocol" / "MANAGEMENT.md").read_text()

ORG = make_org()
SERVER = ORG.server
ALICE = ORG.device(10)
BOB = ORG.device(11)
EXAMPLES = [value for _, value in structures()] + [DeviceErased(failed_attempts=10)]
"""One of each member: the pinned vectors' structures, and those added since (no vector)."""
WITHOUT_VECTOR = {DeviceErased}
"""Members added after the vectors were pinned (strict decoder tests instead)."""

PAYLOAD_TYPES = {
    DeviceReport: PayloadType.CONTROL,
    ManagementAnswer: PayloadType.CONTROL,
    SignedPolicy: PayloadType.POLICY,
    SignedCommand: PayloadType.COMMAND,
    CommandResult: PayloadType.COMMAND,
    FetchRemoteSecret: PayloadType.CONTROL,
    RemoteSecretAnswer: PayloadType.CONTROL,
    DeviceErased: PayloadType.CONTROL,
}
"""The payload type of every member, as docs/protocol/MANAGEMENT.md lists them."""

CODES = {
    DeviceReport: 1,
    ManagementAnswer: 2,
    SignedPolicy: 3,
    SignedCommand: 4,
    CommandResult: 5,
    FetchRemoteSecret: 6,
    RemoteSecretAnswer: 7,
    DeviceErased: 8,
}

# --- strategies: every field within its bounds -------------------------------------------------

request_ids = st.binary(min_size=REQUEST_ID_SIZE, max_size=REQUEST_ID_SIZE)
command_ids = st.binary(min_size=COMMAND_ID_SIZE, max_size=COMMAND_ID_SIZE)
addresses = st.binary(min_size=32, max_size=32)
times = st.integers(0, MAX_TIME)
signatures = st.binary(min_size=64, max_size=64)
passcodes = st.text(min_size=MIN_PASSCODE, max_size=128)
commands = st.one_of(
    # Only a lock carries a passcode, and a passcode has at least MIN_PASSCODE characters.
    st.builds(
        Command,
        command_id=command_ids,
        device=addresses,
        kind=st.just(CommandKind.LOCK),
        issued_at=times,
        new_passcode=st.none() | passcodes,
    ),
    st.builds(
        Command,
        command_id=command_ids,
        device=addresses,
        kind=st.sampled_from([k for k in CommandKind if k is not CommandKind.LOCK]),
        issued_at=times,
        new_passcode=st.none(),
    ),
)
signed_commands = st.builds(SignedCommand, command=commands, signature=signatures)
policies = st.builds(
    Policy,
    version=st.integers(1, (1 << 31) - 1),
    issued_at=times,
    prekey_rotation_s=st.integers(3600, 90 * 86400),
    directory_cache_s=st.integers(0, 86400),
    name=st.text(max_size=MAX_POLICY_NAME),
    passcode_min_length=st.integers(6, 64),
    passcode_classes=st.integers(1, 4),
    max_failed_attempts=st.integers(MIN_FAILED_ATTEMPTS, MAX_FAILED_ATTEMPTS),
    auto_lock_s=st.integers(0, 86400),
    offline_grace_s=st.integers(0, MAX_OFFLINE_GRACE_S),
    retention_days=st.integers(0, 3650),
    export_allowed=st.booleans(),
)
signed_policies = st.builds(SignedPolicy, policy=policies, signature=signatures)
management_messages = st.one_of(
    st.builds(
        DeviceReport,
        request_id=request_ids,
        policy_name=st.text(max_size=64),
        policy_version=st.integers(0, (1 << 31) - 1),
        policy_issued_at=times,
        issues=st.lists(st.sampled_from(ComplianceIssue), max_size=8).map(tuple),
    ),
    st.builds(
        ManagementAnswer,
        request_id=request_ids,
        policy=st.none() | signed_policies,
        commands=st.lists(signed_commands, max_size=3).map(tuple),
    ),
    signed_policies,
    signed_commands,
    st.builds(
        CommandResult,
        command_id=command_ids,
        status=st.sampled_from(CommandStatus),
        detail=st.text(max_size=200),
    ),
    st.builds(
        FetchRemoteSecret,
        request_id=request_ids,
        reply_prekey_id=st.integers(0, (1 << 32) - 1),
        reply_key=st.binary(min_size=XWING_PUBLIC_KEY_SIZE, max_size=XWING_PUBLIC_KEY_SIZE),
    ),
    # A secret comes with GRANTED, and only with it.
    st.builds(
        RemoteSecretAnswer,
        request_id=request_ids,
        status=st.just(SecretStatus.GRANTED),
        secret=st.binary(min_size=REMOTE_SECRET_SIZE, max_size=REMOTE_SECRET_SIZE),
        policy=st.none() | signed_policies,
    ),
    st.builds(
        RemoteSecretAnswer,
        request_id=request_ids,
        status=st.just(SecretStatus.WIPE),
        secret=st.none(),
        policy=st.none() | signed_policies,
    ),
    st.builds(DeviceErased, failed_attempts=st.integers(1, MAX_FAILED_ATTEMPTS)),
)


def mutations(data: bytes, position: int, byte: int, extra: bytes) -> list[bytes]:
    """One byte replaced, the encoding cut short there, and bytes appended."""
    i = position % len(data)
    return [data[:i] + bytes([byte]) + data[i + 1 :], data[:i], data + extra]


def decodes_cleanly(payload_type: PayloadType, data: bytes) -> None:
    """The decoder's invariant: a member that travels as ``payload_type`` and re-encodes to
    exactly ``data``, or DecodeError; nothing else."""
    try:
        message = decode_management_message(payload_type, data)
    except DecodeError:
        return
    assert type(message) in PAYLOAD_TYPES
    assert payload_type_of(message) is payload_type
    assert encode_management_message(message) == data


# --- round trips -----------------------------------------------------------------------------


def test_the_family_has_exactly_the_documented_codes() -> None:
    for cls, code in CODES.items():
        example = next(e for e in EXAMPLES if type(e) is cls)
        assert MANAGEMENT_MESSAGES.code_of(example) == code
        assert cbor2.loads(encode_management_message(example))[0] == code
    assert {type(e) for e in EXAMPLES} == set(CODES)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_example_travels_under_its_payload_type(message: Struct) -> None:
    assert payload_type_of(message) is PAYLOAD_TYPES[type(message)]
    data = encode_management_message(message)
    assert decode_management_message(PAYLOAD_TYPES[type(message)], data) == message


@given(management_messages)
def test_management_messages_round_trip(message: Struct) -> None:
    data = encode_management_message(message)
    decoded = decode_management_message(payload_type_of(message), data)
    assert decoded == message
    assert encode_management_message(decoded) == data


@given(st.one_of(commands, policies, signed_policies))
def test_nested_structures_round_trip_as_bare_maps(value: Struct) -> None:
    data = value.encode()
    assert type(value).decode(data) == value
    assert type(value).decode(data).encode() == data


# --- decoders: a member or DecodeError, never anything else ----------------------------------


@given(st.binary(max_size=400), st.sampled_from(PayloadType))
def test_arbitrary_bytes_give_a_member_or_decode_error(data: bytes, pt: PayloadType) -> None:
    decodes_cleanly(pt, data)


@given(
    st.sampled_from(range(len(EXAMPLES))),
    st.sampled_from(PayloadType),
    st.integers(min_value=0),
    st.integers(0, 255),
    st.binary(min_size=1, max_size=8),
)
def test_mutated_encodings_give_a_member_or_decode_error(
    which: int, pt: PayloadType, position: int, byte: int, extra: bytes
) -> None:
    """Byte flips, truncation, appended bytes, under every payload type."""
    data = encode_management_message(EXAMPLES[which])
    for candidate in mutations(data, position, byte, extra):
        decodes_cleanly(pt, candidate)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.integers(0, 12), inner, max_size=6)
    ),
    max_leaves=20,
)


@given(cbor_values, st.sampled_from(PayloadType))
def test_arbitrary_cbor_shapes_give_a_member_or_decode_error(value: Any, pt: PayloadType) -> None:
    """Well-formed CBOR of the right general shape, reaching the schema checks."""
    for code in range(0, 9):
        decodes_cleanly(pt, cbor2.dumps([code, value], canonical=True))


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("pt", list(PayloadType), ids=lambda p: p.name)
def test_a_message_under_another_payload_type_is_refused(message: Struct, pt: PayloadType) -> None:
    data = encode_management_message(message)
    if pt is PAYLOAD_TYPES[type(message)]:
        assert decode_management_message(pt, data) == message
    else:
        with pytest.raises(DecodeError, match=pt.name):
            decode_management_message(pt, data)


def test_only_management_messages_have_a_payload_type() -> None:
    policy = EXAMPLES[2].policy  # type: ignore[attr-defined]
    for stranger in (policy, EXAMPLES[1].commands[0].command):  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            payload_type_of(stranger)
        with pytest.raises(TypeError):
            encode_management_message(stranger)


def test_decoding_is_bounded_by_the_envelope_body() -> None:
    big = cbor2.dumps([5, {0: bytes(16), 1: 1, 2: "x" * MAX_BODY_SIZE}])
    with pytest.raises(DecodeError, match="larger than"):
        decode_management_message(PayloadType.COMMAND, big)


# --- strict decoding: keys, types and bounds -------------------------------------------------


def body(name: str) -> dict[int, Any]:
    """The plain ``{key: value}`` body of the named vector structure (a fresh copy)."""
    value = dict(structures())[name]
    return cbor2.loads(encode_management_message(value))[1]  # type: ignore[no-any-return]


def set_path(value: dict[int, Any], path: tuple[int, ...], new: Any) -> dict[int, Any]:
    """Set (or, with ``new`` = ``DELETE``, remove) the item at ``path`` of a nested body."""
    target: Any = value
    for step in path[:-1]:
        target = target[step]
    if new is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = new
    return value


DELETE = object()
CODE = {cls.__name__: code for cls, code in CODES.items()}
REFUSED = [
    # (structure, path inside its body, value)
    ("DeviceReport", (9,), 0),  # unknown key
    ("DeviceReport", (0,), bytes(15)),
    ("DeviceReport", (0,), bytes(17)),
    ("DeviceReport", (0,), "0" * 16),
    ("DeviceReport", (1,), "n" * 65),
    ("DeviceReport", (1,), b"default"),
    ("DeviceReport", (2,), -1),
    ("DeviceReport", (2,), 1 << 31),
    ("DeviceReport", (2,), True),
    ("DeviceReport", (3,), MAX_TIME + 1),
    ("DeviceReport", (4,), [1] * 9),
    ("DeviceReport", (4,), [4]),  # unknown issue
    ("DeviceReport", (4,), [0]),
    ("DeviceReport", (4,), 1),
    ("DeviceReport", (4,), DELETE),  # required
    ("ManagementAnswer", (3,), []),
    ("ManagementAnswer", (0,), bytes(15)),
    ("ManagementAnswer", (1,), None),  # absent is left out, never null
    ("ManagementAnswer", (2,), [body("SignedCommand")] * (MAX_PENDING_COMMANDS + 1)),
    ("ManagementAnswer", (2,), body("SignedCommand")),
    ("ManagementAnswer", (2,), DELETE),  # a field with a default is still written, and required
    ("ManagementAnswer", (2, 0, 0, 5), "extra"),  # unknown key in a nested command
    ("ManagementAnswer", (1, 0, 12), 0),  # unknown key in the nested policy
    ("SignedPolicy", (2,), b""),
    ("SignedPolicy", (1,), bytes(63)),
    ("SignedPolicy", (1,), bytes(65)),
    ("SignedPolicy", (0, 12), 0),
    ("SignedPolicy", (0, 0), 0),  # version
    ("SignedPolicy", (0, 4), "n" * (MAX_POLICY_NAME + 1)),
    ("SignedPolicy", (0, 4), b"finance"),
    ("SignedPolicy", (0, 5), 5),  # passcode_min_length
    ("SignedPolicy", (0, 5), 65),
    ("SignedPolicy", (0, 6), 0),  # passcode_classes
    ("SignedPolicy", (0, 6), 5),
    ("SignedPolicy", (0, 7), MIN_FAILED_ATTEMPTS - 1),  # max_failed_attempts: 2
    ("SignedPolicy", (0, 7), MAX_FAILED_ATTEMPTS + 1),  # 11
    ("SignedPolicy", (0, 7), True),
    ("SignedPolicy", (0, 8), -1),  # auto_lock_s
    ("SignedPolicy", (0, 8), 86401),
    ("SignedPolicy", (0, 9), MAX_OFFLINE_GRACE_S + 1),  # offline_grace_s
    ("SignedPolicy", (0, 9), -1),
    ("SignedPolicy", (0, 10), 3651),  # retention_days
    ("SignedPolicy", (0, 11), 1),  # export_allowed must be a boolean
    ("SignedPolicy", (0, 11), None),
    ("SignedPolicy", (0, 4), DELETE),  # every policy key is written, and required
    ("SignedPolicy", (0, 11), DELETE),
    ("SignedCommand", (2,), 0),
    ("SignedCommand", (1,), bytes(63)),
    ("SignedCommand", (0, 5), 0),
    ("SignedCommand", (0, 0), bytes(COMMAND_ID_SIZE - 1)),
    ("SignedCommand", (0, 0), bytes(COMMAND_ID_SIZE + 1)),
    ("SignedCommand", (0, 0), "c" * COMMAND_ID_SIZE),
    ("SignedCommand", (0, 1), bytes(31)),
    ("SignedCommand", (0, 1), bytes(33)),
    ("SignedCommand", (0, 2), 0),  # kind
    ("SignedCommand", (0, 2), 4),
    ("SignedCommand", (0, 2), True),
    ("SignedCommand", (0, 3), -1),
    ("SignedCommand", (0, 3), MAX_TIME + 1),
    ("SignedCommand", (0, 4), "p" * 129),
    ("SignedCommand", (0, 4), b"passcode"),
    ("SignedCommand", (0, 4), None),
    ("ManagementAnswer", (2, 0, 0, 4), "p" * 129),  # the lock command of the answer
    ("ManagementAnswer", (2, 0, 0, 4), b"passcode"),
    ("ManagementAnswer", (2, 0, 0, 4), None),
    ("SignedCommand", (0, 2), DELETE),
    ("CommandResult", (3,), 0),
    ("CommandResult", (0,), bytes(15)),
    ("CommandResult", (1,), 0),
    ("CommandResult", (1,), 3),
    ("CommandResult", (2,), "d" * 201),
    ("CommandResult", (2,), b"locked"),
    ("CommandResult", (2,), DELETE),
    ("FetchRemoteSecret", (3,), 0),
    ("FetchRemoteSecret", (1,), -1),
    ("FetchRemoteSecret", (1,), 1 << 32),
    ("FetchRemoteSecret", (2,), bytes(XWING_PUBLIC_KEY_SIZE - 1)),
    ("FetchRemoteSecret", (2,), bytes(XWING_PUBLIC_KEY_SIZE + 1)),
    ("FetchRemoteSecret", (2,), DELETE),
    ("RemoteSecretAnswer", (4,), 0),
    ("RemoteSecretAnswer", (1,), 0),
    ("RemoteSecretAnswer", (1,), 3),
    ("RemoteSecretAnswer", (2,), bytes(REMOTE_SECRET_SIZE - 1)),
    ("RemoteSecretAnswer", (2,), bytes(REMOTE_SECRET_SIZE + 1)),
    ("RemoteSecretAnswer", (2,), "s" * REMOTE_SECRET_SIZE),
    ("RemoteSecretAnswer", (2,), None),
    ("RemoteSecretAnswer", (3,), bytes(10)),
    ("RemoteSecretAnswer", (3, 0, 7), 2),
]


@pytest.mark.parametrize(
    ("name", "path", "value"),
    REFUSED,
    ids=[f"{n}-{'.'.join(map(str, p))}-{i}" for i, (n, p, _) in enumerate(REFUSED)],
)
def test_invalid_fields_are_refused(name: str, path: tuple[int, ...], value: Any) -> None:
    data = cbor2.dumps([CODE[name.split("/")[0]], set_path(body(name), path, value)])
    pt = PAYLOAD_TYPES[next(cls for cls in CODES if cls.__name__ == name.split("/")[0])]
    with pytest.raises(DecodeError):
        decode_management_message(pt, data)


ACCEPTED = [
    # The limits themselves decode: each row's neighbour in REFUSED is one step past it.
    ("DeviceReport", (2,), 0),
    ("DeviceReport", (2,), (1 << 31) - 1),
    ("DeviceReport", (4,), [1, 2, 3, 1, 2, 3, 1, 2]),
    ("DeviceReport", (4,), []),
    ("ManagementAnswer", (2,), [body("SignedCommand")] * MAX_PENDING_COMMANDS),
    ("ManagementAnswer", (1,), DELETE),
    ("SignedPolicy", (0, 4), "é" * MAX_POLICY_NAME),
    ("SignedPolicy", (0, 7), MIN_FAILED_ATTEMPTS),
    ("SignedPolicy", (0, 7), MAX_FAILED_ATTEMPTS),
    ("SignedPolicy", (0, 9), MAX_OFFLINE_GRACE_S),
    ("SignedPolicy", (0, 9), 0),
    ("SignedPolicy", (0, 5), 64),
    ("SignedPolicy", (0, 6), 4),
    ("SignedPolicy", (0, 11), True),
    ("ManagementAnswer", (2, 0, 0, 4), "ü" * 128),  # the lock command of the answer
    ("ManagementAnswer", (2, 0, 0, 4), "ü" * MIN_PASSCODE),
    ("ManagementAnswer", (2, 0, 0, 4), DELETE),  # a lock without a new passcode
    ("CommandResult", (2,), "d" * 200),
    ("FetchRemoteSecret", (1,), (1 << 32) - 1),
    ("RemoteSecretAnswer", (3,), DELETE),
    ("RemoteSecretAnswer/wipe", (3,), body("SignedPolicy")),
]


@pytest.mark.parametrize(
    ("name", "path", "value"),
    ACCEPTED,
    ids=[f"{n}-{'.'.join(map(str, p))}-{i}" for i, (n, p, _) in enumerate(ACCEPTED)],
)
def test_values_at_their_bounds_are_accepted(name: str, path: tuple[int, ...], value: Any) -> None:
    data = cbor2.dumps([CODE[name.split("/")[0]], set_path(body(name), path, value)])
    pt = PAYLOAD_TYPES[next(cls for cls in CODES if cls.__name__ == name.split("/")[0])]
    message = decode_management_message(pt, data)
    assert encode_management_message(message) == data


@pytest.mark.parametrize(
    "value",
    [
        {},
        {0: 0},
        {0: MAX_FAILED_ATTEMPTS + 1},
        {0: -1},
        {0: True},
        {0: "3"},
        {0: 3.0},
        {0: 3, 1: 0},
    ],
    ids=repr,
)
def test_a_malformed_device_erased_is_refused(value: Any) -> None:
    """Strict like its family (no vector: it was added after they were pinned)."""
    with pytest.raises(DecodeError):
        decode_management_message(PayloadType.CONTROL, cbor2.dumps([CODE["DeviceErased"], value]))


@pytest.mark.parametrize("attempts", [1, MIN_FAILED_ATTEMPTS, MAX_FAILED_ATTEMPTS])
def test_a_device_erased_within_its_bounds_is_accepted(attempts: int) -> None:
    data = cbor2.dumps([CODE["DeviceErased"], {0: attempts}])
    message = decode_management_message(PayloadType.CONTROL, data)
    assert message == DeviceErased(failed_attempts=attempts)
    assert encode_management_message(message) == data
    with pytest.raises(DecodeError):
        decode_management_message(PayloadType.COMMAND, data)


@pytest.mark.parametrize(
    "value",
    [
        [0, {}],  # unknown codes
        [9, {}],
        [True, body("CommandResult")],  # a boolean is not a code
        [5, body("CommandResult"), 0],  # not a pair
        [5],
        {5: body("CommandResult")},
        [5, [body("CommandResult")]],
        [5, None],
    ],
)
def test_malformed_frames_of_the_family_are_refused(value: Any) -> None:
    with pytest.raises(DecodeError):
        decode_management_message(PayloadType.COMMAND, cbor2.dumps(value))


def test_non_deterministic_encodings_are_refused() -> None:
    good = encode_management_message(EXAMPLES[4])  # CommandResult
    # 0x1801 is 1 written in two bytes: the same value, not the shortest head.
    longer = good.replace(bytes.fromhex("0101"), bytes.fromhex("011801"), 1)
    assert cbor2.loads(longer) == cbor2.loads(good)
    for candidate in (longer, good + b"\x00", good[:-1]):
        with pytest.raises(DecodeError):
            decode_management_message(PayloadType.COMMAND, candidate)


# --- cross-field rules: refused on construction (ValueError) and on decoding (DecodeError) -----

CROSS_FIELD_REFUSED = [
    # (structure, path inside its body, value): each breaks a rule between fields
    ("SignedCommand", (0, 4), "passcode"),  # a wipe with a passcode
    ("ManagementAnswer", (2, 0, 0, 4), "p" * (MIN_PASSCODE - 1)),  # a lock, passcode too short
    ("ManagementAnswer", (2, 0, 0, 4), ""),
    ("ManagementAnswer", (2, 0, 0, 2), int(CommandKind.WIPE)),  # the lock's passcode on a wipe
    ("ManagementAnswer", (2, 0, 0, 2), int(CommandKind.RENEW_KEYS)),
    ("RemoteSecretAnswer", (2,), DELETE),  # GRANTED without a secret
    ("RemoteSecretAnswer", (1,), int(SecretStatus.WIPE)),  # WIPE with a secret
    ("RemoteSecretAnswer/wipe", (2,), bytes(REMOTE_SECRET_SIZE)),
    ("RemoteSecretAnswer/wipe", (1,), int(SecretStatus.GRANTED)),  # GRANTED without a secret
]


@pytest.mark.parametrize(
    ("name", "path", "value"),
    CROSS_FIELD_REFUSED,
    ids=[f"{n}-{'.'.join(map(str, p))}-{i}" for i, (n, p, _) in enumerate(CROSS_FIELD_REFUSED)],
)
def test_cross_field_rules_are_refused_on_decoding(
    name: str, path: tuple[int, ...], value: Any
) -> None:
    cls = next(cls for cls in CODES if cls.__name__ == name.split("/")[0])
    data = cbor2.dumps([CODES[cls], set_path(body(name), path, value)])
    # Every field on its own is within its bounds: only the combination is wrong.
    with pytest.raises(DecodeError):
        decode_management_message(PAYLOAD_TYPES[cls], data)


def _command(kind: CommandKind, new_passcode: str | None) -> Command:
    return Command(
        command_id=bytes(COMMAND_ID_SIZE),
        device=bytes(32),
        kind=kind,
        issued_at=NOW,
        new_passcode=new_passcode,
    )


@pytest.mark.parametrize(
    ("kind", "new_passcode", "match"),
    [
        (CommandKind.WIPE, "passcode", "only a lock"),
        (CommandKind.RENEW_KEYS, "passcode", "only a lock"),
        (CommandKind.WIPE, "", "only a lock"),
        (CommandKind.LOCK, "p" * (MIN_PASSCODE - 1), "at least"),
        (CommandKind.LOCK, "", "at least"),
    ],
)
def test_a_command_breaking_the_passcode_rules_cannot_be_made(
    kind: CommandKind, new_passcode: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        _command(kind, new_passcode)
    with pytest.raises(ValueError, match=match):
        replace(_command(CommandKind.LOCK, None), kind=kind, new_passcode=new_passcode)


@pytest.mark.parametrize(
    ("kind", "new_passcode"),
    [
        (CommandKind.LOCK, None),
        (CommandKind.LOCK, "p" * MIN_PASSCODE),
        (CommandKind.LOCK, "😀" * MIN_PASSCODE),  # characters, not bytes
        (CommandKind.WIPE, None),
        (CommandKind.RENEW_KEYS, None),
    ],
)
def test_commands_within_the_passcode_rules_round_trip(
    kind: CommandKind, new_passcode: str | None
) -> None:
    command = _command(kind, new_passcode)
    signed = SignedCommand(command=command, signature=bytes(64))
    data = encode_management_message(signed)
    assert decode_management_message(PayloadType.COMMAND, data) == signed


@given(st.sampled_from(CommandKind), st.none() | st.text(max_size=128))
def test_commands_obey_the_passcode_rules(kind: CommandKind, new_passcode: str | None) -> None:
    allowed = new_passcode is None or (
        kind is CommandKind.LOCK and len(new_passcode) >= MIN_PASSCODE
    )
    if allowed:
        assert _command(kind, new_passcode).new_passcode == new_passcode
    else:
        with pytest.raises(ValueError):
            _command(kind, new_passcode)
    # The same combination written by hand on the wire: decoded only when allowed.
    wire_body: dict[int, Any] = {
        0: bytes(COMMAND_ID_SIZE),
        1: bytes(32),
        2: int(kind),
        3: NOW,
    }
    if new_passcode is not None:
        wire_body[4] = new_passcode
    data = cbor2.dumps([CODES[SignedCommand], {0: wire_body, 1: bytes(64)}])
    if allowed:
        assert encode_management_message(decode_management_message(PayloadType.COMMAND, data)) == (
            data
        )
    else:
        with pytest.raises(DecodeError):
            decode_management_message(PayloadType.COMMAND, data)


@pytest.mark.parametrize(
    ("status", "secret"),
    [(SecretStatus.GRANTED, None), (SecretStatus.WIPE, bytes(REMOTE_SECRET_SIZE))],
    ids=["granted-without-secret", "wipe-with-secret"],
)
def test_a_remote_secret_answer_breaking_its_rule_cannot_be_made(
    status: SecretStatus, secret: bytes | None
) -> None:
    with pytest.raises(ValueError, match="GRANTED"):
        RemoteSecretAnswer(request_id=bytes(16), status=status, secret=secret)


def test_a_plain_integer_payload_type_is_compared_by_value() -> None:
    data = encode_management_message(EXAMPLES[4])  # CommandResult, a COMMAND
    assert decode_management_message(int(PayloadType.COMMAND), data) == EXAMPLES[4]  # type: ignore[arg-type]
    for other in PayloadType:
        if other is not PayloadType.COMMAND:
            with pytest.raises(DecodeError):
                decode_management_message(int(other), data)  # type: ignore[arg-type]


# --- signed commands -------------------------------------------------------------------------

LOCK = Command(
    command_id=bytes([7]) * COMMAND_ID_SIZE,
    device=ALICE.address,
    kind=CommandKind.LOCK,
    issued_at=NOW,
    new_passcode="S3cret-passcode!",
)
SIGNED_LOCK = SignedCommand.sign(LOCK, SERVER)


def test_a_signed_command_verifies_for_its_device() -> None:
    assert SIGNED_LOCK.verify(SERVER.public_key, ALICE.address) == LOCK
    wipe = replace(LOCK, kind=CommandKind.WIPE, new_passcode=None)
    assert SignedCommand.sign(wipe, SERVER).verify(SERVER.public_key, ALICE.address) == wipe


def test_command_signatures_are_labelled_command() -> None:
    # The label of docs/protocol/MANAGEMENT.md, checked without the package's helpers.
    public = Ed25519PublicKey.from_public_bytes(SERVER.public_key)
    public.verify(SIGNED_LOCK.signature, b"sealwire/v1/command\x00" + LOCK.encode())


@pytest.mark.parametrize("purpose", ["policy", "directory-answer", "envelope-signature", "x"])
def test_a_signature_made_for_another_purpose_does_not_verify(purpose: str) -> None:
    forged = SignedCommand(command=LOCK, signature=SERVER.sign(purpose, LOCK.encode()))
    with pytest.raises(InvalidSignature):
        forged.verify(SERVER.public_key, ALICE.address)


def test_a_command_signature_is_not_a_policy_signature() -> None:
    policy = Policy(version=1, issued_at=NOW, prekey_rotation_s=86400, directory_cache_s=0)
    forged = SignedPolicy(policy=policy, signature=SERVER.sign("command", policy.encode()))
    with pytest.raises(InvalidSignature):
        forged.verify(SERVER.public_key)


@pytest.mark.parametrize("other", [ORG.root, ALICE.key, key(77)], ids=["root", "device", "other"])
def test_another_key_does_not_verify_a_command(other: SigningKey) -> None:
    with pytest.raises(InvalidSignature):
        SIGNED_LOCK.verify(other.public_key, ALICE.address)
    with pytest.raises(InvalidSignature):
        SignedCommand.sign(LOCK, other).verify(SERVER.public_key, ALICE.address)


@pytest.mark.parametrize("bad_key", [b"", bytes(31), bytes(32), bytes([0xFF]) * 32])
def test_malformed_keys_do_not_verify_a_command(bad_key: bytes) -> None:
    with pytest.raises(InvalidSignature):
        SIGNED_LOCK.verify(bad_key, ALICE.address)


def test_a_command_for_another_device_is_refused() -> None:
    with pytest.raises(InvalidSignature, match="another device"):
        SIGNED_LOCK.verify(SERVER.public_key, BOB.address)
    # ... also when it was re-addressed and the signature no longer matches.
    moved = replace(SIGNED_LOCK, command=replace(LOCK, device=BOB.address))
    with pytest.raises(InvalidSignature):
        moved.verify(SERVER.public_key, BOB.address)


@pytest.mark.parametrize(
    "changes",
    [
        {"command_id": bytes([8]) * COMMAND_ID_SIZE},
        {"device": BOB.address},
        {"kind": CommandKind.WIPE, "new_passcode": None},
        {"kind": CommandKind.RENEW_KEYS, "new_passcode": None},
        {"issued_at": NOW + 1},
        {"new_passcode": None},
        {"new_passcode": "S3cret-passcode?"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_tampered_command_is_refused(changes: dict[str, Any]) -> None:
    tampered = replace(SIGNED_LOCK, command=replace(LOCK, **changes))
    with pytest.raises(InvalidSignature):
        tampered.verify(SERVER.public_key, ALICE.address)


def test_every_byte_of_the_command_signature_matters() -> None:
    for i in range(64):
        signature = bytearray(SIGNED_LOCK.signature)
        signature[i] ^= 1
        with pytest.raises(InvalidSignature):
            replace(SIGNED_LOCK, signature=bytes(signature)).verify(
                SERVER.public_key, ALICE.address
            )


@given(st.data())
def test_any_changed_byte_of_a_signed_command_is_refused(data: st.DataObject) -> None:
    """One byte changed anywhere: DecodeError, another message, or InvalidSignature."""
    encoded = encode_management_message(SIGNED_LOCK)
    i = data.draw(st.integers(0, len(encoded) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != encoded[i]))
    try:
        value = MANAGEMENT_MESSAGES.decode(encoded[:i] + bytes([byte]) + encoded[i + 1 :])
    except DecodeError:
        return
    if not isinstance(value, SignedCommand):
        return  # the code byte now names another message
    with pytest.raises(InvalidSignature):
        value.verify(SERVER.public_key, ALICE.address)


# --- the policy's new fields -----------------------------------------------------------------

POLICY = Policy(
    version=9,
    issued_at=NOW,
    prekey_rotation_s=86400,
    directory_cache_s=600,
    name="engineering",
    passcode_min_length=12,
    passcode_classes=4,
    max_failed_attempts=MIN_FAILED_ATTEMPTS,
    auto_lock_s=0,
    offline_grace_s=0,
    retention_days=30,
    export_allowed=False,
)
SIGNED_POLICY = SignedPolicy.sign(POLICY, SERVER)


def test_a_policy_with_every_field_verifies_and_round_trips() -> None:
    assert SIGNED_POLICY.verify(SERVER.public_key) == POLICY
    data = encode_management_message(SIGNED_POLICY)
    decoded = decode_management_message(PayloadType.POLICY, data)
    assert isinstance(decoded, SignedPolicy)
    assert decoded.verify(SERVER.public_key) == POLICY
    public = Ed25519PublicKey.from_public_bytes(SERVER.public_key)
    public.verify(SIGNED_POLICY.signature, b"sealwire/v1/policy\x00" + POLICY.encode())


def test_policy_defaults_are_written_out() -> None:
    short = Policy(version=1, issued_at=NOW, prekey_rotation_s=3600, directory_cache_s=0)
    assert (
        short.name,
        short.passcode_min_length,
        short.passcode_classes,
        short.max_failed_attempts,
        short.auto_lock_s,
        short.offline_grace_s,
        short.retention_days,
        short.export_allowed,
    ) == ("default", 6, 1, 10, 900, 72 * 3600, 0, True)
    # Defaults are values like any other: every key is on the wire and under the signature.
    assert sorted(cbor2.loads(short.encode())) == list(range(12))


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "engineerinG"},
        {"passcode_min_length": 11},
        {"passcode_classes": 3},
        {"max_failed_attempts": MIN_FAILED_ATTEMPTS + 1},
        {"auto_lock_s": 1},
        {"offline_grace_s": 1},
        {"retention_days": 0},
        {"export_allowed": True},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_new_policy_field_is_signed(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidSignature):
        replace(SIGNED_POLICY, policy=replace(POLICY, **changes)).verify(SERVER.public_key)


def test_the_largest_policy_fits_the_activation_answer() -> None:
    largest = SignedPolicy(
        policy=replace(POLICY, version=(1 << 31) - 1, issued_at=MAX_TIME, name="𝄞" * 64),
        signature=bytes(64),
    )
    assert len(largest.encode()) <= MAX_POLICY_SIZE


def test_the_largest_management_answer_fits_an_envelope() -> None:
    command = SignedCommand(command=replace(LOCK, new_passcode="𝄞" * 128), signature=bytes(64))
    largest = ManagementAnswer(
        request_id=bytes(16),
        policy=replace(SIGNED_POLICY, policy=replace(POLICY, name="𝄞" * 64)),
        commands=(command,) * MAX_PENDING_COMMANDS,
    )
    data = encode_management_message(largest)
    assert len(data) <= MAX_BODY_SIZE
    assert decode_management_message(PayloadType.CONTROL, data) == largest


# --- the remote secret in the activation answer ----------------------------------------------

SERVER_ANSWER = ServerAnswer(
    certificate_chain=tuple(ALICE.chain),
    organisation_root_key=ORG.root.public_key,
    policy=SIGNED_POLICY.encode(),
    directory=b"",
    remote_secret=bytes([0x33]) * REMOTE_SECRET_SIZE,
)


def test_the_activation_answer_carries_the_remote_secret() -> None:
    data = SERVER_ANSWER.encode()
    assert cbor2.loads(data)[4] == bytes([0x33]) * REMOTE_SECRET_SIZE
    assert ServerAnswer.decode(data) == SERVER_ANSWER
    # Optional on the wire (the device, not the decoder, refuses an answer without it).
    bare = replace(SERVER_ANSWER, remote_secret=None)
    assert 4 not in cbor2.loads(bare.encode())
    assert ServerAnswer.decode(bare.encode()) == bare


@pytest.mark.parametrize("secret", [b"", bytes(31), bytes(33), "s" * 32, None])
def test_a_remote_secret_of_the_wrong_size_or_type_is_refused(secret: object) -> None:
    value = cbor2.loads(SERVER_ANSWER.encode())
    value[4] = secret
    with pytest.raises(DecodeError):
        ServerAnswer.decode(cbor2.dumps(value))


# --- passcode rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("passcode", "classes"),
    [
        ("", 0),
        ("abcdef", 1),
        ("ABCDEF", 1),
        ("123456", 1),
        ("!@#$ %", 1),
        ("abcDEF", 2),
        ("abc123", 2),
        ("abc-def", 2),
        ("aB3", 3),
        ("aB3!", 4),
        ("aB3 ", 4),  # a space is "other"
        ("äöüß", 1),  # lower-case beyond ASCII
        ("ÄÖÜ", 1),
        ("Ωmega", 2),  # Greek upper, Latin lower
        ("ПАРОЛЬпароль", 2),
        ("٣٤٥", 1),  # Arabic-Indic digits are digits
        ("pass😀word", 2),  # an emoji is "other"
        ("e\u0301", 2),  # a combining accent is "other"
    ],
)
def test_passcode_classes(passcode: str, classes: int) -> None:
    assert passcode_classes(passcode) == classes


@pytest.mark.parametrize("passcode", ["密码密码密码", "שלוםשלום", "ǅǅǅǅǅǅ", "½½½½½½"])
def test_every_character_is_in_some_class(passcode: str) -> None:
    """Letters without case, title-case letters and numerals that are not digits are "other"."""
    assert passcode_classes(passcode) == 1
    assert passcode_classes(passcode + "a") == 2


@given(st.characters())
def test_every_single_character_is_in_exactly_one_class(c: str) -> None:
    assert passcode_classes(c) == 1


def _policy(min_length: int, classes: int) -> Policy:
    return replace(POLICY, passcode_min_length=min_length, passcode_classes=classes)


SHORT = ComplianceIssue.PASSCODE_TOO_SHORT
SIMPLE = ComplianceIssue.PASSCODE_TOO_SIMPLE


@pytest.mark.parametrize(
    ("passcode", "min_length", "classes", "issues"),
    [
        ("abcdef", 6, 1, ()),
        ("abcde", 6, 1, (SHORT,)),
        ("", 6, 1, (SHORT, SIMPLE)),
        ("abcdefghij", 10, 2, (SIMPLE,)),
        ("abcdefghi1", 10, 2, ()),
        ("abcdefgh1", 10, 2, (SHORT,)),
        ("abc1", 10, 3, (SHORT, SIMPLE)),
        ("aB3!aB3!aB3!", 12, 4, ()),
        ("aB3!aB3!aB3", 12, 4, (SHORT,)),
        ("aB3aB3aB3aB3", 12, 4, (SIMPLE,)),
        ("ÄäÖöÜü", 6, 2, ()),  # unicode letters count by case
        ("äöüäöü", 6, 2, (SIMPLE,)),
        ("ääääää", 6, 1, ()),  # six characters, twelve bytes in UTF-8
        ("äääää", 6, 1, (SHORT,)),
        ("😀😀😀😀😀😀", 6, 1, ()),  # length counts code points, not bytes
        ("x" * 64, 64, 1, ()),
        ("x" * 63, 64, 1, (SHORT,)),
    ],
)
def test_check_passcode(
    passcode: str, min_length: int, classes: int, issues: tuple[ComplianceIssue, ...]
) -> None:
    assert check_passcode(passcode, _policy(min_length, classes)) == issues


@given(st.text(max_size=80), policies)
def test_check_passcode_agrees_with_its_rules(passcode: str, policy: Policy) -> None:
    issues = check_passcode(passcode, policy)
    assert (SHORT in issues) == (len(passcode) < policy.passcode_min_length)
    assert (SIMPLE in issues) == (passcode_classes(passcode) < policy.passcode_classes)
    assert 0 <= passcode_classes(passcode) <= 4


# --- secrets stay out of repr ----------------------------------------------------------------

SECRET = bytes(range(200, 232))
SECRET_ANSWER = RemoteSecretAnswer(
    request_id=bytes(16), status=SecretStatus.GRANTED, secret=SECRET, policy=SIGNED_POLICY
)


def _shown(value: object) -> str:
    return repr(value) + str(value) + f"{value}" + f"{value!r}"


@pytest.mark.parametrize(
    "value",
    [LOCK, SIGNED_LOCK, ManagementAnswer(request_id=bytes(16), commands=(SIGNED_LOCK,))],
    ids=["Command", "SignedCommand", "ManagementAnswer"],
)
def test_the_passcode_of_a_command_is_never_shown(value: object) -> None:
    shown = _shown(value)
    assert "S3cret" not in shown
    assert "passcode!" not in shown
    assert "LOCK" in _shown(LOCK)


def test_the_remote_secret_is_never_shown() -> None:
    shown = _shown(SECRET_ANSWER)
    for form in (repr(SECRET), SECRET.hex(), SECRET[:4].hex(), str(list(SECRET))[:12]):
        assert form not in shown
    assert "GRANTED" in shown


def test_decode_errors_do_not_quote_the_secret() -> None:
    value = cbor2.loads(encode_management_message(SECRET_ANSWER))
    value[1][2] = SECRET + b"\x00"
    with pytest.raises(DecodeError) as caught:
        decode_management_message(PayloadType.CONTROL, cbor2.dumps(value))
    assert SECRET.hex()[:8] not in str(caught.value)
    assert repr(SECRET)[:12] not in str(caught.value)


# --- pinned vectors --------------------------------------------------------------------------


@pytest.mark.vectors
def test_vectors_are_reproduced_exactly() -> None:
    assert build() == VECTORS


@pytest.mark.vectors
def test_vectors_cover_every_message() -> None:
    assert [v["name"] for v in VECTORS["vectors"]] == [
        "DeviceReport",
        "ManagementAnswer",
        "SignedPolicy",
        "SignedCommand",
        "CommandResult",
        "FetchRemoteSecret",
        "RemoteSecretAnswer",
        "RemoteSecretAnswer/wipe",
    ]
    assert {v["type"] for v in VECTORS["vectors"]} == {
        cls.__name__ for cls in CODES if cls not in WITHOUT_VECTOR
    }


@pytest.mark.vectors
@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vectors_decode_and_reencode(vector: dict[str, str]) -> None:
    data = bytes.fromhex(vector["hex"])
    pt = PayloadType[vector["payload_type"]]
    message = decode_management_message(pt, data)
    assert type(message).__name__ == vector["type"]
    assert PAYLOAD_TYPES[type(message)] is pt
    assert encode_management_message(message) == data


@pytest.mark.vectors
def test_vector_signatures_verify_with_the_fixed_server_key() -> None:
    server = SigningKey.from_seed(bytes.fromhex(VECTORS["seeds"]["server"]))
    device = bytes.fromhex(VECTORS["device"])
    device_key = SigningKey.from_seed(bytes.fromhex(VECTORS["seeds"]["device"]))
    assert device == address_of(device_key.public_key)
    decoded = {
        v["name"]: decode_management_message(
            PayloadType[v["payload_type"]], bytes.fromhex(v["hex"])
        )
        for v in VECTORS["vectors"]
    }
    policy = decoded["SignedPolicy"]
    assert isinstance(policy, SignedPolicy)
    checked = policy.verify(server.public_key)
    assert checked.max_failed_attempts == 5 and checked.export_allowed is False

    wipe = decoded["SignedCommand"]
    assert isinstance(wipe, SignedCommand)
    assert wipe.verify(server.public_key, device).kind is CommandKind.WIPE

    answer = decoded["ManagementAnswer"]
    assert isinstance(answer, ManagementAnswer) and answer.policy == policy
    lock = answer.commands[0].verify(server.public_key, device)
    assert lock.kind is CommandKind.LOCK
    assert lock.new_passcode == VECTORS["new_passcode"]
    with pytest.raises(InvalidSignature):
        answer.commands[0].verify(server.public_key, bytes(32))

    secret = decoded["RemoteSecretAnswer"]
    assert isinstance(secret, RemoteSecretAnswer) and secret.status is SecretStatus.GRANTED
    assert secret.secret == bytes.fromhex(VECTORS["remote_secret"])
    assert secret.policy is not None and secret.policy.verify(server.public_key) == checked

    fetch = decoded["FetchRemoteSecret"]
    assert isinstance(fetch, FetchRemoteSecret)
    reply = XWingPrivateKey(bytes.fromhex(VECTORS["seeds"]["reply_key"]))
    assert fetch.reply_key == reply.public_key.raw


@pytest.mark.vectors
def test_every_vector_is_in_the_documentation() -> None:
    flat = DOC.replace("\n", "").replace(" ", "")
    for vector in VECTORS["vectors"]:
        assert vector["hex"] in flat, vector["name"]
