"""The enterprise server (DESIGN §1, §4, §7): it holds the organisation's root key, answers
activations and directory queries, and talks to nobody but its relay, which it dials out to
(no inbound port) and reconnects to with backoff.

This module is the composition root: :class:`EnterpriseServer` opens the keys and the
database and wires the feature modules together, each given only what it needs:

- :mod:`.link`: the relay link and what the server pushes to devices;
- :mod:`.dispatch`: every envelope opened once and routed by type;
- :mod:`.activation`, :mod:`.directory`, :mod:`.management`: the answers;
- :mod:`.tickets`, :mod:`.administration`: what administrators do (audited), reached
  through the admin endpoint (:mod:`.api`); the database is never opened behind the
  server's back.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable
from pathlib import Path

from sealwire._system import now_ms
from sealwire.errors import ConfigError
from sealwire.protocol.identity import (
    ChainVerifier,
    Role,
    address_of,
    issue_certificate,
    short_address,
    sign_prekey,
)
from sealwire.protocol.suite import SigningKey, XWingPrivateKey
from sealwire.transport import Connector

from .accounts import AdminAccounts
from .activation import Activations, ActivationSettings
from .administration import Administration
from .audit import AuditLog
from .authority import Authority
from .config import ServerConfig
from .directory import DirectoryService
from .dispatch import Dispatcher
from .keystore import ServerKeys, create_key_file, load_keys, save_keys
from .link import Pushes, RelayLink
from .management import Management
from .policy import PolicySettings
from .store import ServerStore
from .tickets import IssuedTicket, Tickets

__all__ = ["EnterpriseServer", "IssuedTicket"]

log = logging.getLogger(__name__)

_SERVER_CERT_S = 366 * 86400
_SERVER_PREKEY_ID = 1


class EnterpriseServer:
    """One enterprise server process. Make it with :meth:`open`, then :meth:`start`.

    Args:
        config: settings.
        keys: the server's opened keys.
        store: the server's database.
        clock: Unix milliseconds (tests inject one).
        random: source of random bytes.
    """

    def __init__(
        self,
        config: ServerConfig,
        keys: ServerKeys,
        store: ServerStore,
        *,
        clock: Callable[[], int] = now_ms,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.keys = keys
        self.store = store
        self._clock = clock
        identity: SigningKey = keys.identity
        root_public = keys.root.public_key
        self.organisation = address_of(root_public)
        self.address = address_of(identity.public_key)
        chain = (keys.server_certificate,)
        relay = store.setting("relay")
        name = store.setting("organisation_name")
        self.relay_url = config.relay or (relay.decode() if relay else "")
        if not self.relay_url:
            raise ConfigError("no relay is configured: give --relay URL on the first run")
        if relay is None or relay.decode() != self.relay_url:
            store.put_setting("relay", self.relay_url.encode())
        self.organisation_name = name.decode() if name else "Sealwire"
        self.audit = AuditLog(store.db, identity, clock=clock)
        self.accounts = AdminAccounts(
            store.db, self.audit, clock=clock, token_lifetime_s=config.admin_token_lifetime_s
        )
        with store.db.transaction() as conn:
            if store.policy_row(conn, "default") is None:
                settings = PolicySettings(
                    prekey_rotation_s=config.prekey_rotation_s,
                    directory_cache_s=config.directory_cache_s,
                ).check()
                store.put_policy(conn, "default", settings.to_json(), clock(), "system")
        self.authority = Authority(
            identity=identity,
            chain=chain,
            organisation=self.organisation,
            server_not_after=keys.certificate.body.not_after,
            device_certificate_s=config.device_certificate_s,
            store=store,
            clock=clock,
            random=random,
        )
        self.link = RelayLink(self.relay_url, identity=identity, chain=chain, root=root_public)
        self.pushes = Pushes(self.link, store=store, authority=self.authority, clock=clock)
        self.tickets = Tickets(
            store=store,
            ticket_key=keys.ticket_key,
            server=self.address,
            relay=self.relay_url,
            lifetime_s=config.ticket_lifetime_s,
            attempts=config.ticket_attempts,
            clock=clock,
            random=random,
        )
        self.activation = Activations(
            address=self.address,
            store=store,
            audit=self.audit,
            authority=self.authority,
            ticket_key=keys.ticket_key,
            settings=ActivationSettings(
                organisation_name=self.organisation_name,
                relay=self.relay_url,
                server_prekey=keys.signed_prekey,
                root_public_key=root_public,
                max_devices_per_user=config.max_devices_per_user,
            ),
            clock=clock,
            random=random,
        )
        self.management = Management(
            store=store,
            audit=self.audit,
            authority=self.authority,
            ticket_key=keys.ticket_key,
            send_revocations=self.pushes.send_revocations,
            revoke_soon=self.pushes.revoke_soon,
            entry_changed=self.pushes.entry_changed,
            clock=clock,
        )
        self.dispatch = Dispatcher(
            address=self.address,
            prekey=keys.prekey,
            prekey_id=_SERVER_PREKEY_ID,
            verifier=ChainVerifier({self.organisation: root_public}),
            store=store,
            authority=self.authority,
            directory=DirectoryService(store=store, authority=self.authority, clock=clock),
            management=self.management,
            activation_step=self.activation.step,
            entry_changed=self.pushes.entry_changed,
            clock=clock,
        )
        self.administration = Administration(
            store=store,
            audit=self.audit,
            push=self.pushes,
            tickets=self.tickets,
            sign_command=self.authority.sign_command,
            ticket_key=keys.ticket_key,
            status=self.status,
            clock=clock,
            random=random,
        )
        self._lock: int | None = None

    # --- creation -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        config: ServerConfig,
        *,
        passphrase: str | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> EnterpriseServer:
        """Open the server in ``config.data``, creating the organisation on the first run.

        Raises:
            ConfigError: a missing relay URL, wrong passphrase or key file.
            StorageError: the database or key file cannot be used.
        """
        directory = config.server_dir
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = _lock_data_directory(directory)
        try:
            server = cls._open_locked(config, passphrase=passphrase, clock=clock)
        except BaseException:
            os.close(lock)
            raise
        server._lock = lock
        return server

    @classmethod
    def _open_locked(
        cls, config: ServerConfig, *, passphrase: str | None, clock: Callable[[], int]
    ) -> EnterpriseServer:
        sealed = config.server_dir / "keys.sealed"
        if not sealed.exists():
            if not config.relay:
                raise ConfigError(
                    "first run: give the relay URL with --relay (e.g. ws://127.0.0.1:8443)"
                )
            store = ServerStore.open(config.database_url)
            if store.setting("organisation") is not None:
                store.close()
                raise ConfigError(
                    f"the database belongs to an organisation whose keys are not in {sealed}: "
                    "restore that file (and its key file or passphrase) from your backup"
                )
            keys = _new_keys(clock() // 1000)
            try:
                if config.passphrase:
                    if not passphrase:
                        raise ConfigError("give the new passphrase (SEALWIRE_SERVER_PASSPHRASE)")
                    save_keys(sealed, keys, passphrase=passphrase)
                else:
                    if not config.key_file_path.exists():
                        create_key_file(config.key_file_path)
                    save_keys(sealed, keys, key_file=config.key_file_path)
            except BaseException:
                store.close()
                raise
            store.put_setting("organisation", address_of(keys.root.public_key))
            store.put_setting("organisation_name", (config.organisation or "Sealwire").encode())
            log.info("organisation created", extra={"organisation": _short(keys)})
        else:
            keys = load_keys(
                sealed,
                key_file=config.key_file_path if not passphrase else None,
                passphrase=passphrase or None,
            )
            keys = _renew_server_certificate(sealed, keys, config, passphrase, clock() // 1000)
            store = ServerStore.open(config.database_url)
            organisation = store.setting("organisation")
            if organisation is None:
                store.put_setting("organisation", address_of(keys.root.public_key))
            elif organisation != address_of(keys.root.public_key):
                store.close()
                raise ConfigError("the database belongs to another organisation")
        return cls(config, keys, store, clock=clock)

    # --- running --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the relay link (in the background: it retries until the relay answers)."""
        self.link.start(
            on_envelope=self.dispatch.handle_envelope,
            on_activation=self.dispatch.activation_channel,
            # Any revocations the relay has not confirmed (e.g. made while away).
            on_connected=self.pushes.send_revocations,
        )

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the relay link is up.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        await self.link.wait_connected(timeout)

    @property
    def connector(self) -> Connector:
        """How the server reaches its relay (a WebSocket by default; an in-process relay in
        tests). Set it before :meth:`start`."""
        return self.link.connector

    @connector.setter
    def connector(self, connector: Connector) -> None:
        self.link.connector = connector

    @property
    def connected(self) -> bool:
        """The relay link is up now."""
        return self.link.connected

    @property
    def activations(self) -> int:
        """Devices activated since start (for status and benchmarks)."""
        return self.activation.completed

    async def stop(self) -> None:
        """Close the relay link and the database."""
        await self.link.stop()
        self.activation.abandon_all()  # abandoned runs: their attempts are spent
        self.store.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def now_ms(self) -> int:
        """The server's clock: Unix milliseconds."""
        return self._clock()

    def status(self) -> dict[str, object]:
        """What ``sealwire admin status`` shows."""
        users = self.store.users()
        return {
            "organisation": self.organisation.hex(),
            "organisation_name": self.organisation_name,
            "server_address": short_address(self.address),
            "relay": self.relay_url,
            "relay_connected": self.connected,
            "users": len(users),
            "devices": sum(u.devices for u in users),
            "activations_since_start": self.activations,
            "database": self.store.db.dialect,
        }


