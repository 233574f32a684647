"""Forwarding bases for wrappers: a service, reader and writer that delegate everything.

A wrapper subclasses :class:`WrapperBlobService` and overrides only the calls it changes.
The convenience calls ``put`` and ``get`` are *not* forwarded to the inner service's own
``put``/``get``: they run the generic implementation through the wrapper's
``open_write``/``open_read``, so that every wrapper sees every byte that passes.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from types import TracebackType

from castore._digest import B3Digest, ChunkMeta, DigestLike
from castore.blobservice import BlobInfo, BlobReader, BlobService, BlobWriter, WriteStats

__all__ = ["WrapperBlobReader", "WrapperBlobService", "WrapperBlobWriter"]


class WrapperBlobService(BlobService):
    """A :class:`~castore.BlobService` that forwards every call to ``inner``.

    The wrapper owns ``inner``: :meth:`aclose` closes it (once, however often the wrapper
    itself is closed).
    """

    def __init__(self, inner: BlobService) -> None:
        self._inner = inner
        self._closed = False

    @property
    def inner(self) -> BlobService:
        """The wrapped service."""
        return self._inner

    async def has(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        return await self._inner.has(digest)

    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        digest = B3Digest.coerce(digest)
        return await self._inner.open_read(digest)

    async def open_write(self) -> BlobWriter:
        return await self._inner.open_write()

    async def chunks(self, digest: DigestLike) -> list[ChunkMeta] | None:
        digest = B3Digest.coerce(digest)
        return await self._inner.chunks(digest)

    async def delete(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        return await self._inner.delete(digest)

    async def list_blobs(self, *, details: bool = False) -> AsyncIterator[BlobInfo]:
        async for info in self._inner.list_blobs(details=details):
            yield info

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._inner.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r})"


class WrapperBlobReader(BlobReader):
    """A :class:`~castore.BlobReader` that forwards to ``inner``.

    ``readinto`` and iteration keep the base class's implementations, which call
    :meth:`read`, so a subclass that overrides :meth:`read` sees those bytes too.
    """

    def __init__(self, inner: BlobReader) -> None:
        self._inner = inner

    @property
    def inner(self) -> BlobReader:
        """The wrapped reader."""
        return self._inner

    async def read(self, n: int = -1) -> bytes:
        return await self._inner.read(n)

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return await self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    async def aclose(self) -> None:
        await self._inner.aclose()


class WrapperBlobWriter(BlobWriter):
    """A :class:`~castore.BlobWriter` that forwards to ``inner``.

    The state machine is :class:`~castore.BlobWriter`'s, as for every writer: the
    wrapper's :meth:`_write`, :meth:`_finish` and :meth:`_abort` forward to ``inner``'s
    ``write``, ``close`` and ``abort``. Subclasses that observe writes override those
    three, or the public methods when they must also see what the state machine answers
    by itself (a write after close, a second close).
    """

    def __init__(self, inner: BlobWriter) -> None:
        self._inner = inner

    @property
    def inner(self) -> BlobWriter:
        """The wrapped writer."""
        return self._inner

    @property
    def new_bytes(self) -> int | None:
        """What the wrapped writer stored (see :attr:`castore.BlobWriter.new_bytes`)."""
        return self._inner.new_bytes

    @property
    def write_stats(self) -> WriteStats | None:
        """What the wrapped writer stored (see :attr:`castore.BlobWriter.write_stats`)."""
        return self._inner.write_stats

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.write(data)

    async def _finish(self) -> B3Digest:
        return await self._inner.close()

    async def _abort(self) -> None:
        await self._inner.abort()


class OnError:
    """A ``with`` block that reports the exception leaving it to ``callback``, then lets
    it propagate. Cancellation and other ``BaseException``s are not reported: they are
    not failures of the service. Wrappers that count or log failures use it around each
    call they forward."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[Exception], object]) -> None:
        self._callback = callback

    def __enter__(self) -> None:
        pass

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception):
            self._callback(exc)
