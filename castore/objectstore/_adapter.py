"""The narrow interface through which :class:`ObjectStoreBlobService` reaches a store.

Every object-store call the service makes goes through a :class:`StoreAdapter`, so that
a wrapper (fault injection, latency, statistics) can sit between the service and obstore
by subclassing :class:`StoreAdapter` and delegating to an inner one. The adapter also
irons out obstore's quirks in one place: absence is ``None``/``False`` rather than an
exception, and a conditional create reports whether it wrote.

The adapter is also castore's error boundary: every method raises errors from castore's
tree only (:mod:`castore.errors`). :class:`ObstoreAdapter` translates obstore's exceptions
as they happen (``_errors.map_store_errors``), and an adapter that wraps another one
passes its errors on as they are.

Listing, metadata and deletion (:meth:`StoreAdapter.list`, :meth:`~StoreAdapter.head`,
:meth:`~StoreAdapter.delete_async`) serve the lifecycle operations (delete, listing,
check, garbage collection). They have defaults that raise
:class:`~castore.errors.UnsupportedOperationError`, so an adapter written only for reads
and writes keeps working.
"""

from __future__ import annotations

import abc
import contextlib
import os
import re
import stat
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import AlreadyExistsError, NotSupportedError
from obstore.store import LocalStore, MemoryStore

from castore.errors import UnsupportedOperationError
from castore.objectstore._errors import map_store_errors

if TYPE_CHECKING:
    from obstore import ObjectMeta
    from obstore.store import ObjectStore
    from typing_extensions import Buffer

__all__ = ["ObjectInfo", "ObstoreAdapter", "StoreAdapter"]

# Objects per page of a listing: S3 answers 1000 keys per LIST request.
_LIST_PAGE = 1000

#: Keys a local store keeps under the same path in its folder, unencoded: castore's own
#: keys (hex digests under fixed folders) and any prefix of plain characters. obstore
#: percent-encodes other characters in file names, and ``#`` marks its staging files.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a store says about one object (a listing entry or a HEAD).

    ``last_modified`` is the store's timestamp (timezone-aware; S3 keeps whole seconds).
    ``e_tag`` and ``version`` are the store's opaque identifiers, ``None`` where it has
    none.
    """

    key: str
    size: int
    last_modified: datetime
    e_tag: str | None = None
    version: str | None = None


#: Files up to this size are read into a buffer of the reading thread's, reused.
_SCRATCH_MAX = 4 << 20


class _Scratch(threading.local):
    """One reusable read buffer per thread (see :meth:`ObstoreAdapter.get_transient`)."""

    buf = bytearray()


_scratch = _Scratch()


def _read_file(path: str, scratch: _Scratch | None = None) -> Buffer:
    """The whole file at ``path``: a read of its size and one more byte, which finds the
    end there (obstore's local store replaces a file by a rename, never rewrites it in
    place, so a file that changes size while it is read is another program's doing;
    it is read whole all the same).

    With ``scratch``, a file of up to ``_SCRATCH_MAX`` bytes is read into the thread's
    buffer and returned as a view of it, valid until the thread's next such read: a
    fresh ``bytes`` per chunk left the allocator's per-thread heaps fragmented (a 2 GiB
    read back peaked 25-60 MiB higher).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(f"{path} is not a file")
        size = st.st_size
        if scratch is not None and size < _SCRATCH_MAX:
            if len(scratch.buf) <= size:
                scratch.buf = bytearray(max(size + 1, 1 << 20))
            view = memoryview(scratch.buf)
            n = os.readv(fd, [view[: size + 1]])
            if n == size:
                return view[:n]
            parts = [bytes(view[:n])]
        else:
            data = os.read(fd, size)
            more = os.read(fd, 1)
            if not more and len(data) == size:
                return data
            parts = [data, more]
        # It changed size meanwhile: read on to its end.
        while piece := os.read(fd, 1 << 20):
            parts.append(piece)
        return b"".join(parts)
    finally:
        os.close(fd)


def _info(meta: ObjectMeta) -> ObjectInfo:
    return ObjectInfo(
        meta["path"], meta["size"], meta["last_modified"], meta["e_tag"], meta["version"]
    )


