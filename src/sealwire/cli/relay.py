"""``sealwire relay``: run a relay (settings from a TOML file, the environment and flags, read by
the one settings loader, :mod:`sealwire.settings`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

__all__ = ["add_relay_parser"]

_FLAGS: dict[str, dict[str, Any]] = {
    "host": {"help": "address to listen on (default 127.0.0.1)"},
    "port": {"help": "TCP port (default 8443; 0 picks a free one)"},
    "public_origin": {"help": "origin clients dial, e.g. wss://relay.example.com:443"},
    "tls_cert": {"help": "PEM certificate chain (serves wss:// with --tls-key)"},
    "tls_key": {"help": "PEM private key"},
    "data": {"help": "directory of the embedded queue (default ./sealwire-relay)"},
    "backend": {"choices": ["sqlite", "nats"], "help": "queue backend (default sqlite)"},
    "nats_url": {"help": "NATS servers for --backend nats (comma-separated)"},
    "nats_prefix": {"help": "name prefix of the cluster's streams (default sealwire)"},
    "nats_replicas": {"help": "JetStream replicas for new streams (default 1)"},
    "admission": {"choices": ["open", "allow-list"], "help": "which organisations may register"},
    "metrics": {"help": "host:port of the Prometheus endpoint ('' disables)"},
    "log_format": {"choices": ["json", "text"], "help": "log format (default json)"},
    "log_level": {"help": "debug, info, warning or error"},
    "envelope_lifetime_s": {"help": "envelope lifetime: seconds, or e.g. 12h, 7d (7 days)"},
    "expiry_interval_s": {"help": "time between expiry sweeps: seconds, or e.g. 5m (60)"},
    "queue_max_count": {"help": "most envelopes queued per address"},
    "queue_max_bytes": {"help": "most envelope bytes queued per address (e.g. 256MiB)"},
}


def add_relay_parser(sub: Any) -> None:
    """Add the ``relay`` command to the ``sealwire`` parser."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "relay",
        help="run a relay: blind store-and-forward of sealed envelopes",
        description="Run a relay. Settings: --config FILE (TOML), then SEALWIRE_RELAY_* "
        "environment variables, then these flags. See docs/OPERATIONS.md.",
    )
    parser.add_argument("--config", help="TOML settings file ([relay] table)")
    for name, options in _FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **options)
    parser.add_argument(
        "--organisation",
        dest="organisations",
        action="append",
        default=None,
        help="organisation id allowed with --admission allow-list (repeatable)",
    )
    parser.add_argument(
        "--allow-plain",
        dest="allow_plain",
        action="store_true",
        default=None,
        help="serve plain ws:// on a non-loopback address (behind a TLS proxy only)",
    )
    parser.set_defaults(func=_cmd_relay)


def _cmd_relay(args: argparse.Namespace) -> int:
    from sealwire.logs import configure_logging
    from sealwire.relay.config import load_config

    overrides = {name: getattr(args, name) for name in (*_FLAGS, "organisations", "allow_plain")}
    config = load_config(
        args.config or os.environ.get("SEALWIRE_RELAY_CONFIG"), overrides=overrides
    )
    configure_logging(config.log_format, config.log_level)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()  # a faster event loop when the `speed` extra is installed
    asyncio.run(_serve(config))
    return 0


async def _serve(config: Any) -> None:
    from sealwire.relay.service import Relay

    relay = Relay(config)
    await relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = f", metrics http://{config.metrics}/metrics" if config.metrics else ""
    if relay.metrics_port is not None:
        host = config.metrics.rpartition(":")[0] or "127.0.0.1"
        metrics = f", metrics http://{host}:{relay.metrics_port}/metrics"
    print(
        f"sealwire relay ready on {relay.origin} (backend {config.backend}, "
        f"relay id {relay.relay_id.hex()[:16]}…{metrics})",
        flush=True,
    )
    await stop.wait()
    # A log record, not a bare line: standard error is the JSON log stream.
    logging.getLogger("sealwire.relay").info("stopping (finishing pending stores)")
    await relay.stop()
