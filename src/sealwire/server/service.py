"""Kept for the code that imports the server from here: the enterprise server is
:mod:`sealwire.server.server` (the composition root) and its feature modules."""

from .server import EnterpriseServer, IssuedTicket, _new_keys

__all__ = ["EnterpriseServer", "IssuedTicket", "_new_keys"]
