"""``ObjectStoreBlobService``: blobs as FastCDC chunks in any obstore store, tvix's layout."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import anyio.to_thread
from obstore.store import (
    AzureStore,
    GCSStore,
    HTTPStore,
    LocalStore,
    MemoryStore,
    S3Store,
)

from castore._digest import EMPTY_DIGEST, B3Digest, ChunkMeta
from castore.blobservice import BlobReader, BlobService, BlobWriter, BytesReader
from castore.chunkedreader import DEFAULT_PREFETCH, ChunkedReader
from castore.errors import BlobNotFoundError, translate_store_error
from castore.objectstore._adapter import ObstoreAdapter, StoreAdapter
from castore.objectstore._chunker import (
    DEFAULT_AVG_CHUNK_SIZE,
    MAX_AVG_CHUNK_SIZE,
    MIN_AVG_CHUNK_SIZE,
)
from castore.objectstore._codec import decode_chunk, decode_index
from castore.objectstore._layout import Layout
from castore.objectstore._writer import ObjectStoreBlobWriter, PipelineConfig

if TYPE_CHECKING:
    from obstore.store import ObjectStore
    from typing_extensions import Buffer

__all__ = ["ObjectStoreBlobService"]

_OBSTORE_TYPES = (MemoryStore, LocalStore, S3Store, GCSStore, AzureStore, HTTPStore)

# Chunks a reader fetches ahead of its cursor on a remote store (S3, GCS, Azure, HTTP).
_REMOTE_PREFETCH = 16

# Indexes longer than this are decoded in a worker thread rather than on the loop.
_THREAD_DECODE_MIN = 64 << 10


class ObjectStoreBlobService(BlobService):
    """Blobs cut by FastCDC 2020 into zstd-compressed chunk objects in an obstore store.

    The bucket layout is tvix/snix castore's, key for key and byte for byte in the blob
    indexes, so Rust and Python nodes can share a bucket (see ``docs/objectstore.md``).

    ``store`` is an obstore store, or a :class:`~castore.objectstore.StoreAdapter` (to
    put a wrapper such as fault injection between the service and the store).
    ``prefix`` is prepended to every key. ``avg_chunk_size`` is FastCDC's average; the
    minimum is half of it and the maximum twice it. ``read_prefetch`` is how many
    chunks ahead of the cursor a reader fetches (by default 4 on memory and local disk,
    16 on remote stores, where each fetch waits for a round trip).

    The empty blob: ``has(EMPTY_DIGEST)`` is false and ``open_read`` returns ``None``
    until it has been written (which stores a 0-byte index), so that ``has(d)`` holds
    exactly when ``open_read(d)`` returns a reader. Rust returns empty data for it even
    when nothing was written; castore does not invent blobs.
    """

    def __init__(
        self,
        store: ObjectStore | StoreAdapter,
        prefix: str = "",
        avg_chunk_size: int = DEFAULT_AVG_CHUNK_SIZE,
        *,
        read_prefetch: int | None = None,
        pipeline: PipelineConfig | None = None,
    ) -> None:
        if isinstance(store, StoreAdapter):
            self._adapter = store
        elif isinstance(store, _OBSTORE_TYPES):
            self._adapter = ObstoreAdapter(store)
        else:
            raise TypeError(
                f"store must be an obstore store or a StoreAdapter, got {type(store).__name__}"
            )
        if (
            isinstance(avg_chunk_size, bool)
            or not isinstance(avg_chunk_size, int)
            or not MIN_AVG_CHUNK_SIZE <= avg_chunk_size <= MAX_AVG_CHUNK_SIZE
        ):
            raise ValueError(
                f"avg_chunk_size must be an integer from {MIN_AVG_CHUNK_SIZE} to "
                f"{MAX_AVG_CHUNK_SIZE}, got {avg_chunk_size!r}"
            )
        self._layout = Layout(prefix)
        self._prefix = prefix
        self.avg_chunk_size = avg_chunk_size
        self.min_chunk_size = avg_chunk_size // 2
        self.max_chunk_size = avg_chunk_size * 2
        # Chunks may come from writers with other settings; never accept one larger
        # than Rust's default maximum or this service's, whichever is larger.
        self._read_limit = max(self.max_chunk_size, 2 * DEFAULT_AVG_CHUNK_SIZE)
        if read_prefetch is None:
            # Remote stores answer in milliseconds, not microseconds: keep more in flight.
            read_prefetch = DEFAULT_PREFETCH if self._adapter.in_process else _REMOTE_PREFETCH
        self._prefetch = read_prefetch
        self._pipeline = pipeline or PipelineConfig()
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return (
            f"ObjectStoreBlobService({self._adapter!r}, prefix={self._prefix!r}, "
            f"avg_chunk_size={self.avg_chunk_size})"
        )

    @property
    def adapter(self) -> StoreAdapter:
        """The adapter every store call goes through."""
        return self._adapter

    # --- queries ------------------------------------------------------------------------

    async def has(self, digest: B3Digest) -> bool:
        for key in (self._layout.blob(digest.digest), self._layout.chunk(digest.digest)):
            try:
                if await self._adapter.exists_async(key):
                    return True
            except Exception as e:
                raise translate_store_error(e, f"checking {key}") from e
        return False

    async def chunks(self, digest: B3Digest) -> list[ChunkMeta] | None:
        """The blob's chunks; ``[]`` for a blob stored as one chunk.

        An old-style index that lists the blob itself as its only chunk also gives
        ``[]``: there is no finer chunking.
        """
        key = self._layout.blob(digest.digest)
        try:
            raw = await self._adapter.get_async(key)
        except Exception as e:
            raise translate_store_error(e, f"reading blob index {key}") from e
        if raw is None:
            ckey = self._layout.chunk(digest.digest)
            try:
                return [] if await self._adapter.exists_async(ckey) else None
            except Exception as e:
                raise translate_store_error(e, f"checking {ckey}") from e
        if len(memoryview(raw)) >= _THREAD_DECODE_MIN:
            found = await anyio.to_thread.run_sync(decode_index, raw, self._read_limit)
        else:
            found = decode_index(raw, self._read_limit)
        if len(found) == 1 and found[0].digest == digest:
            return []
        return found

    # --- reading ------------------------------------------------------------------------

    async def open_read(self, digest: B3Digest) -> BlobReader | None:
        found = await anyio.to_thread.run_sync(self._locate, digest)
        if found is None:
            return None
        if isinstance(found, bytes):
            return BytesReader(found)
        return ChunkedReader(
            found,
            self._fetch,
            prefetch=self._prefetch,
            verified_fetch=True,
            blob_digest=digest,
        )

    def _get(self, key: str, what: str) -> Buffer | None:
        try:
            return self._adapter.get(key)
        except Exception as e:
            raise translate_store_error(e, f"reading {what} {key}") from e

    def _locate(self, digest: B3Digest) -> bytes | list[ChunkMeta] | None:
        """In a worker: the verified bytes of a one-chunk blob, its chunk list, or None."""
        d = digest.digest
        ckey = self._layout.chunk(d)
        frame = self._get(ckey, "chunk")
        if frame is not None:
            return decode_chunk(frame, d, expected_size=None, max_size=self._read_limit)
        ikey = self._layout.blob(d)
        raw = self._get(ikey, "blob index")
        if raw is None:
            return None
        found = decode_index(raw, self._read_limit)
        if found:
            return found
        if digest == EMPTY_DIGEST:
            return b""
        # An index with no chunk list names a blob stored as one chunk. Writers store
        # the chunk before the index, so look again: it may have been written since.
        frame = self._get(ckey, "chunk")
        if frame is None:
            raise BlobNotFoundError(
                f"blob {digest.hex()}: its index exists but its chunk {ckey} is missing"
            )
        return decode_chunk(frame, d, expected_size=None, max_size=self._read_limit)

    def _fetch_sync(self, meta: ChunkMeta) -> bytes:
        d = meta.digest.digest
        key = self._layout.chunk(d)
        frame = self._get(key, "chunk")
        if frame is None:
            raise BlobNotFoundError(f"chunk {meta.digest.hex()} is missing ({key})")
        return decode_chunk(frame, d, expected_size=meta.size, max_size=self._read_limit)

    async def _fetch(self, meta: ChunkMeta) -> bytes:
        # One worker-thread hop: get, bounded decompression and verification.
        return await anyio.to_thread.run_sync(self._fetch_sync, meta)

    # --- writing ------------------------------------------------------------------------

    async def open_write(self) -> BlobWriter:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="castore-writer")
        return ObjectStoreBlobWriter(
            self._adapter, self._layout, self.avg_chunk_size, self._pool, self._pipeline
        )

    async def aclose(self) -> None:
        """Let the writer threads go once their queued work is done."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
