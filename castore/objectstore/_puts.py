"""Where a writer's new chunks go: the put strategies of its segment jobs, and the
loop's bounded uploads to remote stores.

A store gets one strategy, chosen once (:func:`put_strategy`):

- :class:`LoopPuts`, remote stores: the job compresses, the loop uploads (:class:`Uploads`);
- :class:`WorkerPuts`, in-process stores (memory): the job puts each new chunk itself;
- :class:`PoolPuts`, local disk: the job hands each put to the service's put pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from castore.objectstore._codec import compressor

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from castore.objectstore._adapter import StoreAdapter

__all__ = [
    "PUT_THREADS_PER_CPU",
    "Abandoned",
    "LoopPuts",
    "Piece",
    "PoolPuts",
    "Puts",
    "Uploads",
    "WorkerPuts",
    "put_strategy",
    "retrieve",
]

#: What travels through the writer's stream: immutable bytes, or a view of them.
Piece = bytes | memoryview

#: Threads of a service's put pool per usable CPU (PoolPuts: local disk).
PUT_THREADS_PER_CPU = 2
# Puts one segment job may have queued or running before it waits for the oldest.
_PUTS_PER_JOB = 8


class Abandoned(Exception):
    """Raised inside a job whose blob was aborted; never reaches a caller."""


class PutTarget(Protocol):
    """What a strategy needs of the blob being written."""

    adapter: StoreAdapter
    #: Set (from the loop) when the blob is abandoned or has failed.
    aborted: bool
    put_pool: ThreadPoolExecutor | None

    def count_new(self, size: int) -> None:
        """Count one chunk of ``size`` bytes that this writer stored (any thread)."""
        ...


class Puts:
    """A put strategy: where one segment job's new chunks go, and when they are stored.

    A job makes one instance, calls :meth:`add` for each chunk not seen before in its
    segment, then :meth:`drain`; on failure it calls :meth:`abandon` instead. What the
    job hands back to the loop for uploading is in :attr:`keys` and :attr:`frames`, with
    the uncompressed size of each in :attr:`raw`. A put that stores a chunk (not one that
    finds it stored) counts it with the blob's ``count_new``.
    """

    #: Whether the consumer uploads the jobs' frames from the loop (remote stores).
    uploads_from_loop = False

    def __init__(self, blob: PutTarget) -> None:
        self.blob = blob
        # One zstd call per chunk: measured cheaper than multi_compress_to_buffer, whose
        # one large output buffer per call costs more in page faults than it saves.
        self.compress = compressor().compress
        self.keys: list[str] = []
        self.frames: list[bytes] = []
        self.raw: list[int] = []

    def add(self, key: str, chunk: Piece) -> None:
        """Store (or keep for the loop) the chunk under ``key``."""
        raise NotImplementedError

    def drain(self) -> None:
        """Wait until every chunk added is stored (or kept for the loop)."""

    def abandon(self) -> None:
        """The job is failing: let puts already started finish; report nothing."""


class LoopPuts(Puts):
    """Remote stores, where latency rules: compress here, upload from the loop, where
    many conditional puts are in flight at once (:class:`Uploads`)."""

    uploads_from_loop = True

    def add(self, key: str, chunk: Piece) -> None:
        self.keys.append(key)
        self.frames.append(self.compress(chunk))
        self.raw.append(len(chunk))


class WorkerPuts(Puts):
    """In-process stores (memory): put each new chunk from the worker, synchronously.

    Such a store answers existence in microseconds, so a chunk already stored is not
    even compressed (re-ingesting known data costs no zstd).
    """

    def add(self, key: str, chunk: Piece) -> None:
        blob = self.blob
        if blob.aborted:
            raise Abandoned
        if blob.adapter.exists(key):
            return
        self.put(key, self.compress(chunk), len(chunk))

    def put(self, key: str, frame: bytes, size: int) -> None:
        """Store ``frame``, the chunk of ``size`` bytes under ``key``, if still absent."""
        if self.blob.adapter.put_new(key, frame):
            self.blob.count_new(size)


class PoolPuts(WorkerPuts):
    """Local disk: as :class:`WorkerPuts`, but each put goes to the service's put pool,
    at most :data:`_PUTS_PER_JOB` per job at a time: a put there waits on the file
    system, and the worker goes on compressing the next chunk meanwhile."""

    def __init__(self, blob: PutTarget) -> None:
        super().__init__(blob)
        assert blob.put_pool is not None
        self._submit = blob.put_pool.submit
        # Each queued put with the uncompressed size of its chunk.
        self._pending: deque[tuple[Future[bool], int]] = deque()

    def put(self, key: str, frame: bytes, size: int) -> None:
        pending = self._pending
        pending.append((self._submit(self.blob.adapter.put_new, key, frame), size))
        while len(pending) > _PUTS_PER_JOB:
            self._wait_oldest()

    def drain(self) -> None:
        while self._pending:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        """Wait for the oldest put handed to the pool; count its chunk if it stored it."""
        put, size = self._pending.popleft()
        if put.result():
            self.blob.count_new(size)

    def abandon(self) -> None:
        # Nothing may touch the store once the writer is closed: puts already started
        # finish; the job's own error is the one reported.
        for fut, _ in self._pending:
            fut.cancel()
        for fut, _ in self._pending:
            with contextlib.suppress(BaseException):
                fut.result()
        self._pending.clear()


def put_strategy(adapter: StoreAdapter, put_pool: ThreadPoolExecutor | None) -> type[Puts]:
    """The put strategy for a store: :attr:`StoreAdapter.in_process` and, for those,
    whether the service gave the writer a put pool (:attr:`StoreAdapter.overlap_puts`)."""
    if not adapter.in_process:
        return LoopPuts
    return WorkerPuts if put_pool is None else PoolPuts


class Uploads:
    """Concurrent conditional puts from the loop, bounded in count and bytes."""

    def __init__(self, blob: PutTarget, max_count: int, max_bytes: int) -> None:
        self._blob = blob
        self._adapter = blob.adapter
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._pending: dict[asyncio.Task[bool], int] = {}
        # The uncompressed size of each pending put's chunk.
        self._raw: dict[asyncio.Task[bool], int] = {}
        self._bytes = 0

    async def add(self, key: str, frame: Buffer, raw: int) -> None:
        size = len(memoryview(frame))
        while self._pending and (
            len(self._pending) >= self._max_count or self._bytes + size > self._max_bytes
        ):
            await self._wait_one()
        task = asyncio.ensure_future(self._adapter.put_new_async(key, frame))
        self._pending[task] = size
        self._raw[task] = raw
        self._bytes += size

    async def _wait_one(self) -> None:
        done, _ = await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
        # Every finished upload's outcome is taken, even after one has failed: a task
        # collected with an error nobody took is logged by asyncio.
        error: BaseException | None = None
        for t in done:
            self._bytes -= self._pending.pop(t)
            raw = self._raw.pop(t)
            try:
                stored = t.result()
            except BaseException as e:
                error = error or e
                continue
            if stored:
                self._blob.count_new(raw)
        if error is not None:
            raise error

    async def drain(self) -> None:
        while self._pending:
            await self._wait_one()

    def abandon(self) -> None:
        for t in self._pending:
            t.cancel()
            t.add_done_callback(retrieve)
        self._pending.clear()
        self._raw.clear()
        self._bytes = 0


def retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a background future's outcome as seen (it is reported elsewhere)."""
    if not fut.cancelled():
        fut.exception()
