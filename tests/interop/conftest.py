"""Fixtures for the interop tests (defined in :mod:`grpcio_support`)."""

from grpcio_support import castore_server, dict_server, stubs

__all__ = ["castore_server", "dict_server", "stubs"]