class StoreAdapter(abc.ABC):
    """What the service needs from a store: get, existence, conditional and plain put.

    The synchronous methods are called from worker threads, the ``*_async`` ones from
    the event loop. Implementations must accept immutable buffers (``bytes``, zstd
    buffer segments) and may keep references to them. Failures are raised as castore
    errors (:class:`~castore.errors.StoreError` and its subclasses, or
    :class:`~castore.errors.BlobNotFoundError`); absence is not a failure.
    """

    #: True when synchronous calls are cheap and local (memory, local disk): the writer
    #: then stores chunks from its worker threads instead of through concurrent async
    #: uploads, which suit stores where latency and not CPU rules.
    in_process: bool = False

    #: True when a synchronous put mostly waits for the file system (local disk, where
    #: each chunk is a new file and often a new folder): the writer then puts from a
    #: few threads of its own, so that its workers go on hashing and compressing.
    overlap_puts: bool = False

    @abc.abstractmethod
    def get(self, key: str) -> Buffer | None:
        """The object's bytes, or ``None`` if there is no such object."""

    def get_transient(self, key: str) -> Buffer | None:
        """:meth:`get`, for bytes used at once and dropped: the result may sit in memory
        that this thread's next ``get_transient`` call reuses (a reader's puller decodes
        each chunk before it loads the next). The default is :meth:`get`."""
        return self.get(key)

    @abc.abstractmethod
    async def get_async(self, key: str) -> Buffer | None:
        """:meth:`get` without blocking the event loop."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists (a HEAD, not a listing)."""

    @abc.abstractmethod
    async def exists_async(self, key: str) -> bool:
        """:meth:`exists` without blocking the event loop."""

    @abc.abstractmethod
    def put_new(self, key: str, data: Buffer) -> bool:
        """Store ``data`` unless the key exists; ``True`` if it wrote.

        Content-addressed objects never need a second copy, so an existing object is
        left as it is.
        """

    @abc.abstractmethod
    async def put_new_async(self, key: str, data: Buffer) -> bool:
        """:meth:`put_new` without blocking the event loop."""

    @abc.abstractmethod
    async def put_async(self, key: str, data: Buffer) -> None:
        """Store ``data``, replacing any existing object."""

    # --- lifecycle: listing, metadata, deletion ---------------------------------------

    def _unsupported(self, what: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(f"{type(self).__name__} does not support {what}")

    async def list(
        self, prefix: str, *, start_after: str | None = None
    ) -> AsyncIterator[Sequence[ObjectInfo]]:
        """The objects whose keys start with the path ``prefix``, in pages.

        ``prefix`` matches whole path segments (``blobs/b3`` covers ``blobs/b3/…`` and
        not ``blobs/b3x``). ``start_after`` skips every key up to and including it, so
        that a listing can be split into key ranges. Pages hold up to 1000 objects; the
        order of keys is the store's (sorted on S3 and in memory, not on local disk). A
        listing is no proof that an object is absent: confirm with :meth:`head` (a store
        recovering from a crash was seen to leave objects out of its listings).
        """
        raise self._unsupported("listing")
        yield  # pragma: no cover - makes this an async generator

    def head(self, key: str) -> ObjectInfo | None:
        """The object's metadata, or ``None`` if there is no such object."""
        raise self._unsupported("HEAD")

    async def head_async(self, key: str) -> ObjectInfo | None:
        """:meth:`head` without blocking the event loop."""
        raise self._unsupported("HEAD")

    async def delete_async(self, keys: Sequence[str]) -> None:
        """Delete the objects, in batches where the store has them; absent keys are fine."""
        raise self._unsupported("deletion")


class ObstoreAdapter(StoreAdapter):
    """:class:`StoreAdapter` over an obstore store (memory, local, S3, GCS, Azure, HTTP)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.in_process = isinstance(store, MemoryStore | LocalStore)
        self.overlap_puts = isinstance(store, LocalStore)
        # A local store's folder: gets and existence checks of plain keys read the file
        # system directly (docs/architecture.md, "Local disk"): the same files obstore
        # reads, at a quarter of the CPU of a call through its runtime.
        # A relative folder is left to obstore, which resolved it when the store was made.
        root = str(store.prefix) if isinstance(store, LocalStore) else None
        self._root = root if root is not None and os.path.isabs(root) else None
        # Conditional creates are not supported everywhere (HTTP/WebDAV); fall back to
        # a HEAD followed by a plain put once the store has said so.
        self._create_supported = True

    def __repr__(self) -> str:
        return f"ObstoreAdapter({self.store!r})"

    def _local_path(self, key: str) -> str | None:
        """The file of ``key`` in a local store's folder, if it may be read directly."""
        if self._root is None or not _PLAIN_KEY.fullmatch(key):
            return None
        return os.path.join(self._root, key)

    def get(self, key: str) -> Buffer | None:
        return self._get(key, None)

    def get_transient(self, key: str) -> Buffer | None:
        return self._get(key, _scratch)

    def _get(self, key: str, scratch: _Scratch | None) -> Buffer | None:
        """A get; on a local store read from the file, into ``scratch`` when given."""
        with map_store_errors("reading", key):
            path = self._local_path(key)
            try:
                if path is not None:
                    return _read_file(path, scratch)
                return obstore.get(self.store, key).bytes()
            except (FileNotFoundError, NotADirectoryError):
                return None

    async def get_async(self, key: str) -> Buffer | None:
        with map_store_errors("reading", key):
            try:
                result = await obstore.get_async(self.store, key)
                return await result.bytes_async()
            except FileNotFoundError:
                return None

    def exists(self, key: str) -> bool:
        with map_store_errors("checking", key):
            path = self._local_path(key)
            try:
                if path is not None:
                    return stat.S_ISREG(os.stat(path).st_mode)
                obstore.head(self.store, key)
            except (FileNotFoundError, NotADirectoryError):
                return False
            return True

    async def exists_async(self, key: str) -> bool:
        with map_store_errors("checking", key):
            try:
                await obstore.head_async(self.store, key)
            except FileNotFoundError:
                return False
            return True

    def put_new(self, key: str, data: Buffer) -> bool:
        with map_store_errors("storing", key):
            if self._create_supported:
                try:
                    obstore.put(self.store, key, data, mode="create", use_multipart=False)
                    return True
                except AlreadyExistsError:
                    return False
                except NotSupportedError:
                    self._create_supported = False
            if self.exists(key):
                return False
            obstore.put(self.store, key, data, use_multipart=False)
            return True

    async def put_new_async(self, key: str, data: Buffer) -> bool:
        with map_store_errors("storing", key):
            if self._create_supported:
                try:
                    await obstore.put_async(
                        self.store, key, data, mode="create", use_multipart=False
                    )
                    return True
                except AlreadyExistsError:
                    return False
                except NotSupportedError:
                    self._create_supported = False
            if await self.exists_async(key):
                return False
            await obstore.put_async(self.store, key, data, use_multipart=False)
            return True

    async def put_async(self, key: str, data: Buffer) -> None:
        with map_store_errors("storing", key):
            await obstore.put_async(self.store, key, data, use_multipart=False)

    async def list(
        self, prefix: str, *, start_after: str | None = None
    ) -> AsyncIterator[Sequence[ObjectInfo]]:
        with map_store_errors("listing", prefix):
            stream = obstore.list(self.store, prefix, offset=start_after, chunk_size=_LIST_PAGE)
            async for page in stream:
                yield [_info(meta) for meta in page]

    def head(self, key: str) -> ObjectInfo | None:
        with map_store_errors("checking", key):
            try:
                return _info(obstore.head(self.store, key))
            except FileNotFoundError:
                return None

    async def head_async(self, key: str) -> ObjectInfo | None:
        with map_store_errors("checking", key):
            try:
                return _info(await obstore.head_async(self.store, key))
            except FileNotFoundError:
                return None

    async def delete_async(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        with map_store_errors("deleting", keys[0] if len(keys) == 1 else f"{len(keys)} keys"):
            try:
                await obstore.delete_async(self.store, list(keys))
            except FileNotFoundError:
                # Local disk (and GCS, Azure) refuse to delete a missing key, and a batch
                # stops there: delete the rest one by one.
                for key in keys:
                    with contextlib.suppress(FileNotFoundError):
                        await obstore.delete_async(self.store, key)
