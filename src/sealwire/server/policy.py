"""IT policies as administrators edit them (:class:`PolicySettings`), which one applies to a
person (:func:`effective_policy`), and the names checked and shown with them (DESIGN §8).
Shared by the administration layer and the feature modules that sign policies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

from sealwire.protocol.directory import (
    MAX_FAILED_ATTEMPTS,
    MAX_OFFLINE_GRACE_S,
    MIN_FAILED_ATTEMPTS,
    Policy,
)
from sealwire.protocol.management import ComplianceIssue

__all__ = [
    "COMMAND_PURPOSE",
    "REMOTE_SECRET_PURPOSE",
    "EffectivePolicy",
    "PolicySettings",
    "check_name",
    "effective_policy",
    "issue_names",
]

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
COMMAND_PURPOSE = "server/command"
"""The at-rest sealing label of a queued signed command."""
REMOTE_SECRET_PURPOSE = "server/remote-secret"  # noqa: S105 (a label)
"""The at-rest sealing label of a device's remote secret."""


def check_name(kind: str, name: str) -> str:
    """A group or policy name: 1-64 of ``a-z 0-9 . _ -``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid {kind} name: use 1-64 lower-case letters, digits, '.', "
            "'_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class PolicySettings:
    """The rules of one IT policy, as administrators edit them (defaults: the built-in
    ``default`` policy)."""

    passcode_min_length: int = 6
    """6-64 characters."""
    passcode_classes: int = 1
    """1-4 of lower-case, upper-case, digit, other."""
    max_failed_attempts: int = 10
    """3-10 wrong passcodes in a row, then the device erases itself."""
    auto_lock_s: int = 900
    """Idle seconds before the device locks (0: never; at most a day)."""
    offline_grace_s: int = 72 * 3600
    """Seconds the device stays unlockable without reaching its server (0-30 days)."""
    retention_days: int = 0
    """Days messages are kept (0: until deleted; at most 3650)."""
    export_allowed: bool = True
    prekey_rotation_s: int = 7 * 86400
    """1 hour - 90 days."""
    directory_cache_s: int = 600
    """0 - 1 day."""

    def check(self) -> PolicySettings:
        """Return ``self`` if every value is in range.

        Raises:
            ValueError: naming the first setting out of range.
        """
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}")
        if not isinstance(self.export_allowed, bool):
            raise ValueError("export_allowed must be true or false")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, text: str) -> PolicySettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def policy(self, name: str, version: int, issued_at: int) -> Policy:
        """The wire :class:`~sealwire.protocol.directory.Policy` of these settings."""
        return Policy(
            version=version,
            issued_at=issued_at,
            prekey_rotation_s=self.prekey_rotation_s,
            directory_cache_s=self.directory_cache_s,
            name=name,
            passcode_min_length=self.passcode_min_length,
            passcode_classes=self.passcode_classes,
            max_failed_attempts=self.max_failed_attempts,
            auto_lock_s=self.auto_lock_s,
            offline_grace_s=self.offline_grace_s,
            retention_days=self.retention_days,
            export_allowed=self.export_allowed,
        )


_RANGES = (
    ("passcode_min_length", 6, 64),
    ("passcode_classes", 1, 4),
    ("max_failed_attempts", MIN_FAILED_ATTEMPTS, MAX_FAILED_ATTEMPTS),
    ("auto_lock_s", 0, 86400),
    ("offline_grace_s", 0, MAX_OFFLINE_GRACE_S),
    ("retention_days", 0, 3650),
    ("prekey_rotation_s", 3600, 90 * 86400),
    ("directory_cache_s", 0, 86400),
)


@dataclass(frozen=True)
class EffectivePolicy:
    """The policy that applies to one person."""

    name: str
    version: int
    settings: PolicySettings


def effective_policy(store: Any, conn: sa.Connection, user_id: int) -> EffectivePolicy:
    """The policy of the person's first group (by priority) that has one, else ``default``."""
    for row in store.user_groups(conn, user_id):
        if row.policy is not None:
            name = row.policy
            break
    else:
        name = "default"
    policy = store.policy_row(conn, name)
    if policy is None:  # only before the server created its default policy
        return EffectivePolicy("default", 0, PolicySettings())
    return EffectivePolicy(name, int(policy.version), PolicySettings.from_json(policy.settings))


def issue_names(issues: tuple[ComplianceIssue, ...]) -> str:
    """How compliance issues are stored and shown: ``passcode-too-short,...``."""
    return ",".join(issue.name.lower().replace("_", "-") for issue in issues)
