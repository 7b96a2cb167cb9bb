"""Message framing (RFC 9420 §6): signing content, PublicMessage membership tags, and
PrivateMessage encryption with the secret tree, sender-data encryption and the reuse guard.

The functions work on one epoch's secrets and take everything else as arguments; the group
state machine decides which keys to pass and checks what only it can (epoch, membership,
credential). The flow for a receiver::

    PublicMessage  --unprotect_public(membership_key)-->  AuthenticatedContent
    PrivateMessage --unprotect_private(secret tree)---->  AuthenticatedContent
    AuthenticatedContent --verify_signature(sender's key, GroupContext)--> trusted content

Every decryption or tag failure raises the one opaque
:class:`~sealwire.mls.errors.CryptoError`; a consumed or too-distant generation raises
:class:`~sealwire.mls.errors.SecretReuseError`.
"""

from __future__ import annotations

from collections.abc import Callable

from ._tls import Reader, Writer
from .crypto import CipherSuite
from .errors import CryptoError, DecodeError, LocalError, ValidationError
from .secret_tree import RatchetType, SecretTree, apply_reuse_guard, sender_data_key_nonce
from .structs import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    PrivateMessage,
    PublicMessage,
    Sender,
    SenderType,
    WireFormat,
    read_content,
    write_content,
)

__all__ = [
    "membership_tag",
    "protect_private",
    "protect_public",
    "sign_content",
    "unprotect_private",
    "unprotect_public",
    "verify_signature",
]


def sign_content(
    suite: CipherSuite,
    signature_priv: bytes,
    wire_format: WireFormat,
    content: FramedContent,
    context: bytes | None,
    confirmation_tag: bytes | None = None,
) -> AuthenticatedContent:
    """Sign ``content`` as ``FramedContentTBS`` (RFC 9420 §6.1).

    Args:
        suite: the group's cipher suite.
        signature_priv: the sender's signature private key.
        wire_format: the wire format the content will be sent in.
        content: the content to sign.
        context: the serialized GroupContext (member and new-member-commit senders).
        confirmation_tag: for commits, the tag computed after signing (§6.1); may be added
            later with ``dataclasses.replace``.

    Returns:
        The signed ``AuthenticatedContent``.
    """
    tbs = content.to_be_signed(wire_format, context)
    signature = suite.sign_with_label(signature_priv, "FramedContentTBS", tbs)
    return AuthenticatedContent(
        wire_format, content, FramedContentAuthData(signature, confirmation_tag)
    )


def verify_signature(
    suite: CipherSuite, signature_pub: bytes, ac: AuthenticatedContent, context: bytes | None
) -> None:
    """Verify the signature of ``ac`` with the sender's key (RFC 9420 §6.1).

    Raises:
        CryptoError: the signature does not verify.
        ValidationError: a commit without a confirmation tag or another content with one.
    """
    is_commit = ac.content.content_type == ContentType.COMMIT
    if is_commit != (ac.auth.confirmation_tag is not None):
        raise ValidationError("confirmation_tag present exactly for commits")
    tbs = ac.content.to_be_signed(ac.wire_format, context)
    suite.verify_with_label(signature_pub, "FramedContentTBS", tbs, ac.auth.signature)


def membership_tag(
    suite: CipherSuite, membership_key: bytes, ac: AuthenticatedContent, context: bytes
) -> bytes:
    """``MAC(membership_key, AuthenticatedContentTBM)`` (RFC 9420 §6.2)."""
    return suite.mac(membership_key, _tbm(ac, context))


def protect_public(
    suite: CipherSuite, membership_key: bytes, ac: AuthenticatedContent, context: bytes
) -> PublicMessage:
    """Wrap signed content in a PublicMessage, with a membership tag for member senders (§6.2).

    Raises:
        LocalError: ``ac`` was not signed for the PublicMessage wire format.
    """
    if ac.wire_format != WireFormat.PUBLIC_MESSAGE:
        raise LocalError("content signed for another wire format")
    tag = None
    if ac.content.sender.sender_type == SenderType.MEMBER:
        tag = membership_tag(suite, membership_key, ac, context)
    return PublicMessage(ac.content, ac.auth, tag)


def unprotect_public(
    suite: CipherSuite, membership_key: bytes, msg: PublicMessage, context: bytes
) -> AuthenticatedContent:
    """Check a PublicMessage's membership tag (member senders, RFC 9420 §6.2).

    The signature is not checked here: call :func:`verify_signature` with the sender's key.

    Raises:
        CryptoError: the membership tag is missing or wrong.
    """
    ac = AuthenticatedContent(WireFormat.PUBLIC_MESSAGE, msg.content, msg.auth)
    if msg.content.sender.sender_type == SenderType.MEMBER:
        tag = msg.membership_tag
        if tag is None or not suite.verify_mac(membership_key, _tbm(ac, context), tag):
            raise CryptoError("invalid message")
    return ac


def _tbm(ac: AuthenticatedContent, context: bytes) -> bytes:
    w = Writer().raw(ac.content.to_be_signed(ac.wire_format, context))
    ac.auth.write(w)
    return w.bytes()


def _sender_data_aad(group_id: bytes, epoch: int, content_type: ContentType) -> bytes:
    # RFC 9420 §6.3.2 SenderDataAAD
    return Writer().opaque(group_id).u64(epoch).u8(content_type).bytes()


