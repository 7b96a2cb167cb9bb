"""The admin API's HTTP client as ``sealwire admin`` uses it: where the server is, which token to
send, the answers as values or errors; and where passwords come from (a file, the environment,
the terminal; never the command line)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealwire._system import write_private
from sealwire.errors import AdminError, AuthenticationFailed, ConfigError, TransportError
from sealwire.settings import Section, load

from ._text import ask_secret, decode_input

__all__ = ["ADMIN_SETTINGS", "AdminClient", "AdminClientConfig", "read_password"]

_TOKEN_FILE = "admin-token"  # noqa: S105 (a file name)


@dataclass(frozen=True)
class AdminClientConfig:
    """Where ``sealwire admin`` finds the server's admin API. Who is asking comes from
    ``SEALWIRE_ADMIN_TOKEN``, the stored token, or the first administrator's password file;
    passwords from ``--password-file``, ``SEALWIRE_ADMIN_PASSWORD`` (login),
    ``SEALWIRE_ADMIN_NEW_PASSWORD`` and ``SEALWIRE_ADMIN_NEW_PASSCODE``, or the terminal."""

    data: str = "./sealwire-data"
    """The server's data directory: the admin API's URL is read from ``DATA/server/admin-url``
    and, on the server's machine, the token is kept in ``DATA/server/admin-token`` (elsewhere
    in ``$XDG_CONFIG_HOME/sealwire/admin-token``)."""
    url: str = ""
    """The admin API's URL (``https://admin.example.com:8444``); empty: read from ``DATA``."""
    cafile: str = ""
    """CA certificate (PEM) to trust for an ``https`` URL; empty: the system's."""


ADMIN_SETTINGS = Section(
    name="admin",
    cls=AdminClientConfig,
    env_prefix="SEALWIRE_ADMIN_",
    # Secrets, read where they are needed: not settings.
    reserved=frozenset({"token", "password", "new_password", "new_passcode"}),
    flags={"data": "--data", "url": "--url", "cafile": "--cafile"},
    file=False,
    notes={"data": "(or `SEALWIRE_DATA`, deprecated)"},
)
"""The settings of ``sealwire admin`` (no file: the environment and flags)."""


