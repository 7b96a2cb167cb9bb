"""RFC 9420 wire structures with strict TLS-presentation encode/decode (through :mod:`._tls`).

Every structure is a frozen dataclass implementing :class:`~sealwire.mls._tls.TLSSerializable`:
``write(w)`` appends its encoding and the classmethod ``read(r)`` parses one from a
:class:`~sealwire.mls._tls.Reader`; use :func:`~sealwire.mls._tls.encode` and
:func:`~sealwire.mls._tls.decode` for whole byte strings. Decoding is strict: unknown values of
closed enumerations (content type, sender type, wire format, node type, leaf-node source, PSK
type, ``ProposalOrRef`` type) and invalid presence flags raise
:class:`~sealwire.mls.errors.DecodeError`; a credential or proposal type we cannot parse (its
body has no length prefix, so it cannot be skipped) raises
:class:`~sealwire.mls.errors.UnsupportedError`. Cipher-suite and extension-type numbers are kept
as plain integers: the layer that uses them decides whether they are acceptable.

Variant structures (``select`` in the RFC) are one class per variant where the variants differ
in shape (:class:`Proposal` is the union of :class:`Add`, :class:`Update`, ...), and one class
with optional fields where the RFC selects a small tail (:class:`LeafNode`, :class:`Sender`).
Byte-identical re-encoding of every decoded structure is a tested property (``messages``
vectors).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from ._tls import Reader, Writer
from .errors import DecodeError, LocalError, UnsupportedError

__all__ = [
    "Add",
    "AuthenticatedContent",
    "Capabilities",
    "Commit",
    "Content",
    "ContentType",
    "Credential",
    "CredentialType",
    "EncryptedGroupSecrets",
    "Extension",
    "ExternalInit",
    "FramedContent",
    "FramedContentAuthData",
    "GroupContext",
    "GroupContextExtensions",
    "GroupInfo",
    "GroupSecrets",
    "HPKECiphertext",
    "KeyPackage",
    "LeafNode",
    "LeafNodeSource",
    "Lifetime",
    "MLSMessage",
    "MessageBody",
    "Node",
    "NodeType",
    "ParentNode",
    "PreSharedKey",
    "PreSharedKeyID",
    "PrivateMessage",
    "Proposal",
    "ProposalOrRef",
    "ProposalType",
    "ProtocolVersion",
    "PublicMessage",
    "ReInit",
    "Remove",
    "Sender",
    "SenderType",
    "Update",
    "UpdatePath",
    "UpdatePathNode",
    "Welcome",
    "WireFormat",
    "content_type_of",
    "read_content",
    "read_proposal",
    "read_ratchet_tree",
    "write_content",
    "write_proposal",
    "write_ratchet_tree",
]

E = TypeVar("E", bound=enum.IntEnum)
T = TypeVar("T")


def _enum(cls: type[E], value: int) -> E:
    try:
        return cls(value)
    except ValueError:
        raise DecodeError(f"invalid {cls.__name__} value {value}") from None


def _write(w: Writer, item: Any) -> None:
    item.write(w)


def _u16(w: Writer, v: int) -> None:
    w.u16(v)


def _u32(w: Writer, v: int) -> None:
    w.u32(v)


def _read_vec(r: Reader, read_item: Callable[[Reader], T]) -> tuple[T, ...]:
    return tuple(r.vector(read_item))


def _read_u16(r: Reader) -> int:
    return r.u16()


def _read_u32(r: Reader) -> int:
    return r.u32()


# -- enumerations (RFC 9420 §17 registries; closed ones are checked on decode) ----------------


class ProtocolVersion(enum.IntEnum):
    """``ProtocolVersion`` (RFC 9420 §6); only ``mls10`` exists."""

    MLS10 = 1


class ContentType(enum.IntEnum):
    """``ContentType`` (RFC 9420 §6)."""

    APPLICATION = 1
    PROPOSAL = 2
    COMMIT = 3


class SenderType(enum.IntEnum):
    """``SenderType`` (RFC 9420 §6)."""

    MEMBER = 1
    EXTERNAL = 2
    NEW_MEMBER_PROPOSAL = 3
    NEW_MEMBER_COMMIT = 4


class WireFormat(enum.IntEnum):
    """``WireFormat`` (RFC 9420 §6, §17.2)."""

    PUBLIC_MESSAGE = 1
    PRIVATE_MESSAGE = 2
    WELCOME = 3
    GROUP_INFO = 4
    KEY_PACKAGE = 5


class CredentialType(enum.IntEnum):
    """``CredentialType`` (RFC 9420 §5.3, §17.5)."""

    BASIC = 1
    X509 = 2


class LeafNodeSource(enum.IntEnum):
    """``LeafNodeSource`` (RFC 9420 §7.2)."""

    KEY_PACKAGE = 1
    UPDATE = 2
    COMMIT = 3


class NodeType(enum.IntEnum):
    """``NodeType`` (RFC 9420 §7.8)."""

    LEAF = 1
    PARENT = 2


class ProposalType(enum.IntEnum):
    """``ProposalType`` (RFC 9420 §12.1, §17.4)."""

    ADD = 1
    UPDATE = 2
    REMOVE = 3
    PSK = 4
    REINIT = 5
    EXTERNAL_INIT = 6
    GROUP_CONTEXT_EXTENSIONS = 7


class _PSKType(enum.IntEnum):
    EXTERNAL = 1
    RESUMPTION = 2


class _ProposalOrRefType(enum.IntEnum):
    PROPOSAL = 1
    REFERENCE = 2


def _read_version(r: Reader) -> int:
    # RFC 9420 §6: only mls10 is defined; anything else cannot be interpreted.
    v = r.u16()
    if v != ProtocolVersion.MLS10:
        raise UnsupportedError(f"protocol version {v}")
    return v


# -- basic structures (RFC 9420 §5.3, §7.2, §13) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Credential:
    """``Credential`` (RFC 9420 §5.3): a basic identity or an X.509 chain (DER certificates)."""

    credential_type: int
    identity: bytes = b""
    """The identity of a ``basic`` credential."""
    certificates: tuple[bytes, ...] = ()
    """The DER certificates of an ``x509`` credential, leaf first."""

    @classmethod
    def basic(cls, identity: bytes) -> Credential:
        """A basic credential carrying ``identity``."""
        return cls(CredentialType.BASIC, identity=identity)

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.u16(self.credential_type)
        if self.credential_type == CredentialType.BASIC:
            w.opaque(self.identity)
        else:
            w.vector(self.certificates, Writer.opaque)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``Credential``.

        Raises:
            UnsupportedError: a credential type other than basic or x509.
        """
        ct = r.u16()
        if ct == CredentialType.BASIC:
            return cls(ct, identity=r.opaque())
        if ct == CredentialType.X509:
            return cls(ct, certificates=_read_vec(r, Reader.opaque))
        raise UnsupportedError(f"credential type {ct}")


