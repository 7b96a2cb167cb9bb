"""Enterprise server settings: ``SEALWIRE_SERVER_*`` environment variables, then command-line
flags (:func:`load_server_config`). Every field is documented where it is declared."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealwire.errors import ConfigError

__all__ = ["MAX_TICKET_LIFETIME_S", "ServerConfig", "load_server_config"]

ENV_PREFIX = "SEALWIRE_SERVER_"
MAX_TICKET_LIFETIME_S = 30 * 86400


@dataclass(frozen=True)
class ServerConfig:
    """Everything an enterprise server process needs. Defaults suit one organisation on one
    machine (``sealwire up``)."""

    data: str = "./sealwire-data"
    """Data directory: the server keeps ``server/`` in it (keys, database, admin API URL)."""
    relay: str = ""
    """The relay URL (``wss://relay.example.com``, ``ws://127.0.0.1:8443`` on loopback).
    Needed on the first run; remembered in the database after it."""
    organisation: str = ""
    """The organisation's name, shown to people (first run only; default: "Sealwire")."""
    database: str = ""
    """Database URL: empty for SQLite in ``DATA/server/server.db``, or
    ``postgresql://user@host/db`` for a PostgreSQL database several servers may share."""
    key_file: str = ""
    """Key file that seals the server's keys (default ``DATA/server/master.key``, created on
    the first run unless a passphrase is used). Keep it off the data disk and its backups."""
    passphrase: bool = False
    """First run: seal the server's keys under an operator passphrase instead of a key file
    (asked on the terminal, or ``SEALWIRE_SERVER_PASSPHRASE``)."""
    ticket_lifetime_s: int = 48 * 3600
    """Default lifetime of an activation password (at most 30 days)."""
    ticket_attempts: int = 5
    """Wrong activation passwords before a ticket is burned."""
    device_certificate_s: int = 30 * 86400
    """Lifetime of a device certificate; devices renew when a third is left."""
    directory_cache_s: int = 600
    """How long devices may cache a directory answer."""
    prekey_rotation_s: int = 7 * 86400
    """How often devices make a new prekey (policy)."""
    max_devices_per_user: int = 10
    """Most active devices per person (each message is sealed to each of them)."""
    admin_listen: str = "127.0.0.1:8444"
    """Where the admin API (HTTP/JSON, :mod:`sealwire.server.api`) listens: ``HOST:PORT``
    (port 0: any free port; ``sealwire admin`` finds it in ``DATA/server/admin-url``). Off
    loopback it needs TLS (``admin_tls_cert``/``admin_tls_key``) or ``admin_allow_plain``."""
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


_FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig)}


def _convert(name: str, value: Any, where: str) -> Any:
    default: Any = _FIELDS[name].default
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError
            return text in {"1", "true", "yes"}
        if kind is int:
            number = int(value)
            if number < 0:
                raise ValueError
            return number
        return str(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a valid value for {name}") from None


def load_server_config(
    *, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> ServerConfig:
    """Defaults < environment ``SEALWIRE_SERVER_<FIELD>`` < ``overrides`` (flags; ``None``
    values are ignored).

    Raises:
        ConfigError: an unknown setting or an invalid value (the message names it).
    """
    values: dict[str, Any] = {}
    environ = os.environ if env is None else env
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name == "passphrase":  # the secret itself, read where it is needed
                continue
            if name not in _FIELDS:
                raise ConfigError(f"environment {key}: unknown server setting")
            values[name] = _convert(name, value, key)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _convert(name, value, f"--{name.replace('_', '-')}")
    config = ServerConfig(**values)
    if not 60 <= config.ticket_lifetime_s <= MAX_TICKET_LIFETIME_S:
        raise ConfigError("ticket_lifetime_s must be between 60 seconds and 30 days")
    if not 1 <= config.ticket_attempts <= 20:
        raise ConfigError("ticket_attempts must be between 1 and 20")
    if not 3600 <= config.device_certificate_s <= 366 * 86400:
        raise ConfigError("device_certificate_s must be between one hour and a year")
    if not 300 <= config.admin_token_lifetime_s <= 7 * 86400:
        raise ConfigError("admin_token_lifetime_s must be between 5 minutes and 7 days")
    if bool(config.admin_tls_cert) != bool(config.admin_tls_key):
        raise ConfigError("admin_tls_cert and admin_tls_key go together: set both or neither")
    config.admin_address  # noqa: B018 (checks the form)
    if not 1 <= config.max_devices_per_user <= 10:
        raise ConfigError("max_devices_per_user must be between 1 and 10")
    return config
