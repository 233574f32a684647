"""castore over gRPC: tvix's ``BlobService`` protocol, server and client.

- :class:`GRPCBlobService`: a client, from ``grpc+http://host:port``,
  ``grpc+https://host:port`` or ``grpc+unix:///path`` in :func:`castore.from_addr`.
- :func:`serve`: serve any :class:`~castore.BlobService` on such an address, as an
  async context manager (``castore serve`` on the command line).
- :class:`BlobServiceServicer`: the grpclib handler, to mount in a server of your own.

Status codes map to castore's errors as tabulated in :mod:`castore.grpc._errors`.
"""

from __future__ import annotations

from castore.grpc.client import GRPCBlobService
from castore.grpc.server import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_READ_MESSAGE_SIZE,
    BlobServiceServicer,
    RunningServer,
    serve,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_READ_MESSAGE_SIZE",
    "BlobServiceServicer",
    "GRPCBlobService",
    "RunningServer",
    "serve",
]
