"""Prometheus metrics of one relay process.

Labels carry only roles and error codes: never an address, an organisation or anything from an
envelope, so the metrics endpoint tells an observer no more than traffic volume.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["RelayMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_WAIT_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 86400.0, 7 * 86400.0)


class RelayMetrics:
    """The relay's counters, gauges and histograms, in a registry of their own (so several
    relays in one process, as in tests, do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "sealwire_relay_connections",
            "Open connections by role (handshake, device, server, activation).",
            ["role"],
            registry=r,
        )
        self.queue_envelopes = Gauge(
            "sealwire_relay_queue_envelopes", "Envelopes waiting in queues.", registry=r
        )
        self.queue_bytes = Gauge(
            "sealwire_relay_queue_bytes", "Envelope bytes waiting in queues.", registry=r
        )
        self.accepted = Counter(
            "sealwire_relay_envelopes_accepted", "Envelopes durably accepted.", registry=r
        )
        self.delivered = Counter(
            "sealwire_relay_envelopes_delivered",
            "Deliver frames sent (redeliveries included).",
            registry=r,
        )
        self.acknowledged = Counter(
            "sealwire_relay_envelopes_acknowledged",
            "Deliveries acknowledged by recipients.",
            registry=r,
        )
        self.expired = Counter(
            "sealwire_relay_envelopes_expired", "Envelopes that expired unread.", registry=r
        )
        self.rejected = Counter(
            "sealwire_relay_requests_rejected",
            "Requests refused, by wire code.",
            ["code"],
            registry=r,
        )
        self.closed = Counter(
            "sealwire_relay_sessions_closed",
            "Sessions ended, by wire code (connection-lost when the peer just went away).",
            ["code"],
            registry=r,
        )
        self.refused_connections = Counter(
            "sealwire_relay_connections_refused",
            "Connections refused before a session started, by reason.",
            ["reason"],
            registry=r,
        )
        self.revocations = Counter(
            "sealwire_relay_addresses_revoked", "Addresses revoked by servers.", registry=r
        )
        self.accept_latency = Histogram(
            "sealwire_relay_accept_latency_seconds",
            "From a Send frame's arrival to its Accepted frame (durable storage included).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "sealwire_relay_queue_wait_seconds",
            "From acceptance to the first delivery of an envelope.",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return bytes(generate_latest(self.registry))
