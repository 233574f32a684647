"""castore over gRPC: tvix's ``BlobService`` protocol, server and client, on grpc.aio.

- :class:`GRPCBlobService`: a client, from ``grpc+http://host:port``,
  ``grpc+https://host:port`` or ``grpc+unix:///path`` in :func:`castore.from_addr`.
- :func:`serve`: serve any :class:`~castore.BlobService` on such an address, as an
  async context manager (``castore serve`` on the command line).
- :class:`BlobServiceServicer`: the handlers, a ``grpc.GenericRpcHandler`` to mount in a
  grpc.aio server of your own.

The modules, one job each: ``client`` (the service), ``_channel`` (building the channel and
its calls), ``_read`` and ``_put`` (a blob's stream each way), ``_pieces`` (the read
buffer), ``_servicer`` (the server's handlers), ``server`` (listening, TLS, graceful stop),
``_wire`` (strict decoding), ``_errors`` (status codes to castore's errors, tabulated
there) and ``_address`` (the URLs).
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