def admin_settings(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> AdminClientConfig:
    """The settings of ``sealwire admin``: defaults < ``SEALWIRE_ADMIN_*`` < flags. The old
    ``SEALWIRE_DATA`` still gives the data directory, with a warning, when
    ``SEALWIRE_ADMIN_DATA`` is not set."""
    environ = dict(os.environ if env is None else env)
    legacy = environ.get("SEALWIRE_DATA")
    if legacy is not None and "SEALWIRE_ADMIN_DATA" not in environ:
        print(
            "sealwire admin: SEALWIRE_DATA is deprecated; set SEALWIRE_ADMIN_DATA instead",
            file=sys.stderr,
        )
        environ["SEALWIRE_ADMIN_DATA"] = legacy
    overrides = {"data": args.data, "url": args.url, "cafile": args.cafile}
    config: AdminClientConfig = load(ADMIN_SETTINGS, env=environ, overrides=overrides)
    return config


class AdminClient:
    """The admin API, as the operator at the keyboard uses it."""

    def __init__(self, args: argparse.Namespace) -> None:
        settings = admin_settings(args)
        self.data = Path(settings.data)
        self.server_dir = self.data / "server"
        self.url = settings.url or self._url_from_data()
        self.url = self.url.rstrip("/")
        self.verify: Any = settings.cafile or True
        if self.server_dir.is_dir():
            self.token_file = self.server_dir / _TOKEN_FILE
        else:
            config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
            self.token_file = config / "sealwire" / _TOKEN_FILE
        self.initial = self.server_dir / "initial-admin-password"

    def _url_from_data(self) -> str:
        try:
            return (self.server_dir / "admin-url").read_text().strip()
        except OSError:
            raise TransportError(
                f"no enterprise server is running with its admin API for {self.data}: start it "
                "with `sealwire server` or `sealwire up` (same --data), or give --url"
            ) from None

    # --- HTTP -----------------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, body: Any = None, params: Any = None, auth: bool = True
    ) -> Any:
        """One request; its JSON answer. Raises the AdminError of an HTTP error status."""
        headers = {}
        token = self._token() if auth else None
        if token is not None:
            headers["Authorization"] = f"Bearer {token[0]}"
        response = self._send(method, path, body, params, headers)
        expired = response.status_code == 401 and token is not None and token[1] == "stored"
        if expired and self.initial.exists():
            # The stored token expired: on the server's machine, the initial password may do.
            headers["Authorization"] = f"Bearer {self._login_initial()}"
            response = self._send(method, path, body, params, headers)
        return self._answer(response)

    def stream(self, path: str) -> Iterator[str]:
        """The lines of a streamed answer, once it started (HTTP 200).

        Raises:
            TransportError: before the answer, the server cannot be reached; while iterating,
                the answer broke off (the message says so, not that no server is running).
            AdminError: the answer is an HTTP error status.
        """
        import httpx

        token = self._token()
        headers = {"Authorization": f"Bearer {token[0]}"} if token else {}
        client = httpx.Client(base_url=self.url, verify=self.verify, timeout=60)
        try:
            response = client.send(client.build_request("GET", path, headers=headers), stream=True)
        except httpx.TransportError as exc:
            client.close()
            raise self._unreachable(exc) from None
        try:
            if response.status_code != 200:
                response.read()
                self._answer(response)
        except BaseException:
            response.close()
            client.close()
            raise
        return self._lines(client, response)

    @staticmethod
    def _lines(client: Any, response: Any) -> Iterator[str]:
        import httpx

        try:
            yield from response.iter_lines()
        except httpx.HTTPError as exc:
            raise TransportError(f"the server's answer broke off: {exc}") from None
        finally:
            response.close()
            client.close()

    def _send(self, method: str, path: str, body: Any, params: Any, headers: dict[str, str]) -> Any:
        import httpx

        try:
            with httpx.Client(base_url=self.url, verify=self.verify, timeout=60) as client:
                return client.request(method, path, json=body, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: Exception) -> TransportError:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return TransportError(
                f"the admin API at {self.url} presented a certificate this machine does not "
                f"trust ({exc}): give its CA certificate with --cafile"
            )
        return TransportError(
            f"no enterprise server is running with its admin API at {self.url} ({exc}): start "
            "it with `sealwire server` or `sealwire up` (same --data), or check --url"
        )

    @staticmethod
    def _answer(response: Any) -> Any:
        from sealwire._http_errors import error_from_answer  # the API's own table

        try:
            answer = response.json()
        except ValueError:
            answer = {"detail": response.text[:200]}
        if response.status_code < 400:
            return answer
        raise error_from_answer(response.status_code, answer)

    # --- credentials ----------------------------------------------------------------------

    def _token(self) -> tuple[str, str] | None:
        """The token to send and where it came from (env, stored, initial)."""
        env = os.environ.get("SEALWIRE_ADMIN_TOKEN")
        if env:
            return env.strip(), "env"
        try:
            stored = self.token_file.read_text().strip()
        except OSError:
            stored = ""
        if stored:
            return stored, "stored"
        if self.initial.exists():
            return self._login_initial(), "initial"
        raise AuthenticationFailed(
            f"not logged in to {self.url}: run `sealwire admin login --user NAME`"
        )

    def _login_initial(self) -> str:
        password = self.initial.read_text().strip()
        try:
            return self.login("admin", password)
        except AuthenticationFailed:
            raise AuthenticationFailed(
                f"the first administrator's password in {self.initial} no longer works (it was "
                "changed?): log in with `sealwire admin login --user NAME`, and delete that file"
            ) from None

    def login(self, username: str, password: str) -> str:
        answer = self.request(
            "POST", "/v1/session", body={"username": username, "password": password}, auth=False
        )
        token = str(answer["token"])
        write_private(self.token_file, token + "\n")
        return token

    def logout(self) -> None:
        try:
            stored = self.token_file.read_text().strip()
        except OSError:
            return
        with contextlib.suppress(AdminError):
            self._answer(self._send("DELETE", "/v1/session", None, None, _bearer(stored)))
        self.token_file.unlink(missing_ok=True)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def read_password(prompt: str, path: str | None, env: str, *, confirm: bool) -> str:
    """A password from a file, the environment, or the terminal (never the command line)."""
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the password file {path}: {exc.strerror}") from None
        return decode_input(data, f"the password file {path}").rstrip("\r\n")
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise ConfigError(f"no terminal to ask for the password: use --password-file or {env}")
    value = ask_secret(prompt, "the password")
    if confirm and ask_secret("Again: ", "the password") != value:
        raise ConfigError("the two passwords differ")
    return value
