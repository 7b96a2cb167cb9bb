"""The admin API's request bodies and answers (besides the views of
:mod:`~sealwire.server.administration` and :mod:`~sealwire.server.accounts`).

Bodies refuse unknown fields; strings refuse control characters and lone surrogates (they
cannot be stored or encoded). The server checks the exact forms and ranges and says so.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ..accounts import Role
from ..administration import PolicySettings

__all__ = [
    "AccountChangeBody",
    "CommandBody",
    "Description",
    "GroupChangeBody",
    "GroupPolicyBody",
    "Label",
    "LoginBody",
    "Name",
    "NewAccountBody",
    "NewGroupBody",
    "NewUserBody",
    "Plain",
    "PolicyBody",
    "SessionAnswer",
    "TicketBody",
    "WhoAmI",
]


def _plain(value: str) -> str:
    """No control characters, no lone surrogates (they cannot be stored or encoded)."""
    if not value.isprintable() or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError("must not contain control characters or unpaired surrogates")
    return value


def _encodable(value: str) -> str:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value) or "\x00" in value:
        raise ValueError("must not contain NUL or unpaired surrogates")
    return value


Name = Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_plain)]
"""A user, administrator, group or policy name (the server checks the exact form)."""
Label = Annotated[StrictStr, Field(min_length=1, max_length=128), AfterValidator(_plain)]
Description = Annotated[StrictStr, Field(max_length=256), AfterValidator(_plain)]
Secret = Annotated[StrictStr, Field(min_length=1, max_length=1024), AfterValidator(_encodable)]
NewPassword = Annotated[
    StrictStr, Field(min_length=12, max_length=1024), AfterValidator(_encodable)
]
Lifetime = Annotated[StrictInt, Field(ge=-(2**40), le=2**40)]
"""Seconds; the server checks the range (one minute to 30 days) and says so."""
Setting = Annotated[StrictInt, Field(ge=0, le=2**40)]


Plain = Annotated[StrictStr, AfterValidator(_plain)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginBody(_Body):
    username: Name
    password: Secret


class NewUserBody(_Body):
    username: Name
    display_name: Label | None = None
    """Default: the user name."""
    lifetime_s: Lifetime | None = None
    """Activation password lifetime; default: the server's (48 h)."""
    groups: Annotated[list[Name], Field(max_length=32)] = []


class TicketBody(_Body):
    lifetime_s: Lifetime | None = None


class NewGroupBody(_Body):
    name: Name
    description: Description = ""
    priority: Annotated[StrictInt, Field(ge=0, le=10000)] = 100
    policy: Name | None = None


class GroupChangeBody(_Body):
    description: Description | None = None
    priority: Annotated[StrictInt, Field(ge=0, le=10000)] | None = None


class GroupPolicyBody(_Body):
    policy: Name | None
    """``null``: no policy of its own."""


_DEFAULTS = PolicySettings()


class PolicyBody(_Body):
    """An IT policy's settings; a missing one takes the built-in default. The ranges are
    checked by the server (422 names the first setting out of range)."""

    passcode_min_length: Setting = _DEFAULTS.passcode_min_length
    passcode_classes: Setting = _DEFAULTS.passcode_classes
    max_failed_attempts: Setting = _DEFAULTS.max_failed_attempts
    auto_lock_s: Setting = _DEFAULTS.auto_lock_s
    offline_grace_s: Setting = _DEFAULTS.offline_grace_s
    retention_days: Setting = _DEFAULTS.retention_days
    export_allowed: StrictBool = _DEFAULTS.export_allowed
    prekey_rotation_s: Setting = _DEFAULTS.prekey_rotation_s
    directory_cache_s: Setting = _DEFAULTS.directory_cache_s


class CommandBody(_Body):
    kind: Literal["lock", "wipe", "renew-keys"]
    new_passcode: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    """Only with ``lock``: the passcode the device takes (it must meet the device's policy)."""


class NewAccountBody(_Body):
    username: Name
    password: NewPassword
    role: Role


class AccountChangeBody(_Body):
    role: Role | None = None
    password: NewPassword | None = None


class SessionAnswer(BaseModel):
    token: str
    """Send it as ``Authorization: Bearer TOKEN``."""
    expires_at: int
    """Unix seconds."""
    username: str
    role: Role


class WhoAmI(BaseModel):
    username: str
    role: Role
    permissions: list[str]
