"""Directory, policy and activation-directory structures: strict decoders, signatures, prekey
checks, user names, ticket text; pinned vectors (tests/vectors/directory.json)."""

from __future__ import annotations

import base64
import json
import pathlib
from dataclasses import replace

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import DecodeError, EncodeError, InvalidCertificate, InvalidSignature
from sealwire.protocol.activation import (
    ActivationTicket,
    normalise_password,
    ticket_from_text,
    ticket_to_text,
)
from sealwire.protocol.codec import Struct
from sealwire.protocol.directory import (
    DIRECTORY_MESSAGES,
    MAX_DEVICES_PER_USER,
    MAX_USERS_PER_QUERY,
    REQUEST_ID_SIZE,
    ActivationDirectory,
    CertificateRenewed,
    DeviceEntry,
    DirectoryAnswer,
    DirectoryQuery,
    Policy,
    PrekeysPublished,
    PublishPrekeys,
    RenewCertificate,
    SignedDirectoryAnswer,
    SignedPolicy,
    UserEntry,
    check_username,
    decode_directory_message,
    encode_directory_message,
    verify_prekey,
)
from sealwire.protocol.envelope import MAX_BODY_SIZE
from sealwire.protocol.identity import MAX_TIME, Certificate, sign_prekey
from sealwire.protocol.messaging import ChatMessage, Receipt
from sealwire.protocol.suite import Argon2Params, SigningKey, XWingPrivateKey, sha256
from tests.protocol.keys import NOW, key, make_org
from tests.protocol.unchecked import encode_unchecked
from tests.vectors.make_directory_vectors import build, structures

VECTORS = json.loads((pathlib.Path(__file__).parents[1] / "vectors" / "directory.json").read_text())
DOC = (pathlib.Path(__file__).parents[2] / "docs" / "protocol" / "DIRECTORY.md").read_text()

ORG = make_org()
SERVER = ORG.server
ALICE = ORG.device(10)
PREKEY = sign_prekey(
    ALICE.key, prekey_id=ALICE.prekey_id, public_key=ALICE.prekey.public_key, not_after=NOW + 3600
)
EXAMPLES = [value for _, _, value in structures()]
DIRECTORY_EXAMPLES = [v for _, how, v in structures() if how == "directory"]

# --- strategies: every field within its bounds -------------------------------------------------

usernames = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True)
request_ids = st.binary(min_size=REQUEST_ID_SIZE, max_size=REQUEST_ID_SIZE)
times = st.integers(0, MAX_TIME)
blobs = st.binary(max_size=40)  # chains and prekeys are opaque bytes at this layer
device_entries = st.builds(DeviceEntry, chain=st.lists(blobs, max_size=2).map(tuple), prekey=blobs)
user_entries = st.builds(
    UserEntry,
    user=usernames,
    display_name=st.text(max_size=128),
    devices=st.lists(device_entries, max_size=3).map(tuple),
)
answers = st.builds(
    DirectoryAnswer,
    request_id=request_ids,
    organisation=st.binary(min_size=32, max_size=32),
    issued_at=times,
    expires_at=times,
    entries=st.lists(user_entries, max_size=3).map(tuple),
    unknown=st.lists(usernames, max_size=MAX_USERS_PER_QUERY).map(tuple),
)
directory_messages = st.one_of(
    st.builds(
        DirectoryQuery,
        request_id=request_ids,
        users=st.lists(usernames, max_size=MAX_USERS_PER_QUERY).map(tuple),
    ),
    st.builds(SignedDirectoryAnswer, answer=answers, signature=st.binary(min_size=64, max_size=64)),
    st.builds(
        PublishPrekeys, request_id=request_ids, prekeys=st.lists(blobs, max_size=4).map(tuple)
    ),
    st.builds(PrekeysPublished, request_id=request_ids),
    st.builds(RenewCertificate, request_id=request_ids),
    st.builds(
        CertificateRenewed, request_id=request_ids, chain=st.lists(blobs, max_size=2).map(tuple)
    ),
)
policies = st.builds(
    Policy,
    version=st.integers(1, (1 << 31) - 1),
    issued_at=times,
    prekey_rotation_s=st.integers(3600, 90 * 86400),
    directory_cache_s=st.integers(0, 86400),
)
signed_policies = st.builds(
    SignedPolicy, policy=policies, signature=st.binary(min_size=64, max_size=64)
)
activation_directories = st.builds(
    ActivationDirectory,
    organisation_name=st.text(max_size=128),
    user=usernames,
    display_name=st.text(max_size=128),
    server_prekey=blobs,
    relay=st.text(max_size=255),
)
tickets = st.builds(
    ActivationTicket,
    ticket_id=st.binary(min_size=16, max_size=16),
    server=st.binary(min_size=32, max_size=32),
    relay=st.text(st.characters(codec="ascii"), max_size=255),
    params=st.builds(
        Argon2Params,
        salt=st.binary(min_size=16, max_size=16),
        memory_kib=st.integers(8, 4 * 1024 * 1024),
        iterations=st.integers(1, 64),
        lanes=st.integers(1, 16),
    ),
)

