"""One settings loader for every Sealwire process (relay, enterprise server, ``sealwire admin``).

Each process's settings are a frozen dataclass with a docstring per field
(:class:`~sealwire.relay.config.RelayServiceConfig`,
:class:`~sealwire.server.config.ServerConfig`,
:class:`~sealwire.cli._admin_client.AdminClientConfig`), described to this loader by a
:class:`Section`. :func:`load` builds one, each layer overriding the one before::

    defaults  <  TOML file ([relay] / [server] table)  <  environment (PREFIX_<SETTING>)  <  flags

One parsing for every value, whatever its source (:func:`parse_value`); the field's type and
name choose the rule:

=============  ===============================================================================
kind           accepted
=============  ===============================================================================
boolean        ``true``/``false`` in TOML; text ``1 true yes on`` or ``0 false no off`` (any
               case). Anything else, the empty text too, is an error.
whole number   a TOML integer, or its digits as text (0 or more).
number         a TOML integer or float, or its text.
duration       a field whose name ends in ``_s``: seconds as a number, or text with a unit,
               ``90s``, ``30m``, ``48h``, ``7d``.
size           a field whose name ends in ``_bytes``: bytes as a whole number, or text with a
               unit, ``64KiB``, ``256MiB``, ``1GiB`` (powers of 1024) or ``kB``, ``MB``, ``GB``
               (powers of 1000).
list           a TOML array of strings, or comma-separated text.
text           a TOML string, or the variable's or flag's text as it is.
=============  ===============================================================================

Every error names the key and where it came from: ``SEALWIRE_SERVER_TICKET_LIFETIME_S: "abc"
is not a number of seconds``, ``server.toml: [relay] quee_max_count: unknown setting (did you
mean queue_max_count?)``, ``--port: "x" is not a whole number``. :func:`check_file` lists every
problem of a file at once (``sealwire config check``); :func:`markdown_reference` renders the
reference tables of docs/OPERATIONS.md from the same classes (``python -m sealwire.settings``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import json
import math
import os
import re
import textwrap
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from sealwire.errors import ConfigError

__all__ = [
    "Kind",
    "Problem",
    "Section",
    "SettingsError",
    "check_file",
    "load",
    "markdown_reference",
    "parse_duration",
    "parse_size",
    "parse_value",
    "read_toml",
]


class Kind(Enum):
    """How a setting's value is written (module docstring)."""

    BOOLEAN = "boolean"
    WHOLE = "whole number"
    NUMBER = "number"
    DURATION = "duration"
    SIZE = "size"
    LIST = "list"
    TEXT = "text"


@dataclass(frozen=True)
class Problem:
    """One unknown or invalid setting: where it was written and what is wrong."""

    where: str
    """The key as the operator wrote it: ``SEALWIRE_RELAY_PORT``, ``relay.toml: [relay] port``,
    ``--port``; empty for a setting left at its default."""
    message: str
    """What is wrong, e.g. ``"abc" is not a number of seconds``."""
    where_after: bool = False
    """Name where it was given after the message (``... (set by --host)``): for the checks of
    a whole configuration, whose messages name the setting themselves."""

    def __str__(self) -> str:
        if not self.where:
            return self.message
        if self.where_after:
            return f"{self.message} (set by {self.where})"
        return f"{self.where}: {self.message}"

    def located(self) -> str:
        """Where first, then what (one line of ``sealwire config check``)."""
        return f"{self.where}: {self.message}" if self.where else self.message


