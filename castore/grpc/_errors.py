"""gRPC status codes <-> castore's errors, both ways, in one place.

The server turns what a :class:`~castore.BlobService` raises into a status with
:func:`to_grpc_error`; the client turns a status (or a transport failure) back into
castore's tree with :func:`from_grpc_error`. The two tables are inverse where that makes
sense, so an error crosses a castore server and client unchanged in kind:

=========================================  ======================  ==========================
raised by the service                      status                  raised by the client
=========================================  ======================  ==========================
InvalidDigestError, other ValueErrors       INVALID_ARGUMENT        InvalidDigestError
BlobNotFoundError, FileNotFoundError        NOT_FOUND               ``None`` / BlobNotFoundError
DataCorruptionError (and subclasses)        DATA_LOSS               DataCorruptionError
(Rust: UnexpectedEof)                       OUT_OF_RANGE            DataCorruptionError
StoreUnavailableError, ConnectionError      UNAVAILABLE             StoreUnavailableError
StoreTimeoutError, TimeoutError             DEADLINE_EXCEEDED       StoreTimeoutError
StorePermissionError, PermissionError       PERMISSION_DENIED       StorePermissionError
(unauthenticated)                           UNAUTHENTICATED         StorePermissionError
WriteAbortedError                           ABORTED                 StoreError
any other StoreError or OSError             UNAVAILABLE             StoreUnavailableError
anything else (a bug)                       INTERNAL                StoreError
=========================================  ======================  ==========================

These follow the mapping of Rust's tvix server (``io::ErrorKind`` to ``tonic::Code``).
Transport failures on the client (refused connection, reset stream, TLS handshake) are
:class:`~castore.errors.StoreUnavailableError`.
"""

from __future__ import annotations

import logging
import ssl

import h2.exceptions
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    DataCorruptionError,
    InvalidDigestError,
    StoreError,
    StorePermissionError,
    StoreTimeoutError,
    StoreUnavailableError,
    WriteAbortedError,
)

__all__ = ["from_grpc_error", "status_for", "to_grpc_error"]

log = logging.getLogger("castore.grpc")

# Checked in order: the first class that matches wins, so subclasses come first.
_TO_STATUS: tuple[tuple[type[BaseException], Status], ...] = (
    (DataCorruptionError, Status.DATA_LOSS),
    (BlobNotFoundError, Status.NOT_FOUND),
    (WriteAbortedError, Status.ABORTED),
    (StoreTimeoutError, Status.DEADLINE_EXCEEDED),
    (StorePermissionError, Status.PERMISSION_DENIED),
    (StoreUnavailableError, Status.UNAVAILABLE),
    (StoreError, Status.UNAVAILABLE),
    (FileNotFoundError, Status.NOT_FOUND),
    (PermissionError, Status.PERMISSION_DENIED),
    (TimeoutError, Status.DEADLINE_EXCEEDED),
    (OSError, Status.UNAVAILABLE),
    (ValueError, Status.INVALID_ARGUMENT),
)


def status_for(exc: BaseException) -> Status:
    """The status a server answers with when a service raised ``exc``.

    Plain ``ValueError`` maps to INVALID_ARGUMENT only when it is castore's own (a bad
    digest, a bad seek); a foreign one is a bug and maps to INTERNAL.
    """
    if isinstance(exc, GRPCError):
        return exc.status
    for cls, status in _TO_STATUS:
        if isinstance(exc, cls):
            if cls is ValueError and not isinstance(exc, CastoreError):
                break
            return status
    return Status.INTERNAL


def to_grpc_error(exc: BaseException, what: str) -> GRPCError:
    """A :class:`GRPCError` to raise from a handler in place of ``exc``.

    ``what`` names the call and digest for the message the client sees. Unexpected
    errors (INTERNAL) are logged with their traceback here, since the client only gets
    the message.
    """
    if isinstance(exc, GRPCError):
        return exc
    status = status_for(exc)
    if status is Status.INTERNAL:
        log.error("%s failed unexpectedly", what, exc_info=exc)
    return GRPCError(status, f"{what}: {type(exc).__name__}: {exc}")


_FROM_STATUS: dict[Status, type[CastoreError]] = {
    Status.INVALID_ARGUMENT: InvalidDigestError,
    Status.NOT_FOUND: BlobNotFoundError,
    Status.DATA_LOSS: DataCorruptionError,
    Status.OUT_OF_RANGE: DataCorruptionError,
    Status.UNAVAILABLE: StoreUnavailableError,
    Status.DEADLINE_EXCEEDED: StoreTimeoutError,
    Status.PERMISSION_DENIED: StorePermissionError,
    Status.UNAUTHENTICATED: StorePermissionError,
}


def from_grpc_error(exc: BaseException, what: str) -> BaseException:
    """Translate what a grpclib call raised into castore's tree.

    ``what`` names the call (``"Stat blake3-…"``) and the server, for the message.
    ``CancelledError`` and other ``BaseException`` that are not errors pass through
    unchanged, as do errors already in castore's tree.
    """
    if isinstance(exc, CastoreError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, GRPCError):
        cls = _FROM_STATUS.get(exc.status, StoreError)
        detail = f": {exc.message}" if exc.message else ""
        return cls(f"{what}: {exc.status.name}{detail}")
    if isinstance(exc, TimeoutError):
        return StoreTimeoutError(f"{what}: deadline exceeded")
    if isinstance(exc, ssl.SSLError):
        return StoreUnavailableError(f"{what}: TLS failed: {exc}")
    if isinstance(exc, OSError | StreamTerminatedError | ProtocolError | h2.exceptions.H2Error):
        return StoreUnavailableError(f"{what}: {type(exc).__name__}: {exc}")
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")
