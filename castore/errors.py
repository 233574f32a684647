"""castore's exceptions, in one tree.

Every error castore raises on purpose is a :class:`CastoreError`. Where a builtin
exception fits, the castore error inherits it too, so ``except FileNotFoundError`` or
``except ValueError`` keeps working for callers who don't know castore::

    CastoreError
    ├── InvalidDigestError            (ValueError)  not 32 bytes, or unparseable text
    ├── InvalidAddressError           (ValueError)  a bad from_addr URL or option
    │   └── ConfigError                             a composition file castore cannot use
    ├── InvalidSeekError              (ValueError)  negative or past-the-end seek target
    ├── WriterClosedError             (ValueError)  write() after close() or abort()
    ├── WriteAbortedError                           close() on a writer that was aborted
    ├── UnsupportedOperationError     (NotImplementedError)
    │                                               the backend or protocol cannot do it
    ├── GcLeaseError                                another collector holds the lease, or
    │                                               this one lost it (collect_garbage)
    ├── BlobNotFoundError             (FileNotFoundError)
    │                                               a blob or chunk vanished mid-read
    ├── DataCorruptionError                         stored bytes are not what they claim
    │   ├── DigestMismatchError                     BLAKE3 or size differs from the address
    │   ├── DecompressionError                      not a valid zstd frame
    │   │   └── DecompressionBombError              frame declares or yields too much
    │   └── MalformedIndexError                     a blob index that does not decode
    └── StoreError                    (OSError)     the backend failed
        ├── MalformedMessageError                   a peer's protobuf message does not decode
        ├── StoreUnavailableError     (ConnectionError)
        ├── StoreTimeoutError         (TimeoutError)
        ├── StorePermissionError      (PermissionError)
        └── GcConflictError                         a write met a garbage collection it could
                                                    not prove safe against; retry it

Foreign exceptions are translated to this tree at the backend boundary, each kind in one
place: a store client's in the object-store adapter
(:class:`castore.objectstore.StoreAdapter`), zstandard's in the chunk codec, gRPC's in
:mod:`castore.grpc`. Absence is not an error: ``open_read`` and ``chunks`` return ``None``.
``docs/architecture.md`` (the error boundary) shows where each translation happens.
"""

from __future__ import annotations

import warnings

__all__ = [
    "BlobNotFoundError",
    "CastoreError",
    "ConfigError",
    "DataCorruptionError",
    "DecompressionBombError",
    "DecompressionError",
    "DigestMismatchError",
    "GcConflictError",
    "GcLeaseError",
    "InvalidAddressError",
    "InvalidDigestError",
    "InvalidSeekError",
    "MalformedIndexError",
    "MalformedMessageError",
    "StoreError",
    "StorePermissionError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "UnsupportedOperationError",
    "WriteAbortedError",
    "WriterClosedError",
    "translate_store_error",
]


class CastoreError(Exception):
    """Base of every error castore raises on purpose."""


class InvalidDigestError(CastoreError, ValueError):
    """A digest that is not 32 bytes, or text that is not a digest."""


class InvalidAddressError(CastoreError, ValueError):
    """A service URL or option that castore cannot use."""


class ConfigError(InvalidAddressError):
    """A composition file (see :mod:`castore.config`) that castore cannot use.

    ``instance`` and ``key`` name the offending ``[blobservices.<instance>]`` entry and
    key when there is one, so tools can point at the line.
    """

    def __init__(self, message: str, *, instance: str | None = None, key: str | None = None):
        super().__init__(message)
        self.instance = instance
        self.key = key


class InvalidSeekError(CastoreError, ValueError):
    """A seek to a negative offset, or past the end of a chunked blob."""


class WriterClosedError(CastoreError, ValueError):
    """``write`` was called on a writer that is closed or aborted."""


class WriteAbortedError(CastoreError):
    """``close`` was called on a writer that was aborted; nothing was stored."""


class UnsupportedOperationError(CastoreError, NotImplementedError):
    """The service or store cannot do this at all (for example, ``delete`` through the
    tvix gRPC protocol, which has no such call). Retrying will not help."""


class GcLeaseError(CastoreError):
    """The garbage collector could not hold its lease: another collector holds it (then
    ``holder`` names it and ``free_in`` says in how many seconds it may be taken over), or
    this collector's lease ran out or was taken before it finished (it stopped before
    deleting anything more; the next run resumes the sweep)."""

    def __init__(
        self, message: str, *, holder: str | None = None, free_in: float | None = None
    ) -> None:
        super().__init__(message)
        self.holder = holder
        self.free_in = free_in


class BlobNotFoundError(CastoreError, FileNotFoundError):
    """A blob or chunk that should exist is missing (for example, mid-read)."""


class DataCorruptionError(CastoreError):
    """Stored bytes do not match their address; castore refuses to return them."""


class DigestMismatchError(DataCorruptionError):
    """Data whose BLAKE3 digest or length differs from the one it is stored under."""


class DecompressionError(DataCorruptionError):
    """A chunk object that is not one valid zstd frame."""


class DecompressionBombError(DecompressionError):
    """A chunk whose frame declares, or expands to, more than a chunk may hold."""


class MalformedIndexError(DataCorruptionError):
    """A blob index that does not decode or lists impossible chunks."""


class StoreError(CastoreError, OSError):
    """The underlying store failed (I/O, network, service error)."""


class MalformedMessageError(StoreError):
    """A gRPC peer sent a protobuf message that does not decode (truncated, invalid wire
    type, field number 0, ...). A server answers ``INVALID_ARGUMENT`` and stores nothing;
    a client raises this error."""


class StoreUnavailableError(StoreError, ConnectionError):
    """The store could not be reached."""


class StoreTimeoutError(StoreError, TimeoutError):
    """The store did not answer in time."""


class StorePermissionError(StoreError, PermissionError):
    """The store refused the credentials or the operation."""


class GcConflictError(StoreError):
    """A blob write could not prove that the chunks it reuses survive a garbage
    collection that is sweeping them: a chunk was deleted under it, or a sweep did not
    finish in time. Nothing names a missing chunk; writing the blob again succeeds
    (it uploads what is missing), which is why this is a transient ``StoreError``."""


def translate_store_error(exc: BaseException, what: str) -> CastoreError:
    """Map an exception raised by an object-store call to castore's tree.

    Deprecated: the object-store adapter translates store errors itself, so nothing
    outside it needs this. ``what`` names the operation and key, for the message.
    Errors already in castore's tree are returned unchanged.
    """
    warnings.warn(
        "castore.errors.translate_store_error is deprecated: the object-store adapter "
        "raises castore errors itself",
        DeprecationWarning,
        stacklevel=2,
    )
    from castore.objectstore._errors import store_error

    return store_error(exc, what)