def _lock_data_directory(directory: Path) -> int:
    """Hold ``server.lock`` for the life of the process: one server per data directory."""
    fd = os.open(directory / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"another enterprise server is running with the data directory {directory.parent}"
        ) from None
    return fd


def _new_keys(now_s: int) -> ServerKeys:
    root = SigningKey.generate(os.urandom)
    server = SigningKey.generate(os.urandom)
    organisation = address_of(root.public_key)
    certificate = issue_certificate(
        root,
        organisation=organisation,
        role=Role.SERVER,
        identity_key=server.public_key,
        serial=int.from_bytes(os.urandom(8), "big") >> 1,
        not_before=now_s - 300,
        not_after=now_s + _SERVER_CERT_S,
    )
    prekey = XWingPrivateKey.generate(os.urandom)
    signed = sign_prekey(
        server,
        prekey_id=_SERVER_PREKEY_ID,
        public_key=prekey.public_key,
        not_after=now_s + 10 * _SERVER_CERT_S,
    )
    return ServerKeys(
        root_seed=root.seed(),
        server_seed=server.seed(),
        server_certificate=certificate.encode(),
        prekey_seed=prekey.seed(),
        prekey_id=_SERVER_PREKEY_ID,
        signed_prekey=signed.encode(),
        ticket_key=os.urandom(32),
    )


def _renew_server_certificate(
    path: Path, keys: ServerKeys, config: ServerConfig, passphrase: str | None, now_s: int
) -> ServerKeys:
    """Renew the server's root-issued certificate when less than 60 days are left."""
    if keys.certificate.body.not_after - now_s > 60 * 86400:
        return keys
    certificate = issue_certificate(
        keys.root,
        organisation=address_of(keys.root.public_key),
        role=Role.SERVER,
        identity_key=keys.identity.public_key,
        serial=int.from_bytes(os.urandom(8), "big") >> 1,
        not_before=now_s - 300,
        not_after=now_s + _SERVER_CERT_S,
    )
    renewed = ServerKeys(
        root_seed=keys.root_seed,
        server_seed=keys.server_seed,
        server_certificate=certificate.encode(),
        prekey_seed=keys.prekey_seed,
        prekey_id=keys.prekey_id,
        signed_prekey=keys.signed_prekey,
        ticket_key=keys.ticket_key,
    )
    if passphrase:
        save_keys(path, renewed, passphrase=passphrase)
    else:
        save_keys(path, renewed, key_file=config.key_file_path)
    log.info("server certificate renewed")
    return renewed


def _short(keys: ServerKeys) -> str:
    return short_address(address_of(keys.root.public_key))
