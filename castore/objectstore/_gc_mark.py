"""Marking for the garbage collector: which chunks exist, and which ones indexes name.

Memory is what limits a collector on a large bucket, so nothing here keeps an object per
chunk. Chunks are packed as 40-byte records (digest and object size) into one
``bytearray`` per first byte of the digest; the chunks an index names are kept as 64-bit
prefixes of their digests in one ``array('Q')`` per first byte, 8 bytes a reference.
Comparing the two goes one first byte at a time, with a ``set`` of that bucket's prefixes
only. Two digests sharing a 64-bit
prefix can only make an unreferenced chunk look referenced: garbage is kept, never the
reverse.

Roots: every blob index. A chunk is live when an index lists it, and so is the chunk
named ``d`` for an index ``d`` with an empty chunk list (a blob stored as one chunk).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from castore.errors import MalformedIndexError
from castore.objectstore._codec import decode_index
from castore.objectstore._errors import store_error
from castore.objectstore._gc_state import RECORD, each_bounded

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from castore.objectstore._adapter import ObjectInfo, StoreAdapter
    from castore.objectstore._layout import Layout

__all__ = [
    "ChunkListing",
    "Marks",
    "Progress",
    "bucketed",
    "list_chunks",
    "mark",
    "unmarked",
]

#: ``progress(phase, done, total)``: called as a phase advances (``total`` may be None).
Progress = Callable[[str, int, int | None], None]

# Index reads in flight at once on a remote store.
_READS_IN_FLIGHT = 32


def _prefix(d: bytes) -> int:
    return int.from_bytes(d[:8], "big")


def _buckets() -> list[bytearray]:
    return [bytearray() for _ in range(256)]


@dataclass(slots=True)
class ChunkListing:
    """The chunk objects one listing found: totals, and those older than the cutoff."""

    objects: int = 0
    bytes: int = 0
    #: Records (digest and object size, as condemned lists hold them) of the chunks last
    #: modified before the cutoff, by first byte of the digest.
    old: list[bytearray] = field(default_factory=_buckets)


async def list_chunks(
    adapter: StoreAdapter,
    layout: Layout,
    cutoff: float,
    progress: Progress | None = None,
) -> ChunkListing:
    """List every chunk object; keep the digests of those last modified before ``cutoff``.

    Keys that are not castore chunk keys are never candidates (nothing castore did not
    write is ever deleted).
    """
    out = ChunkListing()
    prefix = layout.chunks
    try:
        async for page in adapter.list(prefix.rstrip("/")):
            for info in page:
                d = layout.digest_of(info.key)
                if d is None or info.key != layout.chunk(d):
                    continue
                out.objects += 1
                out.bytes += info.size
                if info.last_modified.timestamp() < cutoff:
                    out.old[d[0]] += d + info.size.to_bytes(8, "big")
            if progress is not None:
                progress("listing chunks", out.objects, None)
    except Exception as e:
        raise store_error(e, f"listing {prefix}") from e
    return out


@dataclass(slots=True)
class Marks:
    """64-bit prefixes of every chunk some index names, by first byte of the digest."""

    buckets: list[array[int]] = field(default_factory=lambda: [array("Q") for _ in range(256)])
    indexes: int = 0
    references: int = 0

    def add(self, d: bytes) -> None:
        self.buckets[d[0]].append(_prefix(d))
        self.references += 1


def _chunk_digests(raw: Buffer, limit: int, key: str) -> list[bytes]:
    try:
        return [c.digest.digest for c in decode_index(raw, limit)]
    except MalformedIndexError as e:
        raise MalformedIndexError(
            f"blob index {key} does not decode ({e}); the collector cannot know which "
            "chunks it names and stops. Check the store (castore check) and repair or "
            "delete that index."
        ) from e


def _mark_page(marks: Marks, named: list[tuple[bytes, str, Buffer | None]], limit: int) -> None:
    """In a worker: decode a page's indexes and add what they name."""
    for d, key, raw in named:
        if raw is None:  # deleted since the listing: no longer a root
            continue
        marks.indexes += 1
        chunks = _chunk_digests(raw, limit, key)
        if not chunks:
            marks.add(d)
        for c in chunks:
            marks.add(c)


async def _read_all(adapter: StoreAdapter, keys: Sequence[str]) -> list[Buffer | None]:
    if adapter.in_process:
        # Memory and local disk: one thread hop for the page, not one per index.
        return await anyio.to_thread.run_sync(lambda: [adapter.get(k) for k in keys])
    out: list[Buffer | None] = [None] * len(keys)

    async def one(i: int) -> None:
        out[i] = await adapter.get_async(keys[i])

    await each_bounded(one, range(len(keys)), _READS_IN_FLIGHT)
    return out


async def mark(
    adapter: StoreAdapter,
    layout: Layout,
    read_limit: int,
    progress: Progress | None = None,
) -> Marks:
    """List every blob index and mark the chunks each one names.

    Empty indexes (a blob stored as one chunk, whose size the listing gives as 0) are
    marked without being read. A corrupt index stops the collector: its chunks are
    unknown, so nothing could be deleted safely.
    """
    marks = Marks()
    prefix = layout.blobs
    seen = 0
    try:
        async for page in adapter.list(prefix.rstrip("/")):
            to_read: list[tuple[bytes, ObjectInfo]] = []
            for info in page:
                d = layout.digest_of(info.key)
                if d is None or info.key != layout.blob(d):
                    continue
                if info.size == 0:
                    marks.indexes += 1
                    marks.add(d)
                else:
                    to_read.append((d, info))
            if to_read:
                raws = await _read_all(adapter, [info.key for _, info in to_read])
                named = [(d, info.key, raw) for (d, info), raw in zip(to_read, raws, strict=True)]
                await anyio.to_thread.run_sync(_mark_page, marks, named, read_limit)
            seen += len(page)
            if progress is not None:
                progress("marking", seen, None)
    except MalformedIndexError:
        raise
    except Exception as e:
        raise store_error(e, f"marking from the indexes under {prefix}") from e
    return marks


def unmarked(candidates: list[bytearray], marks: Marks) -> tuple[bytes, int]:
    """In a worker: the candidate records whose chunk no index names, sorted, and the sum
    of their sizes. ``candidates`` holds records by first byte (as :class:`ChunkListing`).
    """
    out: list[bytes] = []
    total = 0
    for b in range(256):
        packed = candidates[b]
        if not packed:
            continue
        live = set(marks.buckets[b])
        view = memoryview(packed)
        found: list[bytes] = []
        for i in range(0, len(packed), RECORD):
            if int.from_bytes(view[i : i + 8], "big") not in live:
                found.append(bytes(view[i : i + RECORD]))
                total += int.from_bytes(view[i + 32 : i + RECORD], "big")
        found.sort()
        out.extend(found)
    return b"".join(out), total


def bucketed(records: bytes) -> list[bytearray]:
    """Packed records regrouped by first byte, as :func:`unmarked` takes them."""
    out = _buckets()
    view = memoryview(records)
    for i in range(0, len(records), RECORD):
        out[records[i]] += view[i : i + RECORD]
    return out
