"""``MemoryBlobService``: blobs in a dict, for tests and as the model other backends match.

A blob is kept as the parts it was written in, never joined into one object: joining a
large blob at ``close`` copied all of it into fresh memory on the event loop (in a profile
of ``castore serve --store memory://`` receiving 256 MiB over gRPC, the join took 0.63 s
of a 1.4 s transfer). Writes of :data:`_PART_MIN` bytes or more become parts of their
own, smaller ones are gathered into parts of that size. Reads return a part itself when
they take exactly one (a server streaming the blob in the size it was written in copies
nothing), and copy otherwise.

A worker thread hashes the parts 4 MiB a hop (:class:`~castore._threads.BatchHasher`),
while the next 4 MiB arrive, and copies each read-only view of ``bytes`` it is given (a
received gRPC message's payload) into ``bytes`` of its own: the first touch of the fresh
memory a kept blob needs (about 0.6 ms of CPU per MiB on the project's VMs) then happens
in that thread's CPU time, and the message's own buffer is freed for reuse. CPython holds
the GIL while it copies into new ``bytes``, so the copy does not run beside the event
loop's Python code; it runs in pieces of 256 KiB, between which the loop goes on.
``bytes`` are kept as they are; a mutable buffer is copied before
:meth:`~castore.BlobWriter.write` returns.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import AsyncIterator, Sequence
from urllib.parse import SplitResult

import anyio.lowlevel

from castore._digest import B3Digest, DigestLike
from castore._threads import THRESHOLDS, BatchHasher, run_sized
from castore.blobservice import BlobInfo, BlobReader, BlobService, BlobWriter, seek_target
from castore.errors import InvalidAddressError
from castore.registry import register_scheme, register_type

__all__ = ["MemoryBlobService"]


# A listing lets other tasks run after this many blobs.
_LIST_BATCH = 1000
#: Writes of this size or more are kept as parts of their own; smaller ones are gathered.
_PART_MIN = 64 << 10
#: A writer lets other tasks run after this many writes that did not wait for anything.
#: Not after every write: a gRPC server's ``Put`` waits for each message anyway, and a
#: pass through the event loop per 256 KiB message cost it about 0.1 ms of CPU per MiB.
_QUIET_WRITES = 16

#: One part of a stored blob: immutable bytes, or a read-only view of a ``bytes`` object.
Part = bytes | memoryview


class _Blob:
    """A stored blob: its parts in order and where each ends."""

    __slots__ = ("ends", "parts", "size")

    def __init__(self, parts: Sequence[Part]) -> None:
        self.parts = tuple(parts)
        ends, size = [], 0
        for part in self.parts:
            size += len(part)
            ends.append(size)
        self.ends = ends
        self.size = size

    def pieces(self, start: int, end: int) -> list[Part]:
        """Views (or whole parts) covering ``[start, end)``, which lies inside the blob."""
        i = bisect.bisect_right(self.ends, start)
        out: list[Part] = []
        while start < end:
            part = self.parts[i]
            part_start = self.ends[i] - len(part)
            stop = min(end, self.ends[i])
            if start == part_start and stop == self.ends[i]:
                out.append(part)
            else:
                out.append(memoryview(part)[start - part_start : stop - part_start])
            start = stop
            i += 1
        return out

    async def read(self, start: int, end: int) -> bytes:
        """The bytes of ``[start, end)``: a part itself when it is exactly one."""
        pieces = self.pieces(start, end)
        if len(pieces) == 1 and type(pieces[0]) is bytes:
            return pieces[0]
        return await run_sized(end - start, THRESHOLDS.join, b"".join, pieces)

    async def copy_into(self, start: int, end: int, view: memoryview) -> None:
        """Copy ``[start, end)`` to the front of ``view``."""
        await run_sized(end - start, THRESHOLDS.join, _copy, self.pieces(start, end), view)


def _copy(pieces: list[Part], view: memoryview) -> None:
    at = 0
    for piece in pieces:
        view[at : at + len(piece)] = piece
        at += len(piece)


class MemoryBlobService(BlobService):
    """Whole blobs in process memory. ``memory://`` in :func:`castore.from_addr`.

    Blobs are not chunked, so :meth:`chunks` returns ``[]`` for a stored blob, and
    :meth:`delete` removes a blob's bytes at once: ``has`` is false afterwards, whatever
    the blob's size (a blob stored in one piece has no chunk to outlive it). Listings
    give sizes but no chunk count.
    """

    def __init__(self) -> None:
        self._blobs: dict[B3Digest, _Blob] = {}

    async def has(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        return digest in self._blobs

    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        digest = B3Digest.coerce(digest)
        blob = self._blobs.get(digest)
        return None if blob is None else _PartsReader(blob)

    async def open_write(self) -> BlobWriter:
        return _MemoryWriter(self._blobs)

    async def delete(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        await anyio.lowlevel.checkpoint()
        return self._blobs.pop(digest, None) is not None

    async def list_blobs(self, *, details: bool = False) -> AsyncIterator[BlobInfo]:
        # A snapshot: blobs written or deleted meanwhile do not disturb the iteration.
        items = list(self._blobs.items())
        for i, (digest, blob) in enumerate(items):
            if i % _LIST_BATCH == 0:
                await anyio.lowlevel.checkpoint()
            yield BlobInfo(digest, blob.size) if details else BlobInfo(digest)

    def __len__(self) -> int:
        return len(self._blobs)


class _PartsReader(BlobReader):
    """A cursor over a stored blob's parts."""

    def __init__(self, blob: _Blob) -> None:
        self._blob = blob
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        # Every read is a cancellation point and lets other tasks run, as a read from a
        # real store would.
        await anyio.lowlevel.checkpoint()
        start, size = self._pos, self._blob.size
        end = size if n < 0 else min(size, start + n)
        if end <= start:
            return b""
        self._pos = end
        return await self._blob.read(start, end)

    async def readinto(self, buf: bytearray | memoryview) -> int:
        await anyio.lowlevel.checkpoint()
        view = memoryview(buf).cast("B")
        start = self._pos
        end = min(self._blob.size, start + len(view))
        if end <= start:
            return 0
        await self._blob.copy_into(start, end, view)
        self._pos = end
        return end - start

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = seek_target(offset, whence, self._pos, self._blob.size)
        self._pos = target  # past the end is allowed and reads b""
        return target

    def tell(self) -> int:
        return self._pos


