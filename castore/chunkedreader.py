"""``ChunkedReader``: random access over a blob stored as an ordered list of chunks.

Seeks by binary search over chunk offsets, fetches chunks lazily, keeps a bounded
window of the next chunks in flight (prefetch) so that a sequential read does not wait
one round trip per chunk, and verifies each chunk's BLAKE3 digest and size. When the
blob is read in order from offset 0 to its end, the bytes returned are also checked
against the blob's own digest, so an index listing the wrong chunks raises instead of
passing.

Where the work runs (DESIGN section 8: a hop between the loop and a thread costs
40-150 µs of CPU, as much as fetching and verifying a chunk of incompressible data):

- Fetches are done by a few *pullers*, each taking the next chunk of the window in turn
  until the window is exhausted. With a synchronous fetcher (``fetch_sync``) a puller is
  one worker-thread job that fetches many chunks; it waits a moment for the window to
  grow before it ends, so a steady sequential read starts a puller about once, not once
  per chunk. Pullers leave what they fetched in a shared table and wake the loop only
  when a read is waiting for it (once, when its last missing chunk arrives), so a read
  whose chunks were fetched ahead costs no wakeup at all. With only the async ``fetch``,
  a puller is a task, and unverified chunks are verified in a worker.
- The whole-blob BLAKE3 is a chain over the chunks in index order: each chunk is offered
  to it as soon as it is fetched and verified, and whichever puller offers the next one
  in line hashes it (and any after it already in), mostly while the bytes are still in
  its CPU's cache. Its digest is checked only by a read that returns the blob's last
  bytes after reads that went in order from offset 0, so it covers exactly the bytes
  returned: the same verified chunk objects, in order.
- A read that spans chunks is joined into one ``bytes`` in that pool when it is large;
  a read that is exactly one chunk returns that chunk's ``bytes`` without a copy.

The window: from the chunk under the cursor to ``prefetch`` chunks past the end of the
current read, and at least as many bytes past it as the read asked for, so the next
read of the same size finds its chunks fetched or in flight. At most ``prefetch + 1``
pullers run at once; fetched chunks are dropped once the cursor has passed them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import io
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import anyio.to_thread
import blake3

from castore._digest import B3Digest, ChunkMeta
from castore.blobservice import BlobReader, BlobService, _seek_target
from castore.errors import (
    BlobNotFoundError,
    DigestMismatchError,
    InvalidSeekError,
    StoreTimeoutError,
)

__all__ = ["ChunkFetcher", "ChunkedReader", "SyncChunkFetcher", "verify_chunk"]

#: Fetches one chunk's bytes, already verified against ``ChunkMeta`` or not.
ChunkFetcher = Callable[[ChunkMeta], Awaitable[bytes]]
#: Fetches and verifies one chunk's bytes; called in worker threads.
SyncChunkFetcher = Callable[[ChunkMeta], bytes]

DEFAULT_PREFETCH = 4

# Reads of at least this many bytes that span chunks are joined in a worker thread
# (bytes.join releases the GIL for such sizes) rather than on the event loop.
_THREAD_JOIN_MIN = 1 << 20
# At most this many chunks are fetched ahead of a read, whatever its size.
_MAX_AHEAD = 64
# Seconds a thread puller waits for the window to grow before it ends.
_LINGER = 0.05

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _worker_pool() -> ThreadPoolExecutor:
    """The readers' pool for CPU work (whole-blob hashes, large joins); never store calls.

    Two threads: the machines castore is tuned for have two cores, and a job here never
    waits for anything but the CPU, so a hung store cannot starve it.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="castore-reader")
        return _pool


def verify_chunk(meta: ChunkMeta, data: bytes) -> bytes:
    """Raise :class:`DigestMismatchError` unless ``data`` is the chunk ``meta`` names."""
    if len(data) != meta.size:
        raise DigestMismatchError(
            f"chunk {meta.digest.hex()}: expected {meta.size} bytes, got {len(data)}"
        )
    actual = blake3.blake3(data, max_threads=1).digest()
    if actual != meta.digest.digest:
        raise DigestMismatchError(f"chunk {meta.digest.hex()}: data hashes to {actual.hex()}")
    return data


