"""The abstract interface: :class:`BlobService`, :class:`BlobReader`, :class:`BlobWriter`.

These mirror the Rust ``BlobService`` trait of tvix/snix castore, async-only. ``None``
means absent; exceptions (from :mod:`castore.errors`) mean failure.
``docs/architecture.md`` shows how the backends, wrappers and ways in fit around them.
"""

from __future__ import annotations

import abc
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

import anyio.abc
import anyio.lowlevel

from castore._digest import B3Digest, ChunkMeta, DigestLike
from castore.errors import (
    CastoreError,
    InvalidSeekError,
    UnsupportedOperationError,
    WriteAbortedError,
    WriterClosedError,
)

__all__ = [
    "AsyncResource",
    "BlobInfo",
    "BlobReader",
    "BlobService",
    "BlobWriter",
    "BytesReader",
    "WriteStats",
    "seek_target",
]

#: Block size for ``async for`` over a reader that has no natural blocks.
DEFAULT_BLOCK = 256 * 1024


class AsyncResource(anyio.abc.AsyncResource):
    """An :class:`anyio.abc.AsyncResource`: ``async with`` around :meth:`aclose`, which
    subclasses override when they hold anything (tasks, connections, buffers)."""

    async def aclose(self) -> None:
        """Release what the object holds. Safe to call more than once."""


class BlobReader(AsyncResource, abc.ABC):
    """A seekable reader over one blob's bytes; an async resource.

    Every byte it returns has been verified against the blob's digest (per chunk for
    chunked blobs, as the whole blob for a single-chunk blob).
    """

    @abc.abstractmethod
    async def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all remaining when ``n < 0``); ``b""`` at the end.

        Fewer than ``n`` bytes are returned only at the end of the blob.
        """

    @abc.abstractmethod
    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position; returns the new absolute position."""

    @abc.abstractmethod
    def tell(self) -> int:
        """The current position."""

    async def aclose(self) -> None:
        """Release what the reader holds (prefetches, connections)."""

    async def readinto(self, buf: bytearray | memoryview) -> int:
        """Read into ``buf``; returns the number of bytes written to it."""
        view = memoryview(buf).cast("B")
        data = await self.read(len(view))
        view[: len(data)] = data
        return len(data)

    async def readall(self) -> bytes:
        """Everything from the current position to the end."""
        return await self.read(-1)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._blocks()

    async def _blocks(self) -> AsyncIterator[bytes]:
        while block := await self.read(DEFAULT_BLOCK):
            yield block


