"""asyncio adapters between the sans-IO sessions and real connections (WebSocket)."""

from .relay_client import RelayConnection, RequestRefused, SessionEnded

__all__ = ["RelayConnection", "RequestRefused", "SessionEnded"]
