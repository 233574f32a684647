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
Transport failures on the client (refused connection, reset stream, TLS handshake) reach
it as ``UNAVAILABLE`` and are :class:`~castore.errors.StoreUnavailableError`.
"""

from __future__ import annotations

import logging

import grpc

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

__all__ = ["GRPCStatusError", "call_status", "from_grpc_error", "status_for", "to_grpc_error"]

log = logging.getLogger("castore.grpc")

Status = grpc.StatusCode


class GRPCStatusError(Exception):
    """A status for the server to answer a call with (raised inside its handlers)."""

    def __init__(self, status: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message


# Checked in order: the first class that matches wins, so subclasses come first.
_TO_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
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


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status a server answers with when a service raised ``exc``.

    Plain ``ValueError`` maps to INVALID_ARGUMENT only when it is castore's own (a bad
    digest, a bad seek); a foreign one is a bug and maps to INTERNAL.
    """
    if isinstance(exc, GRPCStatusError):
        return exc.status
    for cls, status in _TO_STATUS:
        if isinstance(exc, cls):
            if cls is ValueError and not isinstance(exc, CastoreError):
                break
            return status
    return Status.INTERNAL


def to_grpc_error(exc: BaseException, what: str) -> GRPCStatusError:
    """A :class:`GRPCStatusError` to raise from a handler in place of ``exc``.

    ``what`` names the call and digest for the message the client sees. Unexpected
    errors (INTERNAL) are logged with their traceback here, since the client only gets
    the message.
    """
    if isinstance(exc, GRPCStatusError):
        return exc
    status = status_for(exc)
    if status is Status.INTERNAL:
        log.error("%s failed unexpectedly", what, exc_info=exc)
    return GRPCStatusError(status, f"{what}: {type(exc).__name__}: {exc}")


_FROM_STATUS: dict[grpc.StatusCode, type[CastoreError]] = {
    Status.INVALID_ARGUMENT: InvalidDigestError,
    Status.NOT_FOUND: BlobNotFoundError,
    Status.DATA_LOSS: DataCorruptionError,
    Status.OUT_OF_RANGE: DataCorruptionError,
    Status.UNAVAILABLE: StoreUnavailableError,
    Status.DEADLINE_EXCEEDED: StoreTimeoutError,
    Status.PERMISSION_DENIED: StorePermissionError,
    Status.UNAUTHENTICATED: StorePermissionError,
}


def call_status(exc: BaseException) -> grpc.StatusCode | None:
    """The status of a failed call (``grpc.aio.AioRpcError``), or ``None`` for other errors."""
    if isinstance(exc, grpc.aio.AioRpcError):
        code: grpc.StatusCode = exc.code()
        return code
    if isinstance(exc, GRPCStatusError):
        return exc.status
    return None


def from_grpc_error(exc: BaseException, what: str) -> BaseException:
    """Translate what a gRPC call raised into castore's tree.

    ``what`` names the call (``"Stat blake3-…"``) and the server, for the message.
    ``CancelledError`` and other ``BaseException`` that are not errors pass through
    unchanged, as do errors already in castore's tree.
    """
    if isinstance(exc, CastoreError) or not isinstance(exc, Exception):
        return exc
    status = call_status(exc)
    if status is not None:
        cls = _FROM_STATUS.get(status, StoreError)
        if isinstance(exc, grpc.aio.AioRpcError):
            message = exc.details() or ""
        else:
            assert isinstance(exc, GRPCStatusError)
            message = exc.message
        detail = f": {message}" if message else ""
        return cls(f"{what}: {status.name}{detail}")
    if isinstance(exc, TimeoutError):
        return StoreTimeoutError(f"{what}: deadline exceeded")
    if isinstance(exc, OSError):
        return StoreUnavailableError(f"{what}: {type(exc).__name__}: {exc}")
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")
