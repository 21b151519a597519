"""Clients for a served graph; `servegraph.v1` holds the generated stubs for other uses."""

from .client import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]
