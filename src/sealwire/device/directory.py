"""The organisation's directory as a device sees it: look-ups signed by our server, cached
(in memory and in the store) for as long as the policy allows, and the verified devices of
each person, to seal to and to check senders against (docs/protocol/DIRECTORY.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sealwire.errors import ConfigError, CryptoError, TransportError
from sealwire.protocol.directory import (
    MAX_USERS_PER_QUERY,
    REQUEST_ID_SIZE,
    DirectoryChanged,
    DirectoryQuery,
    SignedDirectoryAnswer,
    UserEntry,
    check_username,
    verify_prekey,
)
from sealwire.protocol.identity import Role
from sealwire.protocol.suite import XWingPublicKey

from .link import AskServer
from .profile import Peer, Profile
from .store import DeviceStore

__all__ = ["MAX_CACHE_S", "Directory", "check_person", "empty_entry"]

log = logging.getLogger(__name__)

MAX_CACHE_S = 86400
"""A directory answer is never used longer than this, whatever the policy says."""


class Directory:
    """Directory look-ups and the cache of entries and verified peers.

    Args:
        store: the cache that outlives the process.
        profile: our organisation, server and policy.
        ask: asks our server a question (:meth:`~sealwire.device.link.Link.ask`).
        clock: Unix milliseconds.
        random: source of random bytes (request ids).
    """

    def __init__(
        self,
        store: DeviceStore,
        profile: Profile,
        ask: AskServer,
        *,
        clock: Callable[[], int],
        random: Callable[[int], bytes],
    ) -> None:
        self._store = store
        self._profile = profile
        self._ask = ask
        self._clock = clock
        self._random = random
        self._entries: dict[str, tuple[int, UserEntry]] = {}
        """Directory entries in memory: user → (use until, entry)."""
        self._verified: dict[str, tuple[UserEntry, list[Peer], int]] = {}
        """Verified peers of an entry: user → (entry, peers, valid until)."""
        self._asking: dict[str, asyncio.Future[dict[str, UserEntry]]] = {}

    def remembers(self, user: str) -> bool:
        """Whether ``user``'s entry is in the memory cache."""
        return user in self._entries

    async def lookup(self, users: list[str], *, fresh: bool = False) -> dict[str, UserEntry]:
        """Directory entries for ``users`` (from the cache unless expired or ``fresh``).

        Raises:
            ConfigError: a name that is not a valid user name.
            TransportError: the server could not be asked, or its answer does not check out.
        """
        for user in users:
            check_person(user)
        now_s = self._clock() // 1000
        found: dict[str, UserEntry] = {}
        missing = []
        for user in dict.fromkeys(users):
            remembered = None if fresh else self._entries.get(user)
            if remembered is not None and remembered[0] > now_s:
                found[user] = remembered[1]
                continue
            cached = None if fresh else self._store.cached_entry(user, now=now_s)
            if cached is not None:
                found[user] = UserEntry.decode(cached, max_size=64 * 1024)
                self._entries[user] = (now_s + 60, found[user])  # re-read the store each minute
            else:
                missing.append(user)
        profile = self._profile
        for start in range(0, len(missing), MAX_USERS_PER_QUERY):
            chunk = tuple(missing[start : start + MAX_USERS_PER_QUERY])
            request_id = self._random(REQUEST_ID_SIZE)
            reply = await self._ask(
                DirectoryQuery(request_id=request_id, users=chunk), SignedDirectoryAnswer
            )
            try:
                answer = reply.verify(profile.server_key)
            except CryptoError:
                raise TransportError("the server's directory answer is not signed by it") from None
            if answer.request_id != request_id or answer.organisation != profile.organisation:
                raise TransportError("the directory answer is for another question")
            # The organisation's policy says how long a directory answer may be used.
            lifetime = min(profile.policy.directory_cache_s, MAX_CACHE_S)
            expires = min(answer.expires_at, now_s + lifetime)
            for entry in answer.entries:
                if entry.user not in chunk:
                    continue
                found[entry.user] = entry
                if entry.devices and expires > now_s:
                    self._entries[entry.user] = (expires, entry)
                    self._store.cache_entry(entry.user, entry.encode(), expires)
                else:  # no device yet: ask again next time rather than remember "none"
                    self.forget(entry.user)
            for name in answer.unknown:
                self.forget(name)
        return found

    def forget(self, user: str) -> None:
        """Drop ``user`` from the directory cache (memory and store)."""
        self._entries.pop(user, None)
        self._verified.pop(user, None)
        self._store.forget_entry(user)

    def changed(self, message: DirectoryChanged) -> None:
        """The server says these entries changed: forget them (asked again when needed)."""
        log.info("directory entries changed", extra={"count": len(message.users)})
        for user in message.users:
            self.forget(user)

    def peers(self, entry: UserEntry) -> list[Peer]:
        """Verified devices of a directory entry (skipping any that fails a check). The result
        is remembered for this entry object until its first certificate or prekey expires."""
        now_s = self._clock() // 1000
        remembered = self._verified.get(entry.user)
        if remembered is not None and remembered[0] is entry and now_s < remembered[2]:
            return remembered[1]
        verifier = self._profile.verifier
        peers = []
        valid_until = now_s + 3600
        for device in entry.devices:
            try:
                leaf = verifier.verify(device.chain, now=now_s, role=Role.DEVICE)
                signed = verify_prekey(device.prekey, leaf.body.identity_key, now=now_s)
            except CryptoError:
                log.warning("skipping a directory device that does not verify")
                continue
            valid_until = min(
                valid_until, verifier.valid_until(device.chain), signed.prekey.not_after
            )
            peers.append(
                Peer(
                    leaf.body.subject,
                    signed.prekey.prekey_id,
                    XWingPublicKey(signed.prekey.public_key),
                )
            )
        self._verified[entry.user] = (entry, peers, valid_until)
        return peers

    async def devices(self, user: str) -> list[tuple[bytes, bool]]:
        """The active devices of ``user``, fresh from the server: ``(address, is this
        device)``.

        Raises:
            ConfigError: no such person.
            TransportError: the server could not be asked.
        """
        entries = await self.lookup([user], fresh=True)
        if user not in entries:
            raise ConfigError(f"{user!r} is not a person of this organisation")
        address = self._profile.address
        return [(peer.address, peer.address == address) for peer in self.peers(entries[user])]

    def known_sender(self, user: str, address: bytes) -> bool:
        """Whether the directory cache (no network) says ``address`` is a device of ``user``."""
        now_s = self._clock() // 1000
        remembered = self._entries.get(user)
        entry = remembered[1] if remembered is not None and remembered[0] > now_s else None
        if entry is None:
            cached = self._store.cached_entry(user, now=now_s)
            if cached is None:
                return False
            entry = UserEntry.decode(cached, max_size=64 * 1024)
            self._entries[user] = (now_s + 60, entry)
        return any(p.address == address for p in self.peers(entry))

    async def sender_is(self, user: str, address: bytes) -> bool:
        """Whether ``address`` is a device of ``user``: from the cache, else asking the server
        (once for everyone waiting on the same person).

        Raises:
            TransportError: the server could not be asked.
        """
        if self.known_sender(user, address):
            return True
        # Unknown, or a device activated since we cached: ask the server.
        asking = self._asking.get(user)
        if asking is None:
            asking = asyncio.ensure_future(self.lookup([user], fresh=True))
            self._asking[user] = asking
            asking.add_done_callback(lambda _: self._asking.pop(user, None))
        entries = await asyncio.shield(asking)
        return user in entries and any(p.address == address for p in self.peers(entries[user]))


def check_person(user: str) -> None:
    """Refuse a name that is not a valid user name.

    Raises:
        ConfigError: naming what is wrong with it.
    """
    try:
        check_username(user)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def empty_entry(user: str) -> UserEntry:
    """An entry with no devices."""
    return UserEntry(user=user, display_name=user, devices=())
