"""Every administrative effect and its audit entry are one transaction, on the one audited
path (DESIGN §8, issue 15): no public method of the server writes around the audit log, adding
a person and activating a device each commit with their entry or not at all, wrong activation
passwords are audited with the attempts left, and every mutating operation of the admin API
writes exactly one entry. Driven in-process (no relay): activation runs are fed straight to
the server's activation step, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from sealwire.protocol.activation import (
    ActivationCompleted,
    ActivationTicket,
    ticket_from_text,
)
from sealwire.server import EnterpriseServer
from sealwire.server.accounts import AdminAccounts, Role
from sealwire.server.config import ServerConfig
from sealwire.server.store import TicketState

from .test_activation_attempts import _cached_password_scalar, _device, _step
from .test_api import PASSWORD, cheap

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


class Refused(Exception):
    """Stands in for a failure of the audit log's write."""


@pytest.fixture
def server(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EnterpriseServer]:
    monkeypatch.setattr(ActivationTicket, "password_scalar", _cached_password_scalar)
    config = ServerConfig(
        data=str(tmp_path / "org"), relay="ws://127.0.0.1:9", database=database_url
    )
    opened = EnterpriseServer.open(config)
    try:
        yield opened
    finally:
        asyncio.run(opened.stop())


def _refuse_action(server: EnterpriseServer, action: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = server.audit.append

    def append(actor: str, what: str, *args: Any, **kwargs: Any) -> Any:
        if what == action:
            raise Refused(what)
        return real(actor, what, *args, **kwargs)

    monkeypatch.setattr(server.audit, "append", append)


def _actions(server: EnterpriseServer) -> list[str]:
    return [entry.action for entry in server.audit.entries(limit=10_000)]


def test_no_public_method_of_the_server_writes_around_the_audit_log() -> None:
    for name in ("add_user", "issue_ticket"):
        assert not hasattr(EnterpriseServer, name), name


def test_adding_a_person_commits_with_its_audit_entry_or_not_at_all(
    server: EnterpriseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = server.administration
    asyncio.run(admin.create_group("test", "crew"))
    _refuse_action(server, "user.add", monkeypatch)
    with pytest.raises(Refused):
        asyncio.run(admin.add_user("test", "erin", "Erin", groups=("crew",)))
    assert [u.username for u in server.store.users()] == []
    assert admin.group("crew").members == ()
    monkeypatch.undo()
    ticket = asyncio.run(admin.add_user("test", "erin", "Erin", groups=("crew",)))
    assert ticket.username == "erin" and admin.group("crew").members == ("erin",)
    # One entry for the person, the membership and the ticket.
    assert _actions(server) == ["group.create", "user.add"]


def test_an_activation_commits_with_its_audit_entry_or_not_at_all(
    server: EnterpriseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = asyncio.run(server.administration.add_user("test", "dora", "Dora"))
    ticket = ticket_from_text(issued.ticket)
    _refuse_action(server, "device.activate", monkeypatch)
    device = _device(ticket, issued.password)
    replies = _step(server, b"\x01" * 16, device.data_to_send())
    for reply in replies:
        device.receive(reply)
    with pytest.raises(Refused):
        _step(server, b"\x01" * 16, device.data_to_send())
    # Rolled back: no device, and the ticket is not used up.
    assert server.store.devices_of(["dora"], now=0, states=("pending", "active")) == []
    record = server.store.ticket(ticket.ticket_id)
    assert record is not None and record.state is TicketState.OPEN
    assert "device.activate" not in _actions(server)


def test_wrong_activation_passwords_are_audited_with_the_attempts_left(
    server: EnterpriseServer,
) -> None:
    issued = asyncio.run(server.administration.add_user("test", "dora", "Dora"))
    ticket = ticket_from_text(issued.ticket)
    for n in range(2):
        session = bytes([n]) * 16
        device = _device(ticket, f"WRNG-WRNG-WRN{n}")
        for reply in _step(server, session, device.data_to_send()):
            device.receive(reply)
        _step(server, session, device.data_to_send())
    failed = [e for e in server.audit.entries(limit=100) if e.action == "activation.failed"]
    assert [(e.actor, e.target, e.details) for e in failed] == [
        ("system", "dora", {"attempts_left": 4}),
        ("system", "dora", {"attempts_left": 3}),
    ]
    # The right password still activates, audited once.
    device = _device(ticket, issued.password)
    events: list[Any] = []
    for reply in _step(server, b"\x09" * 16, device.data_to_send()):
        device.receive(reply)
    for reply in _step(server, b"\x09" * 16, device.data_to_send()):
        events += device.receive(reply)
    assert any(isinstance(e, ActivationCompleted) for e in events)
    assert _actions(server).count("device.activate") == 1


# --- the admin API: every mutating operation, one entry each ----------------------------------


def _activate(server: EnterpriseServer, username: str) -> str:
    """Activate a device of ``username`` in-process; its hex address."""
    issued = asyncio.run(server.administration.issue_ticket("test", username))
    device = _device(ticket_from_text(issued.ticket), issued.password)
    for reply in _step(server, b"\x07" * 16, device.data_to_send()):
        device.receive(reply)
    for reply in _step(server, b"\x07" * 16, device.data_to_send()):
        device.receive(reply)
    (record,) = server.store.devices_of([username], now=0, states=("pending",))
    return record.address.hex()


def _requests(address: str) -> list[tuple[str, str, str, Any]]:
    """(method, route, path, body) of one successful call of each mutating operation, in an
    order in which each succeeds."""
    return [
        ("POST", "/v1/session", "/v1/session", {"username": "root", "password": PASSWORD}),
        ("DELETE", "/v1/session", "/v1/session", None),
        ("POST", "/v1/users", "/v1/users", {"username": "frank", "display_name": "Frank"}),
        ("POST", "/v1/users/{username}/tickets", "/v1/users/frank/tickets", {}),
        ("POST", "/v1/users/{username}/disable", "/v1/users/frank/disable", None),
        ("POST", "/v1/users/{username}/enable", "/v1/users/frank/enable", None),
        ("POST", "/v1/groups", "/v1/groups", {"name": "ops"}),
        ("PATCH", "/v1/groups/{name}", "/v1/groups/ops", {"description": "on call"}),
        ("PUT", "/v1/groups/{name}/members/{username}", "/v1/groups/ops/members/frank", None),
        ("DELETE", "/v1/groups/{name}/members/{username}", "/v1/groups/ops/members/frank", None),
        ("PUT", "/v1/policies/{name}", "/v1/policies/strict", {"passcode_min_length": 8}),
        ("PUT", "/v1/groups/{name}/policy", "/v1/groups/ops/policy", {"policy": "strict"}),
        ("DELETE", "/v1/groups/{name}", "/v1/groups/ops", None),
        ("DELETE", "/v1/policies/{name}", "/v1/policies/strict", None),
        (
            "POST",
            "/v1/devices/{address}/commands",
            f"/v1/devices/{address}/commands",
            {"kind": "lock"},
        ),
        (
            "POST",
            "/v1/accounts",
            "/v1/accounts",
            {"username": "helper", "password": PASSWORD, "role": "helpdesk"},
        ),
        ("PATCH", "/v1/accounts/{username}", "/v1/accounts/helper", {"role": "admin"}),
        ("POST", "/v1/accounts/{username}/disable", "/v1/accounts/helper/disable", None),
        ("POST", "/v1/accounts/{username}/enable", "/v1/accounts/helper/enable", None),
    ]


def test_every_mutating_admin_operation_writes_exactly_one_audit_entry(
    server: EnterpriseServer,
) -> None:
    from sealwire.server.api import create_app

    server.accounts = AdminAccounts(
        server.store.db, server.audit, clock=server.now_ms, params=cheap
    )
    app = create_app(server)
    routes = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods & MUTATING
    }
    asyncio.run(server.accounts.create("system", "root", PASSWORD, Role.SECURITY_ADMIN))
    token, _ = asyncio.run(server.accounts.login("root", PASSWORD))
    logout_token, _ = asyncio.run(server.accounts.login("root", PASSWORD))
    asyncio.run(server.administration.add_user("test", "alice", "Alice"))
    requests = _requests(_activate(server, "alice"))
    # A new mutating operation needs its line above (and its audit entry).
    assert {(method, route) for method, route, _, _ in requests} == routes

    async def call(method: str, path: str, body: Any) -> httpx.Response:
        bearer = logout_token if (method, path) == ("DELETE", "/v1/session") else token
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            headers = {"Authorization": f"Bearer {bearer}"}
            if body is None:
                return await client.request(method, path, headers=headers)
            return await client.request(method, path, json=body, headers=headers)

    wrong: list[str] = []
    for method, route, path, body in requests:
        before = len(_actions(server))
        response = asyncio.run(call(method, path, body))
        assert response.is_success, (method, path, response.text)
        written = _actions(server)[before:]
        if len(written) != 1:
            wrong.append(f"{method} {route}: {written}")
    assert wrong == []
