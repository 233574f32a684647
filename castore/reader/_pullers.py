"""The pullers: fetching a reader's window of chunks, in worker threads or in tasks.

A reader asks for a *window* of chunk indexes ``[lo, hi)``: the chunks under its cursor
and some ahead of it. A few *pullers* each take the next index of the window in turn,
fetch that chunk from the :class:`~castore.reader.ChunkSource` and hand it over, until
the window is exhausted:

- a **thread puller** (for a :class:`~castore.reader.ThreadChunkSource`) is one worker
  thread job that fetches many chunks; it waits a moment for the window to grow before
  it ends, so a steady sequential read starts a puller about once, not once per chunk;
- a **task puller** (any other source) is an asyncio task awaiting ``fetch_chunk``.

Pullers leave what they fetched in a shared table and wake the loop only when a read is
waiting for it (once, when its last missing chunk arrives), so a read whose chunks were
fetched ahead costs no wakeup at all. Each verified chunk is also offered to the
whole-blob hash (:class:`~castore.reader._blobhash.BlobHash`), by the puller that
fetched it. A hop between the loop and a thread costs 40-150 µs of CPU, as much as
fetching and verifying a chunk of incompressible data: that is why the work is handed
over in runs (see ``docs/architecture.md``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.to_thread

from castore._digest import ChunkMeta
from castore._threads import cpu_pool
from castore.errors import StoreTimeoutError
from castore.reader._blobhash import BlobHash, _release
from castore.reader._source import ChunkSource, ThreadChunkSource

__all__ = ["Target", "Window", "reader_pool"]

# Seconds a thread puller waits for the window to grow before it ends.
_LINGER = 0.05
# At most this many spare chunk buffers are kept for reuse.
_MAX_FREE = 64

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def reader_pool() -> ThreadPoolExecutor:
    """The readers' pool for CPU work (whole-blob hashes, large joins); never store calls.

    One thread per usable CPU: a job here never waits for anything but the CPU, so a
    hung store cannot starve it.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = cpu_pool("castore-reader")
        return _pool


class _Waiter:
    """A read waiting for chunks ``first .. end - 1``, ``missing`` of which are not in."""

    __slots__ = ("end", "first", "fut", "missing")

    def __init__(self, first: int, end: int, missing: int, fut: asyncio.Future[None]) -> None:
        self.first = first
        self.end = end
        self.missing = missing
        self.fut = fut


class Target:
    """A read's memory that pullers may decode whole chunks into (see :meth:`Window.post`).

    ``views``: chunk index -> where it goes, taken by the puller that decodes it;
    ``writers``: decodes into it under way; ``direct``: chunks decoded into it and
    handed over; ``revoked``: the read has ended; ``done``: set when the read ends while
    decodes are under way.
    """

    __slots__ = ("direct", "done", "revoked", "views", "writers")

    def __init__(self, views: dict[int, memoryview]) -> None:
        self.views = views
        self.revoked = False
        self.writers = 0
        self.direct: set[int] = set()
        self.done: asyncio.Future[None] | None = None


