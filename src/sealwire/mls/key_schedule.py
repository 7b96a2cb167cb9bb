"""The MLS key schedule (RFC 9420 §8): from ``init_secret`` and ``commit_secret`` to the
secrets of an epoch, the Welcome secret and the exporter.

::

                     init_secret_[n-1]
                           |
    commit_secret --> KDF.Extract = joiner-prk
                           |
                ExpandWithLabel(., "joiner", GroupContext_[n], Nh) = joiner_secret
                           |
       psk_secret --> KDF.Extract = member-prk ---> DeriveSecret(., "welcome") = welcome_secret
                           |
                ExpandWithLabel(., "epoch", GroupContext_[n], Nh) = epoch_secret
                           |
                DeriveSecret(., <label>) for every epoch secret, "init" -> init_secret_[n]

The ``GroupContext`` is passed serialized, so this module needs no wire structures. For a new
group the caller passes fresh random bytes as ``init_secret`` (RFC 9420 §11); a commit without
a path uses an all-zero ``commit_secret`` (:func:`zero_secret`); no PSKs means ``psk_secret`` is
:func:`zero_secret` as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .crypto import CipherSuite

__all__ = [
    "EpochSecrets",
    "derive_epoch_secrets",
    "derive_joiner_secret",
    "derive_welcome_secret",
    "external_init_receiver",
    "external_init_sender",
    "external_key_pair",
    "key_schedule",
    "mls_exporter",
    "welcome_key_nonce",
    "zero_secret",
]


def zero_secret(suite: CipherSuite) -> bytes:
    """``Nh`` zero bytes: the ``commit_secret`` without a path and the empty ``psk_secret``."""
    return bytes(suite.kdf.Nh)


@dataclass(frozen=True)
class EpochSecrets:
    """Every secret of one epoch (RFC 9420 §8, Table 4). Never log or print these."""

    joiner_secret: bytes = field(repr=False)
    welcome_secret: bytes = field(repr=False)
    epoch_secret: bytes = field(repr=False)
    sender_data_secret: bytes = field(repr=False)
    """Keys the sender data of PrivateMessages (§6.3.2)."""
    encryption_secret: bytes = field(repr=False)
    """Root of the secret tree (§9)."""
    exporter_secret: bytes = field(repr=False)
    """Input of :func:`mls_exporter` (§8.5)."""
    external_secret: bytes = field(repr=False)
    """Derives the external HPKE key pair for external joins (§8.3)."""
    confirmation_key: bytes = field(repr=False)
    """MAC key of the confirmation tag (§6.1)."""
    membership_key: bytes = field(repr=False)
    """MAC key of PublicMessage membership tags (§6.2)."""
    resumption_psk: bytes = field(repr=False)
    """This epoch's resumption PSK (§8.6)."""
    epoch_authenticator: bytes = field(repr=False)
    """Value members may compare out of band (§8.7)."""
    init_secret: bytes = field(repr=False)
    """``init_secret`` of the next epoch."""


def derive_joiner_secret(
    suite: CipherSuite, init_secret: bytes, commit_secret: bytes, group_context: bytes
) -> bytes:
    """``joiner_secret`` (RFC 9420 §8).

    Args:
        init_secret: the previous epoch's ``init_secret`` (random for a new group).
        commit_secret: from the commit's UpdatePath, or :func:`zero_secret`.
        group_context: the serialized ``GroupContext`` of the *new* epoch.
    """
    prk = suite.kdf_extract(init_secret, commit_secret)
    return suite.expand_with_label(prk, "joiner", group_context, suite.kdf.Nh)


def _member_prk(suite: CipherSuite, joiner_secret: bytes, psk_secret: bytes) -> bytes:
    return suite.kdf_extract(joiner_secret, psk_secret)


def derive_welcome_secret(suite: CipherSuite, joiner_secret: bytes, psk_secret: bytes) -> bytes:
    """``welcome_secret = DeriveSecret(Extract(joiner_secret, psk_secret), "welcome")`` (§8)."""
    return suite.derive_secret(_member_prk(suite, joiner_secret, psk_secret), "welcome")