def _release(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Waiter:
    """A read waiting for chunks ``first .. end - 1``, ``missing`` of which are not in."""

    __slots__ = ("end", "first", "fut", "missing")

    def __init__(self, first: int, end: int, missing: int, fut: asyncio.Future[None]) -> None:
        self.first = first
        self.end = end
        self.missing = missing
        self.fut = fut


class _ChainHash:
    """The whole-blob BLAKE3 over chunks ``0 .. count - 1``, hashed in index order.

    Chunks are offered as they are fetched and verified, in any order, from any thread;
    whichever thread offers the next one in line hashes it, and those after it that are
    already in (one thread at a time). So a chunk is mostly hashed by the puller that
    just verified it, while its bytes are still in the CPU's cache, and the event loop
    never hashes. :meth:`digest` waits until all ``count`` chunks are in.
    """

    __slots__ = ("_busy", "_count", "_dead", "_hasher", "_held", "_lock", "_next", "_waiters")

    def __init__(self, count: int) -> None:
        self._hasher = blake3.blake3(max_threads=1)
        self._lock = threading.Lock()
        self._count = count
        self._next = 0  # the next chunk index to hash
        self._held: dict[int, bytes] = {}  # offered before their turn
        self._busy = False  # a thread is hashing
        self._dead = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def offer(self, i: int, data: bytes) -> bool:
        """Add chunk ``i``; True if the caller should now :meth:`drain` (in a worker)."""
        with self._lock:
            if self._dead or i < self._next or i in self._held:
                return False
            self._held[i] = data
            if self._busy or self._next not in self._held:
                return False
            self._busy = True
            return True

    def drain(self) -> None:
        """Hash the chunks in line, in order, until the next one is not in yet."""
        update = self._hasher.update
        while True:
            with self._lock:
                data = None if self._dead else self._held.pop(self._next, None)
                if data is None:
                    self._busy = False
                    if self._next < self._count and not self._dead:
                        return
                    waiters, self._waiters = self._waiters, []
                    break
            update(data)
            with self._lock:
                self._next += 1
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                loop.call_soon_threadsafe(_release, fut)

    async def digest(self) -> bytes:
        """The digest, once every chunk has been hashed."""
        loop = asyncio.get_running_loop()
        with self._lock:
            done = self._next == self._count and not self._busy
            if not done:
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, fut))
        if not done:
            await fut
        return self._hasher.digest()

    def kill(self) -> None:
        """Stop: no more hashing (a read broke the in-order sequence)."""
        with self._lock:
            self._dead = True
            self._held.clear()
            waiters, self._waiters = self._waiters, []
        for _, fut in waiters:
            fut.cancel()


