"""The admin API of an enterprise server (HTTP/JSON, FastAPI; see :mod:`.app`).

- :mod:`.app`: the app factory (:func:`create_app`) and serving it (:class:`AdminApi`,
  :func:`check_bind`), the body limit and the request log;
- :mod:`.access`: the endpoint table and the permission each endpoint needs;
- :mod:`.errors`: refusals as JSON, from the one status/code table shared with the client;
- :mod:`.refusals`: 401 and 403 written to the audit log, rate-limited;
- :mod:`.models`: request bodies and answers;
- :mod:`.routes`: the endpoints, one module per area (users, groups, policies, devices,
  commands, accounts and sessions, audit, status).
"""

from __future__ import annotations

from .access import COMMAND_PERMISSIONS, Endpoint
from .app import MAX_BODY, URL_FILE, AdminApi, check_bind, create_app

__all__ = [
    "COMMAND_PERMISSIONS",
    "MAX_BODY",
    "URL_FILE",
    "AdminApi",
    "Endpoint",
    "check_bind",
    "create_app",
]
