"""Addresses, certificate chains and signed prekeys, including forged and expired ones."""

from __future__ import annotations

import contextlib
import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealwire.errors import DecodeError, InvalidCertificate, InvalidSignature
from sealwire.protocol.identity import (
    Certificate,
    CertificateBody,
    ChainVerifier,
    Role,
    SignedPrekey,
    address_of,
    issue_certificate,
    parse_address,
    short_address,
    sign_prekey,
    verify_chain,
)
from sealwire.protocol.suite import XWingPrivateKey
from tests.protocol.keys import DAY, NOW, key, make_org


def test_address_and_short_form() -> None:
    k = key(5)
    addr = address_of(k.public_key)
    assert len(addr) == 32
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}", short_address(addr))
    assert parse_address(addr.hex()) == addr
    for bad in ("zz", addr.hex()[:-2], addr.hex() + "00"):
        with pytest.raises(DecodeError):
            parse_address(bad)


def test_valid_chains() -> None:
    org = make_org()
    dev = org.device(10)
    leaf = verify_chain([dev.cert, org.server_cert], root_key=org.root.public_key, now=NOW)
    assert leaf.body.subject == dev.address
    assert verify_chain([org.server_cert], root_key=org.root.public_key, now=NOW, role=Role.SERVER)
    direct = issue_certificate(
        org.root,
        organisation=org.id,
        role=Role.DEVICE,
        identity_key=key(11).public_key,
        serial=5,
        not_before=NOW - 1,
        not_after=NOW + 1,
    )
    assert verify_chain([direct], root_key=org.root.public_key, now=NOW).body.serial == 5


def test_certificates_do_not_name_people() -> None:
    fields = set(Certificate.__dataclass_fields__) | set(CertificateBody.__dataclass_fields__)
    assert not fields & {"name", "user", "email", "person", "display_name"}


def test_chain_failures() -> None:
    org = make_org()
    other = make_org(root_seed=30, server_seed=31)
    dev = org.device(10)
    root = org.root.public_key
    chain = [dev.cert, org.server_cert]
    cases: list[tuple[list[Certificate], int, Role | None]] = [
        ([], NOW, None),
        ([dev.cert], NOW, None),  # does not reach the root
        ([dev.cert, org.server_cert, org.server_cert], NOW, None),  # too long
        (chain, NOW, Role.SERVER),  # wrong role
        (chain, dev.cert.body.not_after, None),  # expired (not_after is exclusive)
        (chain, NOW - 2 * DAY, None),  # not yet valid
        ([other.device(10).cert, other.server_cert], NOW, None),  # foreign organisation
        ([dev.cert, other.server_cert], NOW, None),
        ([org.server_cert, org.server_cert], NOW, None),  # root-issued cert must be last
    ]
    for c, now, role in cases:
        with pytest.raises(InvalidCertificate):
            verify_chain(c, root_key=root, now=now, role=role)
    with pytest.raises(InvalidCertificate):
        verify_chain(chain, root_key=other.root.public_key, now=NOW)


def test_a_device_cannot_issue_and_a_server_cannot_issue_servers() -> None:
    org = make_org()
    dev = org.device(10)
    sub = issue_certificate(
        dev.key,
        organisation=org.id,
        role=Role.DEVICE,
        identity_key=key(12).public_key,
        serial=9,
        not_before=NOW - 1,
        not_after=NOW + 1,
    )
    with pytest.raises(InvalidCertificate):
        verify_chain([sub, dev.cert], root_key=org.root.public_key, now=NOW)
    rogue_server = issue_certificate(
        org.server,
        organisation=org.id,
        role=Role.SERVER,
        identity_key=key(13).public_key,
        serial=9,
        not_before=NOW - 1,
        not_after=NOW + 1,
    )
    with pytest.raises(InvalidCertificate):
        verify_chain([rogue_server, org.server_cert], root_key=org.root.public_key, now=NOW)


