"""``CombinedBlobService``: a near store (a cache) in front of a far store (the source).

Reads try ``near`` first. On a miss, the blob is read from ``far`` **chunk by chunk**
(far's chunk list, through a :class:`~castore.ChunkedReader` whose chunk source is the
combined service itself: its ``fetch_chunk`` tries near's copy of each chunk before
far's), and what comes from far is **copied into near** once it is verified, so the next
read does not leave the machine. Rust's ``CombinedBlobService``
documents this but never does it.

Two kinds of copy happen, because they serve different reads:

- each chunk fetched from far is checked (BLAKE3 and size) and written to near under its
  own digest, so a partial or random-access read still warms the cache;
- while a reader reads the blob in order from its first byte, the bytes are also fed to a
  near writer, which is committed only when the read reaches the end *and* the bytes hash
  to the blob's digest (otherwise it is aborted and the read raises
  :class:`~castore.errors.DigestMismatchError`). After that, near serves the blob by its
  own digest. A blob far does not chunk (chunk list ``[]``) is streamed from far's reader
  through the same check.

On a chunking near (an object store), both copies name the same chunks (FastCDC cuts a
chunk alone as it cut it in the blob), and the second finds them stored: a local store
skips them after an existence check, a remote one's conditional put is refused. The cost
is hashing the bytes again, not storing them twice. Copying is best effort: a near that fails to
store logs a warning (logger ``castore.combined``) and the read goes on from far. Near
failures on lookup are treated the same way (near is a cache), corruption in near makes
the read fall back to far for that chunk. But when near failed and far does not have the
blob, the lookup raises near's error rather than answer "absent": near may hold the only
copy (writes go to near), and absence is an answer, not a guess.

Writes go to near; with ``write_through=True`` they are teed to both, closed together,
and must agree on the digest. If one side fails the write fails, though the other side
may have stored the blob (harmless in a content-addressed store).

``delete`` deletes from far, then from near (a blob left in either would still be
served), and fails if either side fails or cannot delete (a gRPC far: then near is left
as it was). ``list_blobs`` lists near, then the blobs of far that near did not list: the
union, each blob once. Near's listing includes what reads copied into it, and chunks
copied from far are stored in near as blobs of their own, so a warm near lists chunk
digests too (each reads back as that chunk's bytes).
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar, cast

import anyio
import blake3

from castore._digest import B3Digest, ChunkMeta, DigestLike
from castore._threads import hash_update
from castore.blobservice import BlobInfo, BlobReader, BlobService, BlobWriter
from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    DataCorruptionError,
    DigestMismatchError,
    StoreError,
)
from castore.reader import DEFAULT_PREFETCH, ChunkedReader, read_chunk
from castore.registry import boolean, integer, register_type

__all__ = ["CombinedBlobService"]

A = TypeVar("A")
B = TypeVar("B")
T = TypeVar("T")

logger = logging.getLogger("castore.combined")

# Write-through gathers smaller writes into pieces of this size before sending them on.
_GATHER = 64 * 1024

# What a failing near (the cache) may raise without failing the caller's operation.
_NEAR_FAILURES = (StoreError, DataCorruptionError, BlobNotFoundError)


class CombinedBlobService(BlobService):
    """``near`` caches ``far``: see the module doc for reads, copies and writes.

    ``prefetch`` is how many chunks ahead a far read fetches concurrently. The combined
    service owns both: :meth:`aclose` closes ``near`` and ``far``.
    """

    def __init__(
        self,
        near: BlobService,
        far: BlobService,
        *,
        write_through: bool = False,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        self._near = near
        self._far = far
        self.write_through = write_through
        self._prefetch = prefetch
        self._closed = False

    @property
    def near(self) -> BlobService:
        """The cache, tried first and filled from far."""
        return self._near

    @property
    def far(self) -> BlobService:
        """The source of truth."""
        return self._far

    def __repr__(self) -> str:
        return (
            f"CombinedBlobService(near={self._near!r}, far={self._far!r}, "
            f"write_through={self.write_through})"
        )

    async def _near_first(
        self,
        what: str,
        digest: B3Digest,
        near: Callable[[B3Digest], Awaitable[T | None]],
        far: Callable[[B3Digest], Awaitable[T | None]],
    ) -> T | None:
        """``near(digest)`` if it finds something, else ``far(digest)``.

        Near is a cache: its failures are logged and far is asked. But if near failed and
        far finds nothing, near's error is raised: near may hold the only copy.
        """
        near_error: CastoreError | None = None
        try:
            found = await near(digest)
        except _NEAR_FAILURES as e:
            logger.warning("near %s(%s) failed, asking far: %r", what, digest.hex(), e)
            found, near_error = None, e
        if found is not None:
            return found
        found = await far(digest)
        if found is None and near_error is not None:
            raise near_error
        return found

    async def has(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        found = await self._near_first("has", digest, _yes(self._near.has), _yes(self._far.has))
        return found is not None

    async def chunks(self, digest: DigestLike) -> list[ChunkMeta] | None:
        digest = B3Digest.coerce(digest)
        return await self._near_first("chunks", digest, self._near.chunks, self._far.chunks)

    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        digest = B3Digest.coerce(digest)
        return await self._near_first("open_read", digest, self._near.open_read, self._open_far)

    async def _open_far(self, digest: B3Digest) -> BlobReader | None:
        """A reader of far's blob that copies it into near (``None`` if far lacks it)."""
        far_chunks = await self._far.chunks(digest)
        if far_chunks is None:
            return None
        inner: BlobReader | None
        if far_chunks:
            inner = ChunkedReader(far_chunks, self, prefetch=self._prefetch)
            length: int | None = sum(c.size for c in far_chunks)
        else:
            inner = await self._far.open_read(digest)
            if inner is None:
                return None
            length = None
        return _PopulatingReader(self._near, digest, inner, length)

    # --- the chunk source (castore.reader.ChunkSource) ----------------------------------

    @property
    def read_timeout(self) -> float | None:
        """``None``: near's and far's own calls are bounded by their own timeouts."""
        return None

    async def fetch_chunk(self, meta: ChunkMeta) -> bytes:
        """One verified chunk: near's copy if it has a good one, else far's (copied)."""
        data = await self._near_chunk(meta)
        if data is not None:
            return data
        data = await read_chunk(self._far, meta)
        if data is None:
            raise BlobNotFoundError(f"chunk {meta.digest.hex()} is missing from far")
        try:
            stored = await self._near.put(data)
            if stored != meta.digest:
                logger.warning("near stored chunk %s as %s", meta.digest.hex(), stored.hex())
        except CastoreError as e:
            logger.warning("could not copy chunk %s into near: %r", meta.digest.hex(), e)
        return data

    async def _near_chunk(self, meta: ChunkMeta) -> bytes | None:
        try:
            return await read_chunk(self._near, meta)
        except _NEAR_FAILURES as e:
            logger.warning("near's chunk %s is unusable, reading far: %r", meta.digest.hex(), e)
            return None

    async def open_write(self) -> BlobWriter:
        near = await self._near.open_write()
        if not self.write_through:
            return near
        return _TeeWriter(near, await self._far.open_write())

    async def delete(self, digest: DigestLike) -> bool:
        """Delete from far, then from near; ``True`` if either held the blob.

        Either side's failure fails the call: a blob left on one side would still be
        read through this service. Far goes first so that a far that cannot delete (a
        gRPC client) leaves near as it was.
        """
        digest = B3Digest.coerce(digest)
        in_far = await self._far.delete(digest)
        in_near = await self._near.delete(digest)
        return in_near or in_far

    async def list_blobs(self, *, details: bool = False) -> AsyncIterator[BlobInfo]:
        """Near's blobs, then far's that near did not list (remembered by digest, so
        memory grows with near's listing)."""
        seen: set[B3Digest] = set()
        async for info in self._near.list_blobs(details=details):
            seen.add(info.digest)
            yield info
        async for info in self._far.list_blobs(details=details):
            if info.digest not in seen:
                yield info

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._near.aclose()
        finally:
            await self._far.aclose()