@dataclass(frozen=True, slots=True)
class Extension:
    """``Extension`` (RFC 9420 §13): a type and opaque data."""

    extension_type: int
    extension_data: bytes

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.u16(self.extension_type).opaque(self.extension_data)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``Extension``."""
        return cls(r.u16(), r.opaque())


@dataclass(frozen=True, slots=True)
class Capabilities:
    """``Capabilities`` (RFC 9420 §7.2)."""

    versions: tuple[int, ...] = (ProtocolVersion.MLS10,)
    cipher_suites: tuple[int, ...] = ()
    extensions: tuple[int, ...] = ()
    proposals: tuple[int, ...] = ()
    credentials: tuple[int, ...] = (CredentialType.BASIC,)

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        for values in (
            self.versions,
            self.cipher_suites,
            self.extensions,
            self.proposals,
            self.credentials,
        ):
            w.vector(values, _u16)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``Capabilities``."""
        return cls(*(_read_vec(r, _read_u16) for _ in range(5)))


@dataclass(frozen=True, slots=True)
class Lifetime:
    """``Lifetime`` (RFC 9420 §7.2): seconds since the Unix epoch, both bounds inclusive."""

    not_before: int
    not_after: int

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.u64(self.not_before).u64(self.not_after)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``Lifetime``."""
        return cls(r.u64(), r.u64())


@dataclass(frozen=True, slots=True)
class LeafNode:
    """``LeafNode`` (RFC 9420 §7.2).

    ``lifetime`` is set exactly when ``leaf_node_source`` is ``key_package`` and
    ``parent_hash`` exactly when it is ``commit``.
    """

    encryption_key: bytes
    signature_key: bytes
    credential: Credential
    capabilities: Capabilities
    leaf_node_source: LeafNodeSource
    lifetime: Lifetime | None = None
    parent_hash: bytes | None = None
    extensions: tuple[Extension, ...] = ()
    signature: bytes = b""

    def _write_body(self, w: Writer) -> None:
        w.opaque(self.encryption_key).opaque(self.signature_key)
        self.credential.write(w)
        self.capabilities.write(w)
        w.u8(self.leaf_node_source)
        if self.leaf_node_source == LeafNodeSource.KEY_PACKAGE:
            if self.lifetime is None:
                raise LocalError("a key_package leaf node needs a lifetime")
            self.lifetime.write(w)
        elif self.leaf_node_source == LeafNodeSource.COMMIT:
            if self.parent_hash is None:
                raise LocalError("a commit leaf node needs a parent_hash")
            w.opaque(self.parent_hash)
        w.vector(self.extensions, _write)

    def to_be_signed(self, group_id: bytes = b"", leaf_index: int = 0) -> bytes:
        """``LeafNodeTBS`` (RFC 9420 §7.2).

        Args:
            group_id: the group, for ``update`` and ``commit`` sources (ignored otherwise).
            leaf_index: the leaf's index, for ``update`` and ``commit`` sources.

        Returns:
            The bytes signed with label ``"LeafNodeTBS"``.
        """
        w = Writer()
        self._write_body(w)
        # RFC 9420 §7.2: only leaves tied to a position in a group bind group_id and index.
        if self.leaf_node_source in (LeafNodeSource.UPDATE, LeafNodeSource.COMMIT):
            w.opaque(group_id).u32(leaf_index)
        return w.bytes()

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        self._write_body(w)
        w.opaque(self.signature)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``LeafNode``."""
        encryption_key = r.opaque()
        signature_key = r.opaque()
        credential = Credential.read(r)
        capabilities = Capabilities.read(r)
        source = _enum(LeafNodeSource, r.u8())
        lifetime = Lifetime.read(r) if source == LeafNodeSource.KEY_PACKAGE else None
        parent_hash = r.opaque() if source == LeafNodeSource.COMMIT else None
        extensions = _read_vec(r, Extension.read)
        return cls(
            encryption_key,
            signature_key,
            credential,
            capabilities,
            source,
            lifetime,
            parent_hash,
            extensions,
            r.opaque(),
        )