DECODERS = [decode_directory_message, ActivationDirectory.decode, SignedPolicy.decode]


def mutations(data: bytes, position: int, byte: int, extra: bytes) -> list[bytes]:
    """One byte replaced, the encoding cut short there, and bytes appended."""
    i = position % len(data)
    return [data[:i] + bytes([byte]) + data[i + 1 :], data[:i], data + extra]


# --- decoders: a value or DecodeError, never anything else -----------------------------------


@given(st.binary(max_size=400))
def test_decoders_give_a_value_or_decode_error(data: bytes) -> None:
    for decode in DECODERS:
        try:
            value = decode(data)
        except DecodeError:
            continue
        again = encode_directory_message(value) if decode is DECODERS[0] else value.encode()
        assert again == data


@given(directory_messages)
def test_directory_messages_round_trip(message: Struct) -> None:
    data = encode_directory_message(message)
    assert decode_directory_message(data) == message
    assert encode_directory_message(decode_directory_message(data)) == data


@given(st.one_of(signed_policies, activation_directories))
def test_policy_and_activation_directory_round_trip(value: Struct) -> None:
    data = value.encode()
    assert type(value).decode(data) == value
    assert type(value).decode(data).encode() == data


@pytest.mark.parametrize("message", DIRECTORY_EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_directory_message_has_its_code(message: Struct) -> None:
    data = encode_directory_message(message)
    assert cbor2.loads(data)[0] == DIRECTORY_MESSAGES.code_of(message)
    assert decode_directory_message(data) == message


def test_every_directory_code_has_an_example() -> None:
    assert {DIRECTORY_MESSAGES.code_of(m) for m in DIRECTORY_EXAMPLES} == set(range(1, 7))


@given(
    st.sampled_from(range(len(EXAMPLES))),
    st.integers(min_value=0),
    st.integers(0, 255),
    st.binary(min_size=1, max_size=8),
)
def test_mutated_encodings_decode_cleanly(
    which: int, position: int, byte: int, extra: bytes
) -> None:
    """Byte flips, truncation, appended bytes: DecodeError, or a value with exactly those bytes."""
    value = EXAMPLES[which]
    if value in DIRECTORY_EXAMPLES:
        data, decode, encode = (
            encode_directory_message(value),
            decode_directory_message,
            encode_directory_message,
        )
    else:
        data, decode, encode = value.encode(), type(value).decode, type(value).encode
    for candidate in mutations(data, position, byte, extra):
        try:
            decoded = decode(candidate)
        except DecodeError:
            continue
        assert encode(decoded) == candidate


# --- bounds: the limit is accepted, one more is not ------------------------------------------


def _query(n: int) -> bytes:
    return cbor2.dumps([1, {0: bytes(16), 1: [f"u{i}" for i in range(n)]}])


def test_a_query_names_at_most_max_users() -> None:
    assert len(decode_directory_message(_query(MAX_USERS_PER_QUERY)).users) == MAX_USERS_PER_QUERY
    with pytest.raises(DecodeError):
        decode_directory_message(_query(MAX_USERS_PER_QUERY + 1))


def test_a_user_name_is_at_most_64_characters() -> None:
    for users in (["a" * 64], ["é" * 64]):
        decode_directory_message(cbor2.dumps([1, {0: bytes(16), 1: users}]))
    with pytest.raises(DecodeError):
        decode_directory_message(cbor2.dumps([1, {0: bytes(16), 1: ["a" * 65]}]))
    ok = ActivationDirectory(
        organisation_name="o", user="a" * 64, display_name="", server_prekey=b"", relay=""
    )
    assert ActivationDirectory.decode(ok.encode()) == ok
    with pytest.raises(EncodeError, match=r"ActivationDirectory\.user: 65 long"):
        replace(ok, user="a" * 65).encode()  # the sender refuses what the receiver would
    too_long = {**ok.to_value(), 1: "a" * 65}
    with pytest.raises(DecodeError):
        ActivationDirectory.decode(cbor2.dumps(too_long))


def test_an_entry_has_at_most_max_devices() -> None:
    device = DeviceEntry(chain=(b"c",), prekey=b"p")
    entry = UserEntry(user="a", display_name="", devices=(device,) * MAX_DEVICES_PER_USER)
    assert UserEntry.decode(entry.encode()) == entry
    over = replace(entry, devices=(device,) * (MAX_DEVICES_PER_USER + 1))
    with pytest.raises(EncodeError):
        over.encode()
    with pytest.raises(DecodeError):
        UserEntry.decode(encode_unchecked(over))


@pytest.mark.parametrize(
    "value",
    [
        [1, {0: bytes(15), 1: []}],  # short request id
        [1, {0: bytes(16), 1: [b"bytes"]}],  # a user name must be text
        [4, {0: bytes(16), 1: 1}],  # unknown key
        [6, {0: bytes(16), 1: [b"a", b"b", b"c"]}],  # chain too long
        [3, {0: bytes(16), 1: [b""] * 5}],  # too many prekeys
        [3, {0: bytes(16), 1: [bytes(1401)]}],  # prekey too large
        [7, {0: bytes(16)}],  # unknown code
        [2, {0: {}, 1: bytes(64)}],  # answer without fields
        [5, {0: bytes(16)}, 0],  # not a pair
    ],
)
def test_invalid_directory_messages_are_refused(value: object) -> None:
    with pytest.raises(DecodeError):
        decode_directory_message(cbor2.dumps(value))


@pytest.mark.parametrize(
    "changes",
    [{0: 0}, {2: 3599}, {2: 90 * 86400 + 1}, {3: 86401}, {1: -1}, {0: 1 << 31}],
    ids=["version-0", "rotation-low", "rotation-high", "cache-high", "negative-time", "version"],
)
def test_policy_values_out_of_range_are_refused(changes: dict[int, int]) -> None:
    # Every key of the policy is required: start from a complete one that decodes.
    valid = Policy(version=1, issued_at=NOW, prekey_rotation_s=86400, directory_cache_s=3600)
    value = cbor2.loads(valid.encode())
    assert SignedPolicy.decode(cbor2.dumps({0: value, 1: bytes(64)})).policy == valid
    with pytest.raises(DecodeError):
        SignedPolicy.decode(cbor2.dumps({0: {**value, **changes}, 1: bytes(64)}))


# --- signatures ------------------------------------------------------------------------------

ANSWER = DirectoryAnswer(
    request_id=bytes([5]) * 16,
    organisation=ORG.id,
    issued_at=NOW,
    expires_at=NOW + 600,
    entries=(
        UserEntry(
            user="alice",
            display_name="Alice",
            devices=(DeviceEntry(chain=tuple(ALICE.chain), prekey=PREKEY.encode()),),
        ),
    ),
    unknown=("bob",),
)
SIGNED_ANSWER = SignedDirectoryAnswer.sign(ANSWER, SERVER)
POLICY = Policy(version=3, issued_at=NOW, prekey_rotation_s=86400, directory_cache_s=600)
SIGNED_POLICY = SignedPolicy.sign(POLICY, SERVER)


def test_signed_answer_and_policy_verify_with_the_server_key() -> None:
    assert SIGNED_ANSWER.verify(SERVER.public_key) == ANSWER
    assert SIGNED_POLICY.verify(SERVER.public_key) == POLICY


def test_signatures_are_labelled() -> None:
    # The labels of docs/protocol/DIRECTORY.md: another purpose never verifies.
    public = Ed25519PublicKey.from_public_bytes(SERVER.public_key)
    public.verify(SIGNED_ANSWER.signature, b"sealwire/v1/directory-answer\x00" + ANSWER.encode())
    public.verify(SIGNED_POLICY.signature, b"sealwire/v1/policy\x00" + POLICY.encode())
    forged = SignedPolicy(policy=POLICY, signature=SERVER.sign("directory-answer", POLICY.encode()))
    with pytest.raises(InvalidSignature):
        forged.verify(SERVER.public_key)


@pytest.mark.parametrize("other", [ORG.root, ALICE.key, key(77)], ids=["root", "device", "other"])
def test_another_key_does_not_verify(other: SigningKey) -> None:
    with pytest.raises(InvalidSignature):
        SIGNED_ANSWER.verify(other.public_key)
    with pytest.raises(InvalidSignature):
        SIGNED_POLICY.verify(other.public_key)
    with pytest.raises(InvalidSignature):
        SignedDirectoryAnswer.sign(ANSWER, other).verify(SERVER.public_key)


@pytest.mark.parametrize("bad_key", [b"", bytes(31), bytes(32), bytes([0xFF]) * 32])
def test_malformed_keys_do_not_verify(bad_key: bytes) -> None:
    with pytest.raises(InvalidSignature):
        SIGNED_ANSWER.verify(bad_key)
    with pytest.raises(InvalidSignature):
        SIGNED_POLICY.verify(bad_key)


def test_an_answer_for_one_request_does_not_answer_another() -> None:
    moved = replace(SIGNED_ANSWER, answer=replace(ANSWER, request_id=bytes([6]) * 16))
    with pytest.raises(InvalidSignature):
        moved.verify(SERVER.public_key)


SIGNED_ENCODINGS = [
    (encode_directory_message(SIGNED_ANSWER), decode_directory_message),
    (SIGNED_POLICY.encode(), SignedPolicy.decode),
]


@given(st.sampled_from(range(len(SIGNED_ENCODINGS))), st.data())
def test_any_changed_byte_of_a_signed_structure_is_refused(which: int, data: st.DataObject) -> None:
    """One byte changed anywhere (signed body or signature): DecodeError or InvalidSignature."""
    encoded, decode = SIGNED_ENCODINGS[which]
    i = data.draw(st.integers(0, len(encoded) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != encoded[i]))
    try:
        value = decode(encoded[:i] + bytes([byte]) + encoded[i + 1 :])
    except DecodeError:
        return
    if not isinstance(value, SignedDirectoryAnswer | SignedPolicy):
        return  # the code byte now names another message
    with pytest.raises(InvalidSignature):
        value.verify(SERVER.public_key)


@pytest.mark.parametrize("field", ["answer", "signature"])
def test_every_byte_of_the_signed_answer_matters(field: str) -> None:
    """Exhaustively, each byte of the signed body and of the signature, xor 0x01."""
    body = ANSWER.encode()
    for i in range(len(body) if field == "answer" else 64):
        if field == "signature":
            sig = bytearray(SIGNED_ANSWER.signature)
            sig[i] ^= 1
            candidate = replace(SIGNED_ANSWER, signature=bytes(sig))
        else:
            try:
                changed = DirectoryAnswer.decode(body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :])
            except DecodeError:
                continue
            candidate = replace(SIGNED_ANSWER, answer=changed)
        with pytest.raises(InvalidSignature):
            candidate.verify(SERVER.public_key)


