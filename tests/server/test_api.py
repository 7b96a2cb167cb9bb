"""The admin API (``sealwire.server.api``) over a real enterprise server on a temporary data
directory (no relay: the server is opened, its relay link never started).

- access: table-driven over the app's own endpoint table, every role without an endpoint's
  permission gets 403 and every role with it gets past the check; no token or a bad one: 401;
- requests: bad JSON, wrong types, unknown fields, huge bodies get a 4xx with a message, never
  a 500; answers never echo what was sent (it may be a password);
- Schemathesis against the published OpenAPI description: no 5xx;
- serving: :class:`AdminApi` on a real socket, the URL file, the loopback/TLS rule;
- the ``sealwire admin`` command line against it.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.routing import APIRoute

from sealwire.errors import ConfigError
from sealwire.protocol.suite import Argon2Params
from sealwire.server import EnterpriseServer
from sealwire.server.accounts import PERMISSIONS, AdminAccounts, Permission, Role
from sealwire.server.administration import PolicySettings
from sealwire.server.api import COMMAND_PERMISSIONS, MAX_BODY, AdminApi, Endpoint, check_bind
from sealwire.server.config import ServerConfig

from ..e2e.harness import cli

_NO_RELAY = "ws://127.0.0.1:9"
PASSWORD = "a long enough password"


def cheap(random: Any) -> Argon2Params:
    return Argon2Params(salt=random(16), memory_kib=8, iterations=1, lanes=1)


def open_server(data: Path, **settings: Any) -> EnterpriseServer:
    server = EnterpriseServer.open(ServerConfig(data=str(data), relay=_NO_RELAY, **settings))
    # Cheap Argon2id for the many logins of these tests (the parameters are per password).
    server.accounts = AdminAccounts(
        server.store.db, server.audit, clock=server.now_ms, params=cheap
    )
    return server


class Org:
    """A server with one logged-in administrator per role and something to point at."""

    def __init__(self, data: Path) -> None:
        from sealwire.server.api import create_app

        self.server = open_server(data)
        self.app: FastAPI = create_app(self.server)
        self.tokens: dict[Role, str] = {}
        asyncio.run(self._populate())

    async def _populate(self) -> None:
        accounts = self.server.accounts
        for role in Role:
            await accounts.create("system", f"the-{role}", PASSWORD, role)
            self.tokens[role], _ = await accounts.login(f"the-{role}", PASSWORD)
        await accounts.create("system", "target", PASSWORD, "helpdesk")
        admin = self.server.administration
        await admin.add_user("system", "alice", "Alice Example")
        await admin.put_policy("system", "strict", PolicySettings(passcode_min_length=8))
        await admin.create_group("system", "crew")

    def headers(self, role: Role | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}

    def call(
        self,
        method: str,
        path: str,
        *,
        role: Role | None = Role.SECURITY_ADMIN,
        body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=True)
            async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
                extra = {**self.headers(role), **(headers or {})}
                if content is not None:
                    extra.setdefault("content-type", "application/json")
                    return await client.request(method, path, content=content, headers=extra)
                return await client.request(method, path, json=body, headers=extra)

        response: httpx.Response = asyncio.run(go())
        return response


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Org]:
    made = Org(tmp_path_factory.mktemp("api") / "org")
    yield made
    asyncio.run(made.server.stop())


# --- the access table -------------------------------------------------------------------------

_PATH_VALUES = {
    "username": "alice",
    "name": "crew",
    "address": "00" * 32,
    "command_id": "00" * 16,
}
_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/users"): {"username": "bob"},
    ("POST", "/v1/users/{username}/tickets"): {},
    ("POST", "/v1/groups"): {"name": "new-group"},
    ("PATCH", "/v1/groups/{name}"): {"priority": 5},
    ("PUT", "/v1/groups/{name}/policy"): {"policy": "strict"},
    ("PUT", "/v1/policies/{name}"): {"passcode_min_length": 8},
    ("POST", "/v1/accounts"): {"username": "newbie", "password": PASSWORD, "role": "auditor"},
    ("PATCH", "/v1/accounts/{username}"): {"role": "auditor"},
}
_ANY_ADMINISTRATOR = {("GET", "/v1/session"), ("DELETE", "/v1/session")}


def _concrete(endpoint: Endpoint) -> str:
    path = endpoint.path
    if endpoint.path.startswith("/v1/accounts/"):
        path = path.replace("{username}", "target")  # never one of the logged-in accounts
    if endpoint.path.startswith("/v1/policies/"):
        path = path.replace("{name}", "strict")
    for name, value in _PATH_VALUES.items():
        path = path.replace("{" + name + "}", value)
    return path


def _endpoints() -> list[Endpoint]:
    from sealwire.server.api import create_app

    class Stub:  # create_app only reads these attributes while declaring routes
        administration = accounts = audit = None

    app = create_app(Stub())  # type: ignore[arg-type]
    endpoints: tuple[Endpoint, ...] = app.state.endpoints
    return list(endpoints)


ENDPOINTS = _endpoints()

# (endpoint, body, permission) for every endpoint with a permission; a command once per kind.
CHECKED = [
    (e, _BODIES.get((e.method, e.path)), e.permission)
    for e in ENDPOINTS
    if e.permission is not None
] + [
    (e, {"kind": kind}, permission)
    for e in ENDPOINTS
    if e.by_kind
    for kind, permission in e.by_kind.items()
]


def test_every_route_is_in_the_table_with_a_permission() -> None:
    from sealwire.server.api import create_app

    class Stub:
        administration = accounts = audit = None

    app = create_app(Stub())  # type: ignore[arg-type]
    routes = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    table = {(e.method, e.path) for e in ENDPOINTS}
    assert routes == table
    for e in ENDPOINTS:
        if e.public:
            assert (e.method, e.path) == ("POST", "/v1/session")
        elif e.permission is None and not e.by_kind:
            assert (e.method, e.path) in _ANY_ADMINISTRATOR, e
    commands = [e for e in ENDPOINTS if e.by_kind]
    assert [(e.method, e.path) for e in commands] == [("POST", "/v1/devices/{address}/commands")]
    assert dict(commands[0].by_kind or {}) == dict(COMMAND_PERMISSIONS)
    # Every permission guards something, and the OpenAPI description names each one.
    used = {e.permission for e in ENDPOINTS} | set(COMMAND_PERMISSIONS.values())
    assert used >= set(Permission)
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            assert "x-permission" in operation, (method, path)


@pytest.mark.parametrize(
    ("endpoint", "body", "permission"),
    CHECKED,
    ids=[f"{e.method} {e.path} {p}" for e, _, p in CHECKED],
)
def test_roles_without_the_permission_are_refused(
    org: Org, endpoint: Endpoint, body: Any, permission: Permission
) -> None:
    for role in Role:
        response = org.call(endpoint.method, _concrete(endpoint), role=role, body=body)
        if role in PERMISSIONS[permission]:
            assert response.status_code not in (401, 403), (role, response.text)
            assert response.status_code < 500, response.text
        else:
            assert response.status_code == 403, (role, response.text)
            detail = response.json()["detail"]
            assert f"the {role} role does not allow {permission}" in detail


@pytest.mark.parametrize(
    "endpoint", [e for e in ENDPOINTS if not e.public], ids=lambda e: f"{e.method} {e.path}"
)
def test_no_token_or_a_bad_one_is_refused(org: Org, endpoint: Endpoint) -> None:
    body = _BODIES.get((endpoint.method, endpoint.path), {"kind": "lock"})
    path = _concrete(endpoint)
    for headers in (
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {org.tokens[Role.SECURITY_ADMIN]}x"},
    ):
        response = org.call(endpoint.method, path, role=None, body=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "token" in response.json()["detail"]


def test_login_whoami_logout(tmp_path: Path) -> None:
    org = Org(tmp_path / "org")
    try:
        response = org.call(
            "POST", "/v1/session", role=None, body={"username": "the-auditor", "password": PASSWORD}
        )
        assert response.status_code == 200
        answer = response.json()
        assert set(answer) == {"token", "expires_at", "username", "role"}
        headers = {"Authorization": f"Bearer {answer['token']}"}
        me = org.call("GET", "/v1/session", role=None, headers=headers).json()
        assert me["role"] == "auditor"
        assert me["permissions"] == sorted(p.value for p in Permission if p.value.endswith("read"))
        assert org.call("DELETE", "/v1/session", role=None, headers=headers).status_code == 200
        assert org.call("GET", "/v1/session", role=None, headers=headers).status_code == 401
        wrong = org.call(
            "POST", "/v1/session", role=None, body={"username": "the-auditor", "password": "nope"}
        )
        assert wrong.status_code == 401 and "nope" not in wrong.text
        # A disabled administrator's token stops working at once.
        assert org.call("POST", "/v1/accounts/the-admin/disable").status_code == 200
        response = org.call("GET", "/v1/status", role=Role.ADMIN)
        assert response.status_code == 401
        actions = [e.action for e in org.server.audit.entries()]
        assert "account.login" in actions and "account.login-failed" in actions
        assert "account.logout" in actions and "account.disable" in actions
    finally:
        asyncio.run(org.server.stop())


# --- malformed requests -------------------------------------------------------------------------


def _refused(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    assert isinstance(answer["detail"], str) and answer["detail"]
    for word in words:
        assert word in answer["detail"], answer
    return answer


def test_malformed_bodies_get_4xx_with_a_message(org: Org) -> None:
    cases: list[tuple[str, str, bytes, int, tuple[str, ...]]] = [
        ("POST", "/v1/users", b"{not json", 400, ("not valid JSON",)),
        ("POST", "/v1/users", b'{"username": "zed",}', 400, ("not valid JSON",)),
        ("POST", "/v1/users", b"\xff\xfe\x00garbage", 400, ()),
        ("POST", "/v1/users", b"[" * 20_000 + b"]" * 20_000, 400, ()),
        ("POST", "/v1/users", b"[1, 2, 3]", 422, ("invalid request",)),
        ("POST", "/v1/users", b'"status"', 422, ()),
        ("POST", "/v1/users", b"null", 422, ()),
        ("POST", "/v1/users", b"{}", 422, ("username", "Field required")),
        ("POST", "/v1/users", b'{"username": 42}', 422, ("username", "valid string")),
        ("POST", "/v1/users", b'{"username": ["a"]}', 422, ("username",)),
        ("POST", "/v1/users", b'{"username": "zed", "display_name": 7}', 422, ("display_name",)),
        ("POST", "/v1/users", b'{"username": "zed", "lifetime_s": "1h"}', 422, ("lifetime_s",)),
        ("POST", "/v1/users", b'{"username": "zed", "lifetime_s": true}', 422, ("lifetime_s",)),
        ("POST", "/v1/users", b'{"username": "zed", "lifetime_s": 1.5}', 422, ("lifetime_s",)),
        ("POST", "/v1/users", b'{"username": "zed", "lifetime_s": NaN}', 422, ("lifetime_s",)),
        ("POST", "/v1/users", b'{"username": "zed", "admin": true}', 422, ("admin", "Extra")),
        ("POST", "/v1/users", b'{"username": "z\\ud800"}', 422, ("username",)),
        ("POST", "/v1/users", b'{"username": "z\\u0000"}', 422, ("username",)),
        ("POST", "/v1/users", b'{"username": "' + b"a" * 100 + b'"}', 422, ("username",)),
        ("POST", "/v1/groups", b'{"name": "g", "priority": "1"}', 422, ("priority",)),
        ("POST", "/v1/groups", b'{"name": "g", "priority": -1}', 422, ("priority",)),
        ("PUT", "/v1/policies/p", b'{"export_allowed": "yes"}', 422, ("export_allowed",)),
        ("PUT", "/v1/policies/p", b'{"passcode_min_length": 99}', 422, ("passcode_min_length",)),
        ("PUT", "/v1/policies/p", b'{"passcode_min_length": 1e400}', 422, ()),
        ("PUT", "/v1/policies/p", b'{"passcode_min_length": ' + b"9" * 5000 + b"}", 400, ()),
        ("POST", "/v1/devices/00/commands", b'{"kind": "explode"}', 422, ("kind",)),
        (
            "POST",
            "/v1/accounts",
            b'{"username": "x", "password": 123456789012, "role": "admin"}',
            422,
            ("password",),
        ),
        (
            "POST",
            "/v1/accounts",
            b'{"username": "x", "password": "short", "role": "admin"}',
            422,
            ("password",),
        ),
        (
            "POST",
            "/v1/accounts",
            b'{"username": "x", "password": "long enough pw", "role": "god"}',
            422,
            ("role",),
        ),
        ("PATCH", "/v1/accounts/target", b"{}", 422, ("role, a password",)),
    ]
    for method, path, content, status, words in cases:
        response = org.call(method, path, content=content)
        _refused(response, status, *words)
        if status == 422 and b"\\u" not in content:
            # Never the input back: it may be a password.
            for error in response.json().get("errors", []):
                assert set(error) == {"loc", "msg", "type"}
    assert (
        "123456789012"
        not in org.call(
            "POST",
            "/v1/accounts",
            content=b'{"username": "x", "password": 123456789012, "role": "admin"}',
        ).text
    )
    # Nothing was added by all that.
    assert [u["username"] for u in org.call("GET", "/v1/users").json()].count("zed") == 0


def test_huge_bodies_and_odd_requests(org: Org) -> None:
    huge = json.dumps({"username": "zed", "display_name": "x" * (MAX_BODY + 1)}).encode()
    _refused(org.call("POST", "/v1/users", content=huge), 413, f"larger than {MAX_BODY} bytes")

    async def chunked() -> httpx.Response:  # no Content-Length: counted as it arrives
        async def body() -> AsyncIterator[bytes]:
            for _ in range(MAX_BODY // 1024 + 2):
                yield b" " * 1024

        transport = httpx.ASGITransport(app=org.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            return await client.post(
                "/v1/users",
                content=body(),
                headers={**org.headers(Role.SECURITY_ADMIN), "content-type": "application/json"},
            )

    response = asyncio.run(chunked())
    assert "content-length" not in response.request.headers
    _refused(response, 413, f"larger than {MAX_BODY} bytes")
    _refused(org.call("GET", "/v1/no-such-thing"), 404)
    _refused(org.call("PATCH", "/v1/status"), 405)
    response = org.call(
        "POST", "/v1/users", content=b'{"username": "zed"}', headers={"content-type": "text/plain"}
    )
    assert 400 <= response.status_code < 500
    _refused(org.call("GET", "/v1/audit?limit=0"), 422, ("limit"))
    _refused(org.call("GET", "/v1/audit?after=-1"), 422, ("after"))
    _refused(org.call("GET", "/v1/audit?after=99999999999999999999999"), 422, ("after"))
    _refused(org.call("GET", "/v1/devices?username=Not%20Valid"), 422, ("not a valid user name"))
    _refused(org.call("GET", "/v1/devices/xyz"), 422, ("hexadecimal"))
    _refused(org.call("GET", "/v1/commands/abc"), 422, ("hexadecimal"))


def test_people_tickets_and_lifetimes(org: Org) -> None:
    ticket = org.call("POST", "/v1/users", body={"username": "carol", "display_name": "Carol E"})
    assert ticket.status_code == 201
    answer = ticket.json()
    assert set(answer) == {"username", "ticket", "password", "expires_at"}
    assert answer["ticket"].startswith("sealwire-ticket:")
    _refused(org.call("POST", "/v1/users", body={"username": "carol"}), 409, "exists already")
    _refused(org.call("POST", "/v1/users", body={"username": "Carol!"}), 422, "not a valid user")
    _refused(org.call("POST", "/v1/users", body={"username": "dan", "display_name": ""}), 422)
    for lifetime in (31 * 86400, 30 * 86400 + 1, 59, 0, -5):
        _refused(
            org.call("POST", "/v1/users/carol/tickets", body={"lifetime_s": lifetime}),
            422,
            "between one minute and 30 days",
        )
        _refused(
            org.call("POST", "/v1/users", body={"username": "dan", "lifetime_s": lifetime}),
            422,
            "between one minute and 30 days",
        )
    _refused(org.call("POST", "/v1/users/nobody/tickets", body={}), 404, "nobody")
    users = {u["username"]: u for u in org.call("GET", "/v1/users").json()}
    assert "dan" not in users
    assert users["carol"]["display_name"] == "Carol E" and users["carol"]["devices"] == 0
    longest = org.call("POST", "/v1/users/carol/tickets", body={"lifetime_s": 30 * 86400})
    assert longest.status_code == 201 and longest.json()["password"] != answer["password"]
    without_body = org.call("POST", "/v1/users/carol/tickets")
    assert without_body.status_code == 201
    # Reading never shows a password.
    assert "password" not in org.call("GET", "/v1/users/carol").text
    assert PASSWORD not in org.call("GET", "/v1/accounts").text


def test_audit_endpoints(org: Org) -> None:
    entries = org.call("GET", "/v1/audit?limit=5").json()
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    later = org.call("GET", "/v1/audit", body=None, headers={}).json()
    assert later[0]["seq"] == 1
    mine = org.call("GET", "/v1/audit?action=account.create&limit=100").json()
    assert {e["action"] for e in mine} == {"account.create"}
    verdict = org.call("GET", "/v1/audit/verify").json()
    assert verdict["ok"] is True and verdict["first_broken"] is None
    export = org.call("GET", "/v1/audit/export")
    assert export.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert lines[0]["seq"] == 1 and lines[-1]["action"] == "audit.export"


# --- Schemathesis ----------------------------------------------------------------------------


def test_schemathesis_finds_no_server_errors(tmp_path: Path) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.result import Ok
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
    )

    conformance = [not_a_server_error, response_schema_conformance, content_type_conformance]
    org = Org(tmp_path / "org")
    accounts = org.server.accounts
    fresh = iter(range(1_000_000))

    def token() -> str:
        # The fuzzer may log the token out, change its account or throttle it: then use a new
        # security admin (still authorised, so every operation is reached).
        try:
            accounts.authenticate(org.tokens[Role.SECURITY_ADMIN])
        except Exception:
            name = f"fuzz-{next(fresh)}"
            asyncio.run(accounts.create("system", name, PASSWORD, Role.SECURITY_ADMIN))
            org.tokens[Role.SECURITY_ADMIN], _ = asyncio.run(accounts.login(name, PASSWORD))
        return org.tokens[Role.SECURITY_ADMIN]

    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", org.app)
        loaded = list(schema.get_all_operations())
        operations = [result.ok() for result in loaded if isinstance(result, Ok)]
        assert len(operations) == len(ENDPOINTS)
        failures: list[str] = []
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(
                    max_examples=20,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def check(case: Any) -> None:
                    response = case.call(headers={"Authorization": f"Bearer {token()}"})
                    if response.status_code >= 500:
                        failures.append(f"{case.method} {case.formatted_path}: {response.text}")
                    assert response.status_code < 500
                    # And every answer has the shape the description publishes.
                    case.validate_response(response, checks=conformance)

                check()
        assert failures == []
    finally:
        asyncio.run(org.server.stop())


# --- serving ----------------------------------------------------------------------------------


def test_only_loopback_without_tls() -> None:
    assert check_bind(ServerConfig()) == ("127.0.0.1", 8444, False)
    assert check_bind(ServerConfig(admin_listen="[::1]:0"))[:2] == ("::1", 0)
    assert check_bind(ServerConfig(admin_listen="localhost:9000"))[0] == "localhost"
    for address in ("0.0.0.0:8444", "192.0.2.7:8444", "[::]:1", "admin.example.com:8444"):
        with pytest.raises(ConfigError, match="without TLS"):
            check_bind(ServerConfig(admin_listen=address))
        assert check_bind(ServerConfig(admin_listen=address, admin_allow_plain=True))[2] is False
        tls = ServerConfig(admin_listen=address, admin_tls_cert="c.pem", admin_tls_key="k.pem")
        assert check_bind(tls)[2] is True
    for bad in ("8444", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            check_bind(ServerConfig(admin_listen=bad))


def test_admin_settings_from_the_environment() -> None:
    from sealwire.server.config import load_server_config

    config = load_server_config(
        env={
            "SEALWIRE_SERVER_ADMIN_LISTEN": "0.0.0.0:9443",
            "SEALWIRE_SERVER_ADMIN_ALLOW_PLAIN": "yes",
            "SEALWIRE_SERVER_ADMIN_TOKEN_LIFETIME_S": "3600",
        }
    )
    assert config.admin_address == ("0.0.0.0", 9443)
    assert config.admin_allow_plain is True and config.admin_token_lifetime_s == 3600
    assert ServerConfig().admin_token_lifetime_s == 12 * 3600
    with pytest.raises(ConfigError, match="admin_token_lifetime_s"):
        load_server_config(env={"SEALWIRE_SERVER_ADMIN_TOKEN_LIFETIME_S": "10"})
    with pytest.raises(ConfigError, match="set both or neither"):
        load_server_config(env={"SEALWIRE_SERVER_ADMIN_TLS_CERT": "cert.pem"})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_server_config(overrides={"admin_listen": "nowhere"})


@asynccontextmanager
async def serving(data: Path, **settings: Any) -> AsyncIterator[tuple[EnterpriseServer, AdminApi]]:
    server = open_server(data, admin_listen="127.0.0.1:0", **settings)
    await server.accounts.bootstrap(server.config.server_dir)
    api = AdminApi(server)
    await api.start()
    try:
        yield server, api
    finally:
        await api.stop()
        await server.stop()


def test_admin_api_on_a_socket(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "org") as (server, api):
            url_file = server.config.server_dir / "admin-url"
            assert url_file.read_text().strip() == api.url
            assert api.url.startswith("http://127.0.0.1:")
            assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
            password = (server.config.server_dir / "initial-admin-password").read_text().strip()
            async with httpx.AsyncClient(base_url=api.url) as client:
                login = await client.post(
                    "/v1/session", json={"username": "admin", "password": password}
                )
                headers = {"Authorization": f"Bearer {login.json()['token']}"}
                status = await client.get("/v1/status", headers=headers)
                assert status.status_code == 200 and status.json()["users"] == 0
                assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.")
                assert (await client.get("/docs")).status_code == 200
                # A body announced larger than the limit is refused before it is read.
                big = await client.post(
                    "/v1/users", headers=headers, content=b"{" + b" " * MAX_BODY + b"}"
                )
                assert big.status_code == 413
            # The default token lifetime comes from the configuration.
            assert server.accounts.token_lifetime_s == server.config.admin_token_lifetime_s
        assert not url_file.exists()

    asyncio.run(scenario())


def test_a_taken_port_is_a_config_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "one") as (_, api):
            port = api.url.rsplit(":", 1)[1]
            server = open_server(tmp_path / "two", admin_listen=f"127.0.0.1:{port}")
            try:
                with pytest.raises(ConfigError, match="cannot listen for the admin API"):
                    await AdminApi(server).start()
            finally:
                await server.stop()

    asyncio.run(scenario())


# --- the command line -------------------------------------------------------------------------


async def sealwire(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sealwire",
        "admin",
        "--data",
        str(data),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_cli_against_the_api(tmp_path: Path) -> None:
    data = tmp_path / "org"

    async def scenario() -> None:
        async with serving(data) as (server, _):
            # The first run logs in with the initial password by itself and keeps the token.
            code, out, err = await sealwire(data, "--json", "user", "add", "carol", "--name", "C")
            assert code == 0, err
            assert json.loads(out)["username"] == "carol"
            token_file = data / "server" / "admin-token"
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            code, out, err = await sealwire(data, "user", "add", "carol")
            assert code == 1 and out == ""
            assert err.splitlines() == [
                "sealwire: a person with the user name 'carol' exists already"
            ]
            code, out, err = await sealwire(data, "user", "ticket", "carol", "--lifetime", "31d")
            assert code == 1 and len(err.splitlines()) == 1
            assert "between one minute and 30 days" in err
            code, out, err = await sealwire(data, "user", "add", "Carol!")
            assert code == 1 and len(err.splitlines()) == 1 and "not a valid user name" in err

            # Another administrator, with a role that may not add people.
            code, out, err = await sealwire(
                data,
                "account",
                "add",
                "helen",
                "--role",
                "helpdesk",
                env={"SEALWIRE_ADMIN_NEW_PASSWORD": PASSWORD},
            )
            assert code == 0, err
            helen = {"SEALWIRE_ADMIN_TOKEN": (await server.accounts.login("helen", PASSWORD))[0]}
            code, out, err = await sealwire(data, "user", "add", "dave", env=helen)
            assert code == 1
            assert err.splitlines() == [
                "sealwire: the helpdesk role does not allow users.write "
                "(roles that do: admin, security-admin)"
            ]
            code, out, err = await sealwire(data, "--json", "user", "list", env=helen)
            assert code == 0 and [u["username"] for u in json.loads(out)] == ["carol"]
            code, out, err = await sealwire(data, "--json", "device", "list")
            assert code == 0 and json.loads(out) == []

            code, out, err = await sealwire(data, "audit", "verify")
            assert code == 0 and "verifies" in out
            code, out, err = await sealwire(
                data, "audit", "export", "--output", str(tmp_path / "x")
            )
            assert code == 0 and (tmp_path / "x").read_text().count("\n") >= 4
            # Someone edits an entry in the database: verify names it and exits 1.
            with server.store.db.transaction() as conn:
                conn.execute(sa.text("UPDATE audit_log SET target = 'mallory' WHERE seq = 3"))
            code, out, err = await sealwire(data, "audit", "verify")
            assert code == 1 and "BROKEN at entry 3" in out

            code, out, err = await sealwire(data, "logout")
            assert code == 0 and not token_file.exists()

    asyncio.run(scenario())


def test_audit_export_with_an_unreadable_entry(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14, item 5: one entry's details made unparsable in the database. The export
    writes every other entry, marks that one, and the command exits 1 naming it."""
    data = tmp_path / "org"
    kept = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        async with serving(data, database=database_url) as (server, api):
            for n in range(4):
                await server.administration.add_user("system", f"person{n}", f"Person {n}")
            with server.store.db.transaction() as conn:
                conn.execute(sa.text("UPDATE audit_log SET details = '{not json' WHERE seq = 3"))

            # Through the API: the whole stream, the bad entry marked in its place.
            token, _ = await server.accounts.login("admin", _initial_password(server))
            async with httpx.AsyncClient(base_url=api.url) as client:
                answer = await client.get(
                    "/v1/audit/export", headers={"Authorization": f"Bearer {token}"}
                )
            assert answer.status_code == 200
            objects = [json.loads(line) for line in answer.text.splitlines()]
            total = len(objects)
            assert total > 6 and [o["seq"] for o in objects] == list(range(1, total + 1))
            assert objects[-1]["action"] == "audit.export"
            assert objects[2] == {"seq": 3, "error": "the stored details are not JSON"}

            # Through the command line.
            code, out, err = await sealwire(data, "audit", "export", "--output", str(kept))
            assert code == 1, err
            written = [json.loads(line) for line in kept.read_text().splitlines()]
            assert err.splitlines() == [
                "sealwire: audit entry 3 could not be read (the stored details are not JSON); "
                f"the other {len(written) - 1} entries were written to {kept}"
            ]
            assert [o["seq"] for o in written] == list(range(1, len(written) + 1))
            assert len(written) > total
            assert written[2] == {"seq": 3, "error": "the stored details are not JSON"}
            assert all("error" not in o for i, o in enumerate(written) if i != 2)
            # To standard output likewise: every line, then the one message.
            code, out, err = await sealwire(data, "audit", "export")
            assert code == 1 and len(out.splitlines()) > len(written)
            assert err.startswith("sealwire: audit entry 3 could not be read")
            assert len(err.splitlines()) == 1
            code, out, err = await sealwire(data, "audit", "verify")
            assert code == 1 and "BROKEN at entry 3" in out

    asyncio.run(scenario())
    assert "response already started" not in caplog.text
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)


