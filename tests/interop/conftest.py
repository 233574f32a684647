"""Fixtures for the interop tests: the servers and stubs of :mod:`grpcio_support`
(``short_tmp`` comes from the suite's root ``conftest.py``)."""

from grpcio_support import castore_server, dict_server, stubs

__all__ = ["castore_server", "dict_server", "stubs"]
