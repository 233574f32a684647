"""``LoggingBlobService``: one structured log record per operation, through :mod:`logging`.

Every record carries these attributes (``extra=``), for JSON formatters and filters:

==========  ===================================================================
``op``      ``has``, ``chunks``, ``open_read``, ``read`` (a reader's life, logged
            when it closes), ``write`` (a writer's life, logged at close or abort)
``digest``  lowercase hex of the blob's digest (``None`` for a write that failed)
``size``    bytes read or written; for ``chunks`` the blob's size; else ``None``
``duration`` seconds, as a float (for ``read``/``write``: open to close)
``error``   ``"ExceptionType: message"``, or ``None`` on success
``found``   for ``has``, ``chunks`` and ``open_read``: whether the blob was there
``aborted`` true for a writer that was aborted (nothing stored, not a failure)
``service`` the ``name`` given to the wrapper (the instance name in a config file)
==========  ===================================================================

Successes are logged at ``level`` (DEBUG by default) and failures at ``error_level``
(WARNING), so a production logger at INFO shows only trouble.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

from castore._digest import B3Digest, ChunkMeta, DigestLike
from castore.blobservice import BlobReader, BlobService, BlobWriter
from castore.registry import level, register_type, text
from castore.wrappers.base import (
    OnError,
    WrapperBlobReader,
    WrapperBlobService,
    WrapperBlobWriter,
)

__all__ = ["LoggingBlobService"]

DEFAULT_LOGGER = "castore.blobservice"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _level(value: int | str) -> int:
    if isinstance(value, int):
        return value
    number = logging.getLevelName(value.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown logging level {value!r}")
    return number


class LoggingBlobService(WrapperBlobService):
    """Logs each operation on ``inner`` with structured fields (see the module doc).

    ``logger`` is a :class:`logging.Logger` or a logger name (default
    ``castore.blobservice``). ``name`` labels the records (``service``), useful when a
    composition logs several services. Records are only built when the logger is enabled
    for their level, so a silent logger costs next to nothing.
    """

    def __init__(
        self,
        inner: BlobService,
        *,
        logger: logging.Logger | str = DEFAULT_LOGGER,
        level: int | str = logging.DEBUG,
        error_level: int | str = logging.WARNING,
        name: str | None = None,
    ) -> None:
        super().__init__(inner)
        self._logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self._level = _level(level)
        self._error_level = _level(error_level)
        self._name = name

    @property
    def logger(self) -> logging.Logger:
        """Where the records go."""
        return self._logger

    def _log(
        self,
        op: str,
        digest: B3Digest | None,
        started: float,
        *,
        size: int | None = None,
        error: BaseException | None = None,
        found: bool | None = None,
        aborted: bool = False,
    ) -> None:
        level = self._level if error is None else self._error_level
        if not self._logger.isEnabledFor(level):
            return
        duration = time.perf_counter() - started
        extra: dict[str, Any] = {
            "op": op,
            "digest": None if digest is None else digest.hex(),
            "size": size,
            "duration": duration,
            "error": None if error is None else _describe(error),
            "found": found,
            "aborted": aborted,
            "service": self._name,
        }
        outcome: object
        if aborted:
            outcome = "aborted"
        elif error is not None:
            outcome = f"failed: {extra['error']}"
        elif found is not None:
            outcome = "found" if found else "absent"
        else:
            outcome = "ok"
        self._logger.log(
            level,
            "%s%s %s %s, %s bytes, %.1f ms",
            "" if self._name is None else f"[{self._name}] ",
            op,
            extra["digest"],
            outcome,
            "-" if size is None else size,
            duration * 1000,
            extra=extra,
        )

    def _failing(
        self, op: str, digest: B3Digest | None, started: float, *, size: int | None = None
    ) -> OnError:
        """A context that logs the error ending a call of ``op``."""
        return OnError(lambda e: self._log(op, digest, started, size=size, error=e))

    async def has(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        started = time.perf_counter()
        with self._failing("has", digest, started):
            found = await self._inner.has(digest)
        self._log("has", digest, started, found=found)
        return found

    async def chunks(self, digest: DigestLike) -> list[ChunkMeta] | None:
        digest = B3Digest.coerce(digest)
        started = time.perf_counter()
        with self._failing("chunks", digest, started):
            result = await self._inner.chunks(digest)
        size = None if not result else sum(c.size for c in result)
        self._log("chunks", digest, started, size=size, found=result is not None)
        return result

    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        digest = B3Digest.coerce(digest)
        started = time.perf_counter()
        with self._failing("open_read", digest, started):
            reader = await self._inner.open_read(digest)
        self._log("open_read", digest, started, found=reader is not None)
        return None if reader is None else _LoggingReader(self, digest, reader, started)

    async def delete(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        started = time.perf_counter()
        with self._failing("delete", digest, started):
            found = await self._inner.delete(digest)
        self._log("delete", digest, started, found=found)
        return found

    async def open_write(self) -> BlobWriter:
        return _LoggingWriter(self, await self._inner.open_write(), time.perf_counter())


class _LoggingReader(WrapperBlobReader):
    def __init__(
        self, owner: LoggingBlobService, digest: B3Digest, inner: BlobReader, started: float
    ) -> None:
        super().__init__(inner)
        self._owner = owner
        self._digest = digest
        self._started = started
        self._bytes = 0
        self._logged = False

    async def read(self, n: int = -1) -> bytes:
        with self._owner._failing("read", self._digest, self._started, size=self._bytes):
            data = await self._inner.read(n)
        self._bytes += len(data)
        return data

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._owner._failing("read", self._digest, self._started, size=self._bytes):
            return await self._inner.seek(offset, whence)

    async def aclose(self) -> None:
        if not self._logged:
            self._logged = True
            self._owner._log("read", self._digest, self._started, size=self._bytes)
        await self._inner.aclose()


class _LoggingWriter(WrapperBlobWriter):
    def __init__(self, owner: LoggingBlobService, inner: BlobWriter, started: float) -> None:
        super().__init__(inner)
        self._owner = owner
        self._started = started
        self._bytes = 0
        # Set once the writer's outcome (stored, failed or aborted) has been logged.
        self._logged = False

    def _outcome(
        self,
        digest: B3Digest | None = None,
        error: BaseException | None = None,
        aborted: bool = False,
    ) -> None:
        if not self._logged:
            self._logged = True
            self._owner._log(
                "write", digest, self._started, size=self._bytes, error=error, aborted=aborted
            )

    def _failed(self, error: Exception) -> None:
        self._outcome(error=error)

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        with OnError(self._failed):
            n = await self._inner.write(data)
        self._bytes += n
        return n

    async def close(self) -> B3Digest:
        with OnError(self._failed):
            digest = await self._inner.close()
        self._outcome(digest)
        return digest

    async def abort(self) -> None:
        # A deliberate abort (or an exception in the caller's ``async with``) is not a
        # store failure; after a close or a failure it changes nothing and logs nothing.
        self._outcome(aborted=True)
        await self._inner.abort()


register_type(
    "logging",
    LoggingBlobService,
    references=("inner",),
    options={
        "logger": text(),
        "level": level(),
        "error_level": level(),
        "name": text(fallback="instance name"),
    },
)