def _initial_password(server: EnterpriseServer) -> str:
    return (server.config.server_dir / "initial-admin-password").read_text().strip()


def test_audit_export_cut_short_is_not_a_missing_server(tmp_path: Path) -> None:
    """A server that dies mid-export: the lines received are kept and the command says the
    export was cut short, not that no server is running."""
    lines = [b'{"seq":1}\n', b'{"seq":2}\n']

    async def died_mid_way(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        for line in lines:
            writer.write(b"%x\r\n%s\r\n" % (len(line), line))
        writer.write(b"40\r\n" + b"{" * 10)  # a chunk that never ends
        await writer.drain()
        writer.close()

    kept = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        listener = await asyncio.start_server(died_mid_way, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        async with listener:
            code, _, err = await sealwire(
                tmp_path / "org",
                "--url",
                f"http://127.0.0.1:{port}",
                "audit",
                "export",
                "--output",
                str(kept),
                env={"SEALWIRE_ADMIN_TOKEN": "t"},
            )
        assert code == 1
        (message,) = err.splitlines()
        assert message.startswith("sealwire: the audit export was cut short after 2 entries")
        assert f"the 2 entries received were written to {kept}" in message
        assert "no enterprise server" not in message
        assert kept.read_text() == "".join(line.decode() for line in lines)

    asyncio.run(scenario())


def test_cli_without_a_running_server(tmp_path: Path) -> None:
    result = cli("admin", "--data", str(tmp_path / "nothing-here"), "user", "list")
    assert result.code == 1
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("sealwire: no enterprise server is running")
    assert "sealwire server" in lines[0]


def test_cli_areas_in_human_form(tmp_path: Path) -> None:
    data = tmp_path / "org"

    async def scenario() -> None:
        async with serving(data):

            async def ok(*args: str, env: dict[str, str] | None = None) -> str:
                code, out, err = await sealwire(data, *args, env=env)
                assert code == 0, (args, err)
                return out

            assert "security-admin" in await ok("whoami")
            assert "relay_connected" in await ok("status")
            assert "no people yet" in await ok("user", "list")
            await ok("user", "add", "erin", "--name", "Erin Example")
            await ok(
                "policy", "set", "strict", "--passcode-min-length", "10", "--no-export-allowed"
            )
            out = await ok("policy", "set", "strict", "--auto-lock-s", "60")
            assert "passcode_min_length=10" in out and "auto_lock_s=60" in out  # kept, changed
            assert "export_allowed=False" in out
            await ok("group", "create", "finance", "--description", "Money", "--policy", "strict")
            out = await ok("group", "add", "finance", "erin")
            assert "erin" in out
            out = await ok("group", "list")
            assert out.splitlines()[0].split() == [
                "NAME",
                "PRIORITY",
                "POLICY",
                "MEMBERS",
                "DESCRIPTION",
            ]
            assert "finance" in out and "strict" in out
            out = await ok("user", "show", "erin")
            assert "finance" in out and "strict" in out
            assert "policy strict" in await ok("user", "list")
            code, _, err = await sealwire(data, "policy", "delete", "strict")
            assert code == 1 and "assigned to finance" in err
            await ok("group", "policy", "finance", "none")
            assert "Deleted" in await ok("policy", "delete", "strict")
            await ok("group", "remove", "finance", "erin")
            assert "Deleted" in await ok("group", "delete", "finance")
            assert "no activated devices" in await ok("device", "list", "--user", "erin")
            code, _, err = await sealwire(data, "device", "wipe", "0123456789abcdef")
            assert code == 1 and "no device" in err
            assert "no commands" in await ok("command", "list")
            await ok("user", "disable", "erin")
            assert "disabled" in await ok("user", "list")
            await ok("user", "enable", "erin")

            await ok(
                "account",
                "add",
                "audrey",
                "--role",
                "auditor",
                env={"SEALWIRE_ADMIN_NEW_PASSWORD": PASSWORD},
            )
            await ok("account", "role", "audrey", "admin")
            password_file = tmp_path / "pw"
            password_file.write_text("another fine password\n")
            await ok("account", "password", "audrey", "--password-file", str(password_file))
            await ok("account", "disable", "audrey")
            out = await ok("account", "list")
            assert any(line.split() == ["audrey", "admin", "disabled"] for line in out.splitlines())
            code, _, err = await sealwire(data, "account", "disable", "admin")
            assert code == 1 and "last active security admin" in err

            out = await ok("audit", "list", "--action", "account.role")
            assert "audrey" in out and '"to": "admin"' in out
            lines = (await ok("audit", "export")).splitlines()
            assert json.loads(lines[0])["seq"] == 1
            # The log holds what was done above, by whom, and never a password.
            text = "\n".join(lines)
            assert PASSWORD not in text and "another fine password" not in text
            for action in ("user.add", "policy.put", "group.create", "account.password"):
                assert f'"action":"{action}"' in text.replace(" ", "")

            # Logging in by hand: a password file, then the stored token is used.
            await ok("logout")
            await ok(
                "login",
                "--user",
                "admin",
                "--password-file",
                str(data / "server/initial-admin-password"),
            )
            assert "admin (security-admin)" in await ok("whoami")

    asyncio.run(scenario())


def test_cli_listings_escape_what_others_typed(tmp_path: Path) -> None:
    """Names reach the listings from the server (typed by other administrators, or by an
    older or a compromised server): nothing in them may control the reader's terminal."""
    data = tmp_path / "org"
    name = "Eve\n     9  2026-01-01 00:00:00  admin  account.role  eve\x1b[2J\x9b\u202e"

    async def scenario() -> None:
        async with serving(data) as (server, _):
            # Straight to the service: the API itself refuses such names.
            await server.administration.add_user("admin", "eve", name)
            for args in (("user", "list"), ("user", "show", "eve"), ("audit", "list")):
                code, out, err = await sealwire(data, *args)
                assert code == 0, err
                for raw in ("\x1b", "\x9b", "\u202e"):
                    assert raw not in out, args
                line = next(line for line in out.splitlines() if "Eve" in line)
                assert "Eve\\n     9  2026" in line  # one line: the forged entry is not one
            # `audit list | head -1` once head has gone: a quiet end.
            read, write = os.pipe()
            os.close(read)
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "sealwire",
                    "admin",
                    "--data",
                    str(data),
                    "audit",
                    "list",
                    stdout=write,
                    stderr=asyncio.subprocess.PIPE,
                )
                _, err = await asyncio.wait_for(proc.communicate(), 60)
            finally:
                os.close(write)
            assert err == b"" and proc.returncode == 141

    asyncio.run(scenario())


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealwire admin test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert, private = directory / "admin.pem", directory / "admin.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, private


def test_admin_api_over_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    data = tmp_path / "org"

    async def scenario() -> None:
        server = open_server(
            data,
            admin_listen="127.0.0.1:0",
            admin_tls_cert=str(cert),
            admin_tls_key=str(key),
        )
        await server.accounts.bootstrap(server.config.server_dir)
        api = AdminApi(server)
        try:
            assert (await api.start()).startswith("https://127.0.0.1:")
            async with httpx.AsyncClient(base_url=api.url, verify=False) as client:
                assert (await client.get("/openapi.json")).status_code == 200
            # The command line trusts the certificate it is given, and no other.
            code, _, err = await sealwire(data, "--cafile", str(cert), "whoami")
            assert code == 0, err
            code, _, err = await sealwire(data, "whoami")
            assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in err and "--cafile" in err
        finally:
            await api.stop()
            await server.stop()
        broken = open_server(
            tmp_path / "other",
            admin_listen="127.0.0.1:0",
            admin_tls_cert=str(tmp_path / "missing.pem"),
            admin_tls_key=str(key),
        )
        try:
            with pytest.raises(ConfigError, match="TLS certificate or key"):
                await AdminApi(broken).start()
        finally:
            await broken.stop()

    asyncio.run(scenario())
