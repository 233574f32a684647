"""The one place where obstore's exceptions become castore's.

:class:`~castore.objectstore.ObstoreAdapter` makes every store call inside
:func:`map_store_errors`, so nothing above the adapter sees an obstore exception: the
service, the writer and the reader handle castore's tree only
(:mod:`castore.errors`).

obstore raises its own types (``obstore.exceptions``) and a few builtins: a missing
object is a ``FileNotFoundError``. It has no type for a network failure or a timeout:
those arrive as a ``GenericError`` whose message says what happened, so for that one
type (and for foreign errors with no better type) the message decides.
"""

from __future__ import annotations

from types import TracebackType

from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    StoreError,
    StorePermissionError,
    StoreTimeoutError,
    StoreUnavailableError,
)

__all__ = ["map_store_errors", "store_error"]

_Types = type[BaseException] | tuple[type[BaseException], ...]

#: Types that say what went wrong, and the castore error each becomes.
_BY_TYPE: tuple[tuple[_Types, type[CastoreError]], ...] = (
    (FileNotFoundError, BlobNotFoundError),
    ((PermissionDeniedError, UnauthenticatedError, PermissionError), StorePermissionError),
    (TimeoutError, StoreTimeoutError),
    (ConnectionError, StoreUnavailableError),
)

#: Message fragments of a store that could not be reached (lowercase).
_UNREACHABLE = (
    "connection refused",
    "connect error",
    "error sending request",
    "connection reset",
    "dns error",
    "broken pipe",
)

#: Message fragments of an operating-system refusal (lowercase): obstore's local store
#: reports a read-only file system or a folder it may not write as a GenericError.
_DENIED = (
    "permission denied",
    "read-only file system",
    "operation not permitted",
    "os error 13)",
    "os error 30)",
)

# obstore appends a multi-line "Debug source:" dump to its messages; castore's message
# keeps the summary (the original exception stays reachable as ``__cause__``).
_DEBUG_DUMP = "\n\nDebug source:"


def store_error(exc: BaseException, what: str) -> CastoreError:
    """The castore error for ``exc``, raised by a store call; ``what`` names the call.

    Errors already in castore's tree are returned unchanged.
    """
    if isinstance(exc, CastoreError):
        return exc
    full = str(exc)
    summary = full.split(_DEBUG_DUMP, 1)[0].strip()
    text = f"{what}: {type(exc).__name__}: {summary}"
    for types, error in _BY_TYPE:
        if isinstance(exc, types):
            return error(text)
    lowered = full.lower()
    if any(s in lowered for s in _DENIED):
        return StorePermissionError(text)
    if any(s in lowered for s in _UNREACHABLE):
        return StoreUnavailableError(text)
    if "timed out" in lowered or "timeout" in lowered:
        return StoreTimeoutError(text)
    return StoreError(text)


class _StoreErrorMap:
    """The context manager :func:`map_store_errors` returns (a class: it is entered for
    every store call, and costs less than a generator-based one)."""

    __slots__ = ("_key", "_op")

    def __init__(self, op: str, key: str) -> None:
        self._op = op
        self._key = key

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Cancellation and other BaseExceptions pass through, as do castore's own errors.
        if isinstance(exc, Exception) and not isinstance(exc, CastoreError):
            raise store_error(exc, f"{self._op} {self._key}") from exc


def map_store_errors(op: str, key: str) -> _StoreErrorMap:
    """Translate any exception of the block into castore's tree.

    ``op`` and ``key`` name the call in the message (``"storing", "chunks/b3/…"``).
    """
    return _StoreErrorMap(op, key)
