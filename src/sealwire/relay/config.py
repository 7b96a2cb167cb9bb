"""Relay service configuration: a TOML file, then ``SEALWIRE_RELAY_*`` environment variables,
then command-line flags, each overriding the one before (:func:`load_config`).

Every field of :class:`RelayServiceConfig` is documented where it is declared; OPERATIONS.md
shows a complete file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealwire.errors import ConfigError
from sealwire.protocol.frames import canonical_origin
from sealwire.protocol.session import RelayConfig

from .backend import DEFAULT_LIFETIME_MS, QueueLimits

__all__ = ["ENV_PREFIX", "RelayServiceConfig", "load_config"]

ENV_PREFIX = "SEALWIRE_RELAY_"


@dataclass(frozen=True)
class RelayServiceConfig:
    """Everything a relay process needs. Defaults suit a private relay on one machine."""

    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0`` or ``::`` for every interface)."""
    port: int = 8443
    """TCP port (0: any free port; the chosen one is printed with ``ready``)."""
    public_origin: str = ""
    """The origin clients dial, ``wss://relay.example.com:443``: the relay id is derived from it
    (FRAMES.md). Empty: ``wss://host:port`` with TLS, ``ws://host:port`` without."""
    tls_cert: str = ""
    """PEM certificate chain file; with ``tls_key`` the relay serves ``wss://``."""
    tls_key: str = ""
    """PEM private key file for ``tls_cert``."""
    allow_plain: bool = False
    """Serve plain ``ws://`` on a non-loopback address (behind a TLS-terminating proxy only)."""
    data: str = "./sealwire-relay"
    """Directory of the embedded queue database (``relay.db``)."""
    backend: str = "sqlite"
    """``sqlite`` (embedded, one process) or ``nats`` (a cluster over NATS JetStream)."""
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS servers (comma-separated) for the ``nats`` backend."""
    nats_prefix: str = "sealwire"
    """Name prefix of the cluster's streams, buckets and subjects (one per relay cluster)."""
    nats_replicas: int = 1
    """JetStream replicas of the streams and buckets the relay creates (3 on a three-server
    NATS cluster, so that losing a NATS server loses nothing)."""
    admission: str = "open"
    """``open``: any organisation's server may register; ``allow-list``: only
    ``organisations``."""
    organisations: tuple[str, ...] = ()
    """Organisation ids (64 hex digits) allowed to register when ``admission`` is
    ``allow-list``."""
    queue_max_count: int = 10_000
    """Most envelopes queued for one address."""
    queue_max_bytes: int = 256 * 1024 * 1024
    """Most envelope bytes queued for one address."""
    envelope_lifetime_s: float = DEFAULT_LIFETIME_MS / 1000
    """How long an envelope waits for its recipient before it expires (7 days)."""
    expiry_interval_s: float = 60.0
    """How often expired envelopes are swept (and their senders' servers told)."""
    handshake_timeout_s: float = 10.0
    """From connection to an open session; slower clients are cut (slowloris)."""
    idle_timeout_s: float = 120.0
    """A session that sends nothing this long is closed (clients ping every 30 s)."""
    max_pending: int = 256
    """Most unanswered requests per session."""
    max_unacked: int = 256
    """Most deliveries in flight per session."""
    max_connections: int = 20_000
    """Most connections at once; more are refused at the HTTP upgrade (503)."""
    max_connections_per_source: int = 1_000
    """Most connections at once from one IP address."""
    source_connect_rate: float = 50.0
    """New connections per second one IP address may open (token bucket rate)..."""
    source_connect_burst: int = 200
    """...and burst."""
    activation_rate_per_minute: float = 10.0
    """Activation connections per minute one IP address may open (PAKE guessing is also
    bounded by the server's attempt counter)..."""
    activation_burst: int = 10
    """...and burst."""
    frame_rate: float = 5_000.0
    """Frames per second one connection may send (token bucket rate); a Send beyond it is
    refused with ``rate-limited``, a flood far beyond it closes the connection..."""
    frame_burst: int = 10_000
    """...and burst."""
    metrics: str = "127.0.0.1:9464"
    """``host:port`` of the Prometheus endpoint (``/metrics``); empty to disable."""
    log_format: str = "json"
    """``json`` (one object per line) or ``text``."""
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.backend not in ("sqlite", "nats"):
            raise ConfigError(f"relay backend {self.backend!r}: choose sqlite or nats")
        if self.admission not in ("open", "allow-list"):
            raise ConfigError(f"relay admission {self.admission!r}: choose open or allow-list")
        for org in self.organisations:
            try:
                if len(bytes.fromhex(org)) != 32:
                    raise ValueError
            except ValueError:
                raise ConfigError(
                    f"relay organisations: {org!r} is not an organisation id (64 hex digits)"
                ) from None
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("relay TLS: give both tls_cert and tls_key, or neither")
        if not self.tls_cert and not self.allow_plain and not _is_loopback(self.host):
            raise ConfigError(
                f"relay: refusing plain ws:// on {self.host}; give tls_cert and tls_key, "
                "or set allow_plain behind a TLS-terminating proxy"
            )
        if not 0 <= self.port < 65536:
            raise ConfigError("relay port: 0 to 65535")
        if self.log_format not in ("json", "text"):
            raise ConfigError("relay log_format: json or text")
        if self.public_origin:
            canonical_origin(self.public_origin)  # raises ConfigError with the reason
        positive = {
            "queue_max_count": self.queue_max_count,
            "queue_max_bytes": self.queue_max_bytes,
            "envelope_lifetime_s": self.envelope_lifetime_s,
            "expiry_interval_s": self.expiry_interval_s,
            "handshake_timeout_s": self.handshake_timeout_s,
            "idle_timeout_s": self.idle_timeout_s,
            "max_pending": self.max_pending,
            "nats_replicas": self.nats_replicas,
            "max_unacked": self.max_unacked,
            "max_connections": self.max_connections,
            "max_connections_per_source": self.max_connections_per_source,
            "source_connect_rate": self.source_connect_rate,
            "source_connect_burst": self.source_connect_burst,
            "activation_rate_per_minute": self.activation_rate_per_minute,
            "activation_burst": self.activation_burst,
            "frame_rate": self.frame_rate,
            "frame_burst": self.frame_burst,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"relay {name} must be positive (got {value})")
        if self.max_pending > 1 << 16:
            raise ConfigError("relay max_pending: at most 65536")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def origin(self) -> str:
        """The canonical origin clients dial (the relay id is derived from it)."""
        if self.public_origin:
            return canonical_origin(self.public_origin)
        scheme = "wss" if self.tls else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return canonical_origin(f"{scheme}://{host}:{self.port}")

    @property
    def queue_limits(self) -> QueueLimits:
        return QueueLimits(
            max_count=self.queue_max_count,
            max_bytes=self.queue_max_bytes,
            lifetime_ms=int(self.envelope_lifetime_s * 1000),
        )

    @property
    def session_config(self) -> RelayConfig:
        return RelayConfig(
            handshake_timeout_ms=int(self.handshake_timeout_s * 1000),
            idle_timeout_ms=int(self.idle_timeout_s * 1000),
            max_pending=self.max_pending,
            max_unacked=self.max_unacked,
        )

    @property
    def allowed_organisations(self) -> frozenset[bytes]:
        return frozenset(bytes.fromhex(org) for org in self.organisations)

    @property
    def data_path(self) -> Path:
        return Path(self.data)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_FIELDS = {f.name: f for f in dataclasses.fields(RelayServiceConfig)}


