"""The enterprise server's audit log: every administrative action, one signed entry in a hash
chain (DESIGN §8).

Each entry records when (``at``, Unix milliseconds), who (``actor``: an administrator's name,
``"system"``, or ``"device:<short address>"``), what (``action``, such as ``"user.add"`` or
``"command.wipe"``), to what (``target``) and how (``details``, a small JSON object). Entries are
numbered 1, 2, 3 ... (``seq``) and chained::

    entry_hash = SHA-256(labelled("audit-entry",
                                  CBOR([seq, at, actor, action, target, details_json, prev_hash])))
    signature  = Ed25519 over labelled("audit-entry", entry_hash), by the server's identity key

where ``prev_hash`` is the previous entry's ``entry_hash`` (32 zero bytes for entry 1), the CBOR
is the deterministic encoding of :mod:`sealwire.protocol.codec`, and ``details_json`` is the
canonical JSON text stored in the database (keys sorted, no spaces, UTF-8).

What the chain proves. :meth:`AuditLog.verify` walks the whole log and detects editing any field
of any entry, inserting an entry, deleting one, or reordering entries: the first entry that does
not check out is named. Rewriting the chain from some point on to hide such a change would need
new signatures, that is the server's identity key, which lives only in the server's sealed key
file (:mod:`.keystore`), not in the database.

What it does not prove. Removing the *newest* entries leaves a shorter chain that is still
valid: truncation is detectable only against something kept outside the database, such as an
export (:meth:`AuditLog.export_lines`, checked offline with :func:`verify_exported`) or a
recorded head (the newest ``seq`` and ``entry_hash``). Keep exports elsewhere, regularly. Nor
does the log prove that an action was recorded at all: whoever holds the server's key, or runs
code on the server, can act without writing an entry, or write false ones; the log makes later
tampering evident, not the server honest. ``at`` is the server's clock, not a trusted timestamp.

The export (:meth:`AuditLog.export_lines`) is one JSON object per line, an entry each
(:meth:`AuditEntry.to_json`), oldest first. Two kinds of line instead mark what the server could
not export, and :func:`verify_exported` reports either as a break at that point:

* ``{"error": "<why>", "seq": N}``: entry ``N`` is in the database but cannot be read (its stored
  details are not a JSON object: the log was altered there). Later entries follow.
* ``{"error": "<why>"}``: the server could not read further (the database failed); it is the
  last line, and the export is incomplete.

What the log must never hold: secrets. :meth:`AuditLog.append` refuses details whose keys name a
password, passcode, secret, token or key (at any depth, case-insensitively); it cannot judge
values, so callers pass names and identifiers, never credentials.

Appenders are serialised, so that several server processes sharing one PostgreSQL database write
one chain: on PostgreSQL each append first takes a transaction-scoped advisory lock
(:data:`LOCK_KEY`); on SQLite every transaction already holds the write lock from its start.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from sealwire.errors import InvalidSignature, StorageError
from sealwire.protocol.codec import encode_value
from sealwire.protocol.suite import SigningKey, labelled, sha256, verify_signature
from sealwire.storage import Database

__all__ = [
    "GENESIS_HASH",
    "LOCK_KEY",
    "MAX_ACTION",
    "MAX_ACTOR",
    "MAX_DETAILS_DEPTH",
    "MAX_DETAILS_SIZE",
    "MAX_TARGET",
    "AuditEntry",
    "AuditLog",
    "AuditVerdict",
    "audit_log",
    "create_tables",
    "metadata",
    "verify_exported",
]

log = logging.getLogger(__name__)

_PURPOSE: Final = "audit-entry"  # labels both the entry hash and the signature over it

GENESIS_HASH: Final = bytes(32)
"""The ``prev_hash`` of entry 1."""

LOCK_KEY: Final = 0x72759A2F5AB15489
"""The PostgreSQL advisory lock every append takes (``pg_advisory_xact_lock``): the first 63 bits
of SHA-256("sealwire/v1/audit-log"). Fixed forever, since servers of different versions may share
one database during an upgrade."""

MAX_ACTOR: Final = 128
"""Longest ``actor``, in characters."""
MAX_ACTION: Final = 64
"""Longest ``action``, in characters."""
MAX_TARGET: Final = 256
"""Longest ``target``, in characters."""
MAX_DETAILS_SIZE: Final = 16_384
"""Largest ``details``, in bytes of canonical JSON (UTF-8)."""
MAX_DETAILS_DEPTH: Final = 8
"""Deepest nesting of objects and arrays in ``details`` (the top-level object is depth 1)."""

_SECRET_WORDS: Final = ("password", "passcode", "secret", "token", "key")
_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 63) - 1
_PAGE: Final = 1000
_MAX_LIMIT: Final = 10_000
_MAX_SHOWN_ERROR: Final = 200
_HEX: Final = re.compile(r"(?:[0-9a-f]{2})*")
_EXPORT_FIELDS: Final = frozenset(
    {"seq", "at", "actor", "action", "target", "details", "prev_hash", "entry_hash", "signature"}
)

metadata = sa.MetaData()

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(MAX_ACTOR), nullable=False, index=True),
    sa.Column("action", sa.String(MAX_ACTION), nullable=False, index=True),
    sa.Column("target", sa.String(MAX_TARGET), nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("entry_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("signature", sa.LargeBinary(64), nullable=False),
)


def create_tables(conn: sa.Connection) -> None:
    """Create today's audit table (tests; the schema is built by :mod:`.migrations`)."""
    metadata.create_all(conn)


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the audit log, as stored."""

    seq: int
    """1, 2, 3 ...: the entry's place in the chain."""
    at: int
    """When it was written, Unix milliseconds (the server's clock)."""
    actor: str
    """Who acted: an administrator's name, ``"system"``, or ``"device:<short address>"``."""
    action: str
    """What was done, such as ``"user.add"`` or ``"command.wipe"``."""
    target: str
    """What it was done to (a user name, a device, a group); may be empty."""
    details: dict[str, Any]
    """Further facts, parsed from the stored JSON (tuples given to :meth:`AuditLog.append`
    come back as lists)."""
    prev_hash: bytes
    """The previous entry's :attr:`entry_hash` (:data:`GENESIS_HASH` for entry 1)."""
    entry_hash: bytes
    """SHA-256 over the labelled encoding of the fields above."""
    signature: bytes
    """The server's Ed25519 signature over :attr:`entry_hash`."""

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON object: bytes as lower-case hex, ``details`` as an object."""
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "details": self.details,
            "prev_hash": self.prev_hash.hex(),
            "entry_hash": self.entry_hash.hex(),
            "signature": self.signature.hex(),
        }


@dataclass(frozen=True)
class AuditVerdict:
    """The outcome of checking a whole chain (:meth:`AuditLog.verify`, :func:`verify_exported`)."""

    ok: bool
    """Whether every entry checked out."""
    checked: int
    """How many entries checked out (all of them when :attr:`ok`; those before
    :attr:`first_broken` otherwise)."""
    first_broken: int | None
    """The ``seq`` of the first entry that does not check out (for a missing entry, its
    number; for a malformed export line, the ``seq`` that line should hold); ``None`` when
    :attr:`ok`."""
    reason: str
    """For the person at the keyboard: what was found, such as ``"entry 7: hash does not match
    its contents"`` or ``"entry 5 is missing"``."""