class SettingsError(ConfigError):
    """Settings that cannot be used; :attr:`problems` lists each (the message shows the first
    and how many more there are)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        more = len(self.problems) - 1
        text = str(self.problems[0])
        if more:
            text += f" (and {more} more problem{'s' if more > 1 else ''})"
        super().__init__(text)


@dataclass(frozen=True)
class Section:
    """What the loader needs to know of one process's settings class."""

    name: str
    """The TOML table (``relay``, ``server``) and the word used in messages."""
    cls: type[Any]
    """The frozen dataclass; each field has a default and a docstring."""
    env_prefix: str
    """``SEALWIRE_RELAY_``: a field ``port`` is read from ``SEALWIRE_RELAY_PORT``."""
    reserved: frozenset[str] = frozenset()
    """Names after the prefix that are not settings and are skipped (``CONFIG``: the file's
    path; secrets such as ``PASSPHRASE``, read where they are needed)."""
    flags: Mapping[str, str] = field(default_factory=dict)
    """The command-line flag of each field that has one (``{"port": "--port"}``)."""
    check: Callable[[Any], list[tuple[str, str]]] | None = None
    """Checks of a whole configuration: ``(field, message)`` for each problem."""
    file: bool = True
    """Whether the settings may come from a TOML file (``False`` for ``sealwire admin``)."""
    notes: Mapping[str, str] = field(default_factory=dict)
    """Extra text for the reference table's variable column, by field."""

    @property
    def fields(self) -> dict[str, dataclasses.Field[Any]]:
        return {f.name: f for f in dataclasses.fields(self.cls)}

    def variable(self, name: str) -> str:
        """The environment variable of the field ``name``."""
        return self.env_prefix + name.upper()


# --- parsing ------------------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
}
_NUMBER_WITH_UNIT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def kind_of(f: dataclasses.Field[Any]) -> Kind:
    """A field's kind, from its type and its name (``_s``: duration, ``_bytes``: size)."""
    tp = str(f.type)
    if tp == "bool":
        return Kind.BOOLEAN
    if tp in ("int", "float") and f.name.endswith("_s"):
        return Kind.DURATION
    if tp == "int" and f.name.endswith("_bytes"):
        return Kind.SIZE
    if tp == "int":
        return Kind.WHOLE
    if tp == "float":
        return Kind.NUMBER
    if tp.startswith("tuple"):
        return Kind.LIST
    return Kind.TEXT


def _shown(value: Any) -> str:
    """A value as a message quotes it: JSON-like, so that empty text shows as ``""``."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def parse_duration(value: Any, *, whole: bool = False) -> float:
    """Seconds from a number or from text such as ``90``, ``30m``, ``48h``, ``7d``.

    Raises:
        ValueError: not a duration (the message says so, quoting the value).
    """
    wanted = "a whole number of seconds" if whole else "a number of seconds"
    error = ValueError(f"{_shown(value)} is not {wanted} (or e.g. 30m, 48h, 7d)")
    if isinstance(value, str):
        match = _NUMBER_WITH_UNIT.fullmatch(value)
        if match is None or match.group(2).lower() not in {"", *_DURATION_UNITS}:
            raise error
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower() or "s"]
    else:
        number = _number(value)
        if number is None or number < 0:
            raise error
        seconds = number
    if whole and seconds != int(seconds):
        raise error
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from a whole number or from text such as ``4096``, ``64KiB``, ``256MiB``, ``1GB``.

    Raises:
        ValueError: not a size (the message says so, quoting the value).
    """
    error = ValueError(f"{_shown(value)} is not a size in bytes (or e.g. 64KiB, 256MiB, 1GiB)")
    if isinstance(value, str):
        match = _NUMBER_WITH_UNIT.fullmatch(value)
        if match is None or match.group(2).lower() not in {"", *_SIZE_UNITS}:
            raise error
        size = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower() or "b"]
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        size = value
    else:
        raise error
    if size != int(size):
        raise error
    return int(size)


