"""Exit codes, and how a failure becomes one line on stderr and a code.

Commands raise :class:`Failure` for what they phrase themselves; any other exception that
ends a command is classified by :func:`classify` from castore's error tree.
"""

from __future__ import annotations

import sys

from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    DataCorruptionError,
    InvalidAddressError,
    InvalidDigestError,
    StoreError,
    StorePermissionError,
    StoreUnavailableError,
    UnsupportedOperationError,
)

__all__ = ["ExitCode", "Failure", "classify", "error", "unwrap"]


class ExitCode:
    """The exit codes of the ``castore`` command (see :mod:`castore.cli`)."""

    OK = 0
    NOT_FOUND = 1
    #: ``castore check`` found problems that are still there.
    PROBLEMS = 1
    USAGE = 2
    BAD_DIGEST = 3
    BAD_STORE_URL = 4
    STORE_FAILED = 5
    CORRUPT = 6
    LOCAL_IO = 7
    PERMISSION = 8
    LISTEN = 9
    MISSING_DEPENDENCY = 10
    #: ``castore gc``: another collector holds the lease; nothing was done.
    BUSY = 11
    INTERRUPTED = 130
    BROKEN_PIPE = 141


class Failure(Exception):
    """A failure already phrased for the user, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def error(message: str) -> None:
    """Print ``castore: <message>`` on stderr, cut to its first line.

    Store errors can carry a many-line dump after the first line; ``CASTORE_DEBUG=1`` shows
    it, with the traceback.
    """
    first = next((line for line in message.splitlines() if line.strip()), message)
    print(f"castore: {first.strip()}", file=sys.stderr, flush=True)


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for an exception that ended a command."""
    if isinstance(exc, Failure):
        return exc.code, str(exc)
    if isinstance(exc, InvalidDigestError):
        return ExitCode.BAD_DIGEST, str(exc)
    if isinstance(exc, InvalidAddressError):
        return ExitCode.BAD_STORE_URL, f"bad store URL: {exc}"
    if isinstance(exc, BlobNotFoundError):
        return ExitCode.NOT_FOUND, f"not found: {exc}"
    if isinstance(exc, DataCorruptionError):
        return ExitCode.CORRUPT, f"corrupt data in the store: {exc}"
    if isinstance(exc, StorePermissionError):
        return ExitCode.PERMISSION, f"permission denied by the store: {exc}"
    if isinstance(exc, StoreUnavailableError):
        return ExitCode.STORE_FAILED, f"cannot reach the store: {exc}"
    if isinstance(exc, StoreError):
        return ExitCode.STORE_FAILED, f"the store failed: {exc}"
    if isinstance(exc, UnsupportedOperationError):
        return ExitCode.STORE_FAILED, f"this store cannot do that: {exc}"
    if isinstance(exc, CastoreError):
        return ExitCode.STORE_FAILED, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        return ExitCode.LOCAL_IO, f"{exc}"
    return ExitCode.STORE_FAILED, f"unexpected {type(exc).__name__}: {exc}"


def unwrap(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (task groups wrap what went wrong)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
