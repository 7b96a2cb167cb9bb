"""The enterprise server: relay link, activation, directory, certificates (DESIGN §1, §7)."""

from .config import ServerConfig, load_server_config
from .server import EnterpriseServer
from .tickets import IssuedTicket

__all__ = ["EnterpriseServer", "IssuedTicket", "ServerConfig", "load_server_config"]
