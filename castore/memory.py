"""``MemoryBlobService``: blobs in a dict, for tests and as the model other backends match."""

from __future__ import annotations

from urllib.parse import SplitResult

import anyio.lowlevel
import anyio.to_thread
import blake3

from castore._digest import B3Digest, DigestLike
from castore.blobservice import BlobReader, BlobService, BlobWriter, BytesReader
from castore.errors import InvalidAddressError
from castore.registry import register_scheme, register_type

__all__ = ["MemoryBlobService"]

# Hash pieces at least this large in a worker thread instead of on the event loop.
_THREAD_HASH_MIN = 1 << 20


class MemoryBlobService(BlobService):
    """Whole blobs in process memory. ``memory://`` in :func:`castore.from_addr`.

    Blobs are not chunked, so :meth:`chunks` returns ``[]`` for a stored blob.
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

    def __len__(self) -> int:
        return len(self._blobs)


class _MemoryWriter(BlobWriter):
    def __init__(self, blobs: dict[B3Digest, bytes]) -> None:
        self._blobs = blobs
        self._parts: list[bytes] = []
        self._hasher = blake3.blake3(max_threads=1)

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        part = bytes(data)
        if len(part) >= _THREAD_HASH_MIN:
            await anyio.to_thread.run_sync(self._hasher.update, part)
        else:
            await anyio.lowlevel.checkpoint()
            self._hasher.update(part)
        self._parts.append(part)

    async def _finish(self) -> B3Digest:
        digest = B3Digest(self._hasher.digest())
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        self._blobs.setdefault(digest, data)
        return digest

    async def _abort(self) -> None:
        self._parts = []


def _from_url(parts: SplitResult) -> BlobService:
    if parts.netloc or parts.path or parts.query or parts.fragment:
        raise InvalidAddressError(
            f"memory:// takes no host, path or options, got {parts.geturl()!r}; use 'memory://'"
        )
    return MemoryBlobService()


register_scheme("memory", _from_url)
register_type("memory", MemoryBlobService)
