"""Welcome and GroupInfo (RFC 9420 §12.4.3) against the official ``welcome`` vectors, plus a
round trip through :func:`create_welcome` and negative tests.

``welcome``: ``{cipher_suite, init_priv, signer_pub, key_package, welcome}``; ``key_package``
and ``welcome`` are ``MLSMessage``s. The joiner decrypts its GroupSecrets and the GroupInfo,
verifies the GroupInfo signature with ``signer_pub`` and checks the confirmation tag against
the epoch secrets it derives. No PSKs are used.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from sealwire.mls import structs as s
from sealwire.mls._tls import decode
from sealwire.mls.crypto import CipherSuite, cipher_suite
from sealwire.mls.errors import CryptoError, ValidationError
from sealwire.mls.key_schedule import zero_secret
from sealwire.mls.welcome import (
    create_welcome,
    join_epoch_secrets,
    open_welcome,
    verify_group_info,
)
from tests.mls.vectors import cases, h


def _load(case: dict[str, Any]) -> tuple[CipherSuite, s.KeyPackage, s.Welcome]:
    suite = cipher_suite(case["cipher_suite"])
    kp = decode(s.MLSMessage, h(case["key_package"])).body
    welcome = decode(s.MLSMessage, h(case["welcome"])).body
    assert isinstance(kp, s.KeyPackage) and isinstance(welcome, s.Welcome)
    return suite, kp, welcome


def _join(case: dict[str, Any], welcome: s.Welcome) -> s.GroupInfo:
    suite, kp, _ = _load(case)
    secrets, info, psk = open_welcome(
        suite, welcome, kp, h(case["init_priv"]), lambda _: zero_secret(suite)
    )
    assert secrets.psks == ()
    verify_group_info(suite, h(case["signer_pub"]), info)
    join_epoch_secrets(suite, secrets, info, psk)
    return info


@pytest.mark.vectors
@pytest.mark.parametrize("case", cases("welcome"))
def test_welcome_vectors(case: dict[str, Any]) -> None:
    suite, kp, welcome = _load(case)
    info = _join(case, welcome)
    # Re-encrypt the same GroupInfo to the same KeyPackage and join again.
    secrets, _, _ = open_welcome(
        suite, welcome, kp, h(case["init_priv"]), lambda _: zero_secret(suite)
    )
    ours = create_welcome(
        suite,
        info,
        secrets.joiner_secret,
        zero_secret(suite),
        [(kp, secrets.path_secret)],
        lambda n: hashlib.shake_256(b"welcome").digest(n),
    )
    assert _join(case, ours) == info


def _case() -> dict[str, Any]:
    case: dict[str, Any] = cases("welcome")[0].values[0]
    return case


def test_welcome_negative() -> None:
    case = _case()
    suite, kp, welcome = _load(case)
    secrets, info, psk = open_welcome(
        suite, welcome, kp, h(case["init_priv"]), lambda _: zero_secret(suite)
    )
    # Wrong tree hash.
    with pytest.raises(ValidationError):
        join_epoch_secrets(suite, secrets, info, psk, tree_hash=bytes(32))
    # Wrong confirmation tag.
    with pytest.raises(ValidationError):
        join_epoch_secrets(suite, secrets, replace(info, confirmation_tag=bytes(32)), psk)
    # Wrong joiner secret gives another confirmation key.
    with pytest.raises(ValidationError):
        join_epoch_secrets(suite, replace(secrets, joiner_secret=bytes(32)), info, psk)
    # Wrong GroupInfo signature.
    with pytest.raises(CryptoError):
        verify_group_info(suite, h(case["signer_pub"]), replace(info, signer=info.signer + 1))
    # Not for us.
    with pytest.raises(ValidationError):
        open_welcome(
            suite,
            replace(welcome, secrets=()),
            kp,
            h(case["init_priv"]),
            lambda _: zero_secret(suite),
        )
    # Wrong init key.
    with pytest.raises(CryptoError):
        open_welcome(suite, welcome, kp, bytes(32), lambda _: zero_secret(suite))
    # Tampered GroupInfo ciphertext.
    bad = replace(welcome, encrypted_group_info=welcome.encrypted_group_info[:-1] + b"\x00")
    with pytest.raises(CryptoError):
        open_welcome(suite, bad, kp, h(case["init_priv"]), lambda _: zero_secret(suite))