# --- prekeys ---------------------------------------------------------------------------------


def test_verify_prekey_accepts_the_devices_own_unexpired_prekey() -> None:
    signed = verify_prekey(PREKEY.encode(), ALICE.key.public_key, now=NOW)
    assert signed == PREKEY
    assert signed.prekey.public_key == ALICE.prekey.public_key.raw


def test_verify_prekey_refuses_another_devices_prekey() -> None:
    bob = ORG.device(11)
    with pytest.raises(InvalidSignature):
        verify_prekey(PREKEY.encode(), bob.key.public_key, now=NOW)
    # signed by bob but claiming to be alice's
    claimed = sign_prekey(bob.key, prekey_id=1, public_key=bob.prekey.public_key, not_after=NOW + 9)
    stolen = replace(claimed, prekey=replace(claimed.prekey, owner=ALICE.address))
    with pytest.raises(InvalidSignature):
        verify_prekey(stolen.encode(), ALICE.key.public_key, now=NOW)


def test_verify_prekey_refuses_an_expired_prekey() -> None:
    verify_prekey(PREKEY.encode(), ALICE.key.public_key, now=NOW + 3599)
    for now in (NOW + 3600, MAX_TIME):
        with pytest.raises(InvalidCertificate):
            verify_prekey(PREKEY.encode(), ALICE.key.public_key, now=now)


