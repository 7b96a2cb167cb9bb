"""A small organisation of fixed keys: root, server, two devices, and a second organisation."""

from __future__ import annotations

from dataclasses import dataclass

from sealwire.protocol.identity import Certificate, Role, address_of, issue_certificate
from sealwire.protocol.suite import SigningKey, XWingPrivateKey

NOW = 1_800_000_000
"""A fixed 'now' in Unix seconds (2027-01-15)."""
NOW_MS = NOW * 1000
DAY = 86_400


def key(n: int) -> SigningKey:
    return SigningKey.from_seed(bytes([n]) * 32)


@dataclass
class Device:
    key: SigningKey
    cert: Certificate
    chain: list[bytes]
    prekey: XWingPrivateKey
    prekey_id: int

    @property
    def address(self) -> bytes:
        return address_of(self.key.public_key)


@dataclass
class Org:
    root: SigningKey
    server: SigningKey
    server_cert: Certificate

    @property
    def id(self) -> bytes:
        return address_of(self.root.public_key)

    def device(self, n: int, *, not_after: int = NOW + 30 * DAY, serial: int = 100) -> Device:
        k = key(n)
        cert = issue_certificate(
            self.server,
            organisation=self.id,
            role=Role.DEVICE,
            identity_key=k.public_key,
            serial=serial + n,
            not_before=NOW - DAY,
            not_after=not_after,
        )
        prekey = XWingPrivateKey(bytes([n + 100]) * 32)
        return Device(k, cert, [cert.encode(), self.server_cert.encode()], prekey, 1000 + n)


def make_org(root_seed: int = 1, server_seed: int = 2) -> Org:
    root = key(root_seed)
    server = key(server_seed)
    cert = issue_certificate(
        root,
        organisation=address_of(root.public_key),
        role=Role.SERVER,
        identity_key=server.public_key,
        serial=1,
        not_before=NOW - 365 * DAY,
        not_after=NOW + 365 * DAY,
    )
    return Org(root, server, cert)
