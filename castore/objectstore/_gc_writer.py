"""The writers' part of garbage collection: never commit an index naming a chunk that a
sweep may delete.

The hazard is deduplication: a writer finds a chunk already stored and skips uploading
it, but that chunk is old and unreferenced, so the collector has condemned it and may
delete it before the writer's index lands. A grace period on LastModified cannot help:
the chunk is old. So a writer, between its last chunk put and its index put
(:func:`commit_index`), looks at the collector's state and clears every chunk of its
blob that a generation not yet swept when it started condemns:

- the generation is done (swept): HEAD the chunk; if it is gone, fail (retryable);
- it has begun: wait for ``done``, then as above;
- it has not begun: rescue the chunk (read it, check it, put it again, which moves its
  LastModified past the generation's cutoff, so the sweep keeps it), then list again.

and then sends its index put within :data:`~castore.objectstore._gc_state.WRITER_WINDOW`
seconds of sending the listing that cleared it (else it lists again), so that the index
lands before any generation that listing did not show can be swept. When the put returns
later than that window (the process was suspended between its check and the send, or the
request was slow), the writer lists once more and checks the generations that appeared
since; if one deleted a chunk, it withdraws the index and fails.
``docs/lifecycle.md`` gives the argument; its cost is one listing of ``gc/gen/`` per
blob, shared by the writers of a service that close at the same time, and nothing more
while no generation is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from castore.errors import GcConflictError, UnsupportedOperationError
from castore.objectstore._codec import decode_chunk
from castore.objectstore._errors import store_error
from castore.objectstore._gc_state import (
    WRITER_WINDOW,
    Condemned,
    GcKeys,
    GcView,
    clock_of,
    each_bounded,
    list_view,
    read_condemned,
)

if TYPE_CHECKING:
    from castore.objectstore._adapter import StoreAdapter
    from castore.objectstore._layout import Layout

__all__ = ["GcWatch", "commit_index"]

#: Seconds a writer waits for a sweep that has begun to finish before it gives up.
DONE_WAIT = 600.0
# Listing rounds before a writer gives up on a state that keeps changing under it.
_MAX_ROUNDS = 8
# Chunk requests (HEAD, rescue) in flight at once for one blob.
_IN_FLIGHT = 8

# Private test hook: skip the whole writer-side check (the negative control of the
# stress test proves that it then loses chunks).
_SKIP_FOR_TESTS = False


@dataclass(slots=True)
class _Cleared:
    """The proof a blob's commit rests on: the view that cleared it, and when it was
    listed (on the suspend-counting clock, taken before the listing was sent)."""

    view: GcView
    listed_at: float
    handled: set[int] = field(default_factory=set)


class GcWatch:
    """One service's view of the collector's state, shared by its writers.

    Holds the last listing of ``gc/gen/`` (a writer's starting view), runs the listings
    writers ask for (one at a time; a listing serves every writer that asked before it
    started), and caches the condemned lists writers read.
    """

    def __init__(self, adapter: StoreAdapter, layout: Layout, read_limit: int) -> None:
        self._adapter = adapter
        self._layout = layout
        self._keys = GcKeys(layout)
        self._clock = clock_of(adapter)
        self._read_limit = read_limit
        self.enabled = True
        self._view: GcView | None = None
        self._started = 0
        self._task: asyncio.Future[GcView] | None = None
        self._task_no = 0
        self._condemned: dict[int, Condemned | None] = {}

    async def _list(self) -> GcView:
        view = await list_view(self._adapter, self._keys)
        self._view = view
        return view

    async def fresh(self) -> GcView:
        """A view from a listing that starts after this call."""
        want = self._started + 1
        while True:
            task = self._task
            if task is not None and self._task_no >= want:
                return await asyncio.shield(task)
            if task is not None and not task.done():
                with contextlib.suppress(BaseException):
                    await asyncio.wait([task])
                continue
            self._started += 1
            self._task_no = self._started
            self._task = asyncio.ensure_future(self._list())
            self._task.add_done_callback(_retrieve)

    async def snapshot(self) -> GcView | None:
        """A writer's starting view (S0): the last listing, or a new one if there is none.

        ``None`` when the store cannot list (no collector can run on it either).
        """
        if not self.enabled or _SKIP_FOR_TESTS:
            return None
        if self._view is None:
            try:
                await self.fresh()
            except UnsupportedOperationError:
                self.enabled = False
                return None
        return self._view

    async def condemned(self, k: int) -> Condemned | None:
        if k not in self._condemned:
            self._condemned[k] = await read_condemned(self._adapter, self._keys, k)
        return self._condemned[k]

    # --- one blob --------------------------------------------------------------------

    async def _hits(self, k: int, chunks: Collection[bytes]) -> list[bytes]:
        condemned = await self.condemned(k)
        if condemned is None:  # the list is gone: every chunk may be in it
            return list(chunks)
        return [c for c in chunks if c in condemned]

    async def _each(self, fn: Callable[[bytes], Awaitable[None]], items: Sequence[bytes]) -> None:
        await each_bounded(fn, items, _IN_FLIGHT)

    async def _missing(self, hits: Sequence[bytes]) -> list[bytes]:
        missing: list[bytes] = []

        async def head(c: bytes) -> None:
            key = self._layout.chunk(c)
            try:
                if await self._adapter.head_async(key) is None:
                    missing.append(c)
            except Exception as e:
                raise store_error(e, f"checking chunk {key}") from e

        await self._each(head, hits)
        return missing

    async def _verify(self, k: int, hits: Sequence[bytes]) -> None:
        missing = await self._missing(hits)
        if missing:
            raise GcConflictError(
                f"chunk {missing[0].hex()} of this blob was deleted by garbage collection "
                f"(generation {k}) while the blob was written; nothing was committed. Write "
                "the blob again: that uploads the missing chunks."
            )

    async def _wait_done(self, k: int) -> None:
        key = self._keys.marker(k, "done")
        deadline = self._clock.now() + DONE_WAIT
        delay = 0.25
        while True:
            try:
                if await self._adapter.head_async(key) is not None:
                    return
            except Exception as e:
                raise store_error(e, f"checking {key}") from e
            if self._clock.now() >= deadline:
                raise GcConflictError(
                    f"a garbage collection sweep (generation {k}) that may delete chunks "
                    f"this blob reuses did not finish within {DONE_WAIT:.0f} s; nothing was "
                    "committed. Write the blob again later."
                )
            await self._clock.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _rescue(self, k: int, hits: Sequence[bytes]) -> None:
        async def rescue(c: bytes) -> None:
            key = self._layout.chunk(c)
            try:
                frame = await self._adapter.get_async(key)
            except Exception as e:
                raise store_error(e, f"reading chunk {key}") from e
            if frame is None:
                raise GcConflictError(
                    f"chunk {c.hex()} of this blob was deleted while the blob was written "
                    f"(garbage collection, generation {k}); nothing was committed. Write the "
                    "blob again: that uploads the missing chunks."
                )
            # Never rewrite a chunk with bytes that are not it (a read cut short).
            await anyio.to_thread.run_sync(
                lambda: decode_chunk(frame, c, expected_size=None, max_size=self._read_limit)
            )
            try:
                await self._adapter.put_async(key, frame)
            except Exception as e:
                raise store_error(e, f"rescuing chunk {key}") from e

        await self._each(rescue, hits)

    async def clear(self, start: GcView | None, chunks: Collection[bytes]) -> _Cleared:
        """Clear ``chunks`` against every generation not done in ``start``.

        Returns once a listing shows nothing left to do and was sent at most
        :data:`WRITER_WINDOW` seconds ago, so that the index put goes out within the
        window; a store too slow for that, or a state that keeps changing, fails the
        write (retryable).
        """
        handled: set[int] = set()
        rescued: set[int] = set()
        for _ in range(_MAX_ROUNDS):
            listed_at = self._clock.now()
            view = await self.fresh()
            work = False
            for g in view.existing():
                k = g.number
                if k in handled or (start is not None and start.is_done(k)):
                    continue
                hits = await self._hits(k, chunks)
                if not hits:
                    handled.add(k)
                elif g.done is not None:
                    await self._verify(k, hits)
                    handled.add(k)
                elif g.begun is not None:
                    await self._wait_done(k)
                    await self._verify(k, hits)
                    handled.add(k)
                    work = True
                elif k in rescued:
                    handled.add(k)  # rescued before this listing, which shows no sweep
                else:
                    await self._rescue(k, hits)
                    rescued.add(k)
                    work = True
            if not work and not self.late(_Cleared(view, listed_at)):
                return _Cleared(view, listed_at, handled)
        raise GcConflictError(
            "this blob could not be cleared against garbage collection: the store answered "
            f"too slowly (a listing of its state must come back within {WRITER_WINDOW:g} s) "
            "or the collector's state kept changing; nothing was committed. Write the blob "
            "again."
        )

    def late(self, cleared: _Cleared) -> bool:
        """Whether the index put returned too long after the listing that cleared it."""
        return self._clock.now() - cleared.listed_at > WRITER_WINDOW

    async def recheck(self, cleared: _Cleared, chunks: Collection[bytes]) -> list[bytes]:
        """After an index put that returned late: chunks that a generation the clearing
        did not see may have deleted (missing now); empty when all is well."""
        view = await self.fresh()
        missing: list[bytes] = []
        for g in view.existing():
            known = cleared.view.generations.get(g.number)
            if known is not None and known.exists:
                continue  # cleared before the put
            if g.begun is None and g.done is None:
                continue  # its sweep marks again after this listing, so it sees the index
            hits = await self._hits(g.number, chunks)
            if not hits:
                continue
            if g.done is None:
                await self._wait_done(g.number)
            missing += await self._missing(hits)
        return missing

    async def withdraw(self, index_key: str, missing: Sequence[bytes]) -> bool:
        """Delete an index that names a deleted chunk; True if a missing chunk is back
        (another writer uploaded it, and may have committed this same blob meanwhile)."""
        try:
            await self._adapter.delete_async([index_key])
        except Exception as e:
            raise store_error(e, f"withdrawing blob index {index_key}") from e
        return len(await self._missing(missing)) < len(missing)


async def commit_index(
    watch: GcWatch | None,
    start: GcView | None,
    chunks: Sequence[bytes],
    index_key: str,
    put_index: Callable[[], Awaitable[None]],
) -> None:
    """Put a blob's index once its ``chunks`` are cleared against garbage collection.

    ``start`` is the writer's view from before its first chunk put (its S0). Raises
    :class:`~castore.errors.GcConflictError` when the blob cannot be committed safely;
    then no index names a missing chunk.
    """
    if watch is None or start is None or not chunks or _SKIP_FOR_TESTS:
        await put_index()
        return
    unique = frozenset(chunks)
    for attempt in range(2):
        cleared = await watch.clear(start, unique)
        failure: Exception | None = None
        try:
            await put_index()
        except Exception as e:
            failure = e  # the put may still have landed: check it as a late one
        missing: list[bytes] = []
        if watch.late(cleared):
            missing = await watch.recheck(cleared, unique)
        if missing:
            back = await watch.withdraw(index_key, missing)
            if back and failure is None and not attempt:
                # A missing chunk is back: another writer may have committed this very
                # blob just before the withdrawal. Commit again, through the whole check.
                continue
            raise GcConflictError(
                f"this blob's index landed after garbage collection deleted its chunk "
                f"{missing[0].hex()} (the writer was suspended or the store stalled); the "
                "index was withdrawn. Write the blob again."
            ) from failure
        if failure is not None:
            raise failure
        return


def _retrieve(fut: asyncio.Future[GcView]) -> None:
    if not fut.cancelled():
        fut.exception()