def _yes(
    has: Callable[[B3Digest], Awaitable[bool]],
) -> Callable[[B3Digest], Awaitable[bool | None]]:
    """``has`` as a lookup: ``True`` when found, ``None`` when not."""

    async def lookup(digest: B3Digest) -> bool | None:
        return True if await has(digest) else None

    return lookup


class _PopulatingReader(BlobReader):
    """Reads from far (``inner``) and feeds an in-order read into a near writer.

    ``_hashed_to`` is how far the bytes returned so far are exactly ``blob[0:_hashed_to]``;
    the whole-blob check and the near copy only follow such a prefix. A read that starts
    past it (after a seek forward) stops both; re-reading inside it changes nothing.
    ``length`` is known for a chunked blob; otherwise the end is a short read.
    """

    def __init__(
        self, near: BlobService, digest: B3Digest, inner: BlobReader, length: int | None
    ) -> None:
        self._near = near
        self._digest = digest
        self._inner = inner
        self._length = length
        self._hasher: blake3.blake3 | None = blake3.blake3(max_threads=1)
        self._hashed_to = 0
        self._writer: BlobWriter | None = None

    async def read(self, n: int = -1) -> bytes:
        start = self._inner.tell()
        data = await self._inner.read(n)
        if self._hasher is not None:
            try:
                await self._follow(start, data, n)
            except BaseException:
                await self._stop()
                raise
        return data

    async def _follow(self, start: int, data: bytes, n: int) -> None:
        assert self._hasher is not None
        end = start + len(data)
        if start > self._hashed_to:
            await self._stop()
            return
        if self._writer is None and self._hashed_to == 0:
            self._writer = await self._near.open_write()
        if end > self._hashed_to:
            new = data[self._hashed_to - start :] if start < self._hashed_to else data
            await hash_update(self._hasher, new)
            self._hashed_to = end
            await self._copy(new)
        at_end = end == self._length if self._length is not None else (n < 0 or len(data) < n)
        if at_end and end == self._hashed_to:
            await self._finish()

    async def _copy(self, new: bytes) -> None:
        if self._writer is None:
            return
        try:
            await self._writer.write(new)
        except CastoreError as e:
            logger.warning("could not copy blob %s into near: %r", self._digest.hex(), e)
            self._writer = None  # the failed write aborted it

    async def _finish(self) -> None:
        assert self._hasher is not None
        actual = self._hasher.digest()
        self._hasher = None
        writer, self._writer = self._writer, None
        if actual != self._digest.digest:
            if writer is not None:
                await writer.abort()
            raise DigestMismatchError(
                f"blob {self._digest.hex()}: far's bytes hash to {actual.hex()}"
            )
        if writer is None:
            return
        try:
            stored = await writer.close()
        except CastoreError as e:
            logger.warning("could not store blob %s in near: %r", self._digest.hex(), e)
            return
        if stored != self._digest:
            logger.warning("near stored blob %s as %s", self._digest.hex(), stored.hex())

    async def _stop(self) -> None:
        self._hasher = None
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.abort()

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return await self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    async def aclose(self) -> None:
        try:
            await self._stop()
        finally:
            await self._inner.aclose()