class Window:
    """The chunks ``[lo, hi)`` of ``chunks`` a reader wants, and the pullers fetching them.

    ``prefetch + 1`` pullers run at most. :meth:`move` sets the window (dropping fetched
    chunks that fall out of it) and starts pullers; :meth:`collect` waits for a range of
    chunks. ``whole``, when set, is offered every chunk as it is handed over.
    """

    def __init__(self, chunks: Sequence[ChunkMeta], source: ChunkSource, prefetch: int) -> None:
        self._chunks = chunks
        self._source = source
        self._threaded = isinstance(source, ThreadChunkSource)
        self._timeout = source.read_timeout
        self._prefetch = prefetch
        # Thread pullers decode chunks into buffers of the largest chunk's size, reused
        # once the reads are past a chunk and the whole-blob hash has taken it: fresh
        # memory costs a page fault per 4 KiB on first touch, as much as decoding it.
        self._capacity = max((c.size for c in chunks), default=0)
        self._free: list[bytearray] = []
        self._buffers: dict[int, bytearray] = {}  # chunk index -> the buffer it is in
        self.whole: BlobHash | None = None
        self._target: Target | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # The window [_lo, _hi) and the next index a puller takes. _lock guards what
        # pullers in threads touch: _claim, _lo, _hi, _pullers, _taken, _ready, _waiter,
        # _arrived. _wake tells lingering thread pullers that the window grew.
        self._lo = 0
        self._hi = 0
        self._claim = 0
        self._pullers = 0
        self._taken: set[int] = set()  # taken by a puller, not handed over yet
        # Fetched chunks of the window (or the error fetching one), by index. Pullers put
        # them here and wake the loop only when a read waits for them (_waiter: the range
        # it needs and the future it awaits).
        self._ready: dict[int, bytes | memoryview | Exception] = {}
        self._waiter: _Waiter | None = None
        self._arrived = 0  # chunks handed over so far: progress, for the timeout
        self._refetching: set[int] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)

    @property
    def threaded(self) -> bool:
        """Whether pullers are worker threads (and may decode into a read's memory)."""
        return self._threaded

    @property
    def lo(self) -> int:
        return self._lo

    @property
    def hi(self) -> int:
        return self._hi

    def move(self, lo: int, hi: int | None = None) -> None:
        """Make the window [lo, hi) (``hi`` unchanged when not given) and fill it."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if hi is None:
            hi = self._hi
        hi = max(hi, lo)
        with self._lock:
            ready = self._ready
            if lo < self._lo or lo >= self._hi or hi < self._hi:
                # A jump (a seek) or a shrink: drop results outside the new window.
                for i in [i for i in ready if i < lo or i >= hi]:
                    self._drop(i)
            else:
                for i in range(self._lo, lo):
                    self._drop(i)
            if lo < self._lo or lo >= self._hi or self._claim < lo:
                self._claim = lo
            self._lo, self._hi = lo, hi
            start = min(self._prefetch + 1 - self._pullers, hi - self._claim)
            if start > 0:
                self._pullers += start
            if self._claim < hi:
                self._wake.notify_all()
        for _ in range(max(0, start)):
            self._start_puller()

    def _drop(self, i: int) -> None:
        """Forget chunk ``i`` (under the lock); reuse its buffer once it is hashed.

        Called from the loop only, between reads, so no read is copying from it.
        """
        self._ready.pop(i, None)
        buf = self._buffers.pop(i, None)
        if buf is not None and len(self._free) < _MAX_FREE:
            whole = self.whole
            if whole is None or whole.hashed(i):
                self._free.append(buf)

    # --- pullers ------------------------------------------------------------------------

    def _start_puller(self) -> None:
        if self._threaded:
            job = anyio.to_thread.run_sync(self._pull_sync, abandon_on_cancel=True)
        else:
            job = self._pull_async()
        self._track(asyncio.ensure_future(job))

    def _track(self, task: asyncio.Future[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._puller_done)

    def _puller_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # failures reach readers through the results

    def _take(self) -> int | None:
        """The next chunk index for a puller (under the lock), or None: the puller ends."""
        i = self._claim
        if self._closed or i >= self._hi:
            self._pullers -= 1
            return None
        self._claim = i + 1
        self._taken.add(i)
        return i

    def _pull_sync(self) -> None:
        """A thread puller: fetch chunks in window order; hand each over."""
        source = self._source
        assert isinstance(source, ThreadChunkSource)
        load, decode = source.load_chunk, source.decode_chunk_into
        while True:
            with self._lock:
                if not self._closed and self._claim >= self._hi:
                    self._wake.wait(_LINGER)
                i = self._take()
            if i is None:
                return
            meta = self._chunks[i]
            target: Target | None = None
            buf: bytearray | None = None
            try:
                stored = load(meta)
                # Once the store has answered: straight into a waiting read's memory if
                # the chunk lies wholly in it, else into one of the window's buffers.
                with self._lock:
                    target = self._target
                    out = target.views.pop(i, None) if target is not None else None
                    if out is None:
                        target = None
                        buf = self._free.pop() if self._free else None
                    else:
                        assert target is not None
                        target.writers += 1
                if out is None:
                    buf = buf if buf is not None else bytearray(self._capacity)
                    out = memoryview(buf)[: meta.size]
                decode(meta, stored, out)
            except Exception as e:
                self._hand_over(i, e, None, target)
                with self._lock:
                    if buf is not None:
                        self._free.append(buf)  # what it holds is never handed over
                    self._pullers -= 1
                return
            del stored
            if not self._hand_over(i, out, buf, target):
                return
            whole = self.whole
            ended = target is not None and target.revoked  # the read's memory is not ours
            if whole is not None and not ended and whole.offer(i, out):
                whole.drain()  # here, while the chunk is still in this CPU's cache
            del out  # no reference to a read's memory outlives the read

    async def _pull_async(self) -> None:
        """A task puller: the same, through the async ``fetch_chunk``."""
        while True:
            with self._lock:
                i = self._take()
            if i is None:
                return
            try:
                data = await self._source.fetch_chunk(self._chunks[i])
            except Exception as e:
                self._hand_over(i, e)
                with self._lock:
                    self._pullers -= 1
                return
            self._hand_over(i, data)
            self._offer_from_loop(i, data)

    def _offer_from_loop(self, i: int, data: bytes) -> None:
        whole = self.whole
        if whole is not None and whole.offer(i, data):
            reader_pool().submit(whole.drain)

    def _hand_over(
        self,
        i: int,
        result: bytes | memoryview | Exception,
        buf: bytearray | None = None,
        target: Target | None = None,
    ) -> bool:
        """From any thread: chunk ``i`` (or the error fetching it) for the reads.

        Kept if the window holds it and it is not there yet (``buf``, the buffer it is
        in, is then reused once the reads are past it; a chunk not kept lets its buffer
        go); the loop is woken only if a read waits for it. A chunk decoded into a read's
        memory (``target``) is dropped if that read has ended meanwhile. False when the
        loop is gone: the puller stops.
        """
        with self._lock:
            self._taken.discard(i)
            if target is not None:
                target.writers -= 1
                if target is not self._target:
                    # The read ended (failed or was cancelled) while this chunk was being
                    # decoded into its memory: drop it, and tell the read it may return.
                    done = target.done if not target.writers else None
                    if done is not None:
                        self._call_soon(_release, done)
                    return not self._closed
                target.direct.add(i)
            if self._closed or not self._lo <= i < self._hi or i in self._ready:
                return not self._closed
            self._ready[i] = result
            if buf is not None:
                self._buffers[i] = buf
            self._arrived += 1
            waiter = self._waiter
            if waiter is None or not waiter.first <= i < waiter.end:
                return True
            waiter.missing -= 1
            if waiter.missing and not isinstance(result, Exception):
                return True
            self._waiter = None
        if not self._call_soon(_release, waiter.fut):
            with self._lock:
                self._closed = True
            return False
        return True

    def _call_soon(
        self, fn: Callable[[asyncio.Future[None]], None], fut: asyncio.Future[None]
    ) -> bool:
        """``fn(fut)`` on the loop, from any thread; False if the loop is closed."""
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(fn, fut)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            return False
        return True

    # --- reads into the caller's memory -------------------------------------------------

    def post(self, views: dict[int, memoryview]) -> Target:
        """Offer pullers ``views``: where in a read's memory chunks go whole (by index)."""
        target = Target(views)
        with self._lock:
            self._target = target
        return target

    async def revoke(self, target: Target) -> None:
        """End ``target``: once this returns, no puller writes into that memory any more.

        Chunks decoded into it leave the window. Waits (shielded from cancellation: it
        is CPU work of one chunk at most) for decodes into it still running.
        """
        loop = self._loop
        assert loop is not None
        with self._lock:
            if self._target is target:
                self._target = None
            target.revoked = True
            target.views.clear()
            for i in target.direct:
                self._ready.pop(i, None)
            done = None
            if target.writers:
                done = target.done = loop.create_future()
        if done is not None:
            with anyio.CancelScope(shield=True):
                await done

    # --- waiting for chunks -------------------------------------------------------------

    async def collect(self, first: int, end: int) -> list[bytes | memoryview]:
        """The chunks ``first .. end - 1``, waiting for those not fetched yet.

        Views into the window's buffers stay valid until the next :meth:`move`.
        """
        loop = self._loop
        assert loop is not None
        while True:
            error: Exception | None = None
            missing: list[int] = []
            found: list[bytes | memoryview] = []
            with self._lock:
                ready = self._ready
                for i in range(first, end):
                    r = ready.get(i)
                    if r is None:
                        missing.append(i)
                    elif isinstance(r, Exception):
                        # Raised to this read; a later read that needs it fetches it again.
                        del ready[i]
                        error = r
                        break
                    else:
                        found.append(r)
                if error is None and missing:
                    # Taken by a puller earlier but neither here nor in flight (it failed
                    # and was dropped, or a window move dropped it): fetch it on its own.
                    lost = [
                        i
                        for i in missing
                        if i < self._claim and i not in self._taken and i not in self._refetching
                    ]
                    fut: asyncio.Future[None] = loop.create_future()
                    self._waiter = _Waiter(first, end, len(missing), fut)
                    arrived = self._arrived
            if error is not None:
                raise error
            if not missing:
                return found
            for i in lost:
                self._refetch(i)
            try:
                await self._wait(fut, arrived, missing[0])
            finally:
                with self._lock:
                    if self._waiter is not None and self._waiter.fut is fut:
                        self._waiter = None

    async def _wait(self, fut: asyncio.Future[None], arrived: int, first_missing: int) -> None:
        """Wait for ``fut``; past the source's timeout with no chunk arriving, raise."""
        if self._timeout is None:
            await fut
            return
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    await asyncio.shield(fut)
                return
            except TimeoutError:
                with self._lock:
                    if self._arrived == arrived:
                        break
                    arrived = self._arrived  # chunks are still arriving: wait on
        meta = self._chunks[first_missing]
        raise StoreTimeoutError(
            f"reading chunk {meta.digest.hex()}: the store did not answer within {self._timeout} s"
        )

    def _refetch(self, i: int) -> None:
        async def one() -> None:
            try:
                data = await self._source.fetch_chunk(self._chunks[i])
            except Exception as e:
                self._hand_over(i, e)
            else:
                self._hand_over(i, data)
                self._offer_from_loop(i, data)
            finally:
                self._refetching.discard(i)

        self._refetching.add(i)
        self._track(asyncio.ensure_future(one()))

    async def aclose(self) -> None:
        """Stop the pullers and drop what they fetched."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        with self._lock:
            self._ready.clear()
            self._buffers.clear()
            self._free.clear()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.fut.cancel()
        tasks = list(self._tasks)
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            # Cancelled or failed prefetches are dropped; a cancel of aclose() propagates.
            await asyncio.gather(*tasks, return_exceptions=True)