@dataclass(frozen=True, slots=True)
class KeyPackage:
    """``KeyPackage`` (RFC 9420 §10)."""

    cipher_suite: int
    init_key: bytes
    leaf_node: LeafNode
    extensions: tuple[Extension, ...] = ()
    signature: bytes = b""
    version: int = ProtocolVersion.MLS10

    def to_be_signed(self) -> bytes:
        """``KeyPackageTBS``: the bytes signed with label ``"KeyPackageTBS"``."""
        w = Writer().u16(self.version).u16(self.cipher_suite).opaque(self.init_key)
        self.leaf_node.write(w)
        return w.vector(self.extensions, _write).bytes()

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.raw(self.to_be_signed()).opaque(self.signature)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``KeyPackage``."""
        version = _read_version(r)
        suite = r.u16()
        init_key = r.opaque()
        leaf = LeafNode.read(r)
        extensions = _read_vec(r, Extension.read)
        return cls(suite, init_key, leaf, extensions, r.opaque(), version)


# -- ratchet tree nodes and paths (RFC 9420 §7) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class HPKECiphertext:
    """``HPKECiphertext`` (RFC 9420 §7.6)."""

    kem_output: bytes
    ciphertext: bytes

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.opaque(self.kem_output).opaque(self.ciphertext)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``HPKECiphertext``."""
        return cls(r.opaque(), r.opaque())


