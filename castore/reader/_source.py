"""Where a :class:`~castore.reader.ChunkedReader` gets its chunks: :class:`ChunkSource`.

A chunk source fetches one chunk by its :class:`~castore.ChunkMeta` and returns its
bytes **verified** (BLAKE3 digest and size), or raises. A service that stores chunks
implements it (the object store, the combined and caching services); any other service
is read chunk by chunk through ``open_read`` with :func:`read_chunk`, which verifies what
it gets. A source that can fetch without the event loop (a store call that blocks in a
worker thread) also implements :class:`ThreadChunkSource`, and the reader then fetches
from a few long worker jobs instead of a hop between the loop and a thread per chunk,
each chunk decoded straight into a buffer the reader reuses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio.to_thread
import blake3

from castore._digest import ChunkMeta
from castore._threads import THRESHOLDS, run_sized
from castore.errors import BlobNotFoundError, DigestMismatchError

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from castore.blobservice import BlobService

__all__ = [
    "ChunkFetcher",
    "ChunkSource",
    "FunctionChunkSource",
    "ServiceChunkSource",
    "SyncChunkFetcher",
    "ThreadChunkSource",
    "read_chunk",
    "verify_chunk",
]

#: Fetches one chunk's bytes, verified or not (the reader verifies them when told).
ChunkFetcher = Callable[[ChunkMeta], Awaitable[bytes]]
#: Fetches one chunk's bytes in a worker thread.
SyncChunkFetcher = Callable[[ChunkMeta], bytes]


@runtime_checkable
class ChunkSource(Protocol):
    """Fetches verified chunks for a reader.

    ``read_timeout`` is how long a read may wait with no chunk arriving before it raises
    :class:`~castore.errors.StoreTimeoutError`; ``None`` when the source's own calls are
    bounded (a deadline on each request) or should wait for ever.
    """

    @property
    def read_timeout(self) -> float | None:
        """Seconds a read may wait with no chunk arriving, or ``None``."""
        ...

    async def fetch_chunk(self, meta: ChunkMeta) -> bytes:
        """The bytes of chunk ``meta``, checked against its digest and size.

        Raises :class:`~castore.errors.BlobNotFoundError` when the chunk is not stored,
        :class:`~castore.errors.DataCorruptionError` when what is stored is not it.
        """
        ...


@runtime_checkable
class ThreadChunkSource(ChunkSource, Protocol):
    """A :class:`ChunkSource` that can also fetch in worker threads, without the loop,
    straight into the reader's memory.

    In two steps, so that the reader chooses where a chunk goes only once the store has
    answered: :meth:`load_chunk` waits for the store, :meth:`decode_chunk_into` is CPU
    work of bounded length.
    """

    def load_chunk(self, meta: ChunkMeta) -> Buffer:
        """Chunk ``meta`` as stored (compressed, say); blocking, in a worker thread.

        The reader passes what this returns to :meth:`decode_chunk_into` before the same
        thread loads the next chunk, and keeps no reference to it afterwards: a source
        may return memory of the thread's own that its next call reuses.

        Raises :class:`~castore.errors.BlobNotFoundError` when it is not stored.
        """
        ...

    def decode_chunk_into(self, meta: ChunkMeta, stored: Buffer, out: memoryview) -> None:
        """Write chunk ``meta``, from what :meth:`load_chunk` returned, into ``out``
        (exactly ``meta.size`` bytes), verified against its digest.

        Raises :class:`~castore.errors.DataCorruptionError` when ``stored`` is not the
        chunk; ``out`` then holds garbage, which the reader drops.
        """
        ...


def verify_chunk(meta: ChunkMeta, data: bytes) -> bytes:
    """``data`` if it is the chunk ``meta`` names; else :class:`DigestMismatchError`."""
    if len(data) != meta.size:
        raise DigestMismatchError(
            f"chunk {meta.digest.hex()}: expected {meta.size} bytes, got {len(data)}"
        )
    actual = blake3.blake3(data, max_threads=1).digest()
    if actual != meta.digest.digest:
        raise DigestMismatchError(f"chunk {meta.digest.hex()}: data hashes to {actual.hex()}")
    return data


async def read_chunk(service: BlobService, meta: ChunkMeta) -> bytes | None:
    """Chunk ``meta`` from ``service``, verified; ``None`` if the service does not have it.

    Through :meth:`ChunkSource.fetch_chunk` when the service is a chunk source, else
    through ``open_read(meta.digest)``, verifying the bytes read (in a worker thread when
    they are large).
    """
    if isinstance(service, ChunkSource):
        try:
            return await service.fetch_chunk(meta)
        except BlobNotFoundError:
            return None
    reader = await service.open_read(meta.digest)
    if reader is None:
        return None
    async with reader:
        data = await reader.read()
    return await run_sized(len(data), THRESHOLDS.hash, verify_chunk, meta, data)


class ServiceChunkSource:
    """Any :class:`~castore.BlobService` as a :class:`ChunkSource`, by :func:`read_chunk`."""

    def __init__(self, service: BlobService) -> None:
        self.service = service

    @property
    def read_timeout(self) -> float | None:
        return None

    async def fetch_chunk(self, meta: ChunkMeta) -> bytes:
        data = await read_chunk(self.service, meta)
        if data is None:
            raise BlobNotFoundError(f"chunk {meta.digest.hex()} is missing")
        return data


class FunctionChunkSource:
    """A :class:`ChunkSource` made of a fetch function, whose bytes it verifies.

    ``verified=True`` says the function verifies them itself. ``timeout`` is the
    source's ``read_timeout``.
    """

    def __init__(
        self, fetch: ChunkFetcher, *, verified: bool = False, timeout: float | None = None
    ) -> None:
        self._fetch = fetch
        self._verified = verified
        self._timeout = timeout

    @property
    def read_timeout(self) -> float | None:
        return self._timeout

    async def fetch_chunk(self, meta: ChunkMeta) -> bytes:
        data = await self._fetch(meta)
        if not self._verified:
            data = await anyio.to_thread.run_sync(verify_chunk, meta, data)
        return data


class ThreadFunctionChunkSource(FunctionChunkSource):
    """A :class:`FunctionChunkSource` with a blocking fetch function for worker threads."""

    def __init__(
        self,
        fetch: ChunkFetcher,
        fetch_sync: SyncChunkFetcher,
        *,
        verified: bool = False,
        timeout: float | None = None,
    ) -> None:
        super().__init__(fetch, verified=verified, timeout=timeout)
        self._fetch_sync = fetch_sync

    def load_chunk(self, meta: ChunkMeta) -> bytes:
        return self._fetch_sync(meta)

    def decode_chunk_into(self, meta: ChunkMeta, stored: Buffer, out: memoryview) -> None:
        data = bytes(stored)
        if not self._verified:
            verify_chunk(meta, data)
        elif len(data) != len(out):
            raise DigestMismatchError(
                f"chunk {meta.digest.hex()}: expected {meta.size} bytes, got {len(data)}"
            )
        out[:] = data
