"""What ``stat`` and ``put --json`` say about a stored blob: its size and chunk table.

Text and JSON tell the same story: a blob stored as one piece (one chunk under the blob's
own digest, or a backend that stores whole blobs) has one chunk, the blob itself; the
empty blob has none. Every chunk carries its offset, as the HTTP gateway's ``/chunks``
answer does.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from castore._digest import B3Digest
from castore.blobservice import BlobService

__all__ = ["Chunk", "Description", "describe"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a blob: where it starts in the blob, its length and its digest."""

    offset: int
    size: int
    digest: B3Digest

    def to_json(self) -> dict[str, object]:
        return {
            "digest": str(self.digest),
            "hex": self.digest.hex(),
            "offset": self.offset,
            "size": self.size,
        }


@dataclass(frozen=True, slots=True)
class Description:
    """A stored blob's digest, size and chunks (``whole``: stored as one piece)."""

    digest: B3Digest
    size: int
    chunks: tuple[Chunk, ...]
    whole: bool


async def describe(service: BlobService, digest: B3Digest) -> Description | None:
    """The blob's description, or ``None`` when it is not stored."""
    metas = await service.chunks(digest)
    if metas is None:
        return None
    if metas:
        chunks = []
        offset = 0
        for meta in metas:
            chunks.append(Chunk(offset, meta.size, meta.digest))
            offset += meta.size
        return Description(digest, offset, tuple(chunks), whole=False)
    # Stored as one piece: the length is where a reader's end is.
    reader = await service.open_read(digest)
    if reader is None:
        return None
    async with reader:
        size = await reader.seek(0, io.SEEK_END)
    whole = (Chunk(0, size, digest),) if size else ()
    return Description(digest, size, whole, whole=True)