@dataclass(frozen=True, slots=True)
class UpdatePathNode:
    """``UpdatePathNode`` (RFC 9420 §7.6)."""

    encryption_key: bytes
    encrypted_path_secret: tuple[HPKECiphertext, ...]

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.opaque(self.encryption_key).vector(self.encrypted_path_secret, _write)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``UpdatePathNode``."""
        return cls(r.opaque(), _read_vec(r, HPKECiphertext.read))


@dataclass(frozen=True, slots=True)
class UpdatePath:
    """``UpdatePath`` (RFC 9420 §7.6)."""

    leaf_node: LeafNode
    nodes: tuple[UpdatePathNode, ...]

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        self.leaf_node.write(w)
        w.vector(self.nodes, _write)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``UpdatePath``."""
        return cls(LeafNode.read(r), _read_vec(r, UpdatePathNode.read))


@dataclass(frozen=True, slots=True)
class ParentNode:
    """``ParentNode`` (RFC 9420 §7.1)."""

    encryption_key: bytes
    parent_hash: bytes = b""
    unmerged_leaves: tuple[int, ...] = ()

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.opaque(self.encryption_key).opaque(self.parent_hash).vector(self.unmerged_leaves, _u32)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``ParentNode``."""
        return cls(r.opaque(), r.opaque(), _read_vec(r, _read_u32))


@dataclass(frozen=True, slots=True)
class Node:
    """``Node`` (RFC 9420 §7.8): exactly one of ``leaf`` and ``parent`` is set."""

    leaf: LeafNode | None = None
    parent: ParentNode | None = None

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        if self.leaf is not None:
            w.u8(NodeType.LEAF)
            self.leaf.write(w)
        else:
            if self.parent is None:
                raise LocalError("a Node holds a leaf or a parent")
            w.u8(NodeType.PARENT)
            self.parent.write(w)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``Node``."""
        if _enum(NodeType, r.u8()) == NodeType.LEAF:
            return cls(leaf=LeafNode.read(r))
        return cls(parent=ParentNode.read(r))


def write_ratchet_tree(w: Writer, nodes: Sequence[Node | None]) -> None:
    """Append ``optional<Node> ratchet_tree<V>`` (RFC 9420 §12.4.3.3)."""

    def item(w2: Writer, node: Node | None) -> None:
        w2.optional(node, _write)

    w.vector(nodes, item)


def read_ratchet_tree(r: Reader) -> list[Node | None]:
    """Read ``optional<Node> ratchet_tree<V>`` (RFC 9420 §12.4.3.3).

    Raises:
        DecodeError: invalid encoding, or the tree ends with a blank node (§12.4.3.3 requires
            the last node to be non-blank).
    """
    nodes = r.vector(lambda r2: r2.optional(Node.read))
    if nodes and nodes[-1] is None:
        raise DecodeError("ratchet tree ends with a blank node")
    return nodes


# -- proposals and commits (RFC 9420 §12) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreSharedKeyID:
    """``PreSharedKeyID`` (RFC 9420 §8.4): external (``psk_id``) or resumption."""

    psktype: int
    psk_nonce: bytes
    psk_id: bytes = b""
    usage: int = 0
    psk_group_id: bytes = b""
    psk_epoch: int = 0

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.u8(self.psktype)
        if self.psktype == _PSKType.EXTERNAL:
            w.opaque(self.psk_id)
        else:
            w.u8(self.usage).opaque(self.psk_group_id).u64(self.psk_epoch)
        w.opaque(self.psk_nonce)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``PreSharedKeyID``."""
        t = _enum(_PSKType, r.u8())
        if t == _PSKType.EXTERNAL:
            psk_id = r.opaque()
            return cls(t, psk_id=psk_id, psk_nonce=r.opaque())
        usage = r.u8()
        if usage not in (1, 2, 3):  # ResumptionPSKUsage (RFC 9420 §8.4)
            raise DecodeError(f"invalid ResumptionPSKUsage {usage}")
        group_id = r.opaque()
        epoch = r.u64()
        return cls(t, r.opaque(), usage=usage, psk_group_id=group_id, psk_epoch=epoch)


@dataclass(frozen=True, slots=True)
class Add:
    """``Add`` proposal (RFC 9420 §12.1.1)."""

    key_package: KeyPackage
    proposal_type = ProposalType.ADD

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        self.key_package.write(w)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``Add``."""
        return cls(KeyPackage.read(r))


