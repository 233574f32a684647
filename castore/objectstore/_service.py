"""``ObjectStoreBlobService``: blobs as FastCDC chunks in any obstore store, tvix's layout."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import anyio.to_thread
from obstore.store import (
    AzureStore,
    GCSStore,
    HTTPStore,
    LocalStore,
    MemoryStore,
    S3Store,
)

from castore._digest import EMPTY_DIGEST, B3Digest, ChunkMeta, DigestLike
from castore._threads import THRESHOLDS, cpu_pool, run_sized
from castore.blobservice import BlobInfo, BlobReader, BlobService, BlobWriter, BytesReader
from castore.errors import BlobNotFoundError, StoreTimeoutError
from castore.objectstore._adapter import ObstoreAdapter, StoreAdapter
from castore.objectstore._check import Check, CheckProgress
from castore.objectstore._check_types import Subset
from castore.objectstore._chunker import (
    DEFAULT_AVG_CHUNK_SIZE,
    MAX_AVG_CHUNK_SIZE,
    MIN_AVG_CHUNK_SIZE,
)
from castore.objectstore._codec import decode_chunk, decode_chunk_into, decode_index
from castore.objectstore._gc import DEFAULT_GRACE, GcReport, collect_garbage
from castore.objectstore._gc_mark import Progress
from castore.objectstore._gc_state import DEFAULT_LEASE
from castore.objectstore._gc_writer import GcWatch
from castore.objectstore._layout import Layout
from castore.objectstore._listing import StoreCalls, list_blobs
from castore.objectstore._repair import Repairer
from castore.objectstore._writer import PUT_THREADS_PER_CPU, ObjectStoreBlobWriter, PipelineConfig
from castore.reader import ChunkedReader

if TYPE_CHECKING:
    from obstore.store import ObjectStore
    from typing_extensions import Buffer

__all__ = ["DEFAULT_TIMEOUT", "ObjectStoreBlobService"]

#: Seconds one store call of a lookup or a read (a HEAD, an index, a chunk) may take.
DEFAULT_TIMEOUT = 60.0

_OBSTORE_TYPES = (MemoryStore, LocalStore, S3Store, GCSStore, AzureStore, HTTPStore)

# Chunks a reader fetches ahead of its cursor on a remote store (S3, GCS, Azure, HTTP).
_REMOTE_PREFETCH = 16
# On memory and local disk, where fetching is CPU work: two fetches at once, one per core
# (more measured slower on two cores); a large read also fetches as far ahead as it reads.
_LOCAL_PREFETCH = 1

_A = TypeVar("_A")
_R = TypeVar("_R")


class ObjectStoreBlobService(BlobService):
    """Blobs cut by FastCDC 2020 into zstd-compressed chunk objects in an obstore store.

    The bucket layout is tvix/snix castore's, key for key and byte for byte in the blob
    indexes, so Rust and Python nodes can share a bucket (see ``docs/objectstore.md``).

    ``store`` is an obstore store, or a :class:`~castore.objectstore.StoreAdapter` (to
    put a wrapper such as fault injection between the service and the store).
    ``prefix`` is prepended to every key. ``avg_chunk_size`` is FastCDC's average; the
    minimum is half of it and the maximum twice it. ``read_prefetch`` is how many
    chunks ahead of the end of each read a reader fetches (by default 1 on memory and
    local disk, where a fetch is CPU work, 16 on remote stores, where each fetch waits for
    a round trip; a read also fetches ahead as many bytes as it asked for). ``timeout`` bounds
    each store call of a lookup or a read (``has``, ``chunks``, opening a blob, fetching
    one chunk): past it the call raises :class:`~castore.errors.StoreTimeoutError`, so a
    store that stops answering cannot hang a reader; ``None`` waits for ever. Writes are
    bounded by the store client's own timeouts and by cancellation.

    The empty blob: ``has(EMPTY_DIGEST)`` is false and ``open_read`` returns ``None``
    until it has been written (which stores a 0-byte index), so that ``has(d)`` holds
    exactly when ``open_read(d)`` returns a reader. Rust returns empty data for it even
    when nothing was written; castore does not invent blobs. Deleting it removes that
    index, and it is absent again.
    """

    def __init__(
        self,
        store: ObjectStore | StoreAdapter,
        prefix: str = "",
        avg_chunk_size: int = DEFAULT_AVG_CHUNK_SIZE,
        *,
        read_prefetch: int | None = None,
        pipeline: PipelineConfig | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout}")
        self.timeout = timeout
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
        self._calls = StoreCalls(self._adapter, timeout)
        self._prefix = prefix
        self.avg_chunk_size = avg_chunk_size
        self.min_chunk_size = avg_chunk_size // 2
        self.max_chunk_size = avg_chunk_size * 2
        # Chunks may come from writers with other settings; never accept one larger
        # than Rust's default maximum or this service's, whichever is larger.
        self._read_limit = max(self.max_chunk_size, 2 * DEFAULT_AVG_CHUNK_SIZE)
        if read_prefetch is None:
            # Remote stores answer in milliseconds, not microseconds: keep more in flight.
            read_prefetch = _LOCAL_PREFETCH if self._adapter.in_process else _REMOTE_PREFETCH
        self._prefetch = read_prefetch
        self._pipeline = pipeline or PipelineConfig()
        self._pool: ThreadPoolExecutor | None = None
        self._put_pool: ThreadPoolExecutor | None = None
        # The garbage collector's state as this service's writers see it.
        self._gc_watch = GcWatch(self._adapter, self._layout, self._read_limit)

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

    def _timed_out(self, what: str) -> StoreTimeoutError:
        return StoreTimeoutError(f"{what}: the store did not answer within {self.timeout} s")

    async def _exists(self, key: str) -> bool:
        with anyio.move_on_after(self.timeout):
            return await self._adapter.exists_async(key)
        raise self._timed_out(f"checking {key}")

    async def has(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        for key in (self._layout.blob(digest.digest), self._layout.chunk(digest.digest)):
            if await self._exists(key):
                return True
        return False

    async def chunks(self, digest: DigestLike) -> list[ChunkMeta] | None:
        """The blob's chunks; ``[]`` for a blob stored as one chunk.

        An old-style index that lists the blob itself as its only chunk also gives
        ``[]``: there is no finer chunking.
        """
        digest = B3Digest.coerce(digest)
        key = self._layout.blob(digest.digest)
        raw: Buffer | None = None
        with anyio.move_on_after(self.timeout) as scope:
            raw = await self._adapter.get_async(key)
        if scope.cancelled_caught:
            raise self._timed_out(f"reading blob index {key}")
        if raw is None:
            return [] if await self._exists(self._layout.chunk(digest.digest)) else None
        size = len(memoryview(raw))
        found = await run_sized(size, THRESHOLDS.decode_index, decode_index, raw, self._read_limit)
        if len(found) == 1 and found[0].digest == digest:
            return []
        return found

    # --- reading ------------------------------------------------------------------------

    async def _in_thread(self, what: str, fn: Callable[[_A], _R], arg: _A) -> _R:
        """``fn(arg)`` in a worker thread, given up after ``timeout`` seconds.

        A store call in a thread cannot be interrupted: on a timeout (or a cancel) the
        thread is left to finish on its own and its result is dropped.
        """
        with anyio.move_on_after(self.timeout):
            return await anyio.to_thread.run_sync(fn, arg, abandon_on_cancel=True)
        raise self._timed_out(what)

    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        digest = B3Digest.coerce(digest)
        found = await self._in_thread(f"opening blob {digest.hex()}", self._locate, digest)
        if found is None:
            return None
        if isinstance(found, bytes):
            return BytesReader(found)
        # The service is the reader's chunk source; as a ThreadChunkSource it is read by
        # thread pullers, which fetch runs of chunks per worker job, not a hop per chunk.
        return ChunkedReader(found, self, prefetch=self._prefetch, blob_digest=digest)

    def _locate(self, digest: B3Digest) -> bytes | list[ChunkMeta] | None:
        """In a worker: the verified bytes of a one-chunk blob, its chunk list, or None."""
        d = digest.digest
        ckey = self._layout.chunk(d)
        frame = self._adapter.get(ckey)
        if frame is not None:
            return decode_chunk(frame, d, expected_size=None, max_size=self._read_limit)
        ikey = self._layout.blob(d)
        raw = self._adapter.get(ikey)
        if raw is None:
            return None
        found = decode_index(raw, self._read_limit)
        if found:
            return found
        if digest == EMPTY_DIGEST:
            return b""
        # An index with no chunk list names a blob stored as one chunk. Writers store
        # the chunk before the index, so look again: it may have been written since.
        frame = self._adapter.get(ckey)
        if frame is None:
            raise BlobNotFoundError(
                f"blob {digest.hex()}: its index exists but its chunk {ckey} is missing"
            )
        return decode_chunk(frame, d, expected_size=None, max_size=self._read_limit)

    # --- the chunk source (castore.reader.ThreadChunkSource) ------------------------------

    @property
    def read_timeout(self) -> float | None:
        """How long a read may wait with no chunk arriving: the service's ``timeout``.

        A store call in a worker thread cannot be interrupted; past this the read raises
        :class:`~castore.errors.StoreTimeoutError` and the thread is left behind.
        """
        return self.timeout

    def _chunk_frame(self, meta: ChunkMeta, *, transient: bool = False) -> Buffer:
        key = self._layout.chunk(meta.digest.digest)
        frame = (self._adapter.get_transient if transient else self._adapter.get)(key)
        if frame is None:
            raise BlobNotFoundError(f"chunk {meta.digest.hex()} is missing ({key})")
        return frame

    def load_chunk(self, meta: ChunkMeta) -> Buffer:
        """Chunk ``meta``'s zstd frame, fetched from the store; blocking. Valid until this
        thread's next ``load_chunk`` (:meth:`StoreAdapter.get_transient`)."""
        return self._chunk_frame(meta, transient=True)

    def decode_chunk_into(self, meta: ChunkMeta, stored: Buffer, out: memoryview) -> None:
        """Decompress a chunk frame into ``out`` (bounded by its length) and verify it."""
        decode_chunk_into(stored, meta.digest.digest, out)

    def _fetch_sync(self, meta: ChunkMeta) -> bytes:
        frame = self._chunk_frame(meta)
        d = meta.digest.digest
        return decode_chunk(frame, d, expected_size=meta.size, max_size=self._read_limit)

    async def fetch_chunk(self, meta: ChunkMeta) -> bytes:
        """Chunk ``meta``, verified, in one worker-thread hop bounded by ``timeout``."""
        what = f"reading chunk {meta.digest.hex()}"
        return await self._in_thread(what, self._fetch_sync, meta)

    # --- writing ------------------------------------------------------------------------

    async def open_write(self) -> BlobWriter:
        if self._pool is None:
            # One worker a CPU: a job is CPU work from start to end (on memory and local
            # disk the puts too), so more workers would only take turns.
            self._pool = cpu_pool("castore-writer")
        if self._put_pool is None and self._adapter.overlap_puts:
            # Local disk: a put waits on the file system (a new file, often a new folder,
            # per chunk); a few threads put while the workers hash and compress.
            self._put_pool = cpu_pool("castore-writer-put", per_cpu=PUT_THREADS_PER_CPU)
        return ObjectStoreBlobWriter(
            self._adapter,
            self._layout,
            self.avg_chunk_size,
            self._pool,
            self._pipeline,
            self._put_pool,
            self._gc_watch,
        )

    # --- garbage collection ---------------------------------------------------------------

    async def collect_garbage(
        self,
        *,
        grace: float = DEFAULT_GRACE,
        min_age: float | None = None,
        dry_run: bool = False,
        lease: float = DEFAULT_LEASE,
        progress: Progress | None = None,
    ) -> GcReport:
        """Delete chunk objects that no blob index names, safely beside running writers.

        One run sweeps the generation of chunks condemned by an earlier run at least
        ``grace`` seconds ago (deleting those still unnamed and not rescued by a writer
        since), and, if none is left pending, condemns a new generation: the chunks no
        index names whose LastModified is older than ``min_age`` seconds (default: the
        grace). So a chunk goes at the second run after it became garbage, ``grace``
        apart: run this on a schedule (see ``docs/lifecycle.md``).

        Every blob index is a root: delete blobs first (:meth:`delete`). Writers of this
        library in any number of processes may write meanwhile; each one checks the
        collector's state before it commits a blob and fails with the retryable
        :class:`~castore.errors.GcConflictError` rather than name a deleted chunk. Rust
        tvix/snix writers do not: do not collect while they write to the bucket.

        One collector at a time holds a lease in the bucket (``lease`` seconds, renewed
        as it goes); another run meanwhile raises :class:`~castore.errors.GcLeaseError`.
        ``dry_run`` writes and deletes nothing and reports what a run would do (by the
        local clock). ``progress(phase, done, total)`` is called as phases advance.
        """
        return await collect_garbage(
            self._adapter,
            self._layout,
            self._read_limit,
            grace=grace,
            min_age=min_age,
            dry_run=dry_run,
            lease=lease,
            progress=progress,
        )

    # --- checking and repairing -----------------------------------------------------------

    def check(
        self,
        *,
        read_data: bool = False,
        subset: Subset | str | None = None,
        repair_from: BlobService | None = None,
        repair: bool = False,
        progress: CheckProgress | None = None,
    ) -> Check:
        """A check of the bucket; ``async for problem in check`` runs it, then ``check.summary``.

        Structural by default: every chunk a blob index names exists, every index
        decodes, and chunk objects that no index names are counted as orphans.
        ``read_data`` also fetches every chunk object, decodes it within the read bound
        and compares its BLAKE3 with its key and its size with the index's; ``subset``
        (:class:`~castore.objectstore.Subset`, or ``"N/T"`` / ``"P%"``) reads only part
        of them.

        ``repair_from`` (any blob service: a replica, a gRPC client) mends missing and
        corrupt chunks: each is fetched by its digest, verified, and stored over the bad
        object. ``repair`` deletes corrupt chunks that no source replaced, so that
        putting their blob again stores them anew (a put never replaces an existing
        chunk object). Index problems are reported, not repaired. See
        ``docs/lifecycle.md``.
        """
        if isinstance(subset, str):
            subset = Subset.parse(subset)
        repairer = Repairer(
            self._calls,
            self._layout,
            self._read_limit,
            source=repair_from,
            delete_corrupt=repair,
        )
        return Check(
            self._calls,
            self._layout,
            self._read_limit,
            read_data=read_data,
            subset=subset,
            repairer=repairer,
            progress=progress,
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def delete(self, digest: DigestLike) -> bool:
        """Delete the blob's index; its chunks stay until garbage collection.

        ``True`` if an index was found and deleted. A blob of two or more chunks is gone
        at once (``has`` false, ``open_read`` and ``chunks`` ``None``). A blob stored as
        one chunk keeps that chunk under its own digest, readable until garbage
        collection reclaims it, and for as long as another blob uses it, since tvix
        clients read a blob's chunks by their digests. A digest with no index (a chunk
        only) has nothing to delete: ``False``. See :meth:`BlobService.delete`.
        """
        digest = B3Digest.coerce(digest)
        key = self._layout.blob(digest.digest)
        if not await self._exists(key):
            return False
        await self._calls.call(
            f"deleting blob index {key}", lambda: self._adapter.delete_async([key])
        )
        return True

    async def list_blobs(self, *, details: bool = False) -> AsyncIterator[BlobInfo]:
        """Every blob with an index, one LIST page at a time; see :meth:`BlobService.list_blobs`.

        With ``details``, each blob's index is read (a few dozen at once on a remote
        store) for its size and chunk count; a blob stored as one chunk also costs a GET
        of that chunk. Each store call is bounded by ``timeout``.
        """
        async for info in list_blobs(
            self._calls, self._layout, details=details, read_limit=self._read_limit
        ):
            yield info

    async def aclose(self) -> None:
        """Let the writer threads go once their queued work is done."""
        pools = (self._pool, self._put_pool)
        self._pool = self._put_pool = None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False)