class BlobWriter(AsyncResource, abc.ABC):
    """Accepts a blob's bytes; :meth:`close` stores it and returns its digest.

    An async resource like a reader: :meth:`aclose` aborts a writer that is still open
    and does nothing after :meth:`close`. Subclasses implement :meth:`_write`,
    :meth:`_finish` and :meth:`_abort`; this class keeps the state machine every writer
    shares: writing after close raises :class:`~castore.errors.WriterClosedError`; a
    second :meth:`close` returns the cached digest or raises the cached error again;
    ``async with`` closes on a clean exit and aborts (storing nothing) on an exception.
    """

    _digest: B3Digest | None = None
    _error: BaseException | None = None
    _closed: bool = False

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; returns ``len(data)``. May wait (backpressure)."""
        if self._closed:
            raise WriterClosedError("write() on a closed writer")
        n = len(memoryview(data).cast("B"))
        if n == 0:
            return 0
        try:
            await self._write(data)
        except BaseException as e:
            # A failed or cancelled write poisons the writer: close() must not store a
            # blob that lacks bytes the caller believes were written.
            self._closed = True
            self._error = (
                e
                if isinstance(e, CastoreError | OSError)
                else WriteAbortedError(f"a write was interrupted ({type(e).__name__})")
            )
            await self._abort()
            raise
        return n

    async def close(self) -> B3Digest:
        """Finish the blob and return its digest (cached; safe to call again)."""
        if self._closed:
            return self._cached()
        self._closed = True
        try:
            self._digest = await self._finish()
        except BaseException as e:
            # A cancelled close() stored nothing; a later close() must say so, not
            # re-raise the cancellation into a caller that was not cancelled.
            self._error = (
                e
                if isinstance(e, Exception)
                else WriteAbortedError(f"close() was interrupted ({type(e).__name__})")
            )
            await self._abort()
            raise
        return self._digest

    async def abort(self) -> None:
        """Discard the blob: no index is written. Idempotent; a no-op after a close."""
        if self._closed:
            return
        self._closed = True
        self._error = WriteAbortedError("the writer was aborted; nothing was stored")
        await self._abort()

    async def aclose(self) -> None:
        """Release the writer: abort it if it is still open (nothing is stored), else
        nothing. Use :meth:`close` to store the blob."""
        await self.abort()

    @property
    def new_bytes(self) -> int | None:
        """After a successful :meth:`close`: how many of the blob's bytes this writer added
        to the store, uncompressed (chunks that were already stored do not count, so
        storing a blob again gives 0); ``None`` before that, or when the backend cannot
        tell."""
        return None

    @property
    def write_stats(self) -> WriteStats | None:
        """After a successful :meth:`close`: how many chunks the blob was cut into and how
        many of them this writer stored (see :class:`WriteStats`); ``None`` before that,
        or for a backend that stores no chunks of its own or cannot tell (memory, a gRPC
        server)."""
        return None

    def _cached(self) -> B3Digest:
        if self._digest is not None:
            return self._digest
        if self._error is not None:
            raise self._error
        raise WriteAbortedError("the writer is closing")

    @abc.abstractmethod
    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Accept non-empty data. The writer may keep a reference only to a copy."""

    @abc.abstractmethod
    async def _finish(self) -> B3Digest:
        """Store everything written and return the digest."""

    @abc.abstractmethod
    async def _abort(self) -> None:
        """Drop everything; must be idempotent and must not raise."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
        else:
            await self.abort()


class BlobService(AsyncResource, abc.ABC):
    """A content-addressed blob store, addressed by BLAKE3 digest."""

    @abc.abstractmethod
    async def has(self, digest: DigestLike) -> bool:
        """True if the blob is stored (on chunking backends, also for a chunk digest)."""

    @abc.abstractmethod
    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        """A reader over the blob, or ``None`` if it is not stored."""

    @abc.abstractmethod
    async def open_write(self) -> BlobWriter:
        """A new writer. Never fails here: errors surface on ``write`` or ``close``."""

    async def chunks(self, digest: DigestLike) -> list[ChunkMeta] | None:
        """The blob's chunks: ``None`` if absent, ``[]`` if stored with no finer chunking."""
        digest = B3Digest.coerce(digest)
        return [] if await self.has(digest) else None

    async def delete(self, digest: DigestLike) -> bool:
        """Remove the blob as a root; ``True`` if it was stored, ``False`` if not.

        Services that own their storage implement it (memory, object store; combined
        deletes from near and far; wrappers forward). The default raises
        :class:`~castore.errors.UnsupportedOperationError`, as the gRPC client does: the
        tvix protocol has no delete.

        On a chunking store (the object store) delete removes the blob's index at once
        and leaves its chunks for garbage collection, because every chunk stays readable
        under its own digest: tvix clients read a blob chunk by chunk, and another blob
        may use the same chunk. So after deleting a blob of two or more chunks, ``has``
        is false and ``open_read`` and ``chunks`` give ``None`` at once; a blob stored as
        one chunk (its chunk carries its own digest) stays readable by that digest until
        garbage collection reclaims the chunk, and for as long as another blob uses it.
        Either way the blob is no longer listed, and no other blob is affected. Erasing
        bytes is delete, then garbage collection (``docs/lifecycle.md``).
        """
        raise UnsupportedOperationError(f"{type(self).__name__} cannot delete blobs")

    async def list_blobs(self, *, details: bool = False) -> AsyncIterator[BlobInfo]:
        """Every stored blob, as :class:`BlobInfo`, in no particular order.

        ``details=True`` also fills in each blob's size and chunk count, which costs a
        read of each blob's index on a chunking store. Blobs written or deleted while the
        listing runs may or may not appear. The default raises
        :class:`~castore.errors.UnsupportedOperationError` (the tvix protocol cannot
        list).
        """
        raise UnsupportedOperationError(f"{type(self).__name__} cannot list blobs")
        yield  # pragma: no cover - makes this an async generator

    async def put(self, data: bytes | bytearray | memoryview) -> B3Digest:
        """Convenience: write ``data`` as one blob and return its digest."""
        async with await self.open_write() as w:
            await w.write(data)
        return await w.close()

    async def get(self, digest: DigestLike) -> bytes | None:
        """Convenience: the whole blob, or ``None`` if it is not stored."""
        digest = B3Digest.coerce(digest)
        reader = await self.open_read(digest)
        if reader is None:
            return None
        async with reader:
            return await reader.read()

    async def aclose(self) -> None:
        """Release connections and background resources."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One stored blob, as :meth:`BlobService.list_blobs` reports it.

    ``size`` (bytes) and ``chunk_count`` are ``None`` unless details were asked for, or
    where the service cannot tell: a backend that stores whole blobs (memory) has no
    chunk count; a blob whose index or only chunk cannot be read has neither. The chunk
    count is the number of chunk objects holding the blob: 0 for the empty blob, 1 for
    a blob stored as one chunk.
    """

    digest: B3Digest
    size: int | None = None
    chunk_count: int | None = None


