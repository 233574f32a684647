"""Repairing what a check found: chunks fetched from another store, or corrupt ones deleted.

A chunk is content-addressed, so any store that holds the same bytes can mend it: a
replica, a gRPC server, a memory store that holds the blob. The bytes are fetched by the
chunk's digest (every castore and tvix store answers for chunk digests), or, from a store
that keeps whole blobs, as the chunk's range of a blob that contains it; either way
they are verified against the digest (and the index's size) before they are stored, and
the stored object is read back and verified once more.

Without a source, repair deletes corrupt chunks. Writers skip chunks whose keys exist
(chunk puts are conditional creates), so putting a blob again never replaces a corrupt
chunk; once it is deleted, the next put of any blob that contains it stores it anew.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import blake3

from castore._digest import B3Digest
from castore._threads import THRESHOLDS, run_sized
from castore.errors import CastoreError, DataCorruptionError
from castore.objectstore._codec import compressor, decode_chunk, decode_index

if TYPE_CHECKING:
    from castore.blobservice import BlobReader, BlobService
    from castore.objectstore._check_types import CheckProblem
    from castore.objectstore._layout import Layout
    from castore.objectstore._listing import StoreCalls

__all__ = ["Repairer"]

# Bytes asked of a source reader at a time.
_PIECE = 1 << 20


def _b3(data: bytes) -> bytes:
    return blake3.blake3(data, max_threads=1).digest()


def _compress(data: bytes) -> bytes:
    # A one-shot compress declares the content size in the frame header, as castore's
    # writer does, so bounded readers can refuse an oversized frame before decoding it.
    return compressor().compress(data)


def _verify(frame: memoryview, digest: bytes, size: int | None, limit: int) -> str | None:
    try:
        decode_chunk(frame, digest, expected_size=size, max_size=limit)
    except DataCorruptionError as e:
        return str(e)
    return None


async def _read_at_most(reader: BlobReader, limit: int) -> bytes | None:
    """Everything ``reader`` gives, or ``None`` when that is more than ``limit`` bytes."""
    parts: list[bytes] = []
    total = 0
    while total <= limit:
        piece = await reader.read(min(_PIECE, limit + 1 - total))
        if not piece:
            return b"".join(parts)
        parts.append(piece)
        total += len(piece)
    return None


async def _read_exactly(reader: BlobReader, size: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while total < size:
        piece = await reader.read(min(_PIECE, size - total))
        if not piece:
            break
        parts.append(piece)
        total += len(piece)
    return b"".join(parts)


class Repairer:
    """Mends chunk problems: from ``source`` when given, and (``delete_corrupt``) by
    deleting corrupt chunks that no source could replace."""

    def __init__(
        self,
        calls: StoreCalls,
        layout: Layout,
        read_limit: int,
        *,
        source: BlobService | None,
        delete_corrupt: bool,
    ) -> None:
        self._calls = calls
        self._layout = layout
        self._limit = read_limit
        self._source = source
        self._delete = delete_corrupt

    @property
    def active(self) -> bool:
        """Whether this repairer does anything at all."""
        return self._source is not None or self._delete

    async def fix(self, problem: CheckProblem, size: int | None) -> CheckProblem:
        """``problem`` with what repair did; ``size`` is the chunk's size by its index."""
        if problem.kind not in ("missing-chunk", "corrupt-chunk"):
            return problem
        notes: list[str] = []
        if self._source is not None:
            try:
                data = await self._fetch(problem, size, notes)
            except CastoreError as e:
                data = None
                notes.append(f"the source failed: {e}")
            if data is not None:
                return await self._store(problem, data, size)
        if self._delete and problem.kind == "corrupt-chunk":
            return await self._delete_corrupt(problem, size, notes)
        if not notes:
            return problem
        return dataclasses.replace(problem, repair="; ".join(notes))

    async def _fetch(
        self, problem: CheckProblem, size: int | None, notes: list[str]
    ) -> bytes | None:
        """The chunk's verified bytes from the source, or ``None`` (with a note why)."""
        assert self._source is not None
        digest = problem.digest
        reader = None
        try:
            reader = await self._source.open_read(digest)
            if reader is not None:
                async with reader:
                    data = await _read_at_most(reader, self._limit)
                if data is not None and await self._matches(data, digest, size):
                    return data
                notes.append("the source's copy of the chunk does not match its digest")
        except DataCorruptionError as e:
            notes.append(f"the source's copy of the chunk does not match its digest: {e}")
        blob = problem.blob
        if blob is None or blob == digest:
            if reader is None and not notes:
                notes.append("the source does not have the chunk")
            return None
        # A source that keeps whole blobs (memory) has no chunk objects: read the chunk's
        # range of the blob that names it.
        offset = await self._offset(blob, digest)
        if offset is None or size is None:
            notes.append("the source does not have the chunk")
            return None
        whole = await self._source.open_read(blob)
        if whole is None:
            notes.append("the source does not have the chunk, nor its blob")
            return None
        async with whole:
            await whole.seek(offset)
            data = await _read_exactly(whole, size)
        if await self._matches(data, digest, size):
            return data
        notes.append("the source's blob does not hold the chunk")
        return None

    async def _matches(self, data: bytes, digest: B3Digest, size: int | None) -> bool:
        if size is not None and len(data) != size:
            return False
        actual = await run_sized(len(data), THRESHOLDS.hash, _b3, data)
        return actual == digest.digest

    async def _offset(self, blob: B3Digest, digest: B3Digest) -> int | None:
        """Where chunk ``digest`` starts in ``blob``, by this store's index of the blob."""
        raw = await self._calls.get(self._layout.blob(blob.digest), "blob index")
        if raw is None:
            return None
        try:
            metas = await run_sized(
                len(memoryview(raw)), THRESHOLDS.decode_index, decode_index, raw, self._limit
            )
        except DataCorruptionError:
            return None
        offset = 0
        for meta in metas:
            if meta.digest == digest:
                return offset
            offset += meta.size
        return None

    async def _store(self, problem: CheckProblem, data: bytes, size: int | None) -> CheckProblem:
        """Overwrite the chunk object with ``data``, then read it back and verify it."""
        key = problem.key
        frame = await run_sized(len(data), THRESHOLDS.hash, _compress, data)
        await self._calls.call(
            f"storing chunk {key}", lambda: self._calls.adapter.put_async(key, frame)
        )
        failed = await self._reverify(problem, size)
        if failed is not None:
            return dataclasses.replace(
                problem, repair=f"replaced from the source, but reads back wrong: {failed}"
            )
        return dataclasses.replace(problem, repair="replaced from the source", repaired=True)

    async def _reverify(self, problem: CheckProblem, size: int | None) -> str | None:
        """Why the chunk object is wrong now, or ``None`` when it verifies."""
        frame = await self._calls.get(problem.key, "chunk")
        if frame is None:
            return "the chunk is missing"
        view = memoryview(frame)
        return await run_sized(
            len(view), THRESHOLDS.hash, _verify, view, problem.digest.digest, size, self._limit
        )

    async def _delete_corrupt(
        self, problem: CheckProblem, size: int | None, notes: list[str]
    ) -> CheckProblem:
        # Read it once more first: a chunk mended meanwhile must not be deleted.
        if await self._reverify(problem, size) is None:
            note = "verifies on a second read"
            return dataclasses.replace(problem, repair=note, repaired=True)
        key = problem.key
        await self._calls.call(
            f"deleting chunk {key}", lambda: self._calls.adapter.delete_async([key])
        )
        notes.append("deleted the corrupt chunk: put its blob again to store it anew")
        return dataclasses.replace(problem, repair="; ".join(notes))