class AuditLog:
    """The audit log in the server's database, signed with the server's identity key.

    Attributes:
        verify_key: the 32-byte Ed25519 public key entries are signed with.
    """

    def __init__(self, db: Database, signer: SigningKey, *, clock: Callable[[], int]) -> None:
        """Use the log in ``db``, signing with ``signer``.

        Args:
            db: the server's database, migrated by :mod:`.migrations`.
            signer: the server's identity key.
            clock: returns the current time in Unix milliseconds.
        """
        self._db = db
        self._signer = signer
        self._clock = clock
        self.verify_key: bytes = signer.public_key

    def append(
        self,
        actor: str,
        action: str,
        target: str,
        details: Mapping[str, Any] | None = None,
        *,
        conn: sa.Connection | None = None,
    ) -> AuditEntry:
        """Write the next entry of the chain.

        With ``conn``, the entry is written inside the caller's open transaction, so that an
        administrative change and its entry commit (or roll back) together. Appending
        serialises every writer of the log until that transaction ends: make it the last
        statement of the transaction, and keep the transaction short. The transaction must run
        at READ COMMITTED (the :class:`~sealwire.storage.Database` default) so that it sees the
        entry of the writer it waited for.

        Args:
            actor: who acted; 1-:data:`MAX_ACTOR` printable characters.
            action: what was done; 1-:data:`MAX_ACTION` printable characters.
            target: what it was done to; up to :data:`MAX_TARGET` printable characters.
            details: further facts: a mapping with string keys whose values are strings,
                integers (64-bit), booleans, ``None``, lists (or tuples) and such mappings, at
                most :data:`MAX_DETAILS_DEPTH` deep and :data:`MAX_DETAILS_SIZE` bytes as JSON.
                No key may contain "password", "passcode", "secret", "token" or "key" in any
                letter case.
            conn: the caller's open transaction on this log's database, if any.

        Returns:
            The entry as written.

        Raises:
            ValueError: a field is out of bounds, or ``details`` is not JSON-able or names a
                secret. Nothing is written.
            StorageError: the database failed (without ``conn``; with it, the failure surfaces
                from the caller's transaction).
        """
        _check_field("actor", actor, MAX_ACTOR, allow_empty=False)
        _check_field("action", action, MAX_ACTION, allow_empty=False)
        _check_field("target", target, MAX_TARGET, allow_empty=True)
        details_json = _canonical_details({} if details is None else details)
        if conn is not None:
            return self._append(conn, actor, action, target, details_json)
        with self._db.transaction() as own:
            return self._append(own, actor, action, target, details_json)

    def _append(
        self, conn: sa.Connection, actor: str, action: str, target: str, details_json: str
    ) -> AuditEntry:
        if self._db.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_KEY)))
        last = conn.execute(
            sa.select(audit_log.c.seq, audit_log.c.entry_hash)
            .order_by(audit_log.c.seq.desc())
            .limit(1)
        ).first()
        seq, prev_hash = (1, GENESIS_HASH) if last is None else (int(last[0]) + 1, bytes(last[1]))
        at = self._clock()
        entry_hash = _entry_hash(seq, at, actor, action, target, details_json, prev_hash)
        signature = self._signer.sign(_PURPOSE, entry_hash)
        conn.execute(
            audit_log.insert().values(
                seq=seq,
                at=at,
                actor=actor,
                action=action,
                target=target,
                details=details_json,
                prev_hash=prev_hash,
                entry_hash=entry_hash,
                signature=signature,
            )
        )
        return AuditEntry(
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            target=target,
            details=json.loads(details_json),
            prev_hash=prev_hash,
            entry_hash=entry_hash,
            signature=signature,
        )

    def entries(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        actor: str | None = None,
        action: str | None = None,
    ) -> list[AuditEntry]:
        """Entries with ``seq`` greater than ``after``, oldest first.

        Args:
            after: return entries after this ``seq`` (0: from the start).
            limit: at most this many, 1-10000.
            actor: only this actor's entries.
            action: only entries of this action.

        Raises:
            ValueError: ``limit`` is out of range.
            StorageError: the database failed, or an entry's stored details are not JSON (the
                log was tampered with: :meth:`verify` says where).
        """
        if not 1 <= limit <= _MAX_LIMIT:
            raise ValueError(f"limit must be 1-{_MAX_LIMIT}, not {limit}")
        query = sa.select(audit_log).where(audit_log.c.seq > after)
        if actor is not None:
            query = query.where(audit_log.c.actor == actor)
        if action is not None:
            query = query.where(audit_log.c.action == action)
        with self._db.transaction() as conn:
            rows = conn.execute(query.order_by(audit_log.c.seq).limit(limit)).all()
        return [_entry_from_row(row) for row in rows]

    def iter_all(self, page: int = 1000) -> Iterator[AuditEntry]:
        """Every entry, oldest first, read ``page`` entries per transaction.

        Entries appended while iterating may or may not be included.

        Raises:
            ValueError: ``page`` is out of range (1-10000).
            StorageError: as :meth:`entries`.
        """
        after = 0
        while True:
            batch = self.entries(after=after, limit=page)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].seq

    def verify(self, verify_key: bytes | None = None) -> AuditVerdict:
        """Check the whole chain, oldest first, a page at a time.

        Each entry must have the next ``seq`` (from 1, none missing), a hash matching its
        contents, the previous entry's hash as its ``prev_hash``, and a valid signature under
        ``verify_key``. Stops at the first entry that fails. A log cut short at its end still
        verifies: see the module documentation.

        Args:
            verify_key: the public key to check signatures with; by default this log's
                :attr:`verify_key`.

        Returns:
            The verdict; tampering is reported there, never raised.

        Raises:
            StorageError: the database failed.
        """
        key = self.verify_key if verify_key is None else verify_key
        checker = _ChainChecker(key)
        after = 0
        while True:
            with self._db.transaction() as conn:
                rows = conn.execute(
                    sa.select(audit_log)
                    .where(audit_log.c.seq > after)
                    .order_by(audit_log.c.seq)
                    .limit(_PAGE)
                ).all()
            for row in rows:
                verdict = checker.check(
                    seq=int(row.seq),
                    at=int(row.at),
                    actor=str(row.actor),
                    action=str(row.action),
                    target=str(row.target),
                    details_json=str(row.details),
                    prev_hash=bytes(row.prev_hash),
                    entry_hash=bytes(row.entry_hash),
                    signature=bytes(row.signature),
                )
                if verdict is not None:
                    return verdict
            if len(rows) < _PAGE:
                return checker.success()
            after = int(rows[-1].seq)

    def export_lines(self) -> Iterator[str]:
        """The whole log as JSON lines, oldest first: one object per entry (:meth:`AuditEntry.
        to_json`), ASCII only, without a line break (join them with ``"\\n"``).

        Never raises once iterating (the lines may be streamed after an answer's status went
        out): an entry that cannot be read becomes a marked line ``{"error", "seq"}`` and the
        export goes on; a database failure ends it with a line ``{"error"}`` (see the module
        documentation). Check a kept export with :func:`verify_exported`.
        """
        after = 0
        while True:
            try:
                with self._db.transaction() as conn:
                    rows = conn.execute(
                        sa.select(audit_log)
                        .where(audit_log.c.seq > after)
                        .order_by(audit_log.c.seq)
                        .limit(_PAGE)
                    ).all()
            except StorageError as exc:
                log.error("audit export cut short", extra={"after": after, "reason": str(exc)})
                yield _export_line(
                    {"error": f"the server could not read the log after entry {after}"}
                )
                return
            for row in rows:
                try:
                    entry = _entry_with(row, _stored_details(row.details))
                except ValueError as exc:
                    log.warning("audit entry not exported", extra={"seq": int(row.seq)})
                    yield _export_line({"seq": int(row.seq), "error": str(exc)})
                else:
                    yield _export_line(entry.to_json())
            if len(rows) < _PAGE:
                return
            after = int(rows[-1].seq)


