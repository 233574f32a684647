"""``MemoryBlobService``: blobs in a dict, for tests and as the model other backends match."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import SplitResult

import anyio.lowlevel
import anyio.to_thread
import blake3

from castore._digest import B3Digest, DigestLike
from castore._threads import THRESHOLDS, hash_update
from castore.blobservice import BlobInfo, BlobReader, BlobService, BlobWriter, BytesReader
from castore.errors import InvalidAddressError
from castore.registry import register_scheme, register_type

__all__ = ["MemoryBlobService"]


# A listing lets other tasks run after this many blobs.
_LIST_BATCH = 1000


class MemoryBlobService(BlobService):
    """Whole blobs in process memory. ``memory://`` in :func:`castore.from_addr`.

    Blobs are not chunked, so :meth:`chunks` returns ``[]`` for a stored blob, and
    :meth:`delete` removes a blob's bytes at once: ``has`` is false afterwards, whatever
    the blob's size (a blob stored in one piece has no chunk to outlive it). Listings
    give sizes but no chunk count.
    """

    def __init__(self) -> None:
        self._blobs: dict[B3Digest, bytes] = {}

    async def has(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        return digest in self._blobs

    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        digest = B3Digest.coerce(digest)
        data = self._blobs.get(digest)
        return None if data is None else BytesReader(data)

    async def open_write(self) -> BlobWriter:
        return _MemoryWriter(self._blobs)

    async def delete(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        await anyio.lowlevel.checkpoint()
        return self._blobs.pop(digest, None) is not None

    async def list_blobs(self, *, details: bool = False) -> AsyncIterator[BlobInfo]:
        # A snapshot: blobs written or deleted meanwhile do not disturb the iteration.
        items = list(self._blobs.items())
        for i, (digest, data) in enumerate(items):
            if i % _LIST_BATCH == 0:
                await anyio.lowlevel.checkpoint()
            yield BlobInfo(digest, len(data)) if details else BlobInfo(digest)

    def __len__(self) -> int:
        return len(self._blobs)


class _MemoryWriter(BlobWriter):
    def __init__(self, blobs: dict[B3Digest, bytes]) -> None:
        self._blobs = blobs
        self._parts: list[bytes] = []
        self._hasher = blake3.blake3(max_threads=1)
        self._new_bytes: int | None = None

    @property
    def new_bytes(self) -> int | None:
        return self._new_bytes

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        part = bytes(data)
        if len(part) < THRESHOLDS.hash:
            await anyio.lowlevel.checkpoint()  # a write is a checkpoint either way
        await hash_update(self._hasher, part)
        self._parts.append(part)

    async def _finish(self) -> B3Digest:
        digest = B3Digest(self._hasher.digest())
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        if digest not in self._blobs:
            self._blobs[digest] = data
            self._new_bytes = len(data)
        else:
            self._new_bytes = 0
        return digest

    async def _abort(self) -> None:
        self._parts = []


def _from_url(parts: SplitResult) -> BlobService:
    if parts.netloc or parts.path or parts.query or parts.fragment:
        raise InvalidAddressError(
            "memory:// takes no host, path or options, got "
            f"{parts.scheme + '://' + parts.netloc + parts.path!r}; use 'memory://'"
        )
    return MemoryBlobService()


register_scheme("memory", _from_url)
register_type("memory", MemoryBlobService)