def parse_value(f: dataclasses.Field[Any], value: Any) -> Any:
    """``value`` (a TOML value, or text from the environment or a flag) as the field's type.

    Raises:
        ValueError: the value does not fit; the message quotes it and says what was expected.
    """
    kind = kind_of(f)
    if kind is Kind.BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE:
            return True
        if isinstance(value, str) and value.strip().lower() in _FALSE:
            return False
        raise ValueError(f"{_shown(value)} is not a boolean (true/false, yes/no, on/off, 1/0)")
    if kind is Kind.DURATION:
        seconds = parse_duration(value, whole=str(f.type) == "int")
        return int(seconds) if str(f.type) == "int" else seconds
    if kind is Kind.SIZE:
        return parse_size(value)
    if kind is Kind.WHOLE:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        raise ValueError(f"{_shown(value)} is not a whole number (0 or more)")
    if kind is Kind.NUMBER:
        number = _number(value)
        if number is None:
            raise ValueError(f"{_shown(value)} is not a number")
        return number
    if kind is Kind.LIST:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        raise ValueError(f"{_shown(value)} is not a list of text")
    if isinstance(value, str):
        return value
    raise ValueError(f"{_shown(value)} is not text (quote it)")


# --- loading ------------------------------------------------------------------------------


def read_toml(file: str | Path) -> dict[str, Any]:
    """The TOML document in ``file``.

    Raises:
        ConfigError: it cannot be read, is not UTF-8, or is not valid TOML.
    """
    try:
        with open(file, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read the settings file {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the settings file {file} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the settings file {file} is not UTF-8 text") from None


_TABLES = ("relay", "server")


def _table(section: Section, document: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """The part of a settings file for ``section`` and how to name it in messages. A file
    without ``[relay]`` or ``[server]`` tables holds relay settings at its top level (the
    relay's files before the server could read one)."""
    if not any(name in document for name in _TABLES):
        return ("", document) if section.name == "relay" else ("", {})
    return f"[{section.name}] ", document.get(section.name, {})


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _from_file(
    section: Section, file: str | Path, document: Mapping[str, Any], values: dict[str, Any]
) -> tuple[list[Problem], dict[str, str]]:
    problems: list[Problem] = []
    sources: dict[str, str] = {}
    prefix, table = _table(section, document)
    if not isinstance(table, dict):
        return [Problem(str(file), f"[{section.name}] must be a table")], sources
    fields = section.fields
    for key, value in table.items():
        where = f"{file}: {prefix}{key}"
        name = key.replace("-", "_")
        if name not in fields:
            problems.append(Problem(where, "unknown setting" + _suggest(name, fields)))
            continue
        try:
            values[name] = parse_value(fields[name], value)
            sources[name] = where
        except ValueError as exc:
            problems.append(Problem(where, str(exc)))
    return problems, sources


def _from_environment(
    section: Section, environ: Mapping[str, str], values: dict[str, Any]
) -> tuple[list[Problem], dict[str, str]]:
    problems: list[Problem] = []
    sources: dict[str, str] = {}
    fields = section.fields
    for key, value in sorted(environ.items()):
        if not key.startswith(section.env_prefix):
            continue
        name = key[len(section.env_prefix) :].lower()
        if name in section.reserved:
            continue
        if name not in fields:
            known = [section.variable(n) for n in fields]
            problems.append(Problem(key, f"unknown {section.name} setting" + _suggest(key, known)))
            continue
        try:
            values[name] = parse_value(fields[name], value)
            sources[name] = key
        except ValueError as exc:
            problems.append(Problem(key, str(exc)))
    return problems, sources


def _checked(
    section: Section, values: Mapping[str, Any], sources: Mapping[str, str]
) -> tuple[Any, list[Problem]]:
    """The configuration and the problems its checks find, each naming where the setting it
    concerns was given (after the message, so that the message reads first)."""
    problems = []
    if section.check is not None:
        # The checks run on an instance built without its own __post_init__ check, so that
        # every problem is found, not only the first.
        draft = object.__new__(section.cls)
        for f in dataclasses.fields(section.cls):
            object.__setattr__(draft, f.name, values.get(f.name, f.default))
        for name, message in section.check(draft):
            problems.append(Problem(sources.get(name, ""), message, where_after=True))
    if problems:
        return None, problems
    try:
        return section.cls(**values), []
    except ConfigError as exc:
        return None, [Problem("", str(exc))]


def load(
    section: Section,
    file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The settings of ``section``: defaults < TOML ``file`` < environment < ``overrides``
    (flags; ``None`` values are ignored).

    Args:
        section: which settings.
        file: a TOML file (its ``[relay]``/``[server]`` table), or ``None``.
        env: the environment (default ``os.environ``).
        overrides: values from flags, by field name (text, or already of the field's type).

    Raises:
        ConfigError: an unreadable file. SettingsError: unknown settings or invalid values
            (each named with its source).
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[Problem] = []
    if file is not None:
        found, where = _from_file(section, file, read_toml(file), values)
        problems += found
        sources.update(where)
    found, where = _from_environment(section, os.environ if env is None else env, values)
    problems += found
    sources.update(where)
    fields = section.fields
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        flag = section.flags.get(name) or "--" + name.replace("_", "-")
        try:
            values[name] = parse_value(fields[name], value)
            sources[name] = flag
        except ValueError as exc:
            problems.append(Problem(flag, str(exc)))
    if problems:
        raise SettingsError(problems)
    config, problems = _checked(section, values, sources)
    if problems:
        raise SettingsError(problems)
    return config


def check_file(file: str | Path, sections: Iterable[Section]) -> list[Problem]:
    """Every problem of a settings file on its own (no environment, no flags): unknown
    tables and keys, values that do not parse, values the checks refuse.

    Raises:
        ConfigError: the file cannot be read or is not valid TOML.
    """
    document = read_toml(file)
    sections = [s for s in sections if s.file]
    problems: list[Problem] = []
    if any(name in document for name in _TABLES):
        for key in document:
            if key not in {s.name for s in sections}:
                message = "unknown table (Sealwire reads [relay] and [server])"
                problems.append(Problem(f"{file}: [{key}]", message))
    for section in sections:
        values: dict[str, Any] = {}
        found, sources = _from_file(section, file, document, values)
        problems += found
        problems += _checked(section, values, sources)[1]  # of the values that parse
    return problems


# --- the reference ------------------------------------------------------------------------


def field_docs(cls: type[Any]) -> dict[str, str]:
    """The docstring written under each field of a dataclass (read from its source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _duration_text(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {'day' if unit == 'days' and count == 1 else unit}"
    return ""


def _default_text(f: dataclasses.Field[Any]) -> str:
    value: Any = f.default
    kind = kind_of(f)
    if kind is Kind.BOOLEAN:
        return "`true`" if value else "`false`"
    if kind is Kind.LIST:
        return "`[]`" if not value else f"`{list(value)}`"
    if kind is Kind.TEXT:
        return f"`{value}`" if value else "empty"
    number = int(value) if float(value).is_integer() else value
    extra = ""
    if kind is Kind.DURATION:
        extra = _duration_text(float(value))
    elif kind is Kind.SIZE:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size and value % size == 0:
                extra = f"{value // size} {unit}"
                break
    return f"{number}" + (f" ({extra})" if extra and extra != f"{number} s" else "")


def markdown_reference(section: Section) -> str:
    """The Markdown reference table of ``section``'s settings: key, variable, flag, kind,
    default and the field's docstring."""
    docs = field_docs(section.cls)
    key = "TOML key" if section.file else "setting"
    lines = [
        f"| {key} | variable | flag | kind | default | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in section.fields.items():
        variable = "—" if name in section.reserved else f"`{section.variable(name)}`"
        if name in section.notes:
            variable += f" {section.notes[name]}"
        flag = f"`{section.flags[name]}`" if name in section.flags else ""
        meaning = docs.get(name, "").replace("``", "`").replace("|", "\\|")
        kind = kind_of(f).value
        lines.append(
            f"| `{name}` | {variable} | {flag} | {kind} | {_default_text(f)} | {meaning} |"
        )
    return "\n".join(lines) + "\n"