def verify_exported(lines: Iterable[str], verify_key: bytes) -> AuditVerdict:
    """Check an export of :meth:`AuditLog.export_lines` as :meth:`AuditLog.verify` checks the
    database, offline.

    Blank lines are skipped; a line that is not one well-formed entry object (invalid JSON,
    duplicate or missing or unknown fields, wrong types, bad hex) ends the check with a verdict
    naming the line.

    Args:
        lines: the export's lines (a text file opened for reading will do).
        verify_key: the server's 32-byte public key.

    Returns:
        The verdict. An empty export verifies, with ``checked == 0``.
    """
    checker = _ChainChecker(verify_key)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            fields = _parse_export_line(line)
        except ValueError as exc:
            return checker.failure(checker.expected, f"line {number}: {exc}")
        if "error" in fields:
            why = fields["error"]
            if fields["seq"] is None:
                return checker.failure(
                    checker.expected, f"line {number}: the export was cut short ({why})"
                )
            if fields["seq"] == checker.expected:
                return checker.failure(
                    fields["seq"],
                    f"line {number}: entry {fields['seq']} could not be read when exported ({why})",
                )
        if fields["seq"] < checker.expected:
            return checker.failure(
                checker.expected,
                f"line {number}: entry {fields['seq']} is out of order "
                f"(expected entry {checker.expected})",
            )
        if "error" in fields:  # a later entry marked: the expected one is missing
            return checker.failure(checker.expected, f"entry {checker.expected} is missing")
        verdict = checker.check(**fields)
        if verdict is not None:
            return verdict
    return checker.success()


