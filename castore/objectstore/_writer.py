"""The writer pipeline of :class:`~castore.ObjectStoreBlobService`.

::

    write() --anyio memory stream (bounded)--> consumer task (asyncio)
        gathers pieces into ~16 MiB segments, hands each to the service's worker
        pool (a thread a CPU) in one hop, keeps at most 3 segments in flight
    worker thread, one job per segment:
        in segment order: FastCDC cut (the unfinished last chunk is carried to the next
        segment), then the whole-blob BLAKE3 (a second ordered step, so that one worker
        can cut the next segment while the other hashes this one); the segment's pieces
        are never copied into one buffer: a chunk inside a piece is a view of it, and
        only a chunk that straddles two pieces is copied (StreamingChunker.cut)
        then in parallel with the other worker: BLAKE3 of each chunk, and each new chunk
        goes to the blob's put strategy (castore.objectstore._puts), one per store:
          LoopPuts (remote stores)  compress; the loop uploads it later
          WorkerPuts (memory)       skip it if stored, else compress and put it here
          PoolPuts (local disk)     skip it if stored, else compress and hand the put
                                    to the service's put pool, a few per job at a time
                                    (a put there waits on the file system, and the
                                    worker goes on compressing meanwhile)
    back on the loop: for remote stores, concurrent conditional puts (bounded in count
        and bytes); after the last chunk is stored, the blob index

Why this shape (``docs/architecture.md``, the data path of a write): the CPU stages
together cost one to a few core-seconds a GiB, and every hop between the loop and a
thread costs 40-100 µs with the GIL held, so work crosses the boundary once per segment,
not once per chunk. In-process stores (memory, local disk) are written synchronously from
the workers; remote stores, where latency rules, get many uploads in flight from the loop.

Memory is bounded whatever the blob's size: the stream holds a few pieces of at most
4 MiB, the consumer gathers one segment, and at most three segments (plus, for remote
stores, a bounded number of bytes in uploads) are in flight; a job lets each piece go
once the chunks in it are stored.

Why no contiguous copy of a segment: joining 16 MiB into fresh memory cost ~1 s/GiB of
page faults on these VMs and held the GIL while it copied (38 % of all GIL time in a
profile), which kept the other worker from starting its next chunk.

Abandonment: the consumer task never references the writer, so a writer that is
dropped can be garbage-collected; its finalizer cancels the task. A cancelled or failed
consumer marks the blob aborted (jobs still queued or running see the mark and stop)
and never writes the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import anyio
import blake3

from castore._digest import B3Digest
from castore._threads import THRESHOLDS, run_sized
from castore.blobservice import BlobWriter, WriteStats
from castore.errors import CastoreError, WriteAbortedError
from castore.objectstore._chunker import StreamingChunker
from castore.objectstore._codec import encode_index
from castore.objectstore._gc_writer import GcWatch, commit_index
from castore.objectstore._puts import (
    PUT_THREADS_PER_CPU,
    Abandoned,
    Piece,
    Uploads,
    put_strategy,
    retrieve,
)

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from castore.objectstore._adapter import StoreAdapter
    from castore.objectstore._layout import Layout

__all__ = ["PUT_THREADS_PER_CPU", "ObjectStoreBlobWriter", "PipelineConfig"]


class PipelineConfig:
    """Sizes of the writer pipeline (the defaults are the measured design)."""

    __slots__ = (
        "coalesce",
        "piece",
        "segment",
        "segments_in_flight",
        "stream_items",
        "upload_bytes",
        "uploads",
    )

    def __init__(
        self,
        *,
        segment: int = 16 << 20,
        segments_in_flight: int = 3,
        piece: int = 4 << 20,
        stream_items: int = 4,
        coalesce: int = 64 << 10,
        uploads: int = 16,
        upload_bytes: int = 64 << 20,
    ) -> None:
        #: Bytes gathered before a segment goes to a worker.
        self.segment = segment
        #: Segments handed to workers and not yet collected.
        self.segments_in_flight = segments_in_flight
        #: Largest item sent through the stream (bigger writes are split).
        self.piece = piece
        #: Items the stream buffers before ``write`` waits.
        self.stream_items = stream_items
        #: Writes smaller than this are gathered into one item first.
        self.coalesce = coalesce
        #: Concurrent chunk uploads to a remote store.
        self.uploads = uploads
        #: Compressed bytes in those uploads.
        self.upload_bytes = upload_bytes


class _Blob:
    """State shared by one writer's consumer task and its segment jobs."""

    __slots__ = (
        "aborted",
        "adapter",
        "chunk_count",
        "chunker",
        "count_lock",
        "digest",
        "gc",
        "hasher",
        "layout",
        "new_bytes",
        "new_chunks",
        "put_pool",
        "puts",
    )

    def __init__(
        self,
        adapter: StoreAdapter,
        layout: Layout,
        avg_chunk_size: int,
        put_pool: ThreadPoolExecutor | None,
        gc: GcWatch | None = None,
    ) -> None:
        self.adapter = adapter
        self.layout = layout
        # The garbage collector's state as this service sees it (see _gc_writer).
        self.gc = gc
        # How each segment job stores its new chunks.
        self.puts = put_strategy(adapter, put_pool)
        # Where PoolPuts hands its puts.
        self.put_pool = put_pool
        self.chunker = StreamingChunker(avg_chunk_size)
        self.hasher = blake3.blake3(max_threads=1)
        self.digest: bytes | None = None
        # Set (from the loop) when the blob is abandoned or has failed; jobs check it.
        self.aborted = False
        # Chunks this writer stored (a put that found the key taken does not count), and
        # their uncompressed bytes: what ``castore put --json`` reports as new.
        self.new_chunks = 0
        self.new_bytes = 0
        # The chunks the blob's index lists (repeats included), once all are stored.
        self.chunk_count = 0
        self.count_lock = threading.Lock()

    def count_new(self, size: int) -> None:
        """Count one chunk of ``size`` bytes that this writer stored (any thread)."""
        with self.count_lock:
            self.new_chunks += 1
            self.new_bytes += size