@dataclass(frozen=True, slots=True)
class Update:
    """``Update`` proposal (RFC 9420 §12.1.2)."""

    leaf_node: LeafNode
    proposal_type = ProposalType.UPDATE

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        self.leaf_node.write(w)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``Update``."""
        return cls(LeafNode.read(r))


@dataclass(frozen=True, slots=True)
class Remove:
    """``Remove`` proposal (RFC 9420 §12.1.3)."""

    removed: int
    proposal_type = ProposalType.REMOVE

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.u32(self.removed)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``Remove``."""
        return cls(r.u32())


@dataclass(frozen=True, slots=True)
class PreSharedKey:
    """``PreSharedKey`` proposal (RFC 9420 §12.1.4)."""

    psk: PreSharedKeyID
    proposal_type = ProposalType.PSK

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        self.psk.write(w)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``PreSharedKey``."""
        return cls(PreSharedKeyID.read(r))


@dataclass(frozen=True, slots=True)
class ReInit:
    """``ReInit`` proposal (RFC 9420 §12.1.5)."""

    group_id: bytes
    cipher_suite: int
    extensions: tuple[Extension, ...] = ()
    version: int = ProtocolVersion.MLS10
    proposal_type = ProposalType.REINIT

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.opaque(self.group_id).u16(self.version).u16(self.cipher_suite)
        w.vector(self.extensions, _write)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``ReInit``."""
        group_id = r.opaque()
        version = _read_version(r)
        suite = r.u16()
        return cls(group_id, suite, _read_vec(r, Extension.read), version)


@dataclass(frozen=True, slots=True)
class ExternalInit:
    """``ExternalInit`` proposal (RFC 9420 §12.1.6)."""

    kem_output: bytes
    proposal_type = ProposalType.EXTERNAL_INIT

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.opaque(self.kem_output)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``ExternalInit``."""
        return cls(r.opaque())


@dataclass(frozen=True, slots=True)
class GroupContextExtensions:
    """``GroupContextExtensions`` proposal (RFC 9420 §12.1.7)."""

    extensions: tuple[Extension, ...]
    proposal_type = ProposalType.GROUP_CONTEXT_EXTENSIONS

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.vector(self.extensions, _write)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``GroupContextExtensions``."""
        return cls(_read_vec(r, Extension.read))


Proposal = Add | Update | Remove | PreSharedKey | ReInit | ExternalInit | GroupContextExtensions
"""A proposal body; its ``proposal_type`` class attribute gives the RFC 9420 §12.1 type."""

_PROPOSAL_READERS: dict[int, Callable[[Reader], Proposal]] = {
    ProposalType.ADD: Add.read,
    ProposalType.UPDATE: Update.read,
    ProposalType.REMOVE: Remove.read,
    ProposalType.PSK: PreSharedKey.read,
    ProposalType.REINIT: ReInit.read,
    ProposalType.EXTERNAL_INIT: ExternalInit.read,
    ProposalType.GROUP_CONTEXT_EXTENSIONS: GroupContextExtensions.read,
}


def write_proposal(w: Writer, proposal: Proposal) -> None:
    """Append ``Proposal``: the ``uint16`` type then the body (RFC 9420 §12.1)."""
    w.u16(proposal.proposal_type)
    proposal.write(w)


def read_proposal(r: Reader) -> Proposal:
    """Read one ``Proposal`` (RFC 9420 §12.1).

    Raises:
        UnsupportedError: a proposal type other than the seven RFC 9420 defines.
    """
    t = r.u16()
    reader = _PROPOSAL_READERS.get(t)
    if reader is None:
        raise UnsupportedError(f"proposal type {t}")
    return reader(r)