@given(st.data())
def test_verify_prekey_refuses_a_tampered_prekey(data: st.DataObject) -> None:
    encoded = PREKEY.encode()
    i = data.draw(st.integers(0, len(encoded) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = encoded[:i] + bytes([encoded[i] ^ mask]) + encoded[i + 1 :]
    with pytest.raises((InvalidSignature, InvalidCertificate)):
        verify_prekey(tampered, ALICE.key.public_key, now=NOW)


@given(st.binary(max_size=200))
def test_verify_prekey_of_garbage_is_invalid_signature(data: bytes) -> None:
    with pytest.raises(InvalidSignature):
        verify_prekey(data, ALICE.key.public_key, now=NOW)


def test_verify_prekey_refuses_an_invalid_xwing_key_even_if_signed() -> None:
    prekey = replace(PREKEY.prekey, public_key=bytes([0xFF]) * len(PREKEY.prekey.public_key))
    signed = replace(PREKEY, prekey=prekey, signature=ALICE.key.sign("prekey", prekey.encode()))
    with pytest.raises(InvalidSignature):
        verify_prekey(signed.encode(), ALICE.key.public_key, now=NOW)


# --- user names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["alice", "a", "0", "bob.smith", "x_y-z", "a." * 32, "9" * 64, "a-"]
)
def test_valid_user_names(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Alice",
        "ALICE",
        "bob smith",
        " alice",
        "alice\n",
        "a" * 65,
        ".alice",
        "-alice",
        "_alice",
        "alicé",
        "ａlice",  # full-width a
        "a/b",
        "a@b",
    ],
)
def test_invalid_user_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid user name"):
        check_username(name)