def _convert(name: str, value: Any, source: str) -> Any:
    """Convert a value from a file, the environment or a flag to the field's type."""
    default = _FIELDS[name].default
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
            return False
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, tuple):
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
    elif isinstance(value, str):
        return value
    raise ConfigError(f"relay setting {name} from {source}: {value!r} is not a valid value")


def load_config(
    file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RelayServiceConfig:
    """Build the configuration: defaults < TOML ``file`` (its ``[relay]`` table, or the top
    level) < environment ``SEALWIRE_RELAY_<FIELD>`` < ``overrides`` (flags; ``None`` values
    are ignored).

    Raises:
        ConfigError: an unreadable file, an unknown setting or an invalid value (the message
            names it).
    """
    values: dict[str, Any] = {}
    if file is not None:
        try:
            with open(file, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read relay config {file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"relay config {file} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"relay config {file} is not UTF-8 text") from None
        table = data.get("relay", data)
        if not isinstance(table, dict):
            raise ConfigError(f"relay config {file}: [relay] must be a table")
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                raise ConfigError(f"relay config {file}: unknown setting {key!r}")
            values[name] = _convert(name, value, str(file))
    environ = os.environ if env is None else env
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name == "config":
                continue
            if name not in _FIELDS:
                raise ConfigError(f"environment {key}: unknown relay setting")
            values[name] = _convert(name, value, key)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _convert(name, value, f"--{name.replace('_', '-')}")
    return RelayServiceConfig(**values)
