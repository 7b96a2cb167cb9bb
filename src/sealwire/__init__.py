"""Sealwire: self-hosted secure messaging with enterprise-held keys and a blind relay."""

__version__ = "0.1.0"

__all__ = ["__version__"]