@given(usernames)
def test_every_generated_user_name_is_valid(name: str) -> None:
    assert check_username(name) == name


# --- activation ticket text and passwords ----------------------------------------------------

TICKET = ActivationTicket(
    ticket_id=bytes(range(16)),
    server=sha256(b"server"),
    relay="relay.example:443",
    params=Argon2Params(salt=bytes(16), memory_kib=65536, iterations=3, lanes=4),
)


@pytest.mark.parametrize(
    ("typed", "normal"),
    [
        ("k7qm-2xpa 9rtd", "K7QM2XPA9RTD"),
        ("K7QM-2XPA-9RTD", "K7QM2XPA9RTD"),
        ("k7qm2xpa9rtd", "K7QM2XPA9RTD"),
        (" k7qm\t2xpa - 9rtd ", "K7QM2XPA9RTD"),
    ],
)
def test_normalise_password(typed: str, normal: str) -> None:
    assert normalise_password(typed) == normal


def test_ticket_text_round_trip() -> None:
    text = ticket_to_text(TICKET)
    assert text.startswith("sealwire-ticket:")
    assert "=" not in text
    assert ticket_from_text(text) == TICKET
    assert ticket_from_text(f"  {text}\n") == TICKET


@given(tickets)
def test_generated_tickets_round_trip_through_text(ticket: ActivationTicket) -> None:
    text = ticket_to_text(ticket)
    assert ticket_from_text(text) == ticket
    assert ticket_to_text(ticket_from_text(text)) == text


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t.replace("sealwire-ticket:", "sealwire-tiket:"),
        lambda t: t.replace("sealwire-ticket:", ""),
        lambda t: t.upper(),
        lambda t: t[:-5],
        lambda t: t[:20],
        lambda t: t[:17],
        lambda t: "sealwire-ticket:",
        lambda t: t + "AAAA",
        lambda t: t + "x" * 1100,
        lambda t: t[:20] + "é" + t[21:],
        lambda t: "sealwire-ticket:" + base64.b64encode(b"\xa0").decode(),
        lambda t: "",
    ],
    ids=[
        "prefix",
        "no-prefix",
        "case",
        "truncated",
        "cut",
        "one-char",
        "empty-body",
        "appended",
        "too-long",
        "non-ascii",
        "empty-map",
        "empty",
    ],
)
def test_damaged_ticket_text_is_a_decode_error(damage: object) -> None:
    with pytest.raises(DecodeError):
        ticket_from_text(damage(ticket_to_text(TICKET)))  # type: ignore[operator]