@dataclass(frozen=True, slots=True)
class WriteStats:
    """What one writer's :meth:`~BlobWriter.close` stored, from :attr:`BlobWriter.write_stats`.

    ``chunks`` counts the chunks the blob was cut into, repeats included (the entries of
    its index; 1 for a blob stored as one chunk, 0 for the empty blob); ``new_chunks``
    those this writer stored, and ``new_bytes`` their uncompressed bytes. Every other
    chunk was deduplicated: it was stored already, by another writer or earlier in the
    same blob. A server counts these to report how much of what it receives is new.
    """

    chunks: int
    new_chunks: int
    new_bytes: int

    @property
    def deduplicated_chunks(self) -> int:
        """The blob's chunks that were stored already (``chunks - new_chunks``)."""
        return self.chunks - self.new_chunks


class BytesReader(BlobReader):
    """A cursor over bytes already in memory (and already verified)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        # Data in memory needs no wait, but every read is a cancellation point and lets
        # other tasks run, as a read from a real store would.
        await anyio.lowlevel.checkpoint()
        start = self._pos
        end = len(self._data) if n < 0 else min(len(self._data), start + n)
        if end <= start:
            return b""
        self._pos = end
        return self._data[start:end]

    async def readinto(self, buf: bytearray | memoryview) -> int:
        await anyio.lowlevel.checkpoint()
        view = memoryview(buf).cast("B")
        start = self._pos
        end = min(len(self._data), start + len(view))
        if end <= start:
            return 0
        view[: end - start] = memoryview(self._data)[start:end]
        self._pos = end
        return end - start

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = seek_target(offset, whence, self._pos, len(self._data))
        self._pos = target  # past the end is allowed and reads b""
        return target

    def tell(self) -> int:
        return self._pos


def seek_target(offset: int, whence: int, pos: int, length: int) -> int:
    """The absolute position a ``seek(offset, whence)`` asks for, from position ``pos``
    in a blob of ``length`` bytes; raises
    :class:`~castore.errors.InvalidSeekError` for a bad ``whence`` or a negative target.
    Whether a target past the end is allowed is the reader's decision."""

    if whence == io.SEEK_SET:
        target = offset
    elif whence == io.SEEK_CUR:
        target = pos + offset
    elif whence == io.SEEK_END:
        target = length + offset
    else:
        raise InvalidSeekError(f"invalid whence {whence!r} (expected 0, 1 or 2)")
    if target < 0:
        raise InvalidSeekError(f"seek to negative position {target}")
    return target


#: The private spelling of :func:`seek_target`, for code that imported it.
_seek_target = seek_target
