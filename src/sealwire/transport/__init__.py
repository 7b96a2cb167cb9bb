"""asyncio adapters between the sans-IO client session and real connections: the link
interface (:mod:`.base`), the session driver (:mod:`.connection`), the WebSocket channel
(:mod:`.websocket`) and, for tests, an in-process relay (:mod:`.memory`, imported explicitly:
it runs the relay service)."""

from .base import ChannelClosed, FrameChannel, RelayLink, RequestRefused, SessionEnded
from .connection import Connector, RelayConnection

__all__ = [
    "ChannelClosed",
    "Connector",
    "FrameChannel",
    "RelayConnection",
    "RelayLink",
    "RequestRefused",
    "SessionEnded",
]
