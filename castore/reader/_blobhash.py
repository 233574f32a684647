"""The whole-blob BLAKE3 of a chunked read, hashed chunk by chunk in index order."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING

import blake3

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["BlobHash"]


def _release(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, fut in waiters:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
            loop.call_soon_threadsafe(_release, fut)


class BlobHash:
    """The BLAKE3 of chunks ``0 .. count - 1``, hashed in index order.

    Chunks are offered as they are fetched and verified, in any order, from any thread;
    whichever thread offers the next one in line hashes it, and those after it that are
    already in (one thread at a time). So a chunk is mostly hashed by the puller that
    just verified it, while its bytes are still in the CPU's cache, and the event loop
    never hashes. :meth:`digest` waits until all ``count`` chunks are in.
    """

    __slots__ = (
        "_busy",
        "_count",
        "_dead",
        "_hasher",
        "_held",
        "_lock",
        "_next",
        "_upto",
        "_waiters",
    )

    def __init__(self, count: int) -> None:
        self._hasher = blake3.blake3(max_threads=1)
        self._lock = threading.Lock()
        self._count = count
        self._next = 0  # the next chunk index to hash
        self._held: dict[int, Buffer] = {}  # offered before their turn
        self._busy = False  # a thread is hashing
        self._dead = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        # Reads waiting for the hash to pass a chunk: (count, loop, future).
        self._upto: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def hashed(self, i: int) -> bool:
        """Whether chunk ``i`` has been hashed (its bytes are no longer needed here)."""
        return i < self._next

    def offer(self, i: int, data: Buffer) -> bool:
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
            del data
            with self._lock:
                self._next += 1
                passed = [w for w in self._upto if w[0] <= self._next] if self._upto else None
                if passed:
                    self._upto = [w for w in self._upto if w[0] > self._next]
            if passed:
                _wake([(loop, fut) for _, loop, fut in passed])
        _wake(waiters)

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

    async def hashed_through(self, count: int) -> None:
        """Wait until chunks ``0 .. count - 1`` are hashed, or the hash is stopped."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._dead or self._next >= count:
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._upto.append((count, loop, fut))
        await fut

    def kill(self) -> None:
        """Stop: no more hashing (a read broke the in-order sequence)."""
        with self._lock:
            self._dead = True
            self._held.clear()
            waiters, self._waiters = self._waiters, []
            upto, self._upto = self._upto, []
        for _, fut in waiters:
            fut.cancel()
        _wake([(loop, fut) for _, loop, fut in upto])
