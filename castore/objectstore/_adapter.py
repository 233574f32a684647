"""The narrow interface through which :class:`ObjectStoreBlobService` reaches a store.

Every object-store call the service makes goes through a :class:`StoreAdapter`, so that
a wrapper (fault injection, latency, statistics) can sit between the service and obstore
by subclassing :class:`StoreAdapter` and delegating to an inner one. The adapter also
irons out obstore's quirks in one place: absence is ``None``/``False`` rather than an
exception, and a conditional create reports whether it wrote.

Errors other than absence propagate unchanged; the service translates them with
:func:`castore.errors.translate_store_error`.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import AlreadyExistsError, NotSupportedError
from obstore.store import LocalStore, MemoryStore

if TYPE_CHECKING:
    from obstore.store import ObjectStore
    from typing_extensions import Buffer

__all__ = ["ObstoreAdapter", "StoreAdapter"]


class StoreAdapter(abc.ABC):
    """What the service needs from a store: get, existence, conditional and plain put.

    The synchronous methods are called from worker threads, the ``*_async`` ones from
    the event loop. Implementations must accept immutable buffers (``bytes``, zstd
    buffer segments) and may keep references to them.
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


class ObstoreAdapter(StoreAdapter):
    """:class:`StoreAdapter` over an obstore store (memory, local, S3, GCS, Azure, HTTP)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.in_process = isinstance(store, MemoryStore | LocalStore)
        self.overlap_puts = isinstance(store, LocalStore)
        # Conditional creates are not supported everywhere (HTTP/WebDAV); fall back to
        # a HEAD followed by a plain put once the store has said so.
        self._create_supported = True

    def __repr__(self) -> str:
        return f"ObstoreAdapter({self.store!r})"

    def get(self, key: str) -> Buffer | None:
        try:
            return obstore.get(self.store, key).bytes()
        except FileNotFoundError:
            return None

    async def get_async(self, key: str) -> Buffer | None:
        try:
            result = await obstore.get_async(self.store, key)
            return await result.bytes_async()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self.store, key)
        except FileNotFoundError:
            return False
        return True

    async def exists_async(self, key: str) -> bool:
        try:
            await obstore.head_async(self.store, key)
        except FileNotFoundError:
            return False
        return True

    def put_new(self, key: str, data: Buffer) -> bool:
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
        if self._create_supported:
            try:
                await obstore.put_async(self.store, key, data, mode="create", use_multipart=False)
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
        await obstore.put_async(self.store, key, data, use_multipart=False)
