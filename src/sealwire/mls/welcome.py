"""Welcome and GroupInfo (RFC 9420 §12.4.3): signing and verifying a GroupInfo, building a
Welcome for new members and opening one.

A joiner's steps (RFC 9420 §12.4.3.1), with this module's function for each::

    find our EncryptedGroupSecrets by KeyPackageRef,
    decrypt GroupSecrets with our init key                     open_welcome
    derive welcome_secret (joiner_secret, psk_secret),
    decrypt GroupInfo
    verify the GroupInfo signature (signer's leaf key)         verify_group_info
    check the tree hash, derive the epoch secrets and
    check the confirmation tag                                 join_epoch_secrets

Choosing the ratchet tree (from the ``ratchet_tree`` extension or out of band) and validating
it is the caller's job (the Group does it with :class:`~sealwire.mls.tree.RatchetTree`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._tls import decode, encode
from .crypto import CipherSuite
from .errors import ValidationError
from .key_schedule import (
    EpochSecrets,
    derive_epoch_secrets,
    derive_welcome_secret,
    welcome_key_nonce,
)
from .structs import (
    EncryptedGroupSecrets,
    Extension,
    GroupContext,
    GroupInfo,
    GroupSecrets,
    HPKECiphertext,
    KeyPackage,
    Welcome,
)
from .transcript import verify_confirmation_tag

__all__ = [
    "create_welcome",
    "join_epoch_secrets",
    "open_welcome",
    "sign_group_info",
    "verify_group_info",
]


def sign_group_info(
    suite: CipherSuite,
    signature_priv: bytes,
    group_context: GroupContext,
    extensions: Sequence[Extension],
    confirmation_tag: bytes,
    signer: int,
) -> GroupInfo:
    """A GroupInfo signed with label ``"GroupInfoTBS"`` (RFC 9420 §12.4.3)."""
    unsigned = GroupInfo(group_context, tuple(extensions), confirmation_tag, signer)
    signature = suite.sign_with_label(signature_priv, "GroupInfoTBS", unsigned.to_be_signed())
    return GroupInfo(group_context, tuple(extensions), confirmation_tag, signer, signature)


def verify_group_info(suite: CipherSuite, signer_pub: bytes, group_info: GroupInfo) -> None:
    """Verify a GroupInfo signature (RFC 9420 §12.4.3).

    Raises:
        CryptoError: the signature does not verify.
    """
    suite.verify_with_label(
        signer_pub, "GroupInfoTBS", group_info.to_be_signed(), group_info.signature
    )


def create_welcome(
    suite: CipherSuite,
    group_info: GroupInfo,
    joiner_secret: bytes,
    psk_secret: bytes,
    recipients: Sequence[tuple[KeyPackage, bytes | None]],
    random: Callable[[int], bytes],
    psks: Sequence[object] = (),
) -> Welcome:
    """Build a Welcome (RFC 9420 §12.4.3.1).

    Args:
        suite: the group's cipher suite.
        group_info: the signed GroupInfo of the new epoch.
        joiner_secret: the new epoch's ``joiner_secret``.
        psk_secret: the commit's ``psk_secret`` (zero secret without PSKs).
        recipients: each new member's KeyPackage and the path secret of its lowest common
            ancestor with the committer (``None`` for a commit without a path).
        random: returns ``n`` fresh random bytes.
        psks: reserved; PSK ids in GroupSecrets are not supported yet and must be empty.

    Returns:
        The Welcome.
    """
    if psks:
        raise ValidationError("PSKs in Welcome are not supported yet")
    key, nonce = welcome_key_nonce(suite, derive_welcome_secret(suite, joiner_secret, psk_secret))
    encrypted_group_info = suite.seal(key, nonce, b"", encode(group_info))
    secrets = []
    for key_package, path_secret in recipients:
        plaintext = encode(GroupSecrets(joiner_secret, path_secret))
        kem_output, ct = suite.encrypt_with_label(
            key_package.init_key,
            "Welcome",
            encrypted_group_info,
            plaintext,
            randomness=random(32),
        )
        ref = suite.make_key_package_ref(encode(key_package))
        secrets.append(EncryptedGroupSecrets(ref, HPKECiphertext(kem_output, ct)))
    return Welcome(suite.value, tuple(secrets), encrypted_group_info)


def open_welcome(
    suite: CipherSuite,
    welcome: Welcome,
    key_package: KeyPackage,
    init_priv: bytes,
    psk_secret_for: Callable[[GroupSecrets], bytes],
) -> tuple[GroupSecrets, GroupInfo, bytes]:
    """Decrypt our GroupSecrets and the GroupInfo of a Welcome (RFC 9420 §12.4.3.1).

    Args:
        suite: our KeyPackage's cipher suite.
        welcome: the received Welcome.
        key_package: the KeyPackage the Welcome should be for.
        init_priv: that KeyPackage's init private key.
        psk_secret_for: returns the ``psk_secret`` for the PSKs listed in GroupSecrets
            (the zero secret when there are none).

    Returns:
        ``(group_secrets, group_info, psk_secret)``; the GroupInfo is not yet verified.

    Raises:
        ValidationError: wrong suite, or no entry for our KeyPackage.
        CryptoError: decryption fails.
        DecodeError: the decrypted structures are malformed.
    """
    if welcome.cipher_suite != suite.value or key_package.cipher_suite != suite.value:
        raise ValidationError("Welcome cipher suite differs from the KeyPackage's")
    ref = suite.make_key_package_ref(encode(key_package))
    entry = next((e for e in welcome.secrets if e.new_member == ref), None)
    if entry is None:
        raise ValidationError("Welcome has no secrets for our KeyPackage")
    ct = entry.encrypted_group_secrets
    plaintext = suite.decrypt_with_label(
        init_priv, "Welcome", welcome.encrypted_group_info, ct.kem_output, ct.ciphertext
    )
    group_secrets = decode(GroupSecrets, plaintext)
    psk_secret = psk_secret_for(group_secrets)
    welcome_secret = derive_welcome_secret(suite, group_secrets.joiner_secret, psk_secret)
    key, nonce = welcome_key_nonce(suite, welcome_secret)
    group_info = decode(GroupInfo, suite.open(key, nonce, b"", welcome.encrypted_group_info))
    if group_info.group_context.cipher_suite != suite.value:
        raise ValidationError("GroupInfo cipher suite differs from the Welcome's")
    return group_secrets, group_info, psk_secret


def join_epoch_secrets(
    suite: CipherSuite,
    group_secrets: GroupSecrets,
    group_info: GroupInfo,
    psk_secret: bytes,
    tree_hash: bytes | None = None,
) -> EpochSecrets:
    """Derive the joined epoch's secrets and check the GroupInfo against them (§12.4.3.1).

    Args:
        suite: the group's cipher suite.
        group_secrets: from :func:`open_welcome`.
        group_info: from :func:`open_welcome`, signature already verified.
        psk_secret: from :func:`open_welcome`.
        tree_hash: the tree hash of the ratchet tree we will use, checked against the
            GroupContext (``None`` skips the check, when the caller did it).

    Returns:
        The epoch secrets.

    Raises:
        ValidationError: the tree hash or the confirmation tag does not match.
    """
    gc = group_info.group_context
    if tree_hash is not None and tree_hash != gc.tree_hash:
        raise ValidationError("ratchet tree does not match the GroupInfo tree hash")
    secrets = derive_epoch_secrets(suite, group_secrets.joiner_secret, psk_secret, encode(gc))
    # RFC 9420 §12.4.3.1: the confirmation tag proves we derived the same epoch secrets.
    if not verify_confirmation_tag(
        suite, secrets.confirmation_key, gc.confirmed_transcript_hash, group_info.confirmation_tag
    ):
        raise ValidationError("GroupInfo confirmation tag does not verify")
    return secrets
