"""``StatsBlobService``: counters for operators and tests (calls, bytes, hits, errors)."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from castore._digest import B3Digest, ChunkMeta, DigestLike
from castore.blobservice import BlobInfo, BlobReader, BlobService, BlobWriter
from castore.registry import register_type
from castore.wrappers.base import (
    OnError,
    WrapperBlobReader,
    WrapperBlobService,
    WrapperBlobWriter,
)

__all__ = ["BlobServiceStatistics", "StatsBlobService"]


@dataclass(frozen=True, slots=True)
class BlobServiceStatistics:
    """A snapshot of a :class:`StatsBlobService`'s counters.

    ``calls`` counts calls by operation: ``has``, ``chunks``, ``open_read``, ``open_write``,
    ``delete`` and ``list_blobs`` on the service, ``read`` and ``seek`` on its readers,
    ``write`` and ``close`` on its writers. ``hits``/``misses`` count the answers of ``has``
    (true/false), ``chunks`` and ``open_read`` (found/``None``) and ``delete`` (deleted or
    absent). ``errors`` counts raised exceptions by class name (cancellation is not
    counted). ``bytes_read`` is what readers returned, ``bytes_written`` what writers
    accepted, ``blobs_written`` the writers closed successfully.
    """

    calls: Mapping[str, int]
    hits: Mapping[str, int]
    misses: Mapping[str, int]
    errors: Mapping[str, int]
    bytes_read: int
    bytes_written: int
    blobs_written: int

    @property
    def total_errors(self) -> int:
        """All errors, whatever their type."""
        return sum(self.errors.values())


class StatsBlobService(WrapperBlobService):
    """Counts what passes through to ``inner``; read the counts with :meth:`statistics`.

    Counting is cheap (a few dictionary updates a call), so the wrapper can stay in
    production compositions. Nothing is retried, cached or changed.
    """

    def __init__(self, inner: BlobService) -> None:
        super().__init__(inner)
        self._calls: Counter[str] = Counter()
        self._hits: Counter[str] = Counter()
        self._misses: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._bytes_read = 0
        self._bytes_written = 0
        self._blobs_written = 0

    def statistics(self) -> BlobServiceStatistics:
        """A frozen snapshot of the counters; later calls do not change it."""
        return BlobServiceStatistics(
            calls=MappingProxyType(dict(self._calls)),
            hits=MappingProxyType(dict(self._hits)),
            misses=MappingProxyType(dict(self._misses)),
            errors=MappingProxyType(dict(self._errors)),
            bytes_read=self._bytes_read,
            bytes_written=self._bytes_written,
            blobs_written=self._blobs_written,
        )

    def reset(self) -> None:
        """Set every counter back to zero."""
        for c in (self._calls, self._hits, self._misses, self._errors):
            c.clear()
        self._bytes_read = self._bytes_written = self._blobs_written = 0

    def _error(self, exc: Exception) -> None:
        self._errors[type(exc).__name__] += 1

    def _call(self, op: str) -> OnError:
        """Count a call of ``op``; as a context, also count the error that ends it."""
        self._calls[op] += 1
        return OnError(self._error)

    def _found(self, op: str, found: bool) -> None:
        (self._hits if found else self._misses)[op] += 1

    async def has(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        with self._call("has"):
            found = await self._inner.has(digest)
        self._found("has", found)
        return found

    async def chunks(self, digest: DigestLike) -> list[ChunkMeta] | None:
        digest = B3Digest.coerce(digest)
        with self._call("chunks"):
            result = await self._inner.chunks(digest)
        self._found("chunks", result is not None)
        return result

    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        digest = B3Digest.coerce(digest)
        with self._call("open_read"):
            reader = await self._inner.open_read(digest)
        self._found("open_read", reader is not None)
        return None if reader is None else _StatsReader(self, reader)

    async def delete(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        with self._call("delete"):
            found = await self._inner.delete(digest)
        self._found("delete", found)
        return found

    async def list_blobs(self, *, details: bool = False) -> AsyncIterator[BlobInfo]:
        with self._call("list_blobs"):
            async for info in self._inner.list_blobs(details=details):
                yield info

    async def open_write(self) -> BlobWriter:
        with self._call("open_write"):
            writer = await self._inner.open_write()
        return _StatsWriter(self, writer)


class _StatsReader(WrapperBlobReader):
    def __init__(self, owner: StatsBlobService, inner: BlobReader) -> None:
        super().__init__(inner)
        self._owner = owner

    async def read(self, n: int = -1) -> bytes:
        owner = self._owner
        with owner._call("read"):
            data = await self._inner.read(n)
        owner._bytes_read += len(data)
        return data

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._owner._call("seek"):
            return await self._inner.seek(offset, whence)


class _StatsWriter(WrapperBlobWriter):
    def __init__(self, owner: StatsBlobService, inner: BlobWriter) -> None:
        super().__init__(inner)
        self._owner = owner
        self._close_counted = False

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        owner = self._owner
        with owner._call("write"):
            n = await self._inner.write(data)
        owner._bytes_written += n
        return n

    async def close(self) -> B3Digest:
        if self._close_counted:  # a repeated close: the cached answer, counted once
            return await self._inner.close()
        self._close_counted = True
        owner = self._owner
        with owner._call("close"):
            digest = await self._inner.close()
        owner._blobs_written += 1
        return digest


register_type("stats", StatsBlobService, references=("inner",))