@dataclass(frozen=True, slots=True)
class ProposalOrRef:
    """``ProposalOrRef`` (RFC 9420 §12.4): exactly one of ``proposal`` and ``reference``."""

    proposal: Proposal | None = None
    reference: bytes | None = None

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        if self.proposal is not None:
            w.u8(_ProposalOrRefType.PROPOSAL)
            write_proposal(w, self.proposal)
        else:
            if self.reference is None:
                raise LocalError("ProposalOrRef holds a proposal or a reference")
            w.u8(_ProposalOrRefType.REFERENCE).opaque(self.reference)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``ProposalOrRef``."""
        if _enum(_ProposalOrRefType, r.u8()) == _ProposalOrRefType.PROPOSAL:
            return cls(proposal=read_proposal(r))
        return cls(reference=r.opaque())


@dataclass(frozen=True, slots=True)
class Commit:
    """``Commit`` (RFC 9420 §12.4)."""

    proposals: tuple[ProposalOrRef, ...] = ()
    path: UpdatePath | None = None

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.vector(self.proposals, _write).optional(self.path, _write)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``Commit``."""
        return cls(_read_vec(r, ProposalOrRef.read), r.optional(UpdatePath.read))


# -- group context and framing (RFC 9420 §6, §8.1) --------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupContext:
    """``GroupContext`` (RFC 9420 §8.1)."""

    cipher_suite: int
    group_id: bytes
    epoch: int
    tree_hash: bytes
    confirmed_transcript_hash: bytes
    extensions: tuple[Extension, ...] = ()
    version: int = ProtocolVersion.MLS10

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.u16(self.version).u16(self.cipher_suite).opaque(self.group_id).u64(self.epoch)
        w.opaque(self.tree_hash).opaque(self.confirmed_transcript_hash)
        w.vector(self.extensions, _write)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``GroupContext``."""
        version = _read_version(r)
        suite = r.u16()
        group_id = r.opaque()
        epoch = r.u64()
        tree_hash = r.opaque()
        cth = r.opaque()
        return cls(suite, group_id, epoch, tree_hash, cth, _read_vec(r, Extension.read), version)


@dataclass(frozen=True, slots=True)
class Sender:
    """``Sender`` (RFC 9420 §6): ``index`` is the leaf index (member) or the external
    sender index (external); it is unused for the two new-member types."""

    sender_type: SenderType
    index: int = 0

    @classmethod
    def member(cls, leaf_index: int) -> Sender:
        """A member sender at ``leaf_index``."""
        return cls(SenderType.MEMBER, leaf_index)

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.u8(self.sender_type)
        if self.sender_type in (SenderType.MEMBER, SenderType.EXTERNAL):
            w.u32(self.index)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``Sender``."""
        t = _enum(SenderType, r.u8())
        if t in (SenderType.MEMBER, SenderType.EXTERNAL):
            return cls(t, r.u32())
        return cls(t)


Content = bytes | Proposal | Commit
"""The body of a ``FramedContent``: application data (bytes), a proposal or a commit."""


def content_type_of(content: Content) -> ContentType:
    """The ``ContentType`` of a content body."""
    if isinstance(content, bytes):
        return ContentType.APPLICATION
    if isinstance(content, Commit):
        return ContentType.COMMIT
    return ContentType.PROPOSAL


def write_content(w: Writer, content: Content) -> None:
    """Append the ``select (content_type)`` body of FramedContent (RFC 9420 §6)."""
    if isinstance(content, bytes):
        w.opaque(content)
    elif isinstance(content, Commit):
        content.write(w)
    else:
        write_proposal(w, content)


def read_content(r: Reader, content_type: ContentType) -> Content:
    """Read the body of a FramedContent of type ``content_type`` (RFC 9420 §6)."""
    if content_type == ContentType.APPLICATION:
        return r.opaque()
    if content_type == ContentType.PROPOSAL:
        return read_proposal(r)
    return Commit.read(r)


