"""Enterprise server settings: a TOML file (its ``[server]`` table), then ``SEALWIRE_SERVER_*``
environment variables, then command-line flags, each overriding the one before
(:func:`load_server_config`, through the one settings loader :mod:`sealwire.settings`).
Every field is documented where it is declared; the reference table in docs/OPERATIONS.md is
generated from those docstrings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealwire.errors import ConfigError
from sealwire.settings import Section, load

__all__ = [
    "MAX_TICKET_LIFETIME_S",
    "SERVER_SETTINGS",
    "ServerConfig",
    "load_server_config",
]

ENV_PREFIX = "SEALWIRE_SERVER_"
MAX_TICKET_LIFETIME_S = 30 * 86400


@dataclass(frozen=True)
class ServerConfig:
    """Everything an enterprise server process needs. Defaults suit one organisation on one
    machine (``sealwire up``)."""

    data: str = "./sealwire-data"
    """Data directory: the server keeps ``server/`` in it (keys, SQLite database, admin API
    URL, first administrator's password)."""
    relay: str = ""
    """The relay URL (``wss://relay.example.com:443``; ``ws://`` on loopback). Needed on the
    first run; remembered in the database after it."""
    organisation: str = ""
    """The organisation's name, shown to people (first run only; empty: ``Sealwire``)."""
    database: str = ""
    """Database URL: empty for SQLite in ``DATA/server/server.db``, a file path,
    ``sqlite:///path``, or ``postgresql://user@host/db`` for a PostgreSQL database several
    servers may share."""
    key_file: str = ""
    """Key file that seals the server's keys (empty: ``DATA/server/master.key``), created on
    the first run unless a passphrase is used. Not remembered: give it at every start. Keep it
    off the data disk and its backups."""
    passphrase: bool = False
    """First run: seal the server's keys under an operator passphrase instead of a key file.
    The passphrase itself comes from the terminal or ``SEALWIRE_SERVER_PASSPHRASE``."""
    ticket_lifetime_s: int = 48 * 3600
    """Default lifetime of an activation password; 60 s to 30 days."""
    ticket_attempts: int = 5
    """Wrong activation passwords before a ticket is burned; 1 to 20."""
    device_certificate_s: int = 30 * 86400
    """Lifetime of a device certificate (1 h to 366 days); devices renew when a third is
    left."""
    directory_cache_s: int = 600
    """First start only: the ``directory_cache_s`` of the ``default`` policy it creates. After
    that the policies decide (``sealwire admin policy set``)."""
    prekey_rotation_s: int = 7 * 86400
    """How often devices make a new prekey. Sent in the policy at activation only: devices
    activated earlier keep the value they got."""
    max_devices_per_user: int = 10
    """Most active devices per person (each message is sealed to each of them); 1 to 10."""
    admin_listen: str = "127.0.0.1:8444"
    """Where the admin API (HTTP/JSON) listens: ``HOST:PORT`` (port 0: any free port;
    ``sealwire admin`` finds it in ``DATA/server/admin-url``). Off loopback it needs TLS
    (``admin_tls_cert``/``admin_tls_key``) or ``admin_allow_plain``."""
    admin_tls_cert: str = ""
    """PEM certificate (chain) for the admin API; with ``admin_tls_key`` it serves HTTPS."""
    admin_tls_key: str = ""
    """PEM private key for ``admin_tls_cert``."""
    admin_allow_plain: bool = False
    """Allow plain HTTP on a non-loopback address (only behind a TLS-terminating proxy on a
    trusted network: tokens and passwords travel in the clear otherwise)."""
    admin_token_lifetime_s: int = 12 * 3600
    """How long an administrator's login lasts (5 minutes to 7 days)."""
    log_format: str = "json"
    """``json`` (one object per line) or ``text``."""
    log_level: str = "info"
    """``debug``, ``info``, ``warning`` or ``error``."""

    @property
    def server_dir(self) -> Path:
        return Path(self.data) / "server"

    @property
    def database_url(self) -> str:
        return self.database or str(self.server_dir / "server.db")

    @property
    def key_file_path(self) -> Path:
        return Path(self.key_file) if self.key_file else self.server_dir / "master.key"

    @property
    def admin_address(self) -> tuple[str, int]:
        """``admin_listen`` as ``(host, port)``.

        Raises:
            ConfigError: it is not ``HOST:PORT``.
        """
        host, sep, port = self.admin_listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                f"admin_listen {self.admin_listen!r} is not HOST:PORT (e.g. 127.0.0.1:8444)"
            )
        return host, int(port)


def _problems(config: ServerConfig) -> list[tuple[str, str]]:
    """``(setting, message)`` for each setting the server cannot run with."""
    problems: list[tuple[str, str]] = []
    if not 60 <= config.ticket_lifetime_s <= MAX_TICKET_LIFETIME_S:
        problems.append(
            ("ticket_lifetime_s", "ticket_lifetime_s must be between 60 seconds and 30 days")
        )
    if not 1 <= config.ticket_attempts <= 20:
        problems.append(("ticket_attempts", "ticket_attempts must be between 1 and 20"))
    if not 3600 <= config.device_certificate_s <= 366 * 86400:
        problems.append(
            ("device_certificate_s", "device_certificate_s must be between one hour and a year")
        )
    if not 300 <= config.admin_token_lifetime_s <= 7 * 86400:
        problems.append(
            (
                "admin_token_lifetime_s",
                "admin_token_lifetime_s must be between 5 minutes and 7 days",
            )
        )
    if bool(config.admin_tls_cert) != bool(config.admin_tls_key):
        name = "admin_tls_cert" if config.admin_tls_cert else "admin_tls_key"
        problems.append((name, "admin_tls_cert and admin_tls_key go together: set both or neither"))
    try:
        config.admin_address  # noqa: B018 (checks the form)
    except ConfigError as exc:
        problems.append(("admin_listen", str(exc)))
    if not 1 <= config.max_devices_per_user <= 10:
        problems.append(("max_devices_per_user", "max_devices_per_user must be between 1 and 10"))
    if config.log_format not in ("json", "text"):
        problems.append(("log_format", "server log_format: json or text"))
    return problems


_FLAGS = (
    "data",
    "relay",
    "organisation",
    "database",
    "key_file",
    "passphrase",
    "ticket_lifetime_s",
    "admin_listen",
    "admin_tls_cert",
    "admin_tls_key",
    "admin_allow_plain",
    "log_format",
    "log_level",
)

SERVER_SETTINGS = Section(
    name="server",
    cls=ServerConfig,
    env_prefix=ENV_PREFIX,
    # PASSPHRASE is the secret itself, read only where it is needed; CONFIG names the file.
    reserved=frozenset({"config", "passphrase"}),
    flags={name: "--" + name.replace("_", "-") for name in _FLAGS},
    check=_problems,
)
"""The server's settings as :mod:`sealwire.settings` loads and documents them
(``SEALWIRE_SERVER_CONFIG`` names the file)."""


def load_server_config(
    file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Defaults < TOML ``file`` (its ``[server]`` table) < environment
    ``SEALWIRE_SERVER_<FIELD>`` < ``overrides`` (flags; ``None`` values are ignored).

    Raises:
        ConfigError: an unreadable file, an unknown setting or an invalid value (the message
            names it and where it was given).
    """
    config: ServerConfig = load(SERVER_SETTINGS, file, env=env, overrides=overrides)
    return config