class _TeeWriter(BlobWriter):
    """Writes every piece to two writers; both must agree on the digest.

    Small pieces are gathered into pieces of :data:`_GATHER` bytes before they go to both
    sides, so a caller writing a byte at a time costs two writer calls per 64 KiB, not
    per byte (measured: 5000 one-byte writes through two object stores held the event
    loop for over half a second without this).
    """

    def __init__(self, near: BlobWriter, far: BlobWriter) -> None:
        self._near = near
        self._far = far
        self._pending = bytearray()

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if len(self._pending) + len(view) < _GATHER:
            self._pending += view
            return
        if self._pending:
            self._pending += view
            piece = bytes(self._pending)
            self._pending.clear()
        else:
            piece = bytes(view)  # both writers see the same immutable bytes
        await self._send(piece)

    async def _send(self, piece: bytes) -> None:
        # One after the other: writers buffer and return quickly, and a task group per
        # piece cost ~1 ms a write. close() runs both sides at once.
        await self._near.write(piece)
        await self._far.write(piece)

    async def _finish(self) -> B3Digest:
        if self._pending:
            piece = bytes(self._pending)
            self._pending.clear()
            await self._send(piece)
        near, far = await _both(self._near.close, self._far.close)
        if near != far:
            raise DigestMismatchError(
                f"write-through: near stored {near.hex()} but far stored {far.hex()}"
            )
        return near

    async def _abort(self) -> None:
        self._pending.clear()
        await self._near.abort()
        await self._far.abort()


async def _both(a: Callable[[], Awaitable[A]], b: Callable[[], Awaitable[B]]) -> tuple[A, B]:
    """Await ``a()`` and ``b()`` concurrently; raise the first plain error, not a group."""
    results: list[object] = [None, None]

    async def run(i: int, fn: Callable[[], Awaitable[object]]) -> None:
        results[i] = await fn()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, 0, a)
            tg.start_soon(run, 1, b)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        cancel = anyio.get_cancelled_exc_class()
        first = next((e for e in leaves if not isinstance(e, cancel)), leaves[0])
        for other in leaves:
            if other is not first and not isinstance(other, cancel):
                first.add_note(f"castore: the other side failed too: {other!r}")
        raise first from group
    return cast(A, results[0]), cast(B, results[1])


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            out.extend(_leaves(e))
        else:
            out.append(e)
    return out


register_type(
    "combined",
    CombinedBlobService,
    references=("near", "far"),
    options={"write_through": boolean(), "prefetch": integer()},
)