@dataclass(frozen=True, slots=True)
class FramedContent:
    """``FramedContent`` (RFC 9420 §6)."""

    group_id: bytes
    epoch: int
    sender: Sender
    content: Content
    authenticated_data: bytes = b""

    @property
    def content_type(self) -> ContentType:
        """The ``ContentType`` implied by ``content``."""
        return content_type_of(self.content)

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.opaque(self.group_id).u64(self.epoch)
        self.sender.write(w)
        w.opaque(self.authenticated_data).u8(self.content_type)
        write_content(w, self.content)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``FramedContent``."""
        group_id = r.opaque()
        epoch = r.u64()
        sender = Sender.read(r)
        aad = r.opaque()
        ct = _enum(ContentType, r.u8())
        return cls(group_id, epoch, sender, read_content(r, ct), aad)

    def to_be_signed(self, wire_format: WireFormat, context: bytes | None) -> bytes:
        """``FramedContentTBS`` (RFC 9420 §6.1).

        Args:
            wire_format: the wire format the content travels in.
            context: the serialized ``GroupContext``, required for member and new-member-commit
                senders, ignored for the others.

        Returns:
            The bytes signed with label ``"FramedContentTBS"``.
        """
        w = Writer().u16(ProtocolVersion.MLS10).u16(wire_format)
        self.write(w)
        if self.sender.sender_type in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT):
            if context is None:
                raise LocalError("member senders sign over the GroupContext")
            w.raw(context)
        return w.bytes()


@dataclass(frozen=True, slots=True)
class FramedContentAuthData:
    """``FramedContentAuthData`` (RFC 9420 §6.1): ``confirmation_tag`` only for commits."""

    signature: bytes
    confirmation_tag: bytes | None = None

    def write(self, w: Writer) -> None:
        """Append the encoding (``confirmation_tag`` written when present)."""
        w.opaque(self.signature)
        if self.confirmation_tag is not None:
            w.opaque(self.confirmation_tag)

    @classmethod
    def read_for(cls, r: Reader, content_type: ContentType) -> Self:
        """Read one ``FramedContentAuthData`` for content of ``content_type``."""
        signature = r.opaque()
        tag = r.opaque() if content_type == ContentType.COMMIT else None
        return cls(signature, tag)


@dataclass(frozen=True, slots=True)
class AuthenticatedContent:
    """``AuthenticatedContent`` (RFC 9420 §6.1)."""

    wire_format: WireFormat
    content: FramedContent
    auth: FramedContentAuthData

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.u16(self.wire_format)
        self.content.write(w)
        self.auth.write(w)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``AuthenticatedContent``."""
        wf = _enum(WireFormat, r.u16())
        content = FramedContent.read(r)
        return cls(wf, content, FramedContentAuthData.read_for(r, content.content_type))

    def confirmed_transcript_hash_input(self) -> bytes:
        """``ConfirmedTranscriptHashInput`` (RFC 9420 §8.2): everything but the tag."""
        w = Writer().u16(self.wire_format)
        self.content.write(w)
        return w.opaque(self.auth.signature).bytes()


@dataclass(frozen=True, slots=True)
class PublicMessage:
    """``PublicMessage`` (RFC 9420 §6.2): ``membership_tag`` only for member senders."""

    content: FramedContent
    auth: FramedContentAuthData
    membership_tag: bytes | None = None

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        self.content.write(w)
        self.auth.write(w)
        if self.content.sender.sender_type == SenderType.MEMBER:
            if self.membership_tag is None:
                raise LocalError("member PublicMessages carry a tag")
            w.opaque(self.membership_tag)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``PublicMessage``."""
        content = FramedContent.read(r)
        auth = FramedContentAuthData.read_for(r, content.content_type)
        tag = r.opaque() if content.sender.sender_type == SenderType.MEMBER else None
        return cls(content, auth, tag)


@dataclass(frozen=True, slots=True)
class PrivateMessage:
    """``PrivateMessage`` (RFC 9420 §6.3)."""

    group_id: bytes
    epoch: int
    content_type: ContentType
    authenticated_data: bytes
    encrypted_sender_data: bytes
    ciphertext: bytes

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.opaque(self.group_id).u64(self.epoch).u8(self.content_type)
        w.opaque(self.authenticated_data).opaque(self.encrypted_sender_data)
        w.opaque(self.ciphertext)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``PrivateMessage``."""
        group_id = r.opaque()
        epoch = r.u64()
        ct = _enum(ContentType, r.u8())
        return cls(group_id, epoch, ct, r.opaque(), r.opaque(), r.opaque())


