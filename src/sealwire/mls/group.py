"""The MLS group state machine (RFC 9420 §11, §12): create a group, join from a Welcome,
commit adds/removes/updates, process incoming messages and export secrets.

Sans-IO like the rest of :mod:`sealwire.mls`: randomness comes in as ``random(n) -> bytes``
and time as ``now`` (Unix seconds, used for KeyPackage lifetimes); messages go in and out as
:class:`~sealwire.mls.structs.MLSMessage` values; credentials are judged by the application
through ``validate_credential(credential, signature_key) -> bool``.

One :class:`Group` is one member's view of one epoch at a time. Simplifications, each a
documented limit rather than a silent gap:

* the committer merges its own commit at once (RFC 9420 §14 lets it wait for the Delivery
  Service's confirmation; callers that need that keep a copy of the state);
* external commits (RFC 9420 §12.4.3.2) are supported both ways: :meth:`Group.group_info`
  publishes a GroupInfo with the ``external_pub`` extension, :meth:`Group.join_external` joins
  (or resyncs) with it, and :meth:`Group.process` applies others' external commits; the joiner
  sends ExternalInit, an optional Remove of its own old leaf and optional external-PSK
  proposals (no resumption PSKs); a resync must keep the removed leaf's credential unchanged
  (our policy for RFC 9420 §12.2's "acceptable to the application for the removed
  participant"); with the X-Wing suite the HPKE ``SetupBaseS``/``Export`` of the external init
  is :mod:`.xwing` (pyca's X-Wing HPKE has no exporter);
* ReInit proposals, external senders and new-member proposals raise
  :class:`~sealwire.mls.errors.UnsupportedError`;
* PSKs: external PSKs from a caller-provided table and resumption PSKs of this group's own
  past epochs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from . import framing
from . import tree_math as tm
from ._tls import Reader, Writer, encode
from .crypto import CipherSuite, cipher_suite
from .errors import DecodeError, LocalError, UnsupportedError, ValidationError
from .key_schedule import (
    EpochSecrets,
    external_init_receiver,
    external_init_sender,
    external_key_pair,
    key_schedule,
    mls_exporter,
    zero_secret,
)
from .psk import psk_secret
from .secret_tree import SecretTree
from .structs import (
    Add,
    AuthenticatedContent,
    Commit,
    Credential,
    Extension,
    ExternalInit,
    FramedContent,
    GroupContext,
    GroupContextExtensions,
    GroupInfo,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    MLSMessage,
    Node,
    PreSharedKey,
    PreSharedKeyID,
    PrivateMessage,
    Proposal,
    ProposalOrRef,
    PublicMessage,
    ReInit,
    Remove,
    Sender,
    SenderType,
    Update,
    UpdatePath,
    Welcome,
    WireFormat,
)
from .transcript import (
    confirmation_tag,
    confirmed_transcript_hash,
    interim_transcript_hash,
    verify_confirmation_tag,
)
from .tree import RatchetTree, verify_leaf_signature
from .treekem import apply_update_path, create_update_path, derive_path_secrets
from .welcome import (
    create_welcome,
    join_epoch_secrets,
    open_welcome,
    sign_group_info,
    verify_group_info,
)

__all__ = [
    "EXTERNAL_PUB_EXTENSION",
    "RATCHET_TREE_EXTENSION",
    "ApplicationReceived",
    "CommitApplied",
    "CredentialValidator",
    "Event",
    "Group",
    "ProposalReceived",
]

RATCHET_TREE_EXTENSION = 0x0002
"""``ratchet_tree`` extension type (RFC 9420 §12.4.3.3, §17.3)."""

EXTERNAL_PUB_EXTENSION = 0x0004
"""``external_pub`` GroupInfo extension type (RFC 9420 §12.4.3.2, §17.3)."""

CredentialValidator = Callable[[Credential, bytes], bool]
"""``validate_credential(credential, signature_key)``: does the application accept it?"""

Random = Callable[[int], bytes]


@dataclass(frozen=True)
class ApplicationReceived:
    """Application data from member ``sender``."""

    sender: int
    data: bytes
    authenticated_data: bytes


@dataclass(frozen=True)
class ProposalReceived:
    """A proposal was cached for the next commit of this epoch."""

    sender: int
    reference: bytes
    proposal: Proposal


@dataclass(frozen=True)
class CommitApplied:
    """A commit moved the group to ``epoch``; ``removed`` if it removed us."""

    epoch: int
    committer: int
    removed: bool = False


Event = ApplicationReceived | ProposalReceived | CommitApplied


def _key_package_ok(
    suite: CipherSuite, kp: KeyPackage, validate: CredentialValidator, now: int | None
) -> None:
    # RFC 9420 §10.1 / §12.2: validate a KeyPackage before adding its member.
    if kp.cipher_suite != suite.value:
        raise ValidationError("KeyPackage cipher suite differs from the group's")
    leaf = kp.leaf_node
    if leaf.leaf_node_source != LeafNodeSource.KEY_PACKAGE or leaf.lifetime is None:
        raise ValidationError("KeyPackage leaf node must have source key_package")
    if now is not None and not leaf.lifetime.not_before <= now <= leaf.lifetime.not_after:
        raise ValidationError("KeyPackage lifetime does not cover the current time")
    if kp.init_key == leaf.encryption_key:
        raise ValidationError("KeyPackage init key equals its encryption key")
    suite.verify_with_label(leaf.signature_key, "KeyPackageTBS", kp.to_be_signed(), kp.signature)
    verify_leaf_signature(suite, leaf, b"", 0)
    if not validate(leaf.credential, leaf.signature_key):
        raise ValidationError("credential rejected")


def _group_info_tree(
    suite: CipherSuite,
    info: GroupInfo,
    ratchet_tree: RatchetTree | None,
    validate: CredentialValidator,
) -> RatchetTree:
    # RFC 9420 §12.4.3.1 (Welcome) and §12.4.3.2 (external join): pick the tree, check the
    # GroupInfo signature with the signer's leaf key, the tree hash, and the tree's validity.
    gc = info.group_context
    ext = next((e for e in info.extensions if e.extension_type == RATCHET_TREE_EXTENSION), None)
    if ext is not None:
        tree = RatchetTree.decode(ext.extension_data)
    elif ratchet_tree is not None:
        tree = ratchet_tree.copy()
    else:
        raise ValidationError("no ratchet tree in the GroupInfo and none given")
    signer = tree.leaf(info.signer) if info.signer < tree.n_leaves else None
    if signer is None:
        raise ValidationError("GroupInfo signer is not a member")
    verify_group_info(suite, signer.signature_key, info)
    if tree.tree_hash(suite) != gc.tree_hash:
        raise ValidationError("ratchet tree does not match the GroupInfo tree hash")
    tree.verify_parent_hashes(suite)
    tree.verify_leaf_signatures(suite, gc.group_id)
    for _, leaf in tree.leaves():
        if not validate(leaf.credential, leaf.signature_key):
            raise ValidationError("credential rejected")
    return tree


def _external_pub(info: GroupInfo) -> bytes:
    # RFC 9420 §12.4.3.2: struct { HPKEPublicKey external_pub; } ExternalPub;
    ext = next((e for e in info.extensions if e.extension_type == EXTERNAL_PUB_EXTENSION), None)
    if ext is None:
        raise ValidationError("GroupInfo has no external_pub extension")
    r = Reader(ext.extension_data)
    try:
        pub = r.opaque()
        r.finish()
    except DecodeError:
        raise ValidationError("malformed external_pub extension") from None
    return pub


class Group:
    """One member's state of an MLS group; build with :meth:`create`, :meth:`join` or
    :meth:`join_external`.

    Attributes are read-only for callers; every state change goes through :meth:`commit`,
    :meth:`process`, :meth:`protect` (consumes a generation) and the constructors.
    """

    def __init__(
        self,
        *,
        suite: CipherSuite,
        context: GroupContext,
        tree: RatchetTree,
        leaf_index: int,
        signature_priv: bytes,
        keys: dict[int, tuple[bytes, bytes]],
        secrets: EpochSecrets,
        interim: bytes,
        confirmation_tag: bytes,
        validate_credential: CredentialValidator,
        external_psks: Mapping[bytes, bytes],
    ) -> None:
        self.suite = suite
        self.context = context
        self.tree = tree
        self.leaf_index = leaf_index
        self.active = True
        self._signature_priv = signature_priv
        self._keys = keys
        self._secrets = secrets
        self._interim = interim
        self._confirmation_tag = confirmation_tag
        self._validate = validate_credential
        self._external_psks = dict(external_psks)
        self._resumption: dict[int, bytes] = {context.epoch: secrets.resumption_psk}
        self._proposals: dict[bytes, tuple[Proposal, int]] = {}
        self._secret_tree = SecretTree(suite, secrets.encryption_secret, tree.n_leaves)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        suite: CipherSuite,
        group_id: bytes,
        leaf: LeafNode,
        encryption_priv: bytes,
        signature_priv: bytes,
        random: Random,
        validate_credential: CredentialValidator,
        extensions: Sequence[Extension] = (),
    ) -> Group:
        """Create a one-member group at epoch 0 (RFC 9420 §11).

        Args:
            suite: the cipher suite.
            group_id: the new group's id.
            leaf: our leaf node (source key_package, as in our KeyPackage).
            encryption_priv: the private key of ``leaf.encryption_key``.
            signature_priv: the private key of ``leaf.signature_key``.
            random: returns ``n`` fresh random bytes (for ``init_secret``).
            validate_credential: judges members' credentials.
            extensions: GroupContext extensions.

        Returns:
            The group.
        """
        tree = RatchetTree([Node(leaf=leaf)])
        context = GroupContext(
            suite.value, group_id, 0, tree.tree_hash(suite), b"", tuple(extensions)
        )
        secrets = key_schedule(
            suite, random(suite.kdf.Nh), zero_secret(suite), zero_secret(suite), encode(context)
        )
        # RFC 9420 §8.2: epoch 0's interim hash uses the tag over an empty transcript.
        tag = confirmation_tag(suite, secrets.confirmation_key, b"")
        return cls(
            suite=suite,
            context=context,
            tree=tree,
            leaf_index=0,
            signature_priv=signature_priv,
            keys={0: (encryption_priv, leaf.encryption_key)},
            secrets=secrets,
            interim=interim_transcript_hash(suite, b"", tag),
            confirmation_tag=tag,
            validate_credential=validate_credential,
            external_psks={},
        )

    @classmethod
    def join(
        cls,
        welcome: Welcome,
        key_package: KeyPackage,
        init_priv: bytes,
        encryption_priv: bytes,
        signature_priv: bytes,
        validate_credential: CredentialValidator,
        *,
        ratchet_tree: RatchetTree | None = None,
        external_psks: Mapping[bytes, bytes] | None = None,
    ) -> Group:
        """Join a group from a Welcome (RFC 9420 §12.4.3.1).

        Args:
            welcome: the received Welcome.
            key_package: our KeyPackage it was made for.
            init_priv: the KeyPackage's init private key.
            encryption_priv: the private key of the KeyPackage leaf's encryption key.
            signature_priv: our signature private key.
            validate_credential: judges members' credentials.
            ratchet_tree: the tree, when the GroupInfo has no ``ratchet_tree`` extension.
            external_psks: external PSKs by ``psk_id``.

        Returns:
            The group at the Welcome's epoch.

        Raises:
            ValidationError: no tree, tree/tag/hash mismatch, rejected credential, or we are
                not in the tree.
            CryptoError: decryption or a signature fails.
            UnsupportedError: the suite, or a resumption PSK we do not have.
        """
        suite = cipher_suite(welcome.cipher_suite)
        psks = dict(external_psks or {})

        def psk_secret_for(ids: Sequence[PreSharedKeyID]) -> bytes:
            return _psk_secret(suite, ids, psks, {})

        group_secrets, info, psk = open_welcome(
            suite, welcome, key_package, init_priv, lambda gs: psk_secret_for(gs.psks)
        )
        gc = info.group_context
        # RFC 9420 §12.4.3.1: the tree must be valid before we trust it.
        tree = _group_info_tree(suite, info, ratchet_tree, validate_credential)
        secrets = join_epoch_secrets(suite, group_secrets, info, psk, tree.tree_hash(suite))
        me = next((i for i, leaf in tree.leaves() if leaf == key_package.leaf_node), None)
        if me is None:
            raise ValidationError("our leaf is not in the ratchet tree")
        keys = {tm.leaf_to_node(me): (encryption_priv, key_package.leaf_node.encryption_key)}
        if group_secrets.path_secret is not None:
            lca = tm.common_ancestor(tm.leaf_to_node(me), tm.leaf_to_node(info.signer))
            nodes = [p for p, _ in tree.filtered_direct_path(info.signer)]
            if lca not in nodes:
                raise ValidationError("path_secret for a node not on the committer's path")
            _, privs, _ = derive_path_secrets(
                suite, nodes, nodes.index(lca), group_secrets.path_secret
            )
            for x, priv in privs.items():
                parent = tree.parent_node(x)
                pub = suite.hpke_public_key(priv)
                if parent is None or parent.encryption_key != pub:
                    raise ValidationError("path_secret does not match the tree")
                keys[x] = (priv, pub)
        group = cls(
            suite=suite,
            context=gc,
            tree=tree,
            leaf_index=me,
            signature_priv=signature_priv,
            keys=keys,
            secrets=secrets,
            interim=interim_transcript_hash(
                suite, gc.confirmed_transcript_hash, info.confirmation_tag
            ),
            confirmation_tag=info.confirmation_tag,
            validate_credential=validate_credential,
            external_psks=psks,
        )
        return group

    @classmethod
    def join_external(
        cls,
        group_info: GroupInfo,
        leaf: LeafNode,
        signature_priv: bytes,
        random: Random,
        validate_credential: CredentialValidator,
        *,
        ratchet_tree: RatchetTree | None = None,
        resync: int | None = None,
        external_psks: Mapping[bytes, bytes] | None = None,
        authenticated_data: bytes = b"",
    ) -> tuple[Group, MLSMessage]:
        """Join a group by external commit (RFC 9420 §12.4.3.2, §8.3).

        Verifies the GroupInfo and its tree as a Welcome joiner would (signature, tree hash,
        parent hashes, leaf signatures, credentials), derives ``init_secret`` from the
        ``external_pub`` extension (``kem_output`` goes into an ExternalInit proposal), places
        us at the leftmost blank leaf and commits with an UpdatePath.

        Args:
            group_info: a member's GroupInfo with the ``external_pub`` extension (see
                :meth:`group_info`).
            leaf: our leaf node as a template: its signature key, credential, capabilities and
                extensions are kept; encryption key, source (``commit``), parent hash and
                signature are made here.
            signature_priv: the private key of ``leaf.signature_key``.
            random: returns ``n`` fresh random bytes.
            validate_credential: judges members' credentials (ours included).
            ratchet_tree: the tree, when the GroupInfo has no ``ratchet_tree`` extension.
            resync: our old leaf index, to remove it in the same commit (a "resync" external
                commit); its credential must equal ``leaf.credential``.
            external_psks: external PSKs by ``psk_id``, each injected with a PreSharedKey
                proposal (RFC 9420 §12.2 allows them in external commits); every member must
                hold them too.
            authenticated_data: authenticated data of the commit message.

        Returns:
            ``(group, commit)``: our state, already in the new epoch, and the commit (a
            PublicMessage from a ``new_member_commit`` sender) to send to the group.

        Raises:
            ValidationError: no tree or ``external_pub``, tree/hash mismatch, invalid tree, or a
                rejected credential.
            CryptoError: the GroupInfo or a leaf signature does not verify, or ``external_pub``
                is malformed.
            UnsupportedError: the suite is not supported.
            LocalError: ``signature_priv`` does not match ``leaf``, or ``resync`` does not
                name a leaf with our credential.
        """
        suite = cipher_suite(group_info.group_context.cipher_suite)
        if suite.signature_key_pair(signature_priv)[1] != leaf.signature_key:
            raise LocalError("signature_priv does not match the leaf's signature key")
        gc = group_info.group_context
        tree = _group_info_tree(suite, group_info, ratchet_tree, validate_credential)
        if not validate_credential(leaf.credential, leaf.signature_key):
            raise LocalError("our own credential is rejected by validate_credential")
        # RFC 9420 §8.3: kem_output, context = SetupBaseS(external_pub, "");
        # init_secret = context.export("MLS 1.0 external init secret", Nh).
        kem_output, init_secret = external_init_sender(
            suite, _external_pub(group_info), randomness=random(32)
        )
        proposals: list[Proposal] = [ExternalInit(kem_output)]
        if resync is not None:
            old = tree.leaf(resync) if 0 <= resync < tree.n_leaves else None
            if old is None or old.credential != leaf.credential:
                raise LocalError("resync must name a leaf holding our credential")
            proposals.append(Remove(resync))
            tree.remove_leaf(resync)
        psks = dict(external_psks or {})
        psk_ids = [PreSharedKeyID(1, random(suite.kdf.Nh), psk_id) for psk_id in psks]
        proposals += [PreSharedKey(i) for i in psk_ids]
        # RFC 9420 §12.4.3.2: the joiner takes the leftmost free leaf (as an Add would), and
        # the path is computed from there; §12.4.1: provisional context of the next epoch.
        me = tree.add_leaf(leaf)

        def context_for(tree_hash: bytes) -> bytes:
            return encode(replace(gc, epoch=gc.epoch + 1, tree_hash=tree_hash))

        path, result = create_update_path(
            suite,
            tree,
            me,
            leaf,
            signature_priv,
            gc.group_id,
            random(suite.kdf.Nh),
            random(32),
            context_for,
            random,
        )
        commit = Commit(tuple(ProposalOrRef(proposal=p) for p in proposals), path)
        content = FramedContent(
            gc.group_id, gc.epoch, Sender(SenderType.NEW_MEMBER_COMMIT), commit, authenticated_data
        )
        old_ctx = encode(gc)
        ac = framing.sign_content(
            suite, signature_priv, WireFormat.PUBLIC_MESSAGE, content, old_ctx
        )
        # RFC 9420 §8.2: the joiner's interim hash comes from the GroupInfo, as for a Welcome.
        interim = interim_transcript_hash(
            suite, gc.confirmed_transcript_hash, group_info.confirmation_tag
        )
        confirmed = confirmed_transcript_hash(suite, interim, ac.confirmed_transcript_hash_input())
        new_gc = replace(
            gc,
            epoch=gc.epoch + 1,
            tree_hash=tree.tree_hash(suite),
            confirmed_transcript_hash=confirmed,
        )
        psk = _psk_secret(suite, psk_ids, psks, {})
        secrets = key_schedule(suite, init_secret, result.commit_secret, psk, encode(new_gc))
        tag = confirmation_tag(suite, secrets.confirmation_key, confirmed)
        ac = replace(ac, auth=replace(ac.auth, confirmation_tag=tag))
        # No membership tag: the sender is not a member (RFC 9420 §6.2).
        message = framing.protect_public(suite, b"", ac, old_ctx)
        keys = {x: (k, suite.hpke_public_key(k)) for x, k in result.private_keys.items()}
        group = cls(
            suite=suite,
            context=new_gc,
            tree=tree,
            leaf_index=me,
            signature_priv=signature_priv,
            keys=keys,
            secrets=secrets,
            interim=interim_transcript_hash(suite, confirmed, tag),
            confirmation_tag=tag,
            validate_credential=validate_credential,
            external_psks=psks,
        )
        return group, MLSMessage(message)

    # -- accessors ----------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The current epoch."""
        return self.context.epoch

    @property
    def group_id(self) -> bytes:
        """The group id."""
        return self.context.group_id

    @property
    def epoch_authenticator(self) -> bytes:
        """This epoch's ``epoch_authenticator`` (RFC 9420 §8.7)."""
        return self._secrets.epoch_authenticator

    def members(self) -> list[int]:
        """Leaf indices of the current members."""
        return [i for i, _ in self.tree.leaves()]

    def export_secret(self, label: str | bytes, context: bytes, length: int) -> bytes:
        """``MLS-Exporter(label, context, length)`` of this epoch (RFC 9420 §8.5)."""
        return mls_exporter(self.suite, self._secrets.exporter_secret, label, context, length)

    def group_info(self, *, external_pub: bool = True, ratchet_tree: bool = True) -> GroupInfo:
        """A signed GroupInfo of the current epoch (RFC 9420 §12.4.3), for external joins.

        Args:
            external_pub: include the ``external_pub`` extension, the HPKE public key derived
                from this epoch's ``external_secret`` (RFC 9420 §8.3, §12.4.3.2); without it
                nobody can join by external commit.
            ratchet_tree: include the ``ratchet_tree`` extension (RFC 9420 §12.4.3.3).

        Returns:
            The GroupInfo, signed by us; wrap it in :class:`MLSMessage` to send it. It is valid
            for one external join: any commit moves the group past its epoch.
        """
        self._check_active()
        extensions = []
        if external_pub:
            pub = external_key_pair(self.suite, self._secrets.external_secret)[1]
            extensions.append(Extension(EXTERNAL_PUB_EXTENSION, Writer().opaque(pub).bytes()))
        if ratchet_tree:
            extensions.append(Extension(RATCHET_TREE_EXTENSION, self.tree.encode()))
        return sign_group_info(
            self.suite,
            self._signature_priv,
            self.context,
            extensions,
            self._confirmation_tag,
            self.leaf_index,
        )

    def add_external_psk(self, psk_id: bytes, psk: bytes) -> None:
        """Make an external PSK available to commits we process or create."""
        self._external_psks[psk_id] = psk

    # -- sending ------------------------------------------------------------------------------

    def _check_active(self) -> None:
        if not self.active:
            raise LocalError("we were removed from this group")

    def protect(self, data: bytes, random: Random, authenticated_data: bytes = b"") -> MLSMessage:
        """Encrypt application data as a PrivateMessage (RFC 9420 §6.3).

        Args:
            data: the application data.
            random: returns ``n`` fresh random bytes (for the reuse guard).
            authenticated_data: data authenticated but not encrypted.

        Returns:
            The message to send.
        """
        self._check_active()
        ctx = encode(self.context)
        content = FramedContent(
            self.group_id, self.epoch, Sender.member(self.leaf_index), data, authenticated_data
        )
        ac = framing.sign_content(
            self.suite, self._signature_priv, WireFormat.PRIVATE_MESSAGE, content, ctx
        )
        msg = framing.protect_private(
            self.suite, self._secret_tree, self._secrets.sender_data_secret, ac, random(4)
        )
        return MLSMessage(msg)

    def commit(
        self,
        random: Random,
        *,
        add: Sequence[KeyPackage] = (),
        remove: Sequence[int] = (),
        update: bool = True,
        private: bool = False,
        now: int | None = None,
    ) -> tuple[MLSMessage, Welcome | None]:
        """Create and merge a commit adding and removing members (RFC 9420 §12.4.1).

        Args:
            random: returns ``n`` fresh random bytes.
            add: KeyPackages of members to add.
            remove: leaf indices of members to remove.
            update: include an UpdatePath (always done when a proposal requires one).
            private: send as PrivateMessage instead of PublicMessage.
            now: current Unix time, to check KeyPackage lifetimes (``None`` skips the check).

        Returns:
            ``(commit message, Welcome or None)``; the group is already in the new epoch.

        Raises:
            ValidationError: an invalid proposal (blank leaf removed, bad KeyPackage, ...).
            LocalError: we are no longer a member, or we would remove ourselves.
        """
        self._check_active()
        if self.leaf_index in remove:
            raise LocalError("a member cannot commit its own removal")
        suite = self.suite
        proposals: list[Proposal] = [Remove(i) for i in remove]
        proposals += [Add(kp) for kp in add]
        tree = self.tree.copy()
        new_members, extensions, psk_ids = self._apply_proposals(
            tree, [(p, self.leaf_index) for p in proposals], self.leaf_index, now
        )
        path: UpdatePath | None = None
        commit_secret = zero_secret(suite)
        path_secrets: dict[int, bytes] = {}
        new_keys: dict[int, bytes] = {}
        if update or _path_required(proposals):
            me = self.tree.leaf(self.leaf_index)
            assert me is not None
            path, result = create_update_path(
                suite,
                tree,
                self.leaf_index,
                me,
                self._signature_priv,
                self.group_id,
                random(suite.kdf.Nh),
                random(32),
                self._provisional(extensions),
                random,
                new_members,
            )
            commit_secret, path_secrets, new_keys = (
                result.commit_secret,
                result.path_secrets,
                result.private_keys,
            )
        commit = Commit(tuple(ProposalOrRef(proposal=p) for p in proposals), path)
        wf = WireFormat.PRIVATE_MESSAGE if private else WireFormat.PUBLIC_MESSAGE
        content = FramedContent(self.group_id, self.epoch, Sender.member(self.leaf_index), commit)
        old_ctx = encode(self.context)
        ac = framing.sign_content(suite, self._signature_priv, wf, content, old_ctx)
        gc, secrets, confirmed = self._next_epoch(tree, extensions, ac, commit_secret, psk_ids)
        tag = confirmation_tag(suite, secrets.confirmation_key, confirmed)
        ac = replace(ac, auth=replace(ac.auth, confirmation_tag=tag))
        message: PublicMessage | PrivateMessage
        if private:
            message = framing.protect_private(
                suite, self._secret_tree, self._secrets.sender_data_secret, ac, random(4)
            )
        else:
            message = framing.protect_public(suite, self._secrets.membership_key, ac, old_ctx)
        welcome = None
        if new_members:
            info = sign_group_info(
                suite,
                self._signature_priv,
                gc,
                [Extension(RATCHET_TREE_EXTENSION, tree.encode())],
                tag,
                self.leaf_index,
            )
            recipients = []
            by_leaf = {k.leaf_node: k for k in add}
            for idx in new_members:
                leaf = tree.leaf(idx)
                assert leaf is not None  # just added
                kp = by_leaf[leaf]
                lca = tm.common_ancestor(tm.leaf_to_node(idx), tm.leaf_to_node(self.leaf_index))
                recipients.append((kp, path_secrets.get(lca)))
            welcome = create_welcome(
                suite, info, secrets.joiner_secret, self._psk(psk_ids), recipients, random
            )
        self._merge(tree, gc, secrets, confirmed, tag, new_keys)
        return MLSMessage(message), welcome

    # -- receiving ----------------------------------------------------------------------------

    def process(self, message: MLSMessage, now: int | None = None) -> Event:
        """Process one incoming group message (RFC 9420 §6, §12).

        Args:
            message: a PublicMessage or PrivateMessage of this group.
            now: current Unix time, to check KeyPackage lifetimes (``None`` skips the check).

        Returns:
            What happened: application data, a cached proposal, or an applied commit.

        Raises:
            ValidationError: wrong group or epoch, non-member sender, invalid proposal or
                commit, wrong confirmation tag.
            CryptoError: a tag, signature or decryption check failed.
            SecretReuseError: a replayed or too-distant generation.
            UnsupportedError: external senders, new-member proposals, ReInit.
        """
        self._check_active()
        body = message.body
        ctx = encode(self.context)
        if isinstance(body, PublicMessage):
            if body.content.group_id != self.group_id or body.content.epoch != self.epoch:
                raise ValidationError("message for another group or epoch")
            sender_type = body.content.sender.sender_type
            if sender_type == SenderType.NEW_MEMBER_COMMIT:
                return self._process_external_commit(body, ctx, now)
            if sender_type != SenderType.MEMBER:
                raise UnsupportedError("external senders and new-member proposals")
            ac = framing.unprotect_public(self.suite, self._secrets.membership_key, body, ctx)
        elif isinstance(body, PrivateMessage):
            if body.group_id != self.group_id or body.epoch != self.epoch:
                raise ValidationError("message for another group or epoch")
            ac = framing.unprotect_private(
                self.suite,
                self._secret_tree,
                self._secrets.sender_data_secret,
                body,
                lambda i: i < self.tree.n_leaves and self.tree.leaf(i) is not None,
            )
        else:
            raise ValidationError("not a group message")
        sender = ac.content.sender.index
        leaf = self.tree.leaf(sender) if sender < self.tree.n_leaves else None
        if leaf is None:
            raise ValidationError(f"sender {sender} is not a member")
        framing.verify_signature(self.suite, leaf.signature_key, ac, ctx)
        content = ac.content.content
        if isinstance(content, bytes):
            # RFC 9420 §6.2: application data is never sent as PublicMessage.
            if ac.wire_format != WireFormat.PRIVATE_MESSAGE:
                raise ValidationError("application data in a PublicMessage")
            return ApplicationReceived(sender, content, ac.content.authenticated_data)
        if isinstance(content, Commit):
            return self._process_commit(ac, content, sender, now)
        if isinstance(content, ExternalInit):
            # RFC 9420 §12.1.6: only inside an external commit.
            raise ValidationError("ExternalInit proposal outside an external commit")
        ref = self.suite.make_proposal_ref(encode(ac))
        self._proposals[ref] = (content, sender)
        return ProposalReceived(sender, ref, content)

    def _process_commit(
        self, ac: AuthenticatedContent, commit: Commit, committer: int, now: int | None
    ) -> CommitApplied:
        suite = self.suite
        if committer == self.leaf_index:
            raise ValidationError("our own commit was already merged")
        proposals: list[tuple[Proposal, int]] = []
        for por in commit.proposals:
            if por.proposal is not None:
                proposals.append((por.proposal, committer))
            else:
                assert por.reference is not None
                entry = self._proposals.get(por.reference)
                if entry is None:
                    raise ValidationError("commit references an unknown proposal")
                proposals.append(entry)
        if any(isinstance(p, ExternalInit) for p, _ in proposals):
            # RFC 9420 §12.2: a member's commit contains no ExternalInit.
            raise ValidationError("ExternalInit in a member commit")
        if commit.path is None and _path_required([p for p, _ in proposals]):
            raise ValidationError("commit lacks a required UpdatePath")  # RFC 9420 §12.4
        tree = self.tree.copy()
        new_members, extensions, psk_ids = self._apply_proposals(tree, proposals, committer, now)
        if any(isinstance(p, Remove) and p.removed == self.leaf_index for p, _ in proposals):
            # RFC 9420 §12.4.2: a removed member stops here; it cannot decrypt the path. (Ask
            # the proposals, not the new tree: an Add in the same commit may reuse our leaf.)
            self.active = False
            return CommitApplied(self.epoch + 1, committer, removed=True)
        commit_secret = zero_secret(suite)
        new_keys: dict[int, bytes] = {}
        if commit.path is not None:
            if not self._validate(
                commit.path.leaf_node.credential, commit.path.leaf_node.signature_key
            ):
                raise ValidationError("credential rejected")
            private = {x: k[0] for x, k in self._keys.items()}
            result = apply_update_path(
                suite,
                tree,
                committer,
                commit.path,
                self.group_id,
                self.leaf_index,
                private,
                self._provisional(extensions),
                new_members,
            )
            commit_secret, new_keys = result.commit_secret, result.private_keys
        gc, secrets, confirmed = self._next_epoch(tree, extensions, ac, commit_secret, psk_ids)
        tag = ac.auth.confirmation_tag
        assert tag is not None  # checked by verify_signature
        # RFC 9420 §12.4.2: the tag proves the committer derived the same epoch.
        if not verify_confirmation_tag(suite, secrets.confirmation_key, confirmed, tag):
            raise ValidationError("confirmation tag does not verify")
        self._merge(tree, gc, secrets, confirmed, tag, new_keys)
        return CommitApplied(gc.epoch, committer)

    def _process_external_commit(
        self, msg: PublicMessage, ctx: bytes, now: int | None
    ) -> CommitApplied:
        # RFC 9420 §12.4.3.2, §12.2, §12.4.2: a new_member_commit sender's commit.
        suite = self.suite
        commit = msg.content.content
        if not isinstance(commit, Commit):
            raise ValidationError("new_member_commit sender sent no commit")
        if msg.membership_tag is not None:
            raise ValidationError("external commit with a membership tag")  # §6.2
        path = commit.path
        if path is None:
            raise ValidationError("external commit without a path")
        # The signature verifies with the key of the path's leaf node (§12.4.3.2).
        ac = framing.unprotect_public(suite, self._secrets.membership_key, msg, ctx)
        framing.verify_signature(suite, path.leaf_node.signature_key, ac, ctx)
        if any(por.proposal is None for por in commit.proposals):
            raise ValidationError("external commit with a proposal by reference")
        proposals = [por.proposal for por in commit.proposals if por.proposal is not None]
        # §12.2: exactly one ExternalInit, at most one Remove, PreSharedKeys, nothing else.
        inits = [p for p in proposals if isinstance(p, ExternalInit)]
        if len(inits) != 1:
            raise ValidationError("external commit needs exactly one ExternalInit")
        removes = [p for p in proposals if isinstance(p, Remove)]
        if len(removes) > 1:
            raise ValidationError("external commit with more than one Remove")
        if any(not isinstance(p, (ExternalInit, Remove, PreSharedKey)) for p in proposals):
            raise ValidationError("proposal type not allowed in an external commit")
        new_leaf = path.leaf_node
        if not self._validate(new_leaf.credential, new_leaf.signature_key):
            raise ValidationError("credential rejected")
        for r in removes:
            # §12.2: a Remove only replaces the joiner's old leaf (resync); the new leaf must
            # be acceptable for the removed member: we require the same credential.
            old = self.tree.leaf(r.removed) if r.removed < self.tree.n_leaves else None
            if old is not None and old.credential != new_leaf.credential:
                raise ValidationError("external commit removes another member")
        tree = self.tree.copy()
        _, extensions, psk_ids = self._apply_proposals(
            tree, [(p, -1) for p in proposals], -1, now, external=True
        )
        if self.leaf_index >= tree.n_leaves or tree.leaf(self.leaf_index) is None:
            # An external resync replaced our own leaf (we are the joiner's old state).
            self.active = False
            return CommitApplied(self.epoch + 1, -1, removed=True)
        # §12.4.2: the joiner takes the leftmost blank leaf, extending the tree if needed.
        committer = tree.add_leaf(new_leaf)
        private = {x: k[0] for x, k in self._keys.items()}
        result = apply_update_path(
            suite,
            tree,
            committer,
            path,
            self.group_id,
            self.leaf_index,
            private,
            self._provisional(extensions),
        )
        # §8.3: init_secret from the ExternalInit's kem_output and this epoch's external key.
        external_priv = external_key_pair(suite, self._secrets.external_secret)[0]
        init_secret = external_init_receiver(suite, external_priv, inits[0].kem_output)
        gc, secrets, confirmed = self._next_epoch(
            tree, extensions, ac, result.commit_secret, psk_ids, init_secret
        )
        tag = ac.auth.confirmation_tag
        assert tag is not None  # checked by verify_signature
        if not verify_confirmation_tag(suite, secrets.confirmation_key, confirmed, tag):
            raise ValidationError("confirmation tag does not verify")
        self._merge(tree, gc, secrets, confirmed, tag, result.private_keys)
        return CommitApplied(gc.epoch, committer)

    # -- epoch change -------------------------------------------------------------------------

    def _apply_proposals(
        self,
        tree: RatchetTree,
        proposals: Sequence[tuple[Proposal, int]],
        committer: int,
        now: int | None,
        *,
        external: bool = False,
    ) -> tuple[list[int], tuple[Extension, ...], list[PreSharedKeyID]]:
        # RFC 9420 §12.3: GroupContextExtensions, then Update, Remove, Add, PreSharedKey.
        # ``external``: an external commit, whose list the caller checked (§12.2).
        suite = self.suite
        extensions = self.context.extensions
        for p, _ in proposals:
            if isinstance(p, ReInit):
                raise UnsupportedError("ReInit proposals")
            if isinstance(p, ExternalInit) and not external:
                # RFC 9420 §12.2: a member's commit contains no ExternalInit.
                raise ValidationError("ExternalInit in a member commit")
            if isinstance(p, GroupContextExtensions):
                extensions = p.extensions
        removed = [p.removed for p, _ in proposals if isinstance(p, Remove)]
        if len(set(removed)) != len(removed):
            raise ValidationError("a leaf is removed twice")
        if committer in removed:
            raise ValidationError("a committer cannot remove itself")  # RFC 9420 §12.2
        for p, sender in proposals:
            if isinstance(p, Update):
                if sender == committer:
                    raise ValidationError("a committer cannot include its own Update")
                if p.leaf_node.leaf_node_source != LeafNodeSource.UPDATE:
                    raise ValidationError("Update leaf node must have source update")
                verify_leaf_signature(suite, p.leaf_node, self.group_id, sender)
                if not self._validate(p.leaf_node.credential, p.leaf_node.signature_key):
                    raise ValidationError("credential rejected")
                tree.update_leaf(sender, p.leaf_node)
        for leaf_index in removed:
            tree.remove_leaf(leaf_index)
        new_members = []
        for p, _ in proposals:
            if isinstance(p, Add):
                _key_package_ok(suite, p.key_package, self._validate, now)
                new_members.append(tree.add_leaf(p.key_package.leaf_node))
        psks = [p.psk for p, _ in proposals if isinstance(p, PreSharedKey)]
        return new_members, extensions, psks

    def _provisional(self, extensions: tuple[Extension, ...]) -> Callable[[bytes], bytes]:
        # RFC 9420 §12.4.1: the UpdatePath is encrypted under the provisional GroupContext:
        # next epoch, new tree hash, old confirmed transcript hash, new extensions.
        def context_for(tree_hash: bytes) -> bytes:
            return encode(
                replace(
                    self.context,
                    epoch=self.epoch + 1,
                    tree_hash=tree_hash,
                    extensions=extensions,
                )
            )

        return context_for

    def _psk(self, ids: Sequence[PreSharedKeyID]) -> bytes:
        return _psk_secret(self.suite, ids, self._external_psks, self._resumption, self.group_id)

    def _next_epoch(
        self,
        tree: RatchetTree,
        extensions: tuple[Extension, ...],
        ac: AuthenticatedContent,
        commit_secret: bytes,
        psk_ids: Sequence[PreSharedKeyID],
        init_secret: bytes | None = None,
    ) -> tuple[GroupContext, EpochSecrets, bytes]:
        # ``init_secret``: the external init secret of an external commit (RFC 9420 §8.3).
        suite = self.suite
        confirmed = confirmed_transcript_hash(
            suite, self._interim, ac.confirmed_transcript_hash_input()
        )
        gc = replace(
            self.context,
            epoch=self.epoch + 1,
            tree_hash=tree.tree_hash(suite),
            confirmed_transcript_hash=confirmed,
            extensions=extensions,
        )
        if init_secret is None:
            init_secret = self._secrets.init_secret
        secrets = key_schedule(suite, init_secret, commit_secret, self._psk(psk_ids), encode(gc))
        return gc, secrets, confirmed

    def _merge(
        self,
        tree: RatchetTree,
        gc: GroupContext,
        secrets: EpochSecrets,
        confirmed: bytes,
        tag: bytes,
        new_keys: dict[int, bytes],
    ) -> None:
        keys = dict(self._keys)
        for x, priv in new_keys.items():
            keys[x] = (priv, self.suite.hpke_public_key(priv))
        # Keep only keys whose node still carries the matching public key (RFC 9420 §7.7).
        self._keys = {x: k for x, k in keys.items() if tree.encryption_key(x) == k[1]}
        self.tree = tree
        self.context = gc
        self._secrets = secrets
        self._interim = interim_transcript_hash(self.suite, confirmed, tag)
        self._confirmation_tag = tag
        self._secret_tree = SecretTree(self.suite, secrets.encryption_secret, tree.n_leaves)
        self._proposals.clear()
        self._resumption[gc.epoch] = secrets.resumption_psk

    def clone(self) -> Group:
        """A deep copy of this state (e.g. to try a commit and roll back)."""
        return copy.deepcopy(self)


def _path_required(proposals: Sequence[Proposal]) -> bool:
    # RFC 9420 §12.4: a path is required unless every proposal is Add, PreSharedKey or ReInit.
    return not proposals or any(not isinstance(p, (Add, PreSharedKey, ReInit)) for p in proposals)


def _psk_secret(
    suite: CipherSuite,
    ids: Sequence[PreSharedKeyID],
    external: Mapping[bytes, bytes],
    resumption: Mapping[int, bytes],
    group_id: bytes | None = None,
) -> bytes:
    pairs = []
    for psk_id in ids:
        if psk_id.psktype == 1:
            value = external.get(psk_id.psk_id)
        elif psk_id.psk_group_id == group_id:
            value = resumption.get(psk_id.psk_epoch)
        else:
            value = None
        if value is None:
            raise UnsupportedError("unknown pre-shared key")
        if len(psk_id.psk_nonce) != suite.kdf.Nh:
            raise ValidationError("psk_nonce must be Nh bytes")  # RFC 9420 §8.4
        pairs.append((encode(psk_id), value))
    return psk_secret(suite, pairs)