def _content_aad(group_id: bytes, epoch: int, ct: ContentType, authenticated_data: bytes) -> bytes:
    # RFC 9420 §6.3.1 PrivateContentAAD
    return Writer().opaque(group_id).u64(epoch).u8(ct).opaque(authenticated_data).bytes()


def _ratchet_type(ct: ContentType) -> RatchetType:
    # RFC 9420 §6.3.1: application data uses the application ratchet, the rest handshake.
    return RatchetType.APPLICATION if ct == ContentType.APPLICATION else RatchetType.HANDSHAKE


def protect_private(
    suite: CipherSuite,
    secret_tree: SecretTree,
    sender_data_secret: bytes,
    ac: AuthenticatedContent,
    reuse_guard: bytes,
    padding: int = 0,
) -> PrivateMessage:
    """Encrypt signed member content into a PrivateMessage (RFC 9420 §6.3).

    Args:
        suite: the group's cipher suite.
        secret_tree: this epoch's secret tree; the next generation of the sender's ratchet is
            consumed.
        sender_data_secret: this epoch's ``sender_data_secret``.
        ac: content signed with wire format PrivateMessage by a member sender.
        reuse_guard: 4 fresh random bytes (RFC 9420 §6.3.1).
        padding: number of zero bytes of padding.

    Returns:
        The PrivateMessage.

    Raises:
        LocalError: wrong wire format, non-member sender, or a bad ``reuse_guard``.
    """
    content = ac.content
    if ac.wire_format != WireFormat.PRIVATE_MESSAGE:
        raise LocalError("content signed for another wire format")
    if content.sender.sender_type != SenderType.MEMBER:
        raise LocalError("only members send PrivateMessages")  # RFC 9420 §6.3
    if len(reuse_guard) != 4:
        raise LocalError("reuse_guard is 4 bytes")
    ct = content.content_type
    leaf = content.sender.index
    generation, key, nonce = secret_tree.next_key(leaf, _ratchet_type(ct))
    w = Writer()
    write_content(w, content.content)
    ac.auth.write(w)
    plaintext = w.raw(bytes(padding)).bytes()
    aad = _content_aad(content.group_id, content.epoch, ct, content.authenticated_data)
    ciphertext = suite.seal(key, apply_reuse_guard(nonce, reuse_guard), aad, plaintext)
    sender_data = Writer().u32(leaf).u32(generation).raw(reuse_guard).bytes()
    sd_key, sd_nonce = sender_data_key_nonce(suite, sender_data_secret, ciphertext)
    encrypted_sender_data = suite.seal(
        sd_key, sd_nonce, _sender_data_aad(content.group_id, content.epoch, ct), sender_data
    )
    return PrivateMessage(
        content.group_id,
        content.epoch,
        ct,
        content.authenticated_data,
        encrypted_sender_data,
        ciphertext,
    )


def unprotect_private(
    suite: CipherSuite,
    secret_tree: SecretTree,
    sender_data_secret: bytes,
    msg: PrivateMessage,
    is_member: Callable[[int], bool],
) -> AuthenticatedContent:
    """Decrypt a PrivateMessage (RFC 9420 §6.3.2).

    The signature is not checked here: call :func:`verify_signature` with the key of the
    sender, ``result.content.sender.index``.

    Args:
        suite: the group's cipher suite.
        secret_tree: this epoch's secret tree (the generation is consumed).
        sender_data_secret: this epoch's ``sender_data_secret``.
        msg: the received message (its epoch and group were checked by the caller).
        is_member: whether a leaf index holds a current member.

    Returns:
        The ``AuthenticatedContent`` (wire format PrivateMessage, member sender).

    Raises:
        CryptoError: sender data or content does not decrypt.
        ValidationError: the sender is not a member.
        SecretReuseError: the generation was already used or is too far ahead.
        DecodeError: the decrypted content is malformed or its padding is not zero.
    """
    ct = msg.content_type
    sd_key, sd_nonce = sender_data_key_nonce(suite, sender_data_secret, msg.ciphertext)
    sender_data = suite.open(
        sd_key, sd_nonce, _sender_data_aad(msg.group_id, msg.epoch, ct), msg.encrypted_sender_data
    )
    r = Reader(sender_data)
    leaf, generation, reuse_guard = r.u32(), r.u32(), r.raw(4)
    r.finish()
    # RFC 9420 §6.3.2: the sender must be a member before any key is derived for it.
    if not is_member(leaf):
        raise ValidationError(f"sender leaf {leaf} is not a member")
    key, nonce = secret_tree.key_for(leaf, _ratchet_type(ct), generation)
    aad = _content_aad(msg.group_id, msg.epoch, ct, msg.authenticated_data)
    plaintext = suite.open(key, apply_reuse_guard(nonce, reuse_guard), aad, msg.ciphertext)
    r = Reader(plaintext)
    body = read_content(r, ct)
    auth = FramedContentAuthData.read_for(r, ct)
    # RFC 9420 §6.3.1: padding must be all zero.
    if any(r.raw(r.remaining())):
        raise DecodeError("non-zero padding in PrivateMessageContent")
    content = FramedContent(
        msg.group_id, msg.epoch, Sender.member(leaf), body, msg.authenticated_data
    )
    return AuthenticatedContent(WireFormat.PRIVATE_MESSAGE, content, auth)