# -- joining (RFC 9420 §12.4.3) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupSecrets:
    """``GroupSecrets`` (RFC 9420 §12.4.3.1)."""

    joiner_secret: bytes
    path_secret: bytes | None = None
    psks: tuple[PreSharedKeyID, ...] = ()

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.opaque(self.joiner_secret).optional(self.path_secret, Writer.opaque)
        w.vector(self.psks, _write)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``GroupSecrets``."""
        joiner = r.opaque()
        path_secret = r.optional(Reader.opaque)
        return cls(joiner, path_secret, _read_vec(r, PreSharedKeyID.read))


@dataclass(frozen=True, slots=True)
class EncryptedGroupSecrets:
    """``EncryptedGroupSecrets`` (RFC 9420 §12.4.3.1)."""

    new_member: bytes
    """The ``KeyPackageRef`` of the KeyPackage the secrets are encrypted to."""
    encrypted_group_secrets: HPKECiphertext

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.opaque(self.new_member)
        self.encrypted_group_secrets.write(w)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``EncryptedGroupSecrets``."""
        return cls(r.opaque(), HPKECiphertext.read(r))


@dataclass(frozen=True, slots=True)
class Welcome:
    """``Welcome`` (RFC 9420 §12.4.3.1)."""

    cipher_suite: int
    secrets: tuple[EncryptedGroupSecrets, ...]
    encrypted_group_info: bytes

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.u16(self.cipher_suite).vector(self.secrets, _write).opaque(self.encrypted_group_info)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``Welcome``."""
        suite = r.u16()
        return cls(suite, _read_vec(r, EncryptedGroupSecrets.read), r.opaque())


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """``GroupInfo`` (RFC 9420 §12.4.3)."""

    group_context: GroupContext
    extensions: tuple[Extension, ...]
    confirmation_tag: bytes
    signer: int
    signature: bytes = b""

    def to_be_signed(self) -> bytes:
        """``GroupInfoTBS``: the bytes signed with label ``"GroupInfoTBS"``."""
        w = Writer()
        self.group_context.write(w)
        w.vector(self.extensions, _write).opaque(self.confirmation_tag).u32(self.signer)
        return w.bytes()

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.raw(self.to_be_signed()).opaque(self.signature)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``GroupInfo``."""
        gc = GroupContext.read(r)
        extensions = _read_vec(r, Extension.read)
        tag = r.opaque()
        signer = r.u32()
        return cls(gc, extensions, tag, signer, r.opaque())


MessageBody = PublicMessage | PrivateMessage | Welcome | GroupInfo | KeyPackage
"""What an ``MLSMessage`` can carry."""

_BODY_FORMAT: dict[type, WireFormat] = {
    PublicMessage: WireFormat.PUBLIC_MESSAGE,
    PrivateMessage: WireFormat.PRIVATE_MESSAGE,
    Welcome: WireFormat.WELCOME,
    GroupInfo: WireFormat.GROUP_INFO,
    KeyPackage: WireFormat.KEY_PACKAGE,
}
_BODY_READERS: dict[WireFormat, Callable[[Reader], MessageBody]] = {
    WireFormat.PUBLIC_MESSAGE: PublicMessage.read,
    WireFormat.PRIVATE_MESSAGE: PrivateMessage.read,
    WireFormat.WELCOME: Welcome.read,
    WireFormat.GROUP_INFO: GroupInfo.read,
    WireFormat.KEY_PACKAGE: KeyPackage.read,
}


@dataclass(frozen=True, slots=True)
class MLSMessage:
    """``MLSMessage`` (RFC 9420 §6): the outer envelope of everything MLS sends."""

    body: MessageBody
    version: int = field(default=ProtocolVersion.MLS10)

    @property
    def wire_format(self) -> WireFormat:
        """The wire format implied by ``body``."""
        return _BODY_FORMAT[type(self.body)]

    def write(self, w: Writer) -> None:
        """Append the encoding."""
        w.u16(self.version).u16(self.wire_format)
        self.body.write(w)

    @classmethod
    def read(cls, r: Reader) -> Self:
        """Read one ``MLSMessage``.

        Raises:
            DecodeError: invalid encoding or unknown wire format.
            UnsupportedError: a protocol version other than mls10.
        """
        version = _read_version(r)
        wf = _enum(WireFormat, r.u16())
        return cls(_BODY_READERS[wf](r), version)