def welcome_key_nonce(suite: CipherSuite, welcome_secret: bytes) -> tuple[bytes, bytes]:
    """Key and nonce that encrypt a Welcome's ``GroupInfo`` (RFC 9420 §12.4.3.1).

    Returns:
        ``(welcome_key, welcome_nonce)``.
    """
    key = suite.expand_with_label(welcome_secret, "key", b"", suite.aead.Nk)
    nonce = suite.expand_with_label(welcome_secret, "nonce", b"", suite.aead.Nn)
    return key, nonce


def derive_epoch_secrets(
    suite: CipherSuite, joiner_secret: bytes, psk_secret: bytes, group_context: bytes
) -> EpochSecrets:
    """All epoch secrets from the ``joiner_secret`` (RFC 9420 §8); joiners start here.

    Args:
        psk_secret: from :func:`sealwire.mls.psk.psk_secret`, or :func:`zero_secret`.
        group_context: the serialized ``GroupContext`` of the new epoch.
    """
    prk = _member_prk(suite, joiner_secret, psk_secret)
    epoch_secret = suite.expand_with_label(prk, "epoch", group_context, suite.kdf.Nh)

    def derive(label: str) -> bytes:
        return suite.derive_secret(epoch_secret, label)

    return EpochSecrets(
        joiner_secret=joiner_secret,
        welcome_secret=suite.derive_secret(prk, "welcome"),
        epoch_secret=epoch_secret,
        sender_data_secret=derive("sender data"),
        encryption_secret=derive("encryption"),
        exporter_secret=derive("exporter"),
        external_secret=derive("external"),
        confirmation_key=derive("confirm"),
        membership_key=derive("membership"),
        resumption_psk=derive("resumption"),
        epoch_authenticator=derive("authentication"),
        init_secret=derive("init"),
    )


def key_schedule(
    suite: CipherSuite,
    init_secret: bytes,
    commit_secret: bytes,
    psk_secret: bytes,
    group_context: bytes,
) -> EpochSecrets:
    """Run the whole key schedule for one epoch (RFC 9420 §8) as a committer or member."""
    joiner = derive_joiner_secret(suite, init_secret, commit_secret, group_context)
    return derive_epoch_secrets(suite, joiner, psk_secret, group_context)


def mls_exporter(
    suite: CipherSuite, exporter_secret: bytes, label: str | bytes, context: bytes, length: int
) -> bytes:
    """``MLS-Exporter(Label, Context, Length)`` (RFC 9420 §8.5).

    ``ExpandWithLabel(DeriveSecret(exporter_secret, Label), "exported", Hash(Context), Length)``.
    """
    secret = suite.derive_secret(exporter_secret, label)
    return suite.expand_with_label(secret, "exported", suite.hash(context), length)


def external_key_pair(suite: CipherSuite, external_secret: bytes) -> tuple[bytes, bytes]:
    """``external_priv, external_pub = KEM.DeriveKeyPair(external_secret)`` (RFC 9420 §8.3)."""
    return suite.derive_hpke_key_pair(external_secret)


_EXTERNAL_INIT_LABEL = b"MLS 1.0 external init secret"


def external_init_sender(
    suite: CipherSuite, external_pub: bytes, *, randomness: bytes
) -> tuple[bytes, bytes]:
    """The joiner's side of an external join (RFC 9420 §8.3, §12.2 ExternalInit).

    ``kem_output, context = SetupBaseS(external_pub, "")``;
    ``init_secret = context.export("MLS 1.0 external init secret", Nh)``.

    Returns:
        ``(kem_output, init_secret)``: ``kem_output`` goes into the ExternalInit proposal.

    For the X-Wing suite the ML-KEM-768 half of ``kem_output`` takes its randomness from the
    OS (through pyca), so only the X25519 half comes from ``randomness`` (see :mod:`.xwing`).

    Raises:
        CryptoError: ``external_pub`` is malformed.
    """
    return suite.hpke_export_sender(
        external_pub, b"", _EXTERNAL_INIT_LABEL, suite.kdf.Nh, randomness=randomness
    )


def external_init_receiver(suite: CipherSuite, external_priv: bytes, kem_output: bytes) -> bytes:
    """The members' side of an external join: ``init_secret`` from ``kem_output`` (§8.3).

    Raises:
        CryptoError: ``kem_output`` is malformed (wrong size, a refused X25519 point).
    """
    return suite.hpke_export_receiver(
        external_priv, kem_output, b"", _EXTERNAL_INIT_LABEL, suite.kdf.Nh
    )
