"""Relay service configuration: a TOML file (its ``[relay]`` table), then ``SEALWIRE_RELAY_*``
environment variables, then command-line flags, each overriding the one before
(:func:`load_config`, through the one settings loader :mod:`sealwire.settings`).

Every field of :class:`RelayServiceConfig` is documented where it is declared; the reference
table in docs/OPERATIONS.md is generated from those docstrings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealwire._system import is_loopback
from sealwire.errors import ConfigError
from sealwire.protocol.frames import canonical_origin
from sealwire.protocol.session import RelayConfig
from sealwire.settings import Section, load

from .backend import DEFAULT_LIFETIME_MS, QueueLimits

__all__ = ["ENV_PREFIX", "RELAY_SETTINGS", "RelayServiceConfig", "load_config"]

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
    """``debug``, ``info``, ``warning`` or ``error``."""

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError(problems[0][1])

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


def _problems(config: RelayServiceConfig) -> list[tuple[str, str]]:
    """``(setting, message)`` for each setting ``config`` cannot run with."""
    problems: list[tuple[str, str]] = []
    if config.backend not in ("sqlite", "nats"):
        problems.append(("backend", f"relay backend {config.backend!r}: choose sqlite or nats"))
    if config.admission not in ("open", "allow-list"):
        problems.append(
            ("admission", f"relay admission {config.admission!r}: choose open or allow-list")
        )
    for org in config.organisations:
        try:
            if len(bytes.fromhex(org)) != 32:
                raise ValueError
        except ValueError:
            problems.append(
                (
                    "organisations",
                    f"relay organisations: {org!r} is not an organisation id (64 hex digits)",
                )
            )
    if bool(config.tls_cert) != bool(config.tls_key):
        name = "tls_cert" if config.tls_cert else "tls_key"
        problems.append((name, "relay TLS: give both tls_cert and tls_key, or neither"))
    elif not config.tls_cert and not config.allow_plain and not is_loopback(config.host):
        problems.append(
            (
                "host",
                f"relay: refusing plain ws:// on {config.host}; give tls_cert and tls_key, "
                "or set allow_plain behind a TLS-terminating proxy",
            )
        )
    if not 0 <= config.port < 65536:
        problems.append(("port", "relay port: 0 to 65535"))
    if config.log_format not in ("json", "text"):
        problems.append(("log_format", "relay log_format: json or text"))
    if config.public_origin:
        try:
            canonical_origin(config.public_origin)
        except ConfigError as exc:
            problems.append(("public_origin", str(exc)))
    for name in _POSITIVE:
        value = getattr(config, name)
        if value <= 0:
            problems.append((name, f"relay {name} must be positive (got {value})"))
    if config.max_pending > 1 << 16:
        problems.append(("max_pending", "relay max_pending: at most 65536"))
    return problems


_POSITIVE = (
    "queue_max_count",
    "queue_max_bytes",
    "envelope_lifetime_s",
    "expiry_interval_s",
    "handshake_timeout_s",
    "idle_timeout_s",
    "max_pending",
    "nats_replicas",
    "max_unacked",
    "max_connections",
    "max_connections_per_source",
    "source_connect_rate",
    "source_connect_burst",
    "activation_rate_per_minute",
    "activation_burst",
    "frame_rate",
    "frame_burst",
)

_FLAGS = (
    "host",
    "port",
    "public_origin",
    "tls_cert",
    "tls_key",
    "allow_plain",
    "data",
    "backend",
    "nats_url",
    "nats_prefix",
    "nats_replicas",
    "admission",
    "queue_max_count",
    "queue_max_bytes",
    "envelope_lifetime_s",
    "expiry_interval_s",
    "metrics",
    "log_format",
    "log_level",
)

RELAY_SETTINGS = Section(
    name="relay",
    cls=RelayServiceConfig,
    env_prefix=ENV_PREFIX,
    reserved=frozenset({"config"}),
    flags={
        **{name: "--" + name.replace("_", "-") for name in _FLAGS},
        "organisations": "--organisation",
    },
    check=_problems,
)
"""The relay's settings as :mod:`sealwire.settings` loads and documents them
(``SEALWIRE_RELAY_CONFIG`` names the file)."""


def load_config(
    file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RelayServiceConfig:
    """Build the configuration: defaults < TOML ``file`` (its ``[relay]`` table, or the top
    level of a file without tables) < environment ``SEALWIRE_RELAY_<FIELD>`` < ``overrides``
    (flags; ``None`` values are ignored).

    Raises:
        ConfigError: an unreadable file, an unknown setting or an invalid value (the message
            names it and where it was given).
    """
    config: RelayServiceConfig = load(RELAY_SETTINGS, file, env=env, overrides=overrides)
    return config
