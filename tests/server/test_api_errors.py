"""The one HTTP status/error table (``sealwire._http_errors``), shared by the admin API and its
client: every row goes through the real app's error handlers and comes back, in the client of
``sealwire admin``, as the same error class with the server's message (issue 15: ConfigError
and StorageError reached the client as a generic AdminError)."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from sealwire import _http_errors
from sealwire._http_errors import ERRORS, ErrorCode, by_code, error_from_answer, for_error
from sealwire.errors import (
    AccessDenied,
    AdminError,
    AuthenticationFailed,
    ConfigError,
    Conflict,
    DecodeError,
    NotFound,
    SealwireError,
    StorageError,
    TransportError,
)
from sealwire.server.api import create_app

RAISED = [row for row in ERRORS if row.raised]


def _client_class() -> Any:
    """The ``sealwire admin`` HTTP client."""
    from sealwire.cli._admin_client import AdminClient

    return AdminClient


def _app_raising(exc: BaseException) -> FastAPI:
    class Stub:
        administration = accounts = audit = None

    app = create_app(Stub())  # type: ignore[arg-type]

    async def boom() -> None:
        raise exc

    app.add_api_route("/boom", boom, methods=["GET"])
    return app


def _get(app: FastAPI, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            return await client.get(path, **kw)

    return asyncio.run(go())


def test_the_table_is_consistent() -> None:
    codes = [row.code for row in ERRORS]
    assert len(codes) == len(set(codes))
    assert all(400 <= row.status <= 599 for row in ERRORS)
    # every row an error is answered with is reachable: no earlier row shadows it
    for row in RAISED:
        assert for_error(row.error("x")) == row
    assert {row.status for row in RAISED} == {401, 403, 404, 409, 422, 503}
    assert by_code("refused").status == 400
    with pytest.raises(KeyError):
        by_code("no-such-code")


@pytest.mark.parametrize("row", RAISED, ids=lambda row: row.code)
def test_each_error_round_trips_to_the_same_class(row: ErrorCode) -> None:
    message = f"what went wrong for {row.code}"
    response = _get(_app_raising(row.error(message)), "/boom")
    assert response.status_code == row.status
    assert response.json()["code"] == row.code
    assert response.json()["detail"] == message
    rebuilt = error_from_answer(response.status_code, response.json())
    assert type(rebuilt) is row.error
    assert str(rebuilt) == message


@pytest.mark.parametrize("row", RAISED, ids=lambda row: row.code)
def test_the_admin_client_raises_the_servers_error(row: ErrorCode) -> None:
    """One test per status: the ``sealwire admin`` client rebuilds the class (before issue 15,
    422 and 503 came back as a bare AdminError)."""
    message = f"the server said no ({row.code})"
    response = _get(_app_raising(row.error(message)), "/boom")
    with pytest.raises(SealwireError) as raised:
        _client_class()._answer(response)
    assert type(raised.value) is row.error
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AuthenticationFailed),
        (403, AccessDenied),
        (404, NotFound),
        (409, Conflict),
        (422, ConfigError),
        (503, StorageError),
        (400, AdminError),
        (413, AdminError),
        (500, AdminError),
        (418, AdminError),
    ],
)
def test_an_answer_without_a_code_is_read_by_its_status(
    status: int, kind: type[SealwireError]
) -> None:
    """A proxy in front of the API, or an older server, answers without a code."""
    response = httpx.Response(status, json={"detail": "from a proxy"})
    with pytest.raises(SealwireError) as raised:
        _client_class()._answer(response)
    assert type(raised.value) is kind
    assert str(raised.value) == "from a proxy"


def test_a_code_that_contradicts_the_status_is_not_believed() -> None:
    rebuilt = error_from_answer(503, {"detail": "d", "code": "unauthenticated"})
    assert type(rebuilt) is StorageError
    assert type(error_from_answer(503, {"detail": "d", "code": "unavailable"})) is TransportError


@pytest.mark.parametrize("answer", [None, [], "text", {"detail": 5}, {"detail": ""}, {}])
def test_an_odd_body_still_gives_a_message(answer: Any) -> None:
    rebuilt = error_from_answer(409, answer)
    assert type(rebuilt) is Conflict
    assert str(rebuilt) == "the admin API answered HTTP 409"


def test_an_unlisted_sealwire_error_is_refused_with_400() -> None:
    response = _get(_app_raising(DecodeError("bad bytes")), "/boom")
    assert response.status_code == 400
    assert response.json() == {"detail": "bad bytes", "code": "refused"}


def test_web_layer_refusals_carry_their_code() -> None:
    app = _app_raising(ValueError("nope"))
    assert _get(app, "/boom").json() == {"detail": "nope", "code": "invalid"}
    assert _get(app, "/no/such/path").json()["code"] == "no-such-route"
    assert _get(app, "/v1/audit?limit=0").status_code == 401  # the token comes first
    late = _get(_app_raising(RuntimeError("a bug")), "/boom")
    assert late.status_code == 500 and late.json()["code"] == "internal"


def test_the_cli_needs_neither_the_server_nor_the_web_framework_for_the_table() -> None:
    source = importlib.util.find_spec("sealwire._http_errors")
    assert source is not None and source.origin is not None
    imports = [
        line
        for line in Path(source.origin).read_text().splitlines()
        if line.startswith(("import ", "from "))
    ]
    assert all("fastapi" not in i and "sealwire.server" not in i for i in imports), imports
    assert _http_errors.__all__


def test_the_openapi_description_lists_every_code() -> None:
    class Stub:
        administration = accounts = audit = None

    schema = create_app(Stub()).openapi()  # type: ignore[arg-type]
    text = str(schema["paths"]["/v1/users"]["get"]["responses"])
    for row in ERRORS:
        assert f"`{row.code}`" in text, row.code
