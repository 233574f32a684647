"""Listing a bucket: store calls with a time limit, pages of keys, and blob details.

The listing, the check and garbage collection all walk ``blobs/`` and ``chunks/`` and
then look at many objects one by one. The helpers here do that with a bound on each
store call (past it, :class:`~castore.errors.StoreTimeoutError`), store errors
translated to castore's tree, and a bounded number of lookups in flight.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread
import zstandard

from castore._digest import EMPTY_DIGEST, B3Digest
from castore._threads import THRESHOLDS, run_sized
from castore.blobservice import BlobInfo
from castore.errors import (
    DataCorruptionError,
    StoreTimeoutError,
)
from castore.objectstore._codec import decode_chunk, decode_index
from castore.objectstore._errors import store_error

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from castore.objectstore._adapter import ObjectInfo, StoreAdapter
    from castore.objectstore._layout import Layout

__all__ = ["StoreCalls", "bounded_map", "describe_blob", "list_blobs", "lookups"]

logger = logging.getLogger("castore.objectstore")

_T = TypeVar("_T")
_R = TypeVar("_R")

#: Index reads in flight while listing with details: remote stores answer in
#: milliseconds, so keep many waiting; in-process stores are CPU work.
REMOTE_LOOKUPS = 32
LOCAL_LOOKUPS = 4


class StoreCalls:
    """Calls to ``adapter``, each given up after ``timeout`` seconds (``None``: never)
    and with its errors translated to castore's tree."""

    __slots__ = ("adapter", "timeout")

    def __init__(self, adapter: StoreAdapter, timeout: float | None) -> None:
        self.adapter = adapter
        self.timeout = timeout

    async def call(self, what: str, fn: Callable[[], Awaitable[_T]]) -> _T:
        """``await fn()``; ``what`` names the operation and key in errors."""
        try:
            with anyio.move_on_after(self.timeout):
                return await fn()
        except StopAsyncIteration:
            raise
        except Exception as e:
            raise store_error(e, what) from e
        raise StoreTimeoutError(f"{what}: the store did not answer within {self.timeout} s")

    async def get(self, key: str, what: str) -> Buffer | None:
        """The object's bytes, or ``None`` if it is absent."""
        return await self.call(f"reading {what} {key}", lambda: self.adapter.get_async(key))

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's metadata, or ``None`` if it is absent (a HEAD, not a listing)."""
        return await self.call(f"checking {key}", lambda: self.adapter.head_async(key))

    async def pages(
        self, prefix: str, *, start_after: str | None = None
    ) -> AsyncIterator[Sequence[ObjectInfo]]:
        """The adapter's listing of ``prefix``, each page within the time limit."""
        pages = aiter(self.adapter.list(prefix, start_after=start_after))
        what = f"listing {prefix or 'the store'}"
        try:
            while True:
                try:
                    page = await self.call(what, lambda: anext(pages))
                except StopAsyncIteration:
                    return
                yield page
        finally:
            close = getattr(pages, "aclose", None)
            if close is not None:
                await self.call(what, close)


async def bounded_map(
    fn: Callable[[_T], Awaitable[_R]], items: Iterable[_T], limit: int
) -> list[_R]:
    """``[await fn(x) for x in items]`` with up to ``limit`` calls at once, in order.

    The first error cancels the other calls and is raised as itself (not in a group).
    """
    todo = list(enumerate(items))
    results: list[_R | None] = [None] * len(todo)
    queue = iter(todo)
    failed: list[BaseException] = []

    async def worker(scope: anyio.CancelScope) -> None:
        for i, item in queue:
            try:
                results[i] = await fn(item)
            except Exception as e:
                failed.append(e)
                scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        for _ in range(min(limit, len(todo))):
            tg.start_soon(worker, tg.cancel_scope)
    if failed:
        raise failed[0]
    return results  # type: ignore[return-value] # every slot was filled


def _declared_size(frame: Buffer) -> int | None:
    """The size a chunk frame's header declares, or ``None`` (not declared, not zstd)."""
    try:
        declared = zstandard.frame_content_size(memoryview(frame))
    except zstandard.ZstdError:
        return None
    return declared if declared >= 0 else None


def _decoded_size(frame: Buffer, digest: bytes, limit: int) -> int | None:
    try:
        return len(decode_chunk(frame, digest, expected_size=None, max_size=limit))
    except DataCorruptionError:
        return None


async def describe_blob(
    calls: StoreCalls, layout: Layout, digest: B3Digest, read_limit: int
) -> BlobInfo | None:
    """The blob's size and chunk count from its index; ``None`` if it has no index.

    A blob stored as one chunk has an empty index: its size comes from the chunk frame's
    header (castore writes it), or from decoding the frame (Rust does not). An index or
    chunk that cannot be read leaves the fields ``None``; ``castore check`` reports why.
    """
    key = layout.blob(digest.digest)
    raw = await calls.get(key, "blob index")
    if raw is None:
        return None
    try:
        found = await run_sized(
            len(memoryview(raw)), THRESHOLDS.decode_index, decode_index, raw, read_limit
        )
    except DataCorruptionError as e:
        logger.warning("blob index %s does not decode: %s", key, e)
        return BlobInfo(digest)
    if found:
        if len(found) == 1 and found[0].digest == digest:  # an old-style one-chunk index
            return BlobInfo(digest, found[0].size, 1)
        return BlobInfo(digest, sum(c.size for c in found), len(found))
    if digest == EMPTY_DIGEST:
        return BlobInfo(digest, 0, 0)
    ckey = layout.chunk(digest.digest)
    frame = await calls.get(ckey, "chunk")
    if frame is None:
        return BlobInfo(digest, None, 1)
    size = _declared_size(frame)
    if size is None or size > read_limit:
        size = await anyio.to_thread.run_sync(_decoded_size, frame, digest.digest, read_limit)
    return BlobInfo(digest, size, 1)


def lookups(adapter: StoreAdapter) -> int:
    """How many lookups (HEADs, GETs of indexes) to keep in flight on this store."""
    return LOCAL_LOOKUPS if adapter.in_process else REMOTE_LOOKUPS


async def list_blobs(
    calls: StoreCalls, layout: Layout, *, details: bool, read_limit: int
) -> AsyncIterator[BlobInfo]:
    """Every blob with an index under ``layout``, page by page (see ``list_blobs``)."""

    async def describe(digest: B3Digest) -> BlobInfo | None:
        return await describe_blob(calls, layout, digest, read_limit)

    async for page in calls.pages(layout.blobs):
        digests = [B3Digest(d) for info in page if (d := layout.digest_of(info.key))]
        if not details:
            for digest in digests:
                yield BlobInfo(digest)
            continue
        for found in await bounded_map(describe, digests, lookups(calls.adapter)):
            if found is not None:  # None: deleted since it was listed
                yield found
