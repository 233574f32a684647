"""Checking a bucket: every chunk an index names exists, and (with data) every chunk is right.

A check walks the bucket in three steps:

1. **indexes**: list ``blobs/`` and read every blob index (a few dozen at once on a
   remote store), noting each chunk it names with its size. An index that does not
   decode is a problem of its own.
2. **chunks**: list ``chunks/``. A chunk object that no index names is an orphan
   (counted: garbage collection reclaims it). With ``read_data`` every chunk object in
   the subset is fetched, decoded with the same bound as a read (a frame may not declare
   or expand to more than a chunk can hold), and its BLAKE3 compared with its key and
   its size with the index's. Fetches go a batch at a time; decoding and hashing a
   batch is one hop to a worker thread.
3. **missing**: a named chunk that the listing did not show is looked up with a HEAD (a
   listing is no proof of absence); if the HEAD finds nothing and the blob that names it
   is still there, the chunk is missing.

Indexes are read before chunks are listed because writers store a blob's chunks before
its index: every chunk of an index the check has read was stored before the chunk
listing began. Blobs written while a check runs may show up as orphans; blobs deleted
while it runs are skipped.

Memory: one dict entry per distinct chunk that indexes name (its digest and one int,
about 150 bytes), held from the first step until the listing reaches the chunk; indexes
are decoded a few dozen at a time. A structural check of a million chunks in 10,000 blobs
on the memory store took 70 s and 370 MiB more peak RSS than the filled store, some of it
the memory store's own listing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from castore._digest import EMPTY_DIGEST, B3Digest, ChunkMeta
from castore._threads import THRESHOLDS, run_sized
from castore.errors import DataCorruptionError
from castore.objectstore._check_types import CheckProblem, CheckSummary, Subset
from castore.objectstore._codec import decode_chunk, decode_index
from castore.objectstore._listing import bounded_map, lookups

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from castore.objectstore._layout import Layout
    from castore.objectstore._listing import StoreCalls
    from castore.objectstore._repair import Repairer

__all__ = ["Check", "CheckProgress"]

#: ``progress(phase, done)``: called as a check advances (``done`` counts blobs or chunks).
CheckProgress = Callable[[str, int], None]

# Chunk objects fetched per batch of a data check (compressed, at most about 32 x 512 KiB).
_BATCH = 32
# HEADs per batch when confirming missing chunks.
_HEAD_BATCH = 1000

# A decoded index: its chunks, or why it does not decode.
_Decoded = list[ChunkMeta] | str


def _decode_all(raws: Sequence[Buffer | None], limit: int) -> list[_Decoded | None]:
    out: list[_Decoded | None] = []
    for raw in raws:
        if raw is None:
            out.append(None)
            continue
        try:
            out.append(decode_index(raw, limit))
        except DataCorruptionError as e:
            out.append(str(e))
    return out


# What reading a chunk object showed: ``None`` (it is right), ``("corrupt", why)`` or
# ``("size", actual size)`` (right for its digest, not the size its index names).
_Verdict = tuple[str, str] | tuple[str, int] | None


def _verify_all(
    items: Sequence[tuple[bytes, int]], frames: Sequence[Buffer | None], limit: int
) -> list[_Verdict]:
    out: list[_Verdict] = []
    for (digest, size), frame in zip(items, frames, strict=True):
        if frame is None:
            out.append(None)
            continue
        try:
            data = decode_chunk(frame, digest, expected_size=None, max_size=limit)
        except DataCorruptionError as e:
            out.append(("corrupt", str(e)))
            continue
        out.append(("size", len(data)) if size and len(data) != size else None)
    return out


# A problem, and the chunk's size by its index (0: unknown) for repair.
_Found = tuple[CheckProblem, int]


class Check:
    """One run of a check: ``async for problem in check`` runs it, then read :attr:`summary`.

    Problems are yielded as they are found (and repaired, when repair was asked for); the
    summary's counts are final once the iteration ends. A check runs once.
    """

    def __init__(
        self,
        calls: StoreCalls,
        layout: Layout,
        read_limit: int,
        *,
        read_data: bool,
        subset: Subset | None,
        repairer: Repairer,
        progress: CheckProgress | None,
    ) -> None:
        self._calls = calls
        self._layout = layout
        self._limit = read_limit
        self._read_data = read_data
        self._subset = subset or Subset()
        self._repairer = repairer
        self._progress = progress
        self._started = False
        self.summary = CheckSummary(
            read_data=read_data, subset=None if subset is None else str(subset)
        )
        # Chunk digest -> its size by its index (0 if unknown) << 32 | the number of a blob
        # that names it in _blobs: one int, not a tuple, per chunk, for memory's sake.
        self._named: dict[bytes, int] = {}
        self._blobs: list[bytes] = []
        # Named chunks a data check found gone after they were listed: looked at again.
        self._late: list[tuple[bytes, int, bytes | None]] = []

    def __aiter__(self) -> AsyncIterator[CheckProblem]:
        if self._started:
            raise RuntimeError("a check runs once: call check() again for another run")
        self._started = True
        return self._run()

    async def collect(self) -> list[CheckProblem]:
        """Run the whole check; every problem found, in order (the summary is final)."""
        return [problem async for problem in self]

    def _tick(self, phase: str, done: int) -> None:
        if self._progress is not None:
            self._progress(phase, done)

    async def _run(self) -> AsyncIterator[CheckProblem]:
        began = time.monotonic()
        for step in (self._indexes, self._chunks, self._missing):
            async for problem, size in step():
                problem = await self._repairer.fix(problem, size or None)
                self.summary.count(problem)
                yield problem
        self.summary.seconds = time.monotonic() - began

    def _take(self, d: bytes) -> tuple[int, bytes | None]:
        """Remove chunk ``d`` from the named ones: its size by its index (0: unknown) and
        a blob that names it (``None``: none does)."""
        ref = self._named.pop(d, None)
        if ref is None:
            return 0, None
        return ref >> 32, self._blobs[ref & 0xFFFFFFFF]

    # --- 1. indexes ------------------------------------------------------------------

    def _name(self, blob: bytes, metas: list[ChunkMeta]) -> None:
        if not metas and blob == EMPTY_DIGEST.digest:
            return
        named, number = self._named, len(self._blobs)
        self._blobs.append(blob)
        if not metas:
            named.setdefault(blob, number)  # a blob stored as one chunk, size unknown
            return
        for meta in metas:
            d = meta.digest.digest
            old = named.get(d)
            if old is None or old < 1 << 32:  # keep a known size
                named[d] = meta.size << 32 | number

    async def _index_batch(self, digests: list[bytes]) -> AsyncIterator[_Found]:
        layout, calls = self._layout, self._calls

        async def get(d: bytes) -> Buffer | None:
            return await calls.get(layout.blob(d), "blob index")

        raws = await bounded_map(get, digests, lookups(calls.adapter))
        size = sum(len(memoryview(raw)) for raw in raws if raw is not None)
        decoded = await run_sized(size, THRESHOLDS.decode_index, _decode_all, raws, self._limit)
        del raws
        for d, found in zip(digests, decoded, strict=True):
            if found is None:  # deleted since it was listed
                continue
            self.summary.blobs += 1
            if isinstance(found, str):
                yield CheckProblem("malformed-index", layout.blob(d), B3Digest(d), found), 0
            else:
                self._name(d, found)

    async def _indexes(self) -> AsyncIterator[_Found]:
        layout, calls = self._layout, self._calls

        async for page in calls.pages(layout.blobs):
            digests = [
                d
                for info in page
                if (d := layout.digest_of(info.key)) and info.key == layout.blob(d)
            ]
            # A few dozen indexes at a time: decoded chunk lists are large (an index of a
            # 1 GiB blob lists some 4000 chunks); only their digests are kept.
            for start in range(0, len(digests), _BATCH):
                async for found in self._index_batch(digests[start : start + _BATCH]):
                    yield found
            self._tick("reading indexes", self.summary.blobs)
        self.summary.referenced = len(self._named)

    # --- 2. chunk objects --------------------------------------------------------------

    async def _chunks(self) -> AsyncIterator[_Found]:
        layout, s = self._layout, self.summary
        listed = 0
        async for page in self._calls.pages(layout.chunks):
            todo: list[tuple[bytes, int, bytes | None]] = []
            for info in page:
                d = layout.digest_of(info.key)
                if d is None or info.key != layout.chunk(d):
                    continue  # not a castore chunk key: nothing castore wrote
                listed += 1
                s.chunks += 1
                s.chunk_bytes += info.size
                size, blob = self._take(d)
                if blob is None:
                    s.orphans += 1
                    s.orphan_bytes += info.size
                if self._read_data and self._subset.selects(d):
                    todo.append((d, size, blob))
            async for found in self._read(todo):
                yield found
            self._tick("checking chunks" if self._read_data else "listing chunks", listed)

    async def _read(self, todo: list[tuple[bytes, int, bytes | None]]) -> AsyncIterator[_Found]:
        """Fetch and verify chunk objects, a batch at a time."""
        layout, calls, s = self._layout, self._calls, self.summary

        async def get(item: tuple[bytes, int, bytes | None]) -> Buffer | None:
            return await calls.get(layout.chunk(item[0]), "chunk")

        for start in range(0, len(todo), _BATCH):
            batch = todo[start : start + _BATCH]
            frames = await bounded_map(get, batch, lookups(calls.adapter))
            # The work is decompressing and hashing: bounded by the chunks' sizes (the
            # read limit where the index does not say), not by the compressed bytes.
            present = [n for (_, n, _), f in zip(batch, frames, strict=True) if f is not None]
            size = sum(n or self._limit for n in present)
            items = [(d, n) for d, n, _ in batch]
            verdicts = await run_sized(
                size, THRESHOLDS.hash, _verify_all, items, frames, self._limit
            )
            for (d, expected, blob), frame, verdict in zip(batch, frames, verdicts, strict=True):
                if frame is None:
                    if blob is not None:  # deleted since it was listed: look again at the end
                        self._late.append((d, expected, blob))
                    continue
                s.chunks_read += 1
                s.bytes_read += len(memoryview(frame))
                if verdict is None:
                    continue
                named_by = None if blob is None else B3Digest(blob)
                if verdict[0] == "corrupt":
                    why = str(verdict[1])
                    problem = CheckProblem(
                        "corrupt-chunk", layout.chunk(d), B3Digest(d), why, named_by
                    )
                    yield problem, expected
                elif blob is not None:
                    why = f"the index names it as {expected} bytes; it holds {verdict[1]}"
                    problem = CheckProblem(
                        "wrong-size", layout.blob(blob), B3Digest(d), why, named_by
                    )
                    yield problem, expected

    # --- 3. named chunks the listing did not show --------------------------------------

    async def _missing(self) -> AsyncIterator[_Found]:
        layout, calls = self._layout, self._calls

        async def head(d: bytes) -> bool:
            return await calls.head(layout.chunk(d)) is not None

        left = [(d, *self._take(d)) for d in list(self._named)]
        left += self._late
        self._late = []
        for start in range(0, len(left), _HEAD_BATCH):
            batch = left[start : start + _HEAD_BATCH]
            present = await bounded_map(head, [d for d, _, _ in batch], lookups(calls.adapter))
            todo: list[tuple[bytes, int, bytes | None]] = []
            for (d, size, blob), there in zip(batch, present, strict=True):
                if there:
                    if self._read_data and self._subset.selects(d):
                        todo.append((d, size, blob))
                    continue
                if blob is None or await calls.head(layout.blob(blob)) is None:
                    continue  # its blob was deleted while the check ran
                what = "its blob's only chunk" if d == blob else "a chunk its index names"
                problem = CheckProblem(
                    "missing-chunk",
                    layout.chunk(d),
                    B3Digest(d),
                    f"{what} is missing",
                    B3Digest(blob),
                )
                yield problem, size
            async for found in self._read(todo):
                yield found
            self._tick("confirming missing chunks", start + len(batch))