async def _kept(data: bytes | bytearray | memoryview, view: memoryview) -> Part:
    """An immutable part holding ``data``'s bytes: ``data`` itself when it is ``bytes``, a
    view of its own when ``data`` is a read-only view of ``bytes`` (the hashing thread
    copies it), else a copy (in a worker thread when large)."""
    if type(data) is bytes:
        return data
    if view.readonly and type(view.obj) is bytes:
        return view[:]  # a view of our own: the caller may release theirs
    return await run_sized(len(view), THRESHOLDS.join, bytes, view)


class _MemoryWriter(BlobWriter):
    def __init__(self, blobs: dict[B3Digest, _Blob]) -> None:
        self._blobs = blobs
        self._small = bytearray()  # small writes, gathered into a part of _PART_MIN bytes
        # Hashes the parts and copies views into bytes of their own, in a worker thread.
        self._hasher = BatchHasher(own=True)
        self._quiet = 0
        self._new_bytes: int | None = None

    @property
    def new_bytes(self) -> int | None:
        return self._new_bytes

    async def _add(self, part: Part) -> None:
        await self._hasher.add(part)

    async def _flush_small(self) -> None:
        if self._small:
            part = bytes(self._small)
            self._small.clear()
            await self._add(part)

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if len(view) >= _PART_MIN:
            await self._flush_small()
            await self._add(await _kept(data, view))
        else:
            self._small += view
            if len(self._small) >= _PART_MIN:
                await self._flush_small()
        self._quiet += 1
        if self._quiet >= _QUIET_WRITES:
            self._quiet = 0
            await anyio.lowlevel.checkpoint()

    async def _finish(self) -> B3Digest:
        await self._flush_small()
        digest = B3Digest(await self._hasher.digest())
        blob = _Blob(self._hasher.pieces)
        self._hasher.pieces = []
        if digest not in self._blobs:
            self._blobs[digest] = blob
            self._new_bytes = blob.size
        else:
            self._new_bytes = 0
        return digest

    async def _abort(self) -> None:
        self._hasher = BatchHasher(own=True)
        self._small = bytearray()


def _from_url(parts: SplitResult) -> BlobService:
    if parts.netloc or parts.path or parts.query or parts.fragment:
        raise InvalidAddressError(
            "memory:// takes no host, path or options, got "
            f"{parts.scheme + '://' + parts.netloc + parts.path!r}; use 'memory://'"
        )
    return MemoryBlobService()


register_scheme("memory", _from_url)
register_type("memory", MemoryBlobService)
