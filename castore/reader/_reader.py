"""``ChunkedReader``: random access over a blob stored as an ordered list of chunks.

Seeks by binary search over chunk offsets, fetches chunks lazily from a
:class:`~castore.reader.ChunkSource` through a few pullers (:mod:`castore.reader._pullers`)
that keep a bounded window of the next chunks in flight, so that a sequential read does
not wait one round trip per chunk. Every chunk is verified (BLAKE3 digest and size) by
the source. When the blob is read in order from offset 0 to its end, the bytes returned
are also checked against the blob's own digest (:mod:`castore.reader._blobhash`), so an
index listing the wrong chunks raises instead of passing.

The window: from the chunk under the cursor to ``prefetch`` chunks past the end of the
current read, and at least as many bytes past it as the read asked for, so the next
read of the same size finds its chunks fetched or in flight. At most ``prefetch + 1``
pullers run at once; fetched chunks are dropped once the cursor has passed them. A read
that spans chunks is joined into one ``bytes`` in a worker thread when it is large; a
read that is exactly one chunk returns that chunk's ``bytes`` without a copy.
"""

from __future__ import annotations

import asyncio
import bisect
import io
import warnings
from collections.abc import Sequence

import anyio

from castore._digest import B3Digest, ChunkMeta
from castore._threads import THRESHOLDS
from castore.blobservice import BlobReader, BlobService, seek_target
from castore.errors import DigestMismatchError, InvalidSeekError
from castore.reader._blobhash import BlobHash
from castore.reader._pullers import Window, reader_pool
from castore.reader._source import (
    ChunkFetcher,
    ChunkSource,
    FunctionChunkSource,
    ServiceChunkSource,
    SyncChunkFetcher,
    ThreadFunctionChunkSource,
)

__all__ = ["DEFAULT_PREFETCH", "ChunkedReader"]

DEFAULT_PREFETCH = 4

# At most this many chunks are fetched ahead of a read, whatever its size.
_MAX_AHEAD = 64

_LEGACY = object()  # marks a legacy keyword argument not given


