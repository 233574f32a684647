"""``CachingBlobService``: a bounded, in-memory LRU cache of verified chunks and blobs.

Reads go through three kinds of entry, all in one LRU bounded by bytes:

- chunk lists (from ``inner.chunks``), so a cached blob needs no call to ``inner``;
- chunks of chunked blobs, fetched one by one through ``inner.open_read(chunk)`` and kept
  once their BLAKE3 digest and size are checked;
- whole blobs that ``inner`` does not chunk (``chunks() == []``), kept when a reader read
  them in order from the first to the last byte and the bytes hash to the blob's digest.

Only verified bytes are cached, so a cache hit is as trustworthy as a fresh read. Items
larger than ``max_item_bytes`` are never cached (a single huge blob would otherwise flush
everything). Writes pass straight through and do not populate the cache: a freshly
written blob is not necessarily read back soon, and a cache filled by writes evicts what
readers use. Absence is never cached, since a blob may be written at any time.
Concurrent misses on the same chunk each fetch it; the second insert is a no-op.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass

import blake3

from castore._digest import B3Digest, ChunkMeta, DigestLike
from castore._threads import THRESHOLDS, run_sized
from castore.blobservice import BlobReader, BlobService, BytesReader
from castore.errors import BlobNotFoundError, DigestMismatchError
from castore.reader import DEFAULT_PREFETCH, ChunkedReader, read_chunk
from castore.registry import integer, register_type, size
from castore.wrappers.base import WrapperBlobReader, WrapperBlobService

__all__ = ["CacheStatistics", "CachingBlobService"]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# Cost charged for a cached chunk list: per entry and per chunk (digest, size, objects).
_LIST_COST = 128
_CHUNK_META_COST = 96
# A cached chunk list or data; keyed by (is_list, digest).
_Value = bytes | tuple[ChunkMeta, ...]
_Key = tuple[bool, B3Digest]


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """A snapshot of a :class:`CachingBlobService`'s cache.

    ``hits``/``misses`` count lookups of chunk lists, chunks and whole blobs; ``bytes`` is
    the current charge against ``max_bytes`` (data plus a small cost per chunk list).
    """

    hits: int
    misses: int
    evictions: int
    items: int
    bytes: int
    max_bytes: int


def _blake3(data: bytes) -> bytes:
    return blake3.blake3(data, max_threads=1).digest()


class CachingBlobService(WrapperBlobService):
    """Caches verified reads from ``inner`` in memory, up to ``max_bytes`` (LRU).

    ``max_item_bytes`` (default a quarter of ``max_bytes``) is the largest chunk or blob
    kept. ``prefetch`` is passed to the :class:`~castore.ChunkedReader` that serves
    chunked blobs. See the module doc for what is cached and why.
    """

    def __init__(
        self,
        inner: BlobService,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_item_bytes: int | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        super().__init__(inner)
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        if max_item_bytes is not None and max_item_bytes < 0:
            raise ValueError(f"max_item_bytes must not be negative, got {max_item_bytes}")
        self.max_bytes = max_bytes
        self.max_item_bytes = max_bytes // 4 if max_item_bytes is None else max_item_bytes
        self._prefetch = prefetch
        self._lru: OrderedDict[_Key, _Value] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def statistics(self) -> CacheStatistics:
        """A frozen snapshot of the cache's counters and size."""
        return CacheStatistics(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            items=len(self._lru),
            bytes=self._bytes,
            max_bytes=self.max_bytes,
        )

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        self._lru.clear()
        self._bytes = 0

    # --- the LRU ---------------------------------------------------------------------
    # Keys are (is_list, digest): a chunk list and the data of the same digest are two
    # entries.

    @staticmethod
    def _cost(value: _Value) -> int:
        if isinstance(value, bytes):
            return len(value)
        return _LIST_COST + _CHUNK_META_COST * len(value)

    def _get(self, key: _Key) -> _Value | None:
        value = self._lru.get(key)
        if value is None:
            self._misses += 1
            return None
        self._hits += 1
        self._lru.move_to_end(key)
        return value

    def _put(self, key: _Key, value: _Value) -> None:
        cost = self._cost(value)
        if cost > self.max_item_bytes or cost > self.max_bytes or key in self._lru:
            return
        self._lru[key] = value
        self._bytes += cost
        while self._bytes > self.max_bytes:
            _, old = self._lru.popitem(last=False)
            self._bytes -= self._cost(old)
            self._evictions += 1

    def _get_data(self, digest: B3Digest) -> bytes | None:
        value = self._get((False, digest))
        assert value is None or isinstance(value, bytes)
        return value

    def _get_list(self, digest: B3Digest) -> tuple[ChunkMeta, ...] | None:
        value = self._get((True, digest))
        assert value is None or isinstance(value, tuple)
        return value

    # --- the service -----------------------------------------------------------------

    async def has(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        if (True, digest) in self._lru or (False, digest) in self._lru:
            return True
        return await self._inner.has(digest)

    async def delete(self, digest: DigestLike) -> bool:
        """Delete from ``inner`` and forget the blob's cached chunk list and bytes.

        Cached chunks of other blobs stay: every chunk remains readable by its own digest
        after a delete. A delete made elsewhere (another process) is not seen here.
        """
        digest = B3Digest.coerce(digest)
        for key in ((True, digest), (False, digest)):
            value = self._lru.pop(key, None)
            if value is not None:
                self._bytes -= self._cost(value)
        return await self._inner.delete(digest)

    async def chunks(self, digest: DigestLike) -> list[ChunkMeta] | None:
        digest = B3Digest.coerce(digest)
        cached = self._get_list(digest)
        if cached is not None:
            return list(cached)
        result = await self._inner.chunks(digest)
        if result is not None:
            self._put((True, digest), tuple(result))
        return result

    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        digest = B3Digest.coerce(digest)
        data = self._get_data(digest)
        if data is not None:
            return BytesReader(data)
        chunks = await self.chunks(digest)
        if chunks is None:
            return None
        if chunks:
            return ChunkedReader(chunks, self, prefetch=self._prefetch, blob_digest=digest)
        reader = await self._inner.open_read(digest)
        if reader is None:
            return None
        return _FillingReader(self, digest, reader)

    # --- the chunk source (castore.reader.ChunkSource) ------------------------------

    @property
    def read_timeout(self) -> float | None:
        """``None``: the inner service bounds its own calls."""
        return None

    async def fetch_chunk(self, meta: ChunkMeta) -> bytes:
        """Chunk ``meta`` from the cache, else from ``inner`` (verified, then cached)."""
        data = self._get_data(meta.digest)
        if data is not None:
            return data
        data = await read_chunk(self._inner, meta)
        if data is None:
            raise BlobNotFoundError(f"chunk {meta.digest.hex()} is missing")
        self._put((False, meta.digest), data)
        return data


class _FillingReader(WrapperBlobReader):
    """Collects an unchunked blob read in order; caches it once complete and verified."""

    def __init__(self, owner: CachingBlobService, digest: B3Digest, inner: BlobReader) -> None:
        super().__init__(inner)
        self._owner = owner
        self._digest = digest
        self._parts: list[bytes] | None = []
        self._filled = 0

    async def read(self, n: int = -1) -> bytes:
        start = self._inner.tell()
        data = await self._inner.read(n)
        parts = self._parts
        if parts is None:
            return data
        end = start + len(data)
        if start > self._filled or end > self._owner.max_item_bytes:
            self._parts = None  # a gap, or too big to keep: stop collecting
            return data
        if end > self._filled:
            parts.append(data[self._filled - start :])
            self._filled = end
        if (n < 0 or len(data) < n) and end == self._filled:
            self._parts = None
            await self._complete(parts)
        return data

    async def _complete(self, parts: list[bytes]) -> None:
        whole = parts[0] if len(parts) == 1 else b"".join(parts)
        actual = await run_sized(len(whole), THRESHOLDS.hash, _blake3, whole)
        if actual != self._digest.digest:
            raise DigestMismatchError(
                f"blob {self._digest.hex()}: the bytes read hash to {actual.hex()}"
            )
        self._owner._put((False, self._digest), whole)

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return await self._inner.seek(offset, whence)


register_type(
    "cache",
    CachingBlobService,
    references=("inner",),
    options={"max_bytes": size(), "max_item_bytes": size(), "prefetch": integer()},
)