class _Segment:
    """One job's input and the gates that keep the in-order steps in segment order.

    ``prev_cut``/``cut`` order the FastCDC cuts, ``prev_hashed``/``hashed`` the updates
    of the whole-blob BLAKE3. Two chains rather than one let one worker cut segment
    ``i + 1`` while the other hashes segment ``i``.
    """

    __slots__ = ("cut", "eof", "hashed", "pieces", "prev_cut", "prev_hashed")

    def __init__(
        self,
        pieces: list[Piece],
        eof: bool,
        prev_cut: threading.Event,
        prev_hashed: threading.Event,
    ) -> None:
        self.pieces = pieces
        self.eof = eof
        self.prev_cut = prev_cut
        self.prev_hashed = prev_hashed
        self.cut = threading.Event()
        self.hashed = threading.Event()


class _Done:
    """What a job hands back: the segment's final chunks and, for remote stores, frames
    (with the uncompressed size of each in ``raw``)."""

    __slots__ = ("digests", "frames", "keys", "raw", "sizes")

    def __init__(
        self,
        digests: list[bytes],
        sizes: list[int],
        keys: list[str],
        frames: list[bytes],
        raw: list[int],
    ) -> None:
        self.digests = digests
        self.sizes = sizes
        self.keys = keys
        self.frames = frames
        self.raw = raw


def _wait_turn(blob: _Blob, gate: threading.Event) -> None:
    # The previous segment's job was queued earlier, so it is running or done; a job
    # that was never run can only belong to an aborted blob.
    while not gate.wait(0.1):
        if blob.aborted:
            raise Abandoned
    if blob.aborted:
        raise Abandoned


def _cut_and_hash(blob: _Blob, seg: _Segment) -> list[memoryview]:
    """The in-order steps of a job: FastCDC cut, then the whole-blob BLAKE3."""
    try:
        _wait_turn(blob, seg.prev_cut)
        pieces = seg.pieces
        chunks = blob.chunker.cut(pieces, seg.eof)
        seg.cut.set()
        _wait_turn(blob, seg.prev_hashed)
        update = blob.hasher.update
        for p in pieces:
            update(p)
        if seg.eof:
            blob.digest = blob.hasher.digest()
        del pieces
        return chunks
    except BaseException:
        # The chunker's or the hasher's state is unknown now: no later segment may go on.
        blob.aborted = True
        raise
    finally:
        seg.cut.set()
        seg.hashed.set()
        seg.pieces = []