class ChunkedReader(BlobReader):
    """A :class:`BlobReader` over ``chunks``, fetched from ``source``.

    ``source`` is a :class:`~castore.reader.ChunkSource`, which returns verified chunks
    (a service such as the object store implements it), or an async function that
    fetches a chunk's bytes, which the reader then verifies. ``prefetch`` is how many
    chunks beyond the end of the current read are fetched ahead (reads also fetch ahead
    as many bytes as they ask for, and at most ``prefetch + 1`` fetches run at once; 0
    fetches only what a read needs, one chunk at a time). ``blob_digest``, when given, is
    checked once the whole blob has been read in order.

    Deprecated keywords, for a function ``source`` only: ``verified_fetch`` (the function
    verifies), ``fetch_sync`` (a blocking fetch for worker threads) and ``timeout`` (with
    ``fetch_sync``: how long a read waits with no chunk arriving). Implement a
    :class:`~castore.reader.ChunkSource` instead.
    """

    def __init__(
        self,
        chunks: Sequence[ChunkMeta],
        source: ChunkSource | ChunkFetcher,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        blob_digest: B3Digest | None = None,
        verified_fetch: bool | object = _LEGACY,
        fetch_sync: SyncChunkFetcher | object | None = _LEGACY,
        timeout: float | object | None = _LEGACY,
    ) -> None:
        self._source = _as_source(source, verified_fetch, fetch_sync, timeout)
        self._chunks = list(chunks)
        self._offsets: list[int] = []
        total = 0
        for c in self._chunks:
            self._offsets.append(total)
            total += c.size
        self._length = total
        self._pos = 0
        self._closed = False
        self._prefetch = max(0, prefetch)
        self._window = Window(self._chunks, self._source, self._prefetch)
        # Whole-blob check: the window's hash takes the chunks in index order as they are
        # fetched; its digest is checked by the read that returns the blob's last bytes,
        # if every read so far continued where the previous one ended, starting at 0
        # (_returned_to is where the bytes returned so far end).
        self._blob_digest = blob_digest
        if blob_digest is not None:
            self._window.whole = BlobHash(len(self._chunks))
        self._returned_to = 0
        self._corrupt: DigestMismatchError | None = None

    @classmethod
    def from_service(
        cls,
        service: BlobService,
        chunks: Sequence[ChunkMeta],
        *,
        prefetch: int = DEFAULT_PREFETCH,
        blob_digest: B3Digest | None = None,
    ) -> ChunkedReader:
        """Deprecated: ``ChunkedReader(chunks, ServiceChunkSource(service), ...)``."""
        warnings.warn(
            "ChunkedReader.from_service is deprecated: pass "
            "castore.reader.ServiceChunkSource(service) as the source",
            DeprecationWarning,
            stacklevel=2,
        )
        return cls(chunks, ServiceChunkSource(service), prefetch=prefetch, blob_digest=blob_digest)

    @property
    def source(self) -> ChunkSource:
        """Where the chunks come from."""
        return self._source

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
        target = seek_target(offset, whence, self._pos, self._length)
        if target > self._length:
            raise InvalidSeekError(f"seek to {target} past the end of a {self._length}-byte blob")
        self._pos = target
        return target

    def _index(self, offset: int) -> int:
        return bisect.bisect_right(self._offsets, offset) - 1

    # --- reading ------------------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        plan = self._plan(n)
        if plan is None:
            return b""
        pos, n, first, last = plan
        self._window.move(first, self._ahead(last, pos + n, n))
        parts = await self._parts(pos, n, first, last)
        if len(parts) == 1:
            data = parts[0]
            # A read of exactly one chunk fetched as bytes is that chunk, not a copy.
            out = data if isinstance(data, bytes) else bytes(data)
        elif n >= THRESHOLDS.join:
            out = await asyncio.wrap_future(reader_pool().submit(b"".join, parts))
        else:
            out = b"".join(parts)
        del parts
        await self._advance(pos, n)
        return out

    async def readinto(self, buffer: bytearray | memoryview) -> int:
        """Read into ``buffer``; returns how many bytes were written: ``len(buffer)``,
        fewer only at the end.

        Chunks that lie wholly in the read and are not fetched yet are decoded straight
        into ``buffer`` by a source that fetches in threads; the others are copied into
        it once. Nothing writes into ``buffer`` after this returns (or raises).
        """
        out = memoryview(buffer).cast("B")
        plan = self._plan(len(out))
        if plan is None:
            return 0
        pos, n, first, last = plan
        window = self._window
        # Where chunks go is known before the window moves and wakes the pullers.
        target = window.post(self._views(out, pos, n, first, last)) if window.threaded else None
        window.move(first, self._ahead(last, pos + n, 0))
        try:
            parts = await self._parts(pos, n, first, last)
            direct = target.direct if target is not None else set()
            todo = [
                (max(0, self._offsets[first + k] - pos), part)
                for k, part in enumerate(parts)
                if first + k not in direct
            ]
            del parts
            if sum(len(p) for _, p in todo) >= THRESHOLDS.join:
                job = asyncio.wrap_future(reader_pool().submit(_copy, out, todo))
                # The copy writes into the caller's memory: it must end before this
                # returns, even when cancelled (a few milliseconds of CPU at most).
                with anyio.CancelScope(shield=True):
                    await job
            else:
                _copy(out, todo)
            del todo
            whole = window.whole
            if direct and whole is not None:
                # The whole-blob hash reads chunks decoded into the caller's memory:
                # it must be past them before the caller may change that memory.
                await whole.hashed_through(max(direct) + 1)
        except BaseException:
            if target is not None:
                await window.revoke(target)
                if target.direct and window.whole is not None:
                    # Some of this read's memory may have been offered to the whole-blob
                    # hash, and the caller may change it now: that check is off.
                    window.whole.kill()
                    window.whole = None
            raise
        if target is not None:
            await window.revoke(target)
        await self._advance(pos, n)
        return n

    def _views(
        self, out: memoryview, pos: int, n: int, first: int, last: int
    ) -> dict[int, memoryview]:
        """Where in ``out`` (bytes ``pos .. pos + n`` of the blob) each whole chunk goes."""
        views: dict[int, memoryview] = {}
        offsets, chunks, end = self._offsets, self._chunks, pos + n
        for i in range(first, last + 1):
            start = offsets[i]
            size = chunks[i].size
            if start >= pos and start + size <= end:
                views[i] = out[start - pos : start - pos + size]
        return views

    def _plan(self, n: int) -> tuple[int, int, int, int] | None:
        """A read of ``n`` bytes (all remaining when negative) from the cursor: its
        position, length, first and last chunk; ``None`` at the end. The caller moves
        the window (see :meth:`_ahead`)."""
        if self._closed:
            raise ValueError("read() on a closed reader")
        if self._corrupt is not None:
            raise self._corrupt
        pos = self._pos
        remaining = self._length - pos
        if n < 0 or n > remaining:
            n = remaining
        if n <= 0:
            return None
        first = self._index(pos)
        last = self._index(pos + n - 1)
        return pos, n, first, last

    async def _parts(self, pos: int, n: int, first: int, last: int) -> list[bytes | memoryview]:
        """The bytes ``pos .. pos + n`` as parts of chunks ``first .. last``, in order.

        They stay valid until :meth:`_advance`.
        """
        window = self._window
        parts = await window.collect(first, last + 1)
        if window.whole is not None and pos != self._returned_to:
            # Not a continuation of an in-order read from 0: no whole-blob check.
            window.whole.kill()
            window.whole = None
        start = pos - self._offsets[first]
        end = pos + n - self._offsets[last]
        if first == last:
            if start or end != len(parts[0]):
                parts[0] = memoryview(parts[0])[start:end]
        else:
            if start:
                parts[0] = memoryview(parts[0])[start:]
            if end != len(parts[-1]):
                parts[-1] = memoryview(parts[-1])[:end]
        return parts

    async def _advance(self, pos: int, n: int) -> None:
        """After returning bytes ``pos .. pos + n``: the whole-blob check, the cursor."""
        whole = self._window.whole
        if whole is not None:
            if pos + n == self._length:
                await self._check_whole(whole)
            self._returned_to = pos + n
        self._pos = pos + n
        # Forget the chunks the cursor has passed.
        self._window.move(self._index(self._pos) if self._pos < self._length else len(self._chunks))

    async def _check_whole(self, whole: BlobHash) -> None:
        assert self._blob_digest is not None
        actual = await whole.digest()
        self._window.whole = None
        if actual != self._blob_digest.digest:
            # The index does not list this blob's chunks: every later read fails too,
            # rather than hand out any of these bytes unchecked.
            self._corrupt = DigestMismatchError(
                f"blob {self._blob_digest.hex()}: its chunks hash to {actual.hex()}"
            )
            raise self._corrupt

    def _ahead(self, last: int, end: int, n: int) -> int:
        """The window's end for a read covering chunks up to ``last``, that fetches ``n``
        more bytes ahead (besides ``prefetch`` chunks).

        :meth:`read` fetches as many bytes ahead as it asks for, into the window's
        buffers, while its caller uses what it returned: they are copied once anyway.
        :meth:`readinto` fetches only ``prefetch`` chunks ahead, so that the chunks of its
        next call are still to fetch when it comes, and are decoded straight into the
        caller's buffer (a caller that wants to overlap its work with the reads reads
        into two buffers in turn, as ``castore get`` does).
        """
        hi = last + 1
        if self._prefetch:
            window = self._window
            ahead = hi + self._prefetch
            if end < self._length:
                ahead = max(ahead, self._index(min(end + n, self._length) - 1) + 1)
            if window.lo <= last < window.hi:
                ahead = max(ahead, window.hi)  # keep what is already ahead
            hi = min(ahead, last + 1 + _MAX_AHEAD, len(self._chunks))
        return hi

    async def aclose(self) -> None:
        self._closed = True
        window = self._window
        if window.whole is not None:
            window.whole.kill()
            window.whole = None
        await window.aclose()


