"""The admin API's request log and its audit of refused requests (issue 15).

- each request is one ``admin request`` record: account, method, route template, status,
  duration in ms; never a body, a query string, a header, a password or a token;
- each request refused with 401 or 403 is one ``api.refused`` audit entry (account if known,
  route, reason), rate-limited per account or source; a failed login keeps its own single
  ``account.login-failed`` entry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from sealwire.server import EnterpriseServer
from sealwire.server.accounts import Role
from sealwire.server.api import create_app
from sealwire.server.api.refusals import BURST, MAX_KEYS, WINDOW_S, Refusal, RefusalAudit

from .test_api import PASSWORD, open_server

_API_LOGGER = "sealwire.server.api"


class Org:
    def __init__(self, data: Path) -> None:
        self.server: EnterpriseServer = open_server(data)
        self.app: FastAPI = create_app(self.server)
        self.tokens: dict[Role, str] = {}

        async def populate() -> None:
            for role in (Role.SECURITY_ADMIN, Role.HELPDESK):
                await self.server.accounts.create("system", f"the-{role}", PASSWORD, role)
                self.tokens[role], _ = await self.server.accounts.login(f"the-{role}", PASSWORD)
            await self.server.administration.add_user("system", "alice", "Alice Example")

        asyncio.run(populate())

    def call(
        self, method: str, path: str, *, token: str | None = None, body: Any = None
    ) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
                return await client.request(method, path, json=body, headers=headers)

        return asyncio.run(go())

    def refused(self) -> list[Any]:
        return [e for e in self.server.audit.entries(limit=10_000) if e.action == "api.refused"]


@pytest.fixture
def org(tmp_path: Path) -> Iterator[Org]:
    made = Org(tmp_path / "org")
    yield made
    asyncio.run(made.server.stop())


def _requests(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == _API_LOGGER and r.msg == "admin request"]


# --- the request log --------------------------------------------------------------------------


def test_each_request_is_logged_with_account_method_route_status_duration(
    org: Org, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=_API_LOGGER)
    token = org.tokens[Role.SECURITY_ADMIN]
    assert org.call("GET", "/v1/users/alice?extra=secret-query", token=token).status_code == 200
    assert org.call("GET", "/v1/users/nobody", token=token).status_code == 404
    assert org.call("GET", "/no/such/path").status_code == 404
    first, missing, unrouted = _requests(caplog)
    assert {key: getattr(first, key) for key in ("account", "method", "route", "status")} == {
        "account": "the-security-admin",
        "method": "GET",
        "route": "/v1/users/{username}",  # the template: no names or addresses from the path
        "status": 200,
    }
    assert isinstance(first.duration_ms, float) and 0 <= first.duration_ms < 60_000
    assert (missing.route, missing.status) == ("/v1/users/{username}", 404)
    assert (unrouted.account, unrouted.route, unrouted.status) == ("-", "-", 404)
    text = "\n".join(str(vars(r)) for r in caplog.records)
    assert "alice" not in text and "nobody" not in text and "secret-query" not in text


def test_no_password_or_token_reaches_any_log_record(
    org: Org, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    login = org.call("POST", "/v1/session", body={"username": "the-helpdesk", "password": PASSWORD})
    assert login.status_code == 200
    token = login.json()["token"]
    wrong = "a wrong password, kept secret"
    assert (
        org.call(
            "POST", "/v1/session", body={"username": "the-helpdesk", "password": wrong}
        ).status_code
        == 401
    )
    org.call("GET", "/v1/accounts", token=token)  # 403 for helpdesk
    org.call("GET", "/v1/session", token=token)
    org.call("GET", "/v1/session", token="forged-" + token)
    new = {"username": "newbie", "password": "another long password", "role": "auditor"}
    org.call("POST", "/v1/accounts", token=org.tokens[Role.SECURITY_ADMIN], body=new)
    records = _requests(caplog)
    assert [(r.route, r.status) for r in records] == [
        ("/v1/session", 200),
        ("/v1/session", 401),
        ("/v1/accounts", 403),
        ("/v1/session", 200),
        ("/v1/session", 401),
        ("/v1/accounts", 201),
    ]
    assert [r.account for r in records] == [
        "the-helpdesk",  # who logged in
        "-",  # a failed login names no one
        "the-helpdesk",
        "the-helpdesk",
        "-",  # a forged token names no one
        "the-security-admin",
    ]
    formatter = logging.Formatter()
    everything = (
        "\n".join(formatter.format(r) + repr(vars(r)) for r in caplog.records) + caplog.text
    )
    for secret in (PASSWORD, wrong, token, "another long password", *org.tokens.values()):
        assert secret not in everything


# --- refused requests in the audit log --------------------------------------------------------


def test_each_refused_request_is_one_audit_entry(org: Org) -> None:
    helpdesk = org.tokens[Role.HELPDESK]
    before = org.server.audit.entries(limit=10_000)[-1].seq
    assert org.call("GET", "/v1/users").status_code == 401
    assert org.call("GET", "/v1/users/alice", token="not-a-token").status_code == 401
    assert org.call("GET", "/v1/accounts", token=helpdesk).status_code == 403
    assert (
        org.call(
            "POST", "/v1/devices/" + "00" * 32 + "/commands", token=helpdesk, body={"kind": "wipe"}
        ).status_code
        == 403
    )  # refused inside the endpoint (the permission of the command's kind)
    assert org.call("GET", "/v1/users", token=helpdesk).status_code == 200  # not a refusal
    new = [e for e in org.server.audit.entries(after=before, limit=100)]
    assert [e.action for e in new] == ["api.refused"] * 4
    anonymous, forged, denied, command = new
    assert (anonymous.actor, anonymous.target) == ("anonymous", "GET /v1/users")
    assert anonymous.details == {
        "status": 401,
        "reason": "no token",
        "source": "127.0.0.1",
        "method": "GET",
    }
    assert (forged.actor, forged.target) == ("anonymous", "GET /v1/users/{username}")
    assert forged.details["reason"] == "unknown or expired token"
    assert (denied.actor, denied.target) == ("the-helpdesk", "GET /v1/accounts")
    assert denied.details["status"] == 403
    assert "accounts.read" in denied.details["reason"]
    assert command.target == "POST /v1/devices/{address}/commands"
    assert "commands.wipe" in command.details["reason"]
    assert org.server.audit.verify().ok


def test_a_failed_login_is_audited_once(org: Org) -> None:
    before = org.server.audit.entries(limit=10_000)[-1].seq
    body = {"username": "the-helpdesk", "password": "not the password"}
    assert org.call("POST", "/v1/session", body=body).status_code == 401
    new = org.server.audit.entries(after=before, limit=100)
    assert [e.action for e in new] == ["account.login-failed"]


def test_a_flood_of_refusals_is_rate_limited_per_source(org: Org) -> None:
    for _ in range(BURST + 5):
        assert org.call("GET", "/v1/status").status_code == 401
    assert len(org.refused()) == BURST
    # another account is its own key
    assert org.call("GET", "/v1/accounts", token=org.tokens[Role.HELPDESK]).status_code == 403
    assert len(org.refused()) == BURST + 1


class _Log:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str, dict[str, Any]]] = []
        self.fail = False

    def append(self, actor: str, action: str, target: str, details: Any = None) -> None:
        if self.fail:
            raise RuntimeError("the database is gone")
        self.entries.append((actor, action, target, dict(details or {})))


def _refusal(account: str | None = None, source: str = "10.0.0.1") -> Refusal:
    return Refusal(401, account, source, "GET", "/v1/users", "no token")


def test_the_rate_limit_carries_the_suppressed_count_into_the_next_window() -> None:
    now = [0.0]
    log = _Log()
    refusals = RefusalAudit(log, clock=lambda: now[0])
    written = [refusals.record(_refusal()) for _ in range(BURST + 3)]
    assert written == [True] * BURST + [False] * 3
    assert refusals.record(_refusal(source="10.0.0.2"))  # another source: its own window
    now[0] += WINDOW_S
    assert refusals.record(_refusal())
    assert log.entries[-1][3]["suppressed"] == 3
    assert refusals.record(_refusal())
    assert "suppressed" not in log.entries[-1][3]
    assert all(entry[0] == "anonymous" and entry[1] == "api.refused" for entry in log.entries)


def test_the_rate_limit_table_is_bounded_and_a_failing_log_is_not_raised() -> None:
    log = _Log()
    refusals = RefusalAudit(log, clock=lambda: 0.0)
    for n in range(MAX_KEYS + 10):
        refusals.record(_refusal(source=f"10.{n // 65536}.{n // 256 % 256}.{n % 256}"))
    assert len(refusals._windows) <= MAX_KEYS
    log.fail = True
    assert refusals.record(_refusal(account="someone")) is False
