"""Activation tickets (DESIGN §7): a ticket and its one-time password are made here and stored
inside the caller's transaction, so that the administrative action that asked for it and its
audit entry commit together.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from sealwire._argon2 import in_thread
from sealwire.errors import ConfigError
from sealwire.protocol.activation import ActivationTicket, normalise_password, ticket_to_text
from sealwire.protocol.suite import Argon2Params, seal_at_rest

from .config import MAX_TICKET_LIFETIME_S
from .store import ServerStore

__all__ = ["TICKET_PURPOSE", "IssuedTicket", "NewTicket", "Tickets", "new_password"]

TICKET_PURPOSE = "server/ticket-scalar"
"""The at-rest sealing label of a ticket's password scalar."""
_PASSWORD_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"  # noqa: S105 (an alphabet; no 0/O, 1/I/L, U)
_PASSWORD_GROUPS = 3


@dataclass(frozen=True)
class IssuedTicket:
    """What an administrator hands a person: the ticket text and, separately, the password."""

    username: str
    ticket: str
    password: str
    expires_at: int
    """Unix seconds."""

    def __repr__(self) -> str:  # never print the password
        return f"IssuedTicket(username={self.username!r}, expires_at={self.expires_at})"


@dataclass(frozen=True)
class NewTicket:
    """A ticket made but not stored yet (:meth:`Tickets.store`)."""

    ticket: ActivationTicket
    password: str
    sealed_scalar: bytes
    lifetime_s: int

    def __repr__(self) -> str:  # never print the password
        return f"NewTicket(lifetime_s={self.lifetime_s})"


def new_password() -> str:
    """A one-time activation password: 12 characters (~59 bits) in groups of four.

    With SPAKE2 only online guesses are possible, five per ticket.
    """
    groups = (
        "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(4))
        for _ in range(_PASSWORD_GROUPS)
    )
    return "-".join(groups)


def check_ticket_lifetime(lifetime_s: int | None) -> None:
    """Raises: ConfigError for a lifetime outside one minute to 30 days."""
    if lifetime_s is not None and not 60 <= lifetime_s <= MAX_TICKET_LIFETIME_S:
        raise ConfigError("an activation password lives between one minute and 30 days")


class Tickets:
    """Makes and stores activation tickets.

    Args:
        store: the server's database.
        ticket_key: the at-rest key the password scalars are sealed under.
        server: the server's address (named in the ticket).
        relay: the relay URL (named in the ticket).
        lifetime_s: the default lifetime of a ticket.
        attempts: password attempts per ticket.
        clock: Unix milliseconds.
        random: source of random bytes.
    """

    def __init__(
        self,
        *,
        store: ServerStore,
        ticket_key: bytes,
        server: bytes,
        relay: str,
        lifetime_s: int,
        attempts: int,
        clock: Callable[[], int],
        random: Callable[[int], bytes],
    ) -> None:
        self._store = store
        self._ticket_key = ticket_key
        self._server = server
        self._relay = relay
        self._lifetime_s = lifetime_s
        self._attempts = attempts
        self._clock = clock
        self._random = random

    async def make(self, lifetime_s: int | None = None) -> NewTicket:
        """A new ticket and password (Argon2id at 64 MiB, in a worker thread so the relay link
        keeps going). Nothing is stored yet.

        Raises:
            ConfigError: a lifetime outside one minute to 30 days.
        """
        check_ticket_lifetime(lifetime_s)
        ticket = ActivationTicket(
            ticket_id=self._random(16),
            server=self._server,
            relay=self._relay,
            params=Argon2Params.default(self._random),
        )
        password = new_password()
        scalar = await in_thread(ticket.password_scalar, normalise_password(password))
        sealed = seal_at_rest(
            self._ticket_key,
            scalar,
            purpose=TICKET_PURPOSE,
            context=ticket.ticket_id,
            random=self._random,
        )
        lifetime = self._lifetime_s if lifetime_s is None else lifetime_s
        return NewTicket(ticket, password, sealed, lifetime)

    def store(
        self, conn: sa.Connection, username: str, user_id: int, new: NewTicket
    ) -> IssuedTicket:
        """Store ``new`` for the person in the caller's transaction (any open ticket of theirs
        is withdrawn)."""
        now = self._clock()
        expires_at = now + new.lifetime_s * 1000
        self._store.add_ticket(
            ticket_id=new.ticket.ticket_id,
            user_id=user_id,
            params=new.ticket.params.encode(),
            sealed_scalar=new.sealed_scalar,
            now=now,
            expires_at=expires_at,
            attempts=self._attempts,
            conn=conn,
        )
        return IssuedTicket(username, ticket_to_text(new.ticket), new.password, expires_at // 1000)
