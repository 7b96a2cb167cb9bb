"""The device client library: encrypted store and the :class:`Device` façade (DESIGN §2)."""

from .device import Device, DeviceInfo
from .store import DeviceStore, MessageRecord, MessageState

__all__ = ["Device", "DeviceInfo", "DeviceStore", "MessageRecord", "MessageState"]
