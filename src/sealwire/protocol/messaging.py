"""Person-to-person messages and receipts (DESIGN §9: until MLS conversations land, a message is
sealed in one envelope to each device of the recipient and to the sender's other devices).

A :class:`ChatMessage` rides in a ``MESSAGE`` envelope, a :class:`Receipt` in a ``RECEIPT``
envelope. Every copy of one message carries the same random ``message_id`` (the envelopes'
own ids differ), so a device shows a message once however many copies reach it.

Who sent it is the envelope's verified sender certificate (a device address); the body names
the sender's user, and the recipient checks that claim against the signed directory before it
shows the message: a device can only speak for its own person.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sealwire.protocol.codec import Struct, wire
from sealwire.protocol.directory import MAX_USERNAME

__all__ = [
    "APP_MESSAGE_ID_SIZE",
    "MAX_RECEIPT_IDS",
    "MAX_TEXT",
    "ChatMessage",
    "Receipt",
    "ReceiptKind",
]

APP_MESSAGE_ID_SIZE = 16
MAX_TEXT = 32 * 1024
"""Longest message text, in characters: at four UTF-8 bytes each still well inside one
envelope body (:data:`~.envelope.MAX_BODY_SIZE`, 192 KiB)."""
MAX_RECEIPT_IDS = 256


@dataclass(frozen=True)
class ChatMessage(Struct):
    """A text message from one person to another."""

    message_id: bytes = wire(0, size=APP_MESSAGE_ID_SIZE)
    """Random, the same in every copy."""
    sender: str = wire(1, max_size=MAX_USERNAME)
    """The sending person (checked against the directory by the recipient)."""
    recipient: str = wire(2, max_size=MAX_USERNAME)
    """The person it is for (the conversation, for the sender's own other devices)."""
    text: str = wire(3, max_size=MAX_TEXT)


class ReceiptKind(enum.IntEnum):
    """What a receipt says. Wire codes, never reused."""

    DELIVERED = 1
    """Stored on one of the recipient's devices."""
    READ = 2
    """Shown to the recipient."""


@dataclass(frozen=True)
class Receipt(Struct):
    """Recipient → sender's device: these messages were delivered (or read)."""

    kind: ReceiptKind = wire(0)
    message_ids: tuple[bytes, ...] = wire(1, max_items=MAX_RECEIPT_IDS, size=APP_MESSAGE_ID_SIZE)
    by: str = wire(2, max_size=MAX_USERNAME)
    """The person whose device sends the receipt."""