class ChunkedReader(BlobReader):
    """A :class:`BlobReader` over ``chunks``, fetched through ``fetch``.

    ``fetch`` is called with each chunk's :class:`ChunkMeta`; unless ``verified_fetch``
    is set, the bytes it returns are verified here (in a worker thread). ``prefetch``
    is how many chunks beyond the end of the current read are fetched ahead (reads also
    fetch ahead as many bytes as they ask for, and at most ``prefetch + 1`` fetches run
    at once; 0 fetches only what a read needs, one chunk at a time). ``blob_digest``,
    when given, is checked once the whole blob has been read in order.

    ``fetch_sync``, when given, does what ``fetch`` does, synchronously (verified
    or not, as ``verified_fetch`` says); the reader then calls it from a few long worker
    jobs rather than paying a thread hop per chunk (``fetch`` is still used for a chunk
    that has to be fetched again after a failure). ``timeout`` then bounds how long a
    read waits for one chunk: past it, the read raises
    :class:`~castore.errors.StoreTimeoutError` (a worker stuck in the store is left
    behind, as an abandoned thread).
    """

    def __init__(
        self,
        chunks: Sequence[ChunkMeta],
        fetch: ChunkFetcher,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        verified_fetch: bool = False,
        blob_digest: B3Digest | None = None,
        fetch_sync: SyncChunkFetcher | None = None,
        timeout: float | None = None,
    ) -> None:
        self._chunks = list(chunks)
        self._fetch = fetch
        self._fetch_sync = fetch_sync
        self._timeout = timeout
        self._prefetch = max(0, prefetch)
        self._verified_fetch = verified_fetch
        self._offsets: list[int] = []
        total = 0
        for c in self._chunks:
            self._offsets.append(total)
            total += c.size
        self._length = total
        self._pos = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
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
        # it needs and the future it awaits), so that a read whose chunks were fetched
        # ahead costs the loop no wakeup per chunk.
        self._ready: dict[int, bytes | Exception] = {}
        self._waiter: _Waiter | None = None
        self._arrived = 0  # chunks handed over so far: progress, for the timeout
        self._refetching: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # Whole-blob check: _whole hashes the chunks in index order as they are fetched;
        # its digest is checked by the read that returns the blob's last bytes, if every
        # read so far continued where the previous one ended, starting at 0
        # (_returned_to is where the bytes returned so far end).
        self._blob_digest = blob_digest
        self._whole: _ChainHash | None = (
            _ChainHash(len(self._chunks)) if blob_digest is not None else None
        )
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
        """Read each chunk through ``service.open_read(chunk.digest)``."""

        async def fetch(meta: ChunkMeta) -> bytes:
            reader = await service.open_read(meta.digest)
            if reader is None:
                raise BlobNotFoundError(f"chunk {meta.digest.hex()} is missing")
            async with reader:
                return await reader.read()

        return cls(chunks, fetch, prefetch=prefetch, blob_digest=blob_digest)

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
        target = _seek_target(offset, whence, self._pos, self._length)
        if target > self._length:
            raise InvalidSeekError(f"seek to {target} past the end of a {self._length}-byte blob")
        self._pos = target
        return target

    def _index(self, offset: int) -> int:
        return bisect.bisect_right(self._offsets, offset) - 1

    # --- reading ------------------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read() on a closed reader")
        if self._corrupt is not None:
            raise self._corrupt
        pos = self._pos
        remaining = self._length - pos
        if n < 0 or n > remaining:
            n = remaining
        if n <= 0:
            return b""
        first = self._index(pos)
        last = self._index(pos + n - 1)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._move(first, self._ahead(last, pos + n, n))
        datas = await self._collect(first, last + 1)

        whole = self._whole
        if whole is not None and pos != self._returned_to:
            # Not a continuation of an in-order read from 0: no whole-blob check.
            whole.kill()
            whole = self._whole = None

        start = pos - self._offsets[first]
        if first == last:
            data = datas[0]
            out = data if start == 0 and n == len(data) else data[start : start + n]
        else:
            end = pos + n - self._offsets[last]
            if start:
                datas[0] = datas[0][start:]
            if end != len(datas[-1]):
                datas[-1] = datas[-1][:end]
            if n >= _THREAD_JOIN_MIN:
                out = await asyncio.wrap_future(_worker_pool().submit(b"".join, datas))
            else:
                out = b"".join(datas)
        del datas

        if whole is not None:
            if pos + n == self._length:
                assert self._blob_digest is not None
                actual = await whole.digest()
                self._whole = None
                if actual != self._blob_digest.digest:
                    # The index does not list this blob's chunks: every later read
                    # fails too, rather than hand out any of these bytes unchecked.
                    self._corrupt = DigestMismatchError(
                        f"blob {self._blob_digest.hex()}: its chunks hash to {actual.hex()}"
                    )
                    raise self._corrupt
            self._returned_to = pos + n
        self._pos = pos + n
        # Forget the chunks the cursor has passed.
        self._move(self._index(self._pos) if self._pos < self._length else len(self._chunks))
        return out

    def _ahead(self, last: int, end: int, n: int) -> int:
        """The window's end for a read of ``n`` bytes covering chunks up to ``last``."""
        hi = last + 1
        if self._prefetch:
            ahead = hi + self._prefetch
            if end < self._length:
                ahead = max(ahead, self._index(min(end + n, self._length) - 1) + 1)
            if self._lo <= last < self._hi:
                ahead = max(ahead, self._hi)  # keep what is already ahead
            hi = min(ahead, last + 1 + _MAX_AHEAD, len(self._chunks))
        return hi

    def _move(self, lo: int, hi: int | None = None) -> None:
        """Make the window [lo, hi) (``hi`` unchanged when not given) and fill it."""
        if hi is None:
            hi = self._hi
        hi = max(hi, lo)
        with self._lock:
            ready = self._ready
            if lo < self._lo or lo >= self._hi or hi < self._hi:
                # A jump (a seek) or a shrink: drop results outside the new window.
                for i in [i for i in ready if i < lo or i >= hi]:
                    del ready[i]
            else:
                for i in range(self._lo, lo):
                    ready.pop(i, None)
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

    def _start_puller(self) -> None:
        if self._fetch_sync is not None:
            job = anyio.to_thread.run_sync(self._pull_sync, abandon_on_cancel=True)
        else:
            job = self._pull_async()
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._puller_done)

    def _puller_done(self, task: asyncio.Task[None]) -> None:
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
        fetch = self._fetch_sync
        assert fetch is not None
        while True:
            with self._lock:
                if not self._closed and self._claim >= self._hi:
                    self._wake.wait(_LINGER)
                i = self._take()
            if i is None:
                return
            try:
                meta = self._chunks[i]
                data = fetch(meta)
                if not self._verified_fetch:
                    verify_chunk(meta, data)
            except Exception as e:
                self._hand_over(i, e)
                with self._lock:
                    self._pullers -= 1
                return
            if not self._hand_over(i, data):
                return
            whole = self._whole
            if whole is not None and whole.offer(i, data):
                whole.drain()  # here, while the chunk is still in this CPU's cache

    async def _pull_async(self) -> None:
        """A task puller: the same, through the async ``fetch``."""
        while True:
            with self._lock:
                i = self._take()
            if i is None:
                return
            try:
                data = await self._load(self._chunks[i])
            except Exception as e:
                self._hand_over(i, e)
                with self._lock:
                    self._pullers -= 1
                return
            self._hand_over(i, data)
            self._offer_from_loop(i, data)

    def _offer_from_loop(self, i: int, data: bytes) -> None:
        whole = self._whole
        if whole is not None and whole.offer(i, data):
            _worker_pool().submit(whole.drain)

    def _hand_over(self, i: int, result: bytes | Exception) -> bool:
        """From any thread: chunk ``i`` (or the error fetching it) for the reads.

        Kept if the window holds it and it is not there yet; the loop is woken only if a
        read waits for it. False when the loop is gone: the puller stops.
        """
        with self._lock:
            self._taken.discard(i)
            if self._closed or not self._lo <= i < self._hi or i in self._ready:
                return not self._closed
            self._ready[i] = result
            self._arrived += 1
            waiter = self._waiter
            if waiter is None or not waiter.first <= i < waiter.end:
                return True
            waiter.missing -= 1
            if waiter.missing and not isinstance(result, Exception):
                return True
            self._waiter = None
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(_release, waiter.fut)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            with self._lock:
                self._closed = True
            return False
        return True

    async def _collect(self, first: int, end: int) -> list[bytes]:
        """The chunks ``first .. end - 1``, waiting for those not fetched yet."""
        loop = self._loop
        assert loop is not None
        while True:
            error: Exception | None = None
            missing: list[int] = []
            found: list[bytes] = []
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
        if self._fetch_sync is None or self._timeout is None:
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
                data = await self._load(self._chunks[i])
            except Exception as e:
                self._hand_over(i, e)
            else:
                self._hand_over(i, data)
                self._offer_from_loop(i, data)
            finally:
                self._refetching.discard(i)

        self._refetching.add(i)
        task = asyncio.ensure_future(one())
        self._tasks.add(task)
        task.add_done_callback(self._puller_done)

    async def _load(self, meta: ChunkMeta) -> bytes:
        data = await self._fetch(meta)
        if not self._verified_fetch:
            data = await anyio.to_thread.run_sync(verify_chunk, meta, data)
        return data

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        if self._whole is not None:
            self._whole.kill()
            self._whole = None
        with self._lock:
            self._ready.clear()
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