@given(st.text(max_size=300) | st.text(max_size=300).map(lambda s: "sealwire-ticket:" + s))
def test_ticket_from_arbitrary_text_is_a_ticket_or_decode_error(text: str) -> None:
    try:
        ticket = ticket_from_text(text)
    except DecodeError:
        return
    assert isinstance(ticket, ActivationTicket)


@given(st.data())
def test_ticket_text_with_one_character_changed(data: st.DataObject) -> None:
    text = ticket_to_text(TICKET)
    i = data.draw(st.integers(len("sealwire-ticket:"), len(text) - 1))
    char = data.draw(st.characters())
    try:
        ticket = ticket_from_text(text[:i] + char + text[i + 1 :])
    except DecodeError:
        return
    assert isinstance(ticket, ActivationTicket)


# --- pinned vectors --------------------------------------------------------------------------


@pytest.mark.vectors
def test_vectors_are_reproduced_exactly() -> None:
    assert build() == VECTORS


@pytest.mark.vectors
def test_vectors_cover_every_structure() -> None:
    names = [v["name"] for v in VECTORS["vectors"]]
    assert names == [
        "DirectoryQuery",
        "SignedDirectoryAnswer",
        "PublishPrekeys",
        "PrekeysPublished",
        "RenewCertificate",
        "CertificateRenewed",
        "SignedPolicy",
        "ActivationDirectory",
        "ChatMessage",
        "Receipt",
    ]


@pytest.mark.vectors
def test_vectors_decode_and_reencode() -> None:
    types = {
        "SignedPolicy": SignedPolicy,
        "ActivationDirectory": ActivationDirectory,
        "ChatMessage": ChatMessage,
        "Receipt": Receipt,
    }
    for vector in VECTORS["vectors"]:
        data = bytes.fromhex(vector["hex"])
        if vector["encoding"] == "directory":
            message = decode_directory_message(data)
            assert type(message).__name__ == vector["name"]
            assert encode_directory_message(message) == data
        else:
            assert types[vector["name"]].decode(data).encode() == data


@pytest.mark.vectors
def test_vector_signatures_verify_with_the_fixed_server_key() -> None:
    server = SigningKey.from_seed(bytes.fromhex(VECTORS["seeds"]["server"]))
    by_name = {v["name"]: bytes.fromhex(v["hex"]) for v in VECTORS["vectors"]}
    answer = decode_directory_message(by_name["SignedDirectoryAnswer"])
    assert isinstance(answer, SignedDirectoryAnswer)
    checked = answer.verify(server.public_key)
    device = checked.entries[0].devices[0]
    leaf = device.chain[0]
    verify_prekey(device.prekey, Certificate.parse(leaf).body.identity_key, now=VECTORS["now"])
    SignedPolicy.decode(by_name["SignedPolicy"]).verify(server.public_key)
    server_prekey = ActivationDirectory.decode(by_name["ActivationDirectory"]).server_prekey
    verify_prekey(server_prekey, server.public_key, now=VECTORS["now"])
    assert XWingPrivateKey(bytes.fromhex(VECTORS["seeds"]["device_prekey"])).public_key.raw == (
        device.signed_prekey().prekey.public_key
    )


@pytest.mark.vectors
def test_every_vector_is_in_the_documentation() -> None:
    flat = DOC.replace("\n", "").replace(" ", "")
    for vector in VECTORS["vectors"]:
        assert vector["hex"] in flat, vector["name"]


# --- bounds that once were wrong (found by these tests during issue 4) -----------------------


def test_the_largest_answer_within_its_bounds_decodes() -> None:
    device = DeviceEntry(chain=(bytes(512),) * 2, prekey=bytes(1400))
    entry = UserEntry(user="a" * 64, display_name="é" * 128, devices=(device,) * 10)
    largest = SignedDirectoryAnswer(
        answer=replace(ANSWER, entries=(entry,) * MAX_USERS_PER_QUERY, unknown=()),
        signature=bytes(64),
    )
    data = encode_directory_message(largest)
    assert len(data) <= MAX_BODY_SIZE
    assert decode_directory_message(data) == largest


def test_ticket_text_with_characters_outside_base64url_is_refused() -> None:
    text = ticket_to_text(TICKET)
    with pytest.raises(DecodeError):
        ticket_from_text(text[:20] + "!!!!" + text[20:])