# --- the chain ---------------------------------------------------------------------------------


def _entry_hash(
    seq: int, at: int, actor: str, action: str, target: str, details_json: str, prev_hash: bytes
) -> bytes:
    encoded = encode_value([seq, at, actor, action, target, details_json, prev_hash])
    return sha256(labelled(_PURPOSE, encoded))


class _ChainChecker:
    """Checks entries fed in ``seq`` order; the first failure ends the walk."""

    def __init__(self, verify_key: bytes) -> None:
        self._key = verify_key
        self.expected = 1
        self._prev_hash = GENESIS_HASH

    def check(
        self,
        *,
        seq: int,
        at: int,
        actor: str,
        action: str,
        target: str,
        details_json: str,
        prev_hash: bytes,
        entry_hash: bytes,
        signature: bytes,
    ) -> AuditVerdict | None:
        """Return a failed verdict for this entry, or ``None`` when it checks out."""
        n = self.expected
        if seq != n:
            # Rows come in seq order, so a larger seq means the expected one is absent.
            return self.failure(n, f"entry {n} is missing")
        try:
            recomputed = _entry_hash(seq, at, actor, action, target, details_json, prev_hash)
        except (ValueError, TypeError, OverflowError):
            recomputed = None  # fields the encoder refuses cannot be what was signed
        if recomputed != entry_hash:
            return self.failure(n, f"entry {n}: hash does not match its contents")
        if prev_hash != self._prev_hash:
            if n == 1:
                return self.failure(n, "entry 1: does not start the chain")
            return self.failure(n, f"entry {n}: does not follow entry {n - 1}")
        try:
            verify_signature(self._key, _PURPOSE, entry_hash, signature)
        except InvalidSignature:
            return self.failure(n, f"entry {n}: signature does not verify")
        self.expected = n + 1
        self._prev_hash = entry_hash
        return None

    def failure(self, seq: int, reason: str) -> AuditVerdict:
        return AuditVerdict(ok=False, checked=self.expected - 1, first_broken=seq, reason=reason)

    def success(self) -> AuditVerdict:
        count = self.expected - 1
        reason = "the log is empty" if count == 0 else f"all {count} entries verify"
        return AuditVerdict(ok=True, checked=count, first_broken=None, reason=reason)


