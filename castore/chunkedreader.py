"""``ChunkedReader``: random access over a blob stored as an ordered list of chunks.

Seeks by binary search over chunk offsets, fetches chunks lazily, keeps a bounded
window of the next chunks in flight (prefetch) so that a sequential read does not wait
one round trip per chunk, and verifies each chunk's BLAKE3 digest and size. When a read
covers the whole blob from offset 0, the concatenation is also checked against the
blob's own digest, so an index listing the wrong chunks raises instead of passing.
"""

from __future__ import annotations

import asyncio
import bisect
import io
from collections.abc import Awaitable, Callable, Sequence

import anyio.to_thread
import blake3

from castore._digest import B3Digest, ChunkMeta
from castore.blobservice import BlobReader, BlobService, _seek_target
from castore.errors import BlobNotFoundError, DigestMismatchError, InvalidSeekError

__all__ = ["ChunkFetcher", "ChunkedReader", "verify_chunk"]

#: Fetches one chunk's bytes, already verified against ``ChunkMeta`` or not.
ChunkFetcher = Callable[[ChunkMeta], Awaitable[bytes]]

DEFAULT_PREFETCH = 4


def verify_chunk(meta: ChunkMeta, data: bytes) -> bytes:
    """Raise :class:`DigestMismatchError` unless ``data`` is the chunk ``meta`` names."""
    if len(data) != meta.size:
        raise DigestMismatchError(
            f"chunk {meta.digest.hex()}: expected {meta.size} bytes, got {len(data)}"
        )
    actual = blake3.blake3(data, max_threads=1).digest()
    if actual != meta.digest.digest:
        raise DigestMismatchError(f"chunk {meta.digest.hex()}: data hashes to {actual.hex()}")
    return data


class ChunkedReader(BlobReader):
    """A :class:`BlobReader` over ``chunks``, fetched through ``fetch``.

    ``fetch`` is called with each chunk's :class:`ChunkMeta`; unless ``verified_fetch``
    is set, the bytes it returns are verified here (in a worker thread). ``prefetch``
    bounds how many chunks ahead of the current one are fetched concurrently.
    ``blob_digest``, when given, is checked once the whole blob has been read in order.
    """

    def __init__(
        self,
        chunks: Sequence[ChunkMeta],
        fetch: ChunkFetcher,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        verified_fetch: bool = False,
        blob_digest: B3Digest | None = None,
    ) -> None:
        self._chunks = list(chunks)
        self._fetch = fetch
        self._prefetch = max(0, prefetch)
        self._verified_fetch = verified_fetch
        self._offsets: list[int] = []
        total = 0
        for c in self._chunks:
            self._offsets.append(total)
            total += c.size
        self._length = total
        self._pos = 0
        self._inflight: dict[int, asyncio.Task[bytes]] = {}
        self._closed = False
        # Whole-blob check: running hash of the bytes returned so far, while they are
        # exactly blob[0:_hashed_to].
        self._blob_digest = blob_digest
        self._hasher: blake3.blake3 | None = blake3.blake3(max_threads=1) if blob_digest else None
        self._hashed_to = 0

    @classmethod
    def from_service(
        cls,
        service: BlobService,
        chunks: Sequence[ChunkMeta],
        *,
        prefetch: int = DEFAULT_PREFETCH,
        blob_digest: B3Digest | None = None,
    ) -> ChunkedReader:
        """Read each chunk through ``service.open_read(chunk.digest)``."""

        async def fetch(meta: ChunkMeta) -> bytes:
            reader = await service.open_read(meta.digest)
            if reader is None:
                raise BlobNotFoundError(f"chunk {meta.digest.hex()} is missing")
            async with reader:
                return await reader.read()

        return cls(chunks, fetch, prefetch=prefetch, blob_digest=blob_digest)

    @property
    def length(self) -> int:
        """The blob's total size in bytes."""
        return self._length

    @property
    def chunks(self) -> list[ChunkMeta]:
        """The chunk list this reader walks."""
        return list(self._chunks)

    def offset_of(self, index: int) -> int:
        """The byte offset at which chunk ``index`` starts."""
        return self._offsets[index]

    def tell(self) -> int:
        return self._pos

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = _seek_target(offset, whence, self._pos, self._length)
        if target > self._length:
            raise InvalidSeekError(f"seek to {target} past the end of a {self._length}-byte blob")
        self._pos = target
        return target

    async def read(self, n: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read() on a closed reader")
        remaining = self._length - self._pos
        if n < 0 or n > remaining:
            n = remaining
        if n <= 0:
            return b""
        parts: list[bytes] = []
        want = n
        while want > 0:
            idx = bisect.bisect_right(self._offsets, self._pos) - 1
            data = await self._chunk(idx)
            start = self._pos - self._offsets[idx]
            piece = data[start : start + want] if (start or want < len(data)) else data
            parts.append(piece)
            self._pos += len(piece)
            want -= len(piece)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self._check_whole(self._pos - len(out), out)
        return out

    def _check_whole(self, start: int, out: bytes) -> None:
        if self._hasher is None or start != self._hashed_to:
            return
        self._hasher.update(out)
        self._hashed_to += len(out)
        if self._hashed_to == self._length:
            assert self._blob_digest is not None
            actual = self._hasher.digest()
            self._hasher = None
            if actual != self._blob_digest.digest:
                raise DigestMismatchError(
                    f"blob {self._blob_digest.hex()}: its chunks hash to {actual.hex()}"
                )

    async def _chunk(self, idx: int) -> bytes:
        # Keep idx .. idx+prefetch in flight; forget what lies behind the cursor.
        for old in [i for i in self._inflight if i < idx or i > idx + self._prefetch]:
            self._inflight.pop(old).cancel()
        for i in range(idx, min(idx + self._prefetch + 1, len(self._chunks))):
            if i not in self._inflight:
                self._inflight[i] = asyncio.ensure_future(self._load(self._chunks[i]))
        task = self._inflight[idx]
        try:
            data = await asyncio.shield(task)
        except BaseException:
            if task.done():
                self._inflight.pop(idx, None)
            raise
        # Keep the current chunk cached while the cursor is inside it.
        return data

    async def _load(self, meta: ChunkMeta) -> bytes:
        data = await self._fetch(meta)
        if not self._verified_fetch:
            data = await anyio.to_thread.run_sync(verify_chunk, meta, data)
        return data

    async def aclose(self) -> None:
        self._closed = True
        tasks = list(self._inflight.values())
        self._inflight.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            # Cancelled or failed prefetches are dropped; a cancel of aclose() propagates.
            await asyncio.gather(*tasks, return_exceptions=True)
