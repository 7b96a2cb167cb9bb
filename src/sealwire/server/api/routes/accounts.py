"""``/v1/session`` (logging in and out) and ``/v1/accounts`` (administrator accounts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

from ...accounts import AccountView, Permission
from ..access import Bearer, Who
from ..models import (
    AccountChangeBody,
    LoginBody,
    NewAccountBody,
    SessionAnswer,
    WhoAmI,
)

if TYPE_CHECKING:
    from ...server import EnterpriseServer
    from ..access import Routes


def declare_session(route: Routes, server: EnterpriseServer) -> None:
    """Add the session endpoints (log in, who am I, log out) to ``route``."""
    accounts = server.accounts

    @route.post("/v1/session", None, public=True)
    async def login(body: LoginBody, request: Request) -> SessionAnswer:
        """Log in: a bearer token and when it expires (Unix seconds)."""
        token, expires_at = await accounts.login(body.username, body.password)
        who = accounts.authenticate(token)
        request.state.identity = who  # the request log names who logged in
        return SessionAnswer(
            token=token, expires_at=expires_at, username=who.username, role=who.role
        )

    @route.get("/v1/session", None)
    async def whoami(who: Who) -> WhoAmI:
        """The logged-in administrator, their role and its permissions."""
        return WhoAmI(
            username=who.username,
            role=who.role,
            permissions=sorted(p.value for p in Permission if who.may(p)),
        )

    @route.delete("/v1/session", None)
    async def logout(credentials: Bearer) -> dict[str, bool]:
        """Log out: the token stops working."""
        if credentials is not None:
            accounts.logout(credentials.credentials)
        return {"logged_out": True}


def declare(route: Routes, server: EnterpriseServer) -> None:
    """Add the administrator account endpoints to ``route``."""
    accounts = server.accounts

    @route.get("/v1/accounts", Permission.ACCOUNTS_READ)
    async def list_accounts() -> list[AccountView]:
        """Every administrator account (never a password)."""
        return accounts.list()

    @route.post("/v1/accounts", Permission.ACCOUNTS_WRITE, status_code=201)
    async def create_account(body: NewAccountBody, who: Who) -> AccountView:
        """Add an administrator."""
        view = await accounts.create(who.username, body.username, body.password, body.role)
        return view

    @route.get("/v1/accounts/{username}", Permission.ACCOUNTS_READ)
    async def account(username: str) -> AccountView:
        """One administrator account."""
        return accounts.get(username)

    @route.patch("/v1/accounts/{username}", Permission.ACCOUNTS_WRITE)
    async def change_account(username: str, body: AccountChangeBody, who: Who) -> AccountView:
        """Change an administrator's role or password (their logins end)."""
        if body.role is None and body.password is None:
            raise ValueError("give a role, a password, or both")
        return await accounts.change(who.username, username, role=body.role, password=body.password)

    @route.post("/v1/accounts/{username}/disable", Permission.ACCOUNTS_WRITE)
    async def disable_account(username: str, who: Who) -> AccountView:
        """Disable an administrator (their logins end)."""
        return accounts.disable(who.username, username)

    @route.post("/v1/accounts/{username}/enable", Permission.ACCOUNTS_WRITE)
    async def enable_account(username: str, who: Who) -> AccountView:
        """Enable a disabled administrator again."""
        return accounts.enable(who.username, username)