def _run_segment(blob: _Blob, seg: _Segment) -> _Done:
    """A worker job: cut and hash in order, then hash each chunk and store the new ones
    through the blob's put strategy."""
    chunks = _cut_and_hash(blob, seg)
    if not chunks:
        return _Done([], [], [], [], [])
    digests: list[bytes] = []
    sizes: list[int] = []
    # Repeats within the segment (runs of zeros, say) are compressed and stored once.
    seen: set[bytes] = set()
    chunk_key = blob.layout.chunk
    puts = blob.puts(blob)
    try:
        # Taken from the end of the reversed list, so that each input piece is let go as
        # soon as the last chunk viewing it is stored, not when the whole segment is.
        chunks.reverse()
        while chunks:
            piece = chunks.pop()
            d = blake3.blake3(piece, max_threads=1).digest()
            digests.append(d)
            sizes.append(len(piece))
            if d in seen:
                continue
            seen.add(d)
            puts.add(chunk_key(d), piece)
        puts.drain()
    except BaseException:
        puts.abandon()
        raise
    return _Done(digests, sizes, puts.keys, puts.frames, puts.raw)


async def _put_index(adapter: StoreAdapter, key: str, index: bytes) -> None:
    """Store the blob index: the write's commit point.

    A put that has started cannot be called back (the store finishes it), so a cancel
    that arrives meanwhile waits for the put's outcome before it propagates: once the
    consumer has stopped, the index is stored already or never will be.
    """
    put = asyncio.ensure_future(adapter.put_async(key, index))
    cancel: asyncio.CancelledError | None = None
    while not put.done():
        try:
            await asyncio.wait([put])
        except asyncio.CancelledError as e:
            cancel = e
    if cancel is not None:
        retrieve(put)
        raise cancel
    put.result()


async def _consume(
    blob: _Blob,
    receive: MemoryObjectReceiveStream[Piece],
    pool: ThreadPoolExecutor,
    cfg: PipelineConfig,
) -> B3Digest:
    """The consumer task: stream -> segments -> worker jobs -> uploads -> index."""
    inflight: deque[asyncio.Future[_Done]] = deque()
    uploads = Uploads(blob, cfg.uploads, cfg.upload_bytes) if blob.puts.uploads_from_loop else None
    digests: list[bytes] = []
    sizes: list[int] = []
    last = _Segment([], False, threading.Event(), threading.Event())
    last.cut.set()
    last.hashed.set()

    def submit(pieces: list[Piece], eof: bool) -> None:
        nonlocal last
        last = _Segment(pieces, eof, last.cut, last.hashed)
        inflight.append(asyncio.wrap_future(pool.submit(_run_segment, blob, last)))

    async def collect() -> None:
        # Shielded: cancelling the consumer must not cancel a queued job, whose
        # successor may already be waiting for it.
        done = await asyncio.shield(inflight[0])
        inflight.popleft()
        digests.extend(done.digests)
        sizes.extend(done.sizes)
        if uploads is not None:
            for key, frame, raw in zip(done.keys, done.frames, done.raw, strict=True):
                await uploads.add(key, frame, raw)

    try:
        pieces: list[Piece] = []
        gathered = 0
        async with receive:
            # The collector's state before the first chunk put: the writer's starting
            # view. Taken inside ``async with receive`` so that a failed listing closes
            # the stream and the producer's next write sees the error instead of waiting.
            gc_start = None if blob.gc is None else await blob.gc.snapshot()
            async for piece in receive:
                pieces.append(piece)
                gathered += len(piece)
                if gathered >= cfg.segment:
                    submit(pieces, False)
                    pieces, gathered = [], 0
                    while len(inflight) >= cfg.segments_in_flight:
                        await collect()
        if blob.aborted:
            raise WriteAbortedError("the writer was aborted; nothing was stored")
        submit(pieces, True)
        del pieces
        while inflight:
            await collect()
        if uploads is not None:
            await uploads.drain()
        assert blob.digest is not None
        digest = blob.digest
        blob.chunk_count = len(digests)
        index = await run_sized(len(digests), THRESHOLDS.encode_index, encode_index, digests, sizes)
        key = blob.layout.blob(digest)

        async def put_index() -> None:
            await _put_index(blob.adapter, key, index)

        # Garbage collection may be sweeping chunks this blob reuses: clear them first.
        await commit_index(blob.gc, gc_start, digests, key, put_index)
        return B3Digest(digest)
    except BaseException:
        await _stop(blob, uploads, inflight)
        raise


