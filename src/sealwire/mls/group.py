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
* external commits, ReInit and ExternalInit proposals raise
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
from ._tls import encode
from .crypto import CipherSuite, cipher_suite
from .errors import LocalError, UnsupportedError, ValidationError
from .key_schedule import EpochSecrets, key_schedule, mls_exporter, zero_secret
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


class Group:
    """One member's state of an MLS group; build with :meth:`create` or :meth:`join`.

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
        ext = next((e for e in info.extensions if e.extension_type == RATCHET_TREE_EXTENSION), None)
        if ext is not None:
            tree = RatchetTree.decode(ext.extension_data)
        elif ratchet_tree is not None:
            tree = ratchet_tree.copy()
        else:
            raise ValidationError("no ratchet tree in the Welcome and none given")
        signer = tree.leaf(info.signer) if info.signer < tree.n_leaves else None
        if signer is None:
            raise ValidationError("GroupInfo signer is not a member")
        verify_group_info(suite, signer.signature_key, info)
        secrets = join_epoch_secrets(suite, group_secrets, info, psk, tree.tree_hash(suite))
        # RFC 9420 §12.4.3.1: the tree must be valid before we trust it.
        tree.verify_parent_hashes(suite)
        tree.verify_leaf_signatures(suite, gc.group_id)
        for _, leaf in tree.leaves():
            if not validate_credential(leaf.credential, leaf.signature_key):
                raise ValidationError("credential rejected")
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
            validate_credential=validate_credential,
            external_psks=psks,
        )
        return group

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
            for idx in new_members:
                kp = next(k for k in add if k.leaf_node == tree.leaf(idx))
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
            UnsupportedError: external senders and commits, ReInit, ExternalInit.
        """
        self._check_active()
        body = message.body
        ctx = encode(self.context)
        if isinstance(body, PublicMessage):
            if body.content.group_id != self.group_id or body.content.epoch != self.epoch:
                raise ValidationError("message for another group or epoch")
            if body.content.sender.sender_type != SenderType.MEMBER:
                raise UnsupportedError("non-member senders")
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
        if commit.path is None and _path_required([p for p, _ in proposals]):
            raise ValidationError("commit lacks a required UpdatePath")  # RFC 9420 §12.4
        tree = self.tree.copy()
        new_members, extensions, psk_ids = self._apply_proposals(tree, proposals, committer, now)
        if self.leaf_index >= tree.n_leaves or tree.leaf(self.leaf_index) is None:
            # RFC 9420 §12.4.2: a removed member stops here; it cannot decrypt the path.
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

    # -- epoch change -------------------------------------------------------------------------

    def _apply_proposals(
        self,
        tree: RatchetTree,
        proposals: Sequence[tuple[Proposal, int]],
        committer: int,
        now: int | None,
    ) -> tuple[list[int], tuple[Extension, ...], list[PreSharedKeyID]]:
        # RFC 9420 §12.3: GroupContextExtensions, then Update, Remove, Add, PreSharedKey.
        suite = self.suite
        extensions = self.context.extensions
        for p, _ in proposals:
            if isinstance(p, (ReInit, ExternalInit)):
                raise UnsupportedError(f"{type(p).__name__} proposals")
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
    ) -> tuple[GroupContext, EpochSecrets, bytes]:
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
        secrets = key_schedule(
            suite, self._secrets.init_secret, commit_secret, self._psk(psk_ids), encode(gc)
        )
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