def _copy(out: memoryview, parts: list[tuple[int, bytes | memoryview]]) -> None:
    """Copy each ``(offset, part)`` into ``out`` at that offset."""
    for at, part in parts:
        out[at : at + len(part)] = part


def _as_source(
    source: ChunkSource | ChunkFetcher, verified: object, fetch_sync: object, timeout: object
) -> ChunkSource:
    """The reader's source; a fetch function with the legacy keywords is wrapped."""
    legacy = [
        name
        for name, value in (
            ("verified_fetch", verified),
            ("fetch_sync", fetch_sync),
            ("timeout", timeout),
        )
        if value is not _LEGACY
    ]
    if isinstance(source, ChunkSource):
        if legacy:
            raise TypeError(
                f"ChunkedReader: {', '.join(legacy)} apply to a fetch function, not to a "
                "ChunkSource (which verifies its chunks and has its own read_timeout)"
            )
        return source
    if legacy:
        warnings.warn(
            f"ChunkedReader: the keywords {', '.join(legacy)} are deprecated; implement "
            "castore.reader.ChunkSource (fetch_chunk, read_timeout)",
            DeprecationWarning,
            stacklevel=3,
        )
    ok = verified is not _LEGACY and bool(verified)
    if fetch_sync is _LEGACY or fetch_sync is None:
        return FunctionChunkSource(source, verified=ok)
    assert callable(fetch_sync)
    limit = None if timeout is _LEGACY else timeout
    assert limit is None or isinstance(limit, int | float)
    return ThreadFunctionChunkSource(source, fetch_sync, verified=ok, timeout=limit)