def test_every_single_byte_change_of_a_certificate_is_caught() -> None:
    org = make_org()
    dev = org.device(10)
    data = dev.cert.encode()
    for i in range(len(data)):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= flip
            try:
                cert = Certificate.parse(bytes(bad))
            except DecodeError:
                continue
            with pytest.raises(InvalidCertificate):
                verify_chain([cert, org.server_cert], root_key=org.root.public_key, now=NOW)


def test_forged_fields_with_a_valid_looking_signature() -> None:
    org = make_org()
    dev = org.device(10)
    for change in (
        {"role": Role.SERVER},
        {"not_after": NOW + 1000 * DAY},
        {"identity_key": key(40).public_key},
        {"serial": 1},
    ):
        forged = Certificate(body=replace(dev.cert.body, **change), signature=dev.cert.signature)
        with pytest.raises(InvalidCertificate):
            verify_chain([forged, org.server_cert], root_key=org.root.public_key, now=NOW)


def test_chain_verifier_caches_but_rechecks_time_and_role() -> None:
    org = make_org()
    dev = org.device(10)
    verifier = ChainVerifier({org.id: org.root.public_key}, max_cached=1)
    assert verifier.verify(dev.chain, now=NOW).body.subject == dev.address
    assert verifier.verify(dev.chain, now=NOW).body.subject == dev.address
    with pytest.raises(InvalidCertificate):
        verifier.verify(dev.chain, now=dev.cert.body.not_after)
    with pytest.raises(InvalidCertificate):
        verifier.verify(dev.chain, now=NOW, role=Role.SERVER)
    other = make_org(root_seed=30, server_seed=31)
    with pytest.raises(InvalidCertificate, match="not trusted"):
        verifier.verify(other.device(3).chain, now=NOW)
    verifier.add_root(other.root.public_key)
    assert verifier.verify(other.device(3).chain, now=NOW)
    with pytest.raises(InvalidCertificate):
        verifier.verify([b"\x00"], now=NOW)
    with pytest.raises(InvalidCertificate):
        verifier.verify([], now=NOW)


def test_chain_verifier_reports_the_earliest_expiry_of_the_chain() -> None:
    org = make_org()
    short = org.device(11, not_after=NOW + DAY)
    long = org.device(12, not_after=NOW + 400 * DAY)  # outlives the server's certificate
    verifier = ChainVerifier({org.id: org.root.public_key})
    with pytest.raises(KeyError):
        verifier.valid_until(short.chain)
    verifier.verify(short.chain, now=NOW)
    verifier.verify(long.chain, now=NOW)
    assert verifier.valid_until(short.chain) == NOW + DAY
    assert verifier.valid_until(long.chain) == org.server_cert.body.not_after == NOW + 365 * DAY


def test_signed_prekeys() -> None:
    dev_key = key(20)
    xk = XWingPrivateKey(b"\x21" * 32)
    spk = sign_prekey(dev_key, prekey_id=7, public_key=xk.public_key, not_after=NOW + DAY)
    decoded = SignedPrekey.decode(spk.encode())
    assert decoded.verify(dev_key.public_key, now=NOW).raw == xk.public_key.raw
    with pytest.raises(InvalidCertificate):
        decoded.verify(dev_key.public_key, now=NOW + DAY)
    with pytest.raises(InvalidSignature):
        decoded.verify(key(21).public_key, now=NOW)
    swapped = replace(spk.prekey, public_key=XWingPrivateKey(b"\x22" * 32).public_key.raw)
    with pytest.raises(InvalidSignature):
        SignedPrekey(prekey=swapped, signature=spk.signature).verify(dev_key.public_key, now=NOW)
    renumbered = replace(spk.prekey, prekey_id=8)
    with pytest.raises(InvalidSignature):
        SignedPrekey(prekey=renumbered, signature=spk.signature).verify(dev_key.public_key, now=NOW)


@given(st.binary(max_size=600))
def test_decoders_arbitrary_bytes(data: bytes) -> None:
    for decoder in (Certificate.parse, SignedPrekey.decode):
        with contextlib.suppress(DecodeError):
            decoder(data)