async def _stop(
    blob: _Blob, uploads: Uploads | None, inflight: deque[asyncio.Future[_Done]]
) -> None:
    """The consumer is failing: mark the blob aborted, drop the uploads, and wait for
    the jobs in flight."""
    blob.aborted = True
    if uploads is not None:
        uploads.abandon()
    if inflight:
        # Let running jobs notice the mark and stop, so that nothing touches the
        # store once the writer is closed; their errors are reported by this one.
        for f in inflight:
            f.add_done_callback(retrieve)
        with contextlib.suppress(BaseException):
            await asyncio.wait(inflight)


class ObjectStoreBlobWriter(BlobWriter):
    """A :class:`~castore.BlobWriter` that feeds the pipeline described in this module.

    Caller data is copied into immutable ``bytes`` before it leaves :meth:`write` (the
    store may keep references to what it is given), except ``bytes`` themselves and
    read-only views of ``bytes``, which are passed on as they are.
    """

    def __init__(
        self,
        adapter: StoreAdapter,
        layout: Layout,
        avg_chunk_size: int,
        pool: ThreadPoolExecutor,
        cfg: PipelineConfig,
        put_pool: ThreadPoolExecutor | None = None,
        gc: GcWatch | None = None,
    ) -> None:
        self._cfg = cfg
        self._blob = _Blob(
            adapter, layout, avg_chunk_size, put_pool if adapter.in_process else None, gc
        )
        send, receive = anyio.create_memory_object_stream[Piece](cfg.stream_items)
        self._send: MemoryObjectSendStream[Piece] = send
        self._small = bytearray()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[B3Digest] = self._loop.create_task(
            _consume(self._blob, receive, pool, cfg), name="castore-objectstore-writer"
        )
        self._task.add_done_callback(retrieve)

    @property
    def new_bytes(self) -> int | None:
        """The bytes of the chunks this writer stored (see :attr:`BlobWriter.new_bytes`)."""
        return self._blob.new_bytes if self._digest is not None else None

    @property
    def write_stats(self) -> WriteStats | None:
        """The blob's chunks and those this writer stored (see :class:`~castore.WriteStats`)."""
        if self._digest is None:
            return None
        blob = self._blob
        return WriteStats(blob.chunk_count, blob.new_chunks, blob.new_bytes)

    async def _send_item(self, item: Piece) -> None:
        try:
            await self._send.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The consumer has stopped: report why.
            raise await self._failure() from None

    async def _failure(self) -> BaseException:
        with contextlib.suppress(BaseException):
            await asyncio.wait([self._task])
        if self._task.done() and not self._task.cancelled():
            exc = self._task.exception()
            if isinstance(exc, CastoreError | OSError):
                return exc
        return WriteAbortedError("the writer's pipeline stopped; nothing was stored")

    async def _flush_small(self) -> None:
        if self._small:
            item = bytes(self._small)
            self._small.clear()
            await self._send_item(item)

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        cfg = self._cfg
        mv = memoryview(data).cast("B")
        n = len(mv)
        if n < cfg.coalesce:
            self._small += mv
            if len(self._small) >= cfg.coalesce:
                await self._flush_small()
            return
        await self._flush_small()
        # bytes, or a read-only view of bytes (a received gRPC message), cannot change:
        # their pieces go on without a copy.
        immutable = isinstance(data, bytes) or (mv.readonly and type(mv.obj) is bytes)
        step = cfg.piece
        for i in range(0, n, step):
            part = mv[i : i + step]
            await self._send_item(part if immutable else bytes(part))

    async def _finish(self) -> B3Digest:
        await self._flush_small()
        await self._send.aclose()
        return await self._task

    async def _abort(self) -> None:
        self._blob.aborted = True
        self._small = bytearray()
        self._send.close()
        task = self._task
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await asyncio.wait([task])

    def __del__(self) -> None:
        task = getattr(self, "_task", None)
        if task is None or task.done():
            return
        self._blob.aborted = True
        send = self._send

        def abandon() -> None:
            send.close()
            task.cancel()

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        try:
            if running is self._loop:
                abandon()
            else:
                self._loop.call_soon_threadsafe(abandon)
        except RuntimeError:  # the loop is closed; the task died with it
            pass