# --- fields and details ------------------------------------------------------------------------


def _check_field(name: str, value: str, limit: int, *, allow_empty: bool) -> None:
    if not isinstance(value, str):
        raise ValueError(f"audit {name} must be a string, not {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"audit {name} must not be empty")
    if len(value) > limit:
        raise ValueError(f"audit {name} is longer than {limit} characters")
    if not value.isprintable():
        # Control, format and separator characters would let a name forge line breaks or
        # reorder text (bidi overrides) in a listing; PostgreSQL text cannot hold NUL.
        raise ValueError(f"audit {name} holds non-printable characters")
    _check_utf8(value, f"audit {name}")


def _check_utf8(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where} is not valid Unicode (lone surrogate)") from None


def _names_secret(key: str) -> bool:
    # NFKC folds look-alikes such as full-width letters before the comparison.
    folded = unicodedata.normalize("NFKC", key).casefold()
    return any(word in folded for word in _SECRET_WORDS)


def _canonical_details(details: Mapping[str, Any]) -> str:
    """Check ``details`` and return its canonical JSON text."""
    if not isinstance(details, Mapping):
        raise ValueError(f"audit details must be a mapping, not {type(details).__name__}")
    text = _canonical_json(_plain_json(details, "details", 1))
    if len(text.encode("utf-8")) > MAX_DETAILS_SIZE:
        raise ValueError(f"audit details are larger than {MAX_DETAILS_SIZE} bytes as JSON")
    return text


def _plain_json(value: Any, path: str, depth: int) -> Any:
    """Check one value of ``details`` and return it as plain JSON data (dicts, lists, and the
    base ``str`` and ``int`` of subclasses such as enums), which :func:`json.dumps` encodes
    exactly."""
    if value is None or isinstance(value, bool):
        return None if value is None else bool(value)
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"audit {path}: integer outside the 64-bit range")
        return int.__int__(value)
    if isinstance(value, str):
        _check_utf8(value, f"audit {path}")
        return str.__str__(value)
    if not isinstance(value, Mapping | list | tuple):
        # Floats are refused too: their text form is not canonical across implementations.
        raise ValueError(f"audit {path}: {type(value).__name__} values are not allowed")
    if depth > MAX_DETAILS_DEPTH:
        raise ValueError(f"audit details are nested deeper than {MAX_DETAILS_DEPTH}")
    if not isinstance(value, Mapping):
        return [_plain_json(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    plain: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError(f"audit {path}: keys must be strings")
        _check_utf8(key, f"audit {path} key")
        if _names_secret(key):
            raise ValueError(
                f"audit {path}: key {key!r} looks like a secret (it contains one of "
                f"{', '.join(_SECRET_WORDS)}); secrets never go into the audit log"
            )
        plain[str.__str__(key)] = _plain_json(item, f"{path}.{key}", depth + 1)
    return plain


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _stored_details(text: Any) -> dict[str, Any]:
    """An entry's details from the stored JSON text.

    Raises:
        ValueError: saying what is wrong with it (for a person).
    """
    try:
        details = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise ValueError("the stored details are not JSON") from None
    if not isinstance(details, dict):
        raise ValueError("the stored details are not a JSON object")
    return details


def _entry_from_row(row: sa.Row[Any]) -> AuditEntry:
    try:
        details = _stored_details(row.details)
    except ValueError as exc:
        raise StorageError(
            f"audit entry {int(row.seq)}: {exc} (the log was altered; run the audit verification)"
        ) from None
    return _entry_with(row, details)


def _entry_with(row: sa.Row[Any], details: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        seq=int(row.seq),
        at=int(row.at),
        actor=str(row.actor),
        action=str(row.action),
        target=str(row.target),
        details=details,
        prev_hash=bytes(row.prev_hash),
        entry_hash=bytes(row.entry_hash),
        signature=bytes(row.signature),
    )


# --- export ------------------------------------------------------------------------------------


def _export_line(obj: Mapping[str, Any]) -> str:
    # ASCII only: no character in a line can be taken for a line break by any reader.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate field {key!r}")
        result[key] = value
    return result


def _parse_export_line(line: str) -> dict[str, Any]:
    """The keyword arguments of :meth:`_ChainChecker.check` from one export line.

    Raises:
        ValueError: with the reason the line is not a well-formed entry.
    """
    try:
        obj = json.loads(line, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ValueError(f"not valid JSON ({reason})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "error" in obj:
        return _parse_export_marker(obj)
    if set(obj) != _EXPORT_FIELDS:
        missing = sorted(_EXPORT_FIELDS - set(obj))
        unknown = sorted(set(obj) - _EXPORT_FIELDS)
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else []
        )
        raise ValueError(f"not an audit entry ({'; '.join(parts)})")
    fields: dict[str, Any] = {}
    for name in ("seq", "at"):
        value = obj[name]
        if type(value) is not int:
            raise ValueError(f"{name} is not an integer")
        fields[name] = value
    for name in ("actor", "action", "target"):
        value = obj[name]
        if not isinstance(value, str):
            raise ValueError(f"{name} is not a string")
        fields[name] = value
    if not isinstance(obj["details"], dict):
        raise ValueError("details is not a JSON object")
    try:
        fields["details_json"] = _canonical_json(obj["details"])
    except (ValueError, RecursionError):
        raise ValueError("details cannot be re-encoded") from None
    for name in ("prev_hash", "entry_hash", "signature"):
        value = obj[name]
        if not isinstance(value, str) or _HEX.fullmatch(value) is None:
            raise ValueError(f"{name} is not lower-case hex")
        fields[name] = bytes.fromhex(value)
    return fields


def _parse_export_marker(obj: dict[str, Any]) -> dict[str, Any]:
    """``{"error", "seq"}`` of a line marking what the server could not export (``seq`` is
    ``None`` for an export cut short), the reason made printable and short."""
    unknown = sorted(set(obj) - {"error", "seq"})
    if unknown:
        raise ValueError(f"not an audit entry (unknown {', '.join(unknown)})")
    error, seq = obj["error"], obj.get("seq")
    if not isinstance(error, str):
        raise ValueError("error is not a string")
    if seq is not None and type(seq) is not int:
        raise ValueError("seq is not an integer")
    shown = "".join(c if c.isprintable() else "?" for c in error[:_MAX_SHOWN_ERROR])
    return {"error": shown, "seq": seq}
