"""Fault injection for BlobServices and object stores: fail, delay, hang, truncate or
corrupt chosen calls.

Two wrappers, one planning API. :class:`FaultyBlobService` wraps any
:class:`~castore.BlobService`; :class:`FaultyStore` wraps the
:class:`~castore.objectstore.StoreAdapter` through which an
:class:`~castore.ObjectStoreBlobService` reaches its store, so faults land between the
service and obstore, where a real store's failures would. Both inject faults by
operation, on the Nth call or at random with a seeded rate, so tests can prove that the
layers above never store a partial blob and never pass on wrong bytes::

    faulty = FaultyBlobService(inner, seed=1)
    faulty.plan("read", Fault.FLIP, nth=1)          # first reader returns a flipped byte
    faulty.plan("write", Fault.ERROR, rate=0.2)     # a fifth of writes fail

    store = FaultyStore(MemoryStore(), seed=1)       # or FaultyStore(ObstoreAdapter(...))
    service = ObjectStoreBlobService(store, avg_chunk_size=16 * 1024)
    store.plan("put", Fault.ERROR, nth=3)            # the third object put fails
    store.plan("get", Fault.TRUNCATE, rate=0.1, where="chunks/")

:class:`FaultyBlobService` operations: ``has``, ``open_read``, ``read`` (each
``BlobReader.read``), ``open_write``, ``write`` (each ``BlobWriter.write``), ``close``,
``chunks``, ``delete``, ``list`` (once per ``list_blobs``, before the first blob).
:class:`FaultyStore` operations: ``get``, ``exists`` (a HEAD), ``put`` (conditional
creates and plain puts), ``list`` (once per listing, before its first page), ``head``,
``delete`` (once per batch), and ``any`` (every call).
"""

from __future__ import annotations

import enum
import io
import random
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import anyio
from obstore.exceptions import GenericError

from castore._digest import B3Digest, ChunkMeta, DigestLike
from castore.blobservice import BlobInfo, BlobReader, BlobService, BlobWriter, WriteStats
from castore.errors import StoreTimeoutError, StoreUnavailableError
from castore.objectstore._adapter import ObjectInfo, ObstoreAdapter, StoreAdapter
from castore.objectstore._errors import map_store_errors

if TYPE_CHECKING:
    from obstore.store import ObjectStore
    from typing_extensions import Buffer

__all__ = [
    "STORE_OPS",
    "Fault",
    "FaultyBlobService",
    "FaultyStore",
    "InjectedFault",
    "InjectedStoreError",
    "InjectedStoreTimeout",
]

OPS = ("has", "open_read", "read", "open_write", "write", "close", "chunks", "delete", "list")


class InjectedFault(StoreUnavailableError):
    """The error a planned ``Fault.ERROR`` raises (a transient store error)."""


class Fault(enum.Enum):
    """What happens to a chosen call."""

    ERROR = "error"  #: raise InjectedFault
    TIMEOUT = "timeout"  #: raise StoreTimeoutError
    DELAY = "delay"  #: sleep ``delay`` seconds first, then proceed
    HANG = "hang"  #: never answer (until cancelled)
    TRUNCATE = "truncate"  #: reads only: return half the bytes asked for, then EOF
    FLIP = "flip"  #: reads only: flip one bit of the returned bytes


@dataclass
class _Plan:
    fault: Fault
    nth: int | None
    rate: float
    delay: float
    remaining: int | None


class FaultyBlobService(BlobService):
    """Wraps ``inner`` and injects the faults planned with :meth:`plan`."""

    def __init__(self, inner: BlobService, *, seed: int = 0) -> None:
        self.inner = inner
        self._rng = random.Random(seed)
        self._plans: dict[str, list[_Plan]] = {op: [] for op in OPS}
        self.calls: dict[str, int] = dict.fromkeys(OPS, 0)
        self.injected: dict[str, int] = dict.fromkeys(OPS, 0)

    def plan(
        self,
        op: str,
        fault: Fault,
        *,
        nth: int | None = None,
        rate: float = 0.0,
        delay: float = 0.05,
        times: int | None = None,
    ) -> None:
        """Inject ``fault`` into ``op``: on its ``nth`` call (1-based, counted from now
        on), or with probability ``rate`` per call, at most ``times`` times."""
        if op not in self._plans:
            raise ValueError(f"unknown operation {op!r}; one of {', '.join(OPS)}")
        if nth is None and rate <= 0:
            raise ValueError("give nth=… or a positive rate=…")
        target = None if nth is None else self.calls[op] + nth
        self._plans[op].append(_Plan(fault, target, rate, delay, times))

    def clear(self) -> None:
        """Remove every planned fault."""
        for plans in self._plans.values():
            plans.clear()

    async def _enter(self, op: str) -> Fault | None:
        self.calls[op] += 1
        n = self.calls[op]
        for p in self._plans[op]:
            if p.remaining == 0:
                continue
            hit = n == p.nth if p.nth is not None else self._rng.random() < p.rate
            if not hit:
                continue
            if p.remaining is not None:
                p.remaining -= 1
            self.injected[op] += 1
            if p.fault is Fault.ERROR:
                raise InjectedFault(f"injected fault in {op} (call {n})")
            if p.fault is Fault.TIMEOUT:
                raise StoreTimeoutError(f"injected timeout in {op} (call {n})")
            if p.fault is Fault.DELAY:
                await anyio.sleep(p.delay)
                return None
            if p.fault is Fault.HANG:
                await anyio.sleep_forever()
            return p.fault
        return None

    async def has(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        await self._enter("has")
        return await self.inner.has(digest)

    async def chunks(self, digest: DigestLike) -> list[ChunkMeta] | None:
        digest = B3Digest.coerce(digest)
        await self._enter("chunks")
        return await self.inner.chunks(digest)

    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        digest = B3Digest.coerce(digest)
        await self._enter("open_read")
        reader = await self.inner.open_read(digest)
        return None if reader is None else _FaultyReader(self, reader)

    async def open_write(self) -> BlobWriter:
        await self._enter("open_write")
        return _FaultyWriter(self, await self.inner.open_write())

    async def delete(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        await self._enter("delete")
        return await self.inner.delete(digest)

    async def list_blobs(self, *, details: bool = False) -> AsyncIterator[BlobInfo]:
        await self._enter("list")
        async for info in self.inner.list_blobs(details=details):
            yield info

    async def aclose(self) -> None:
        await self.inner.aclose()


class _FaultyReader(BlobReader):
    def __init__(self, owner: FaultyBlobService, inner: BlobReader) -> None:
        self._owner = owner
        self._inner = inner
        self._eof = False

    async def read(self, n: int = -1) -> bytes:
        fault = await self._owner._enter("read")
        if self._eof:
            return b""
        data = await self._inner.read(n)
        if fault is Fault.TRUNCATE and data:
            self._eof = True
            return data[: len(data) // 2]
        if fault is Fault.FLIP and data:
            i = self._owner._rng.randrange(len(data))
            return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        return data

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._eof = False
        return await self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _FaultyWriter(BlobWriter):
    def __init__(self, owner: FaultyBlobService, inner: BlobWriter) -> None:
        self._owner = owner
        self._inner = inner

    @property
    def new_bytes(self) -> int | None:
        return self._inner.new_bytes

    @property
    def write_stats(self) -> WriteStats | None:
        return self._inner.write_stats

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        await self._owner._enter("write")
        await self._inner.write(data)

    async def _finish(self) -> B3Digest:
        await self._owner._enter("close")
        return await self._inner.close()

    async def _abort(self) -> None:
        await self._inner.abort()


# --- object stores ----------------------------------------------------------------------

#: The operations :meth:`FaultyStore.plan` knows; ``any`` matches every call.
STORE_OPS = ("get", "exists", "put", "list", "head", "delete", "any")


class InjectedStoreError(GenericError):
    """The failure a planned ``Fault.ERROR`` stands for inside :class:`FaultyStore`: an
    obstore error, translated to a :class:`~castore.errors.StoreError` at the adapter
    exactly as a real store's failure is (it is the castore error's ``__cause__``)."""


class InjectedStoreTimeout(TimeoutError):
    """The failure a planned ``Fault.TIMEOUT`` stands for inside :class:`FaultyStore`,
    translated to :class:`~castore.errors.StoreTimeoutError` (its ``__cause__``)."""


#: How the adapter names each operation in its error messages.
_VERBS = {
    "get": "reading",
    "exists": "checking",
    "put": "storing",
    "list": "listing",
    "head": "checking",
    "delete": "deleting",
}


def _raise_translated(injected: Exception, op: str, key: str) -> NoReturn:
    """Raise ``injected`` through the translation a real store's error takes."""
    with map_store_errors(_VERBS[op], key):
        raise injected


@dataclass
class _StorePlan:
    fault: Fault
    nth: int | None
    rate: float
    delay: float
    remaining: int | None
    where: str | None
    after: bool
    seen: int = 0


class FaultyStore(StoreAdapter):
    """A :class:`~castore.objectstore.StoreAdapter` that injects planned faults into the
    calls an :class:`~castore.ObjectStoreBlobService` makes to its store.

    ``inner`` is another adapter or an obstore store (wrapped in an
    :class:`~castore.objectstore.ObstoreAdapter`). ``in_process`` overrides the inner
    adapter's flag, to drive the writer's async-upload path over an in-memory store.
    Faults apply on the synchronous calls (made from worker threads) and the async ones
    alike:

    - ``ERROR`` raises a :class:`~castore.errors.StoreError` caused by an
      :class:`InjectedStoreError`, ``TIMEOUT`` a :class:`~castore.errors.StoreTimeoutError`
      caused by an :class:`InjectedStoreTimeout`: the foreign error passes the same
      translation as a real store's, so the adapter raises castore errors only. With
      ``after=True`` the call is made first and the error raised once it has succeeded
      (the store did it, the caller is told it failed, as when a response is lost).
    - ``DELAY`` sleeps ``delay`` seconds first.
    - ``HANG`` never answers: an async call waits until cancelled; a synchronous one,
      which nothing can cancel, blocks its thread until :meth:`release` or
      :meth:`clear`, or ``hang_limit`` seconds, and then raises.
    - ``TRUNCATE`` (``get`` only) returns a random prefix of the object, ``FLIP`` the
      object with one random bit flipped.

    Counters: ``calls`` and ``injected`` per operation (and in all, under ``any``),
    ``written`` (puts that stored an object), ``keys`` (every key asked for, in order, as
    ``(op, key)``), ``faults`` (every fault injected, as ``(op, key, fault)``).
    """

    def __init__(
        self,
        inner: StoreAdapter | ObjectStore,
        *,
        seed: int = 0,
        in_process: bool | None = None,
        hang_limit: float = 60.0,
    ) -> None:
        self.inner: StoreAdapter = (
            inner if isinstance(inner, StoreAdapter) else ObstoreAdapter(inner)
        )
        self.in_process = self.inner.in_process if in_process is None else in_process
        self.hang_limit = hang_limit
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._plans: list[tuple[str, _StorePlan]] = []
        self._release = threading.Event()
        self.calls: dict[str, int] = dict.fromkeys(STORE_OPS, 0)
        self.injected: dict[str, int] = dict.fromkeys(STORE_OPS, 0)
        self.written = 0
        self.keys: list[tuple[str, str]] = []
        self.faults: list[tuple[str, str, Fault]] = []

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r})"

    # --- planning -------------------------------------------------------------------------

    def plan(
        self,
        op: str,
        fault: Fault,
        *,
        nth: int | None = None,
        rate: float = 0.0,
        delay: float = 0.05,
        times: int | None = None,
        where: str | None = None,
        after: bool = False,
    ) -> None:
        """Inject ``fault`` into ``op``: on its ``nth`` call (1-based, counted from now
        on among the calls this plan matches), or with probability ``rate`` per call, at
        most ``times`` times. ``where`` limits the plan to keys containing that text
        (``"chunks/"``, ``"blobs/"``)."""
        if op not in STORE_OPS:
            raise ValueError(f"unknown operation {op!r}; one of {', '.join(STORE_OPS)}")
        if nth is None and rate <= 0:
            raise ValueError("give nth=… or a positive rate=…")
        if fault in (Fault.TRUNCATE, Fault.FLIP) and op != "get":
            raise ValueError(f"{fault.name} changes what a get returns: plan it on 'get'")
        if after and fault not in (Fault.ERROR, Fault.TIMEOUT):
            raise ValueError("after=True applies to ERROR and TIMEOUT")
        with self._lock:
            self._plans.append((op, _StorePlan(fault, nth, rate, delay, times, where, after)))

    def clear(self) -> None:
        """Remove every planned fault and release the calls that hang."""
        with self._lock:
            self._plans.clear()
        self.release()

    def release(self) -> None:
        """Let every synchronous call that hangs now go on (it raises)."""
        with self._lock:
            released, self._release = self._release, threading.Event()
        released.set()

    @property
    def total_calls(self) -> int:
        """Every call made so far, of any kind."""
        return self.calls["any"]

    # --- deciding and applying --------------------------------------------------------------

    def _decide(self, op: str, key: str) -> _StorePlan | None:
        with self._lock:
            self.calls[op] += 1
            self.calls["any"] += 1
            self.keys.append((op, key))
            chosen: _StorePlan | None = None
            for plan_op, p in self._plans:
                if plan_op not in (op, "any") or p.remaining == 0:
                    continue
                if p.where is not None and p.where not in key:
                    continue
                # Every matching plan counts the call, whether or not another one fires.
                p.seen += 1
                if chosen is not None:
                    continue
                if p.seen == p.nth if p.nth is not None else self._rng.random() < p.rate:
                    chosen = p
            if chosen is not None:
                if chosen.remaining is not None:
                    chosen.remaining -= 1
                self.injected[op] += 1
                self.injected["any"] += 1
                self.faults.append((op, key, chosen.fault))
            return chosen

    def _fail(self, p: _StorePlan, op: str, key: str) -> NoReturn:
        n = self.calls[op]
        injected: Exception
        if p.fault is Fault.TIMEOUT:
            injected = InjectedStoreTimeout(f"injected timeout in {op} {key} (call {n})")
        else:
            injected = InjectedStoreError(f"injected fault in {op} {key} (call {n})")
        _raise_translated(injected, op, key)

    def _before_sync(self, p: _StorePlan | None, op: str, key: str) -> None:
        if p is None or p.after:
            return
        if p.fault is Fault.DELAY:
            time.sleep(p.delay)
        elif p.fault is Fault.HANG:
            with self._lock:
                release = self._release
            release.wait(self.hang_limit)
            _raise_translated(InjectedStoreError(f"a hung {op} {key} was released"), op, key)
        elif p.fault in (Fault.ERROR, Fault.TIMEOUT):
            self._fail(p, op, key)

    async def _before_async(self, p: _StorePlan | None, op: str, key: str) -> None:
        if p is None or p.after:
            return
        if p.fault is Fault.DELAY:
            await anyio.sleep(p.delay)
        elif p.fault is Fault.HANG:
            await anyio.sleep_forever()
        elif p.fault in (Fault.ERROR, Fault.TIMEOUT):
            self._fail(p, op, key)

    def _after(self, p: _StorePlan | None, op: str, key: str) -> None:
        if p is not None and p.after:
            self._fail(p, op, key)

    def _mangle(self, p: _StorePlan | None, key: str, data: Buffer | None) -> Buffer | None:
        if p is None or p.fault not in (Fault.TRUNCATE, Fault.FLIP):
            return data
        raw = b"" if data is None else bytes(data)
        if not raw:
            with self._lock:  # an absent or empty object: nothing to cut or flip
                self.injected["get"] -= 1
                self.injected["any"] -= 1
                self.faults.remove(("get", key, p.fault))
            return data
        with self._lock:
            if p.fault is Fault.TRUNCATE:
                return raw[: self._rng.randrange(len(raw))]
            i = self._rng.randrange(len(raw) * 8)
        flipped = bytearray(raw)
        flipped[i // 8] ^= 1 << (i % 8)
        return bytes(flipped)

    def _wrote(self, n: int = 1) -> None:
        with self._lock:
            self.written += n

    # --- the adapter ------------------------------------------------------------------------

    def get(self, key: str) -> Buffer | None:
        p = self._decide("get", key)
        self._before_sync(p, "get", key)
        data = self.inner.get(key)
        self._after(p, "get", key)
        return self._mangle(p, key, data)

    async def get_async(self, key: str) -> Buffer | None:
        p = self._decide("get", key)
        await self._before_async(p, "get", key)
        data = await self.inner.get_async(key)
        self._after(p, "get", key)
        return self._mangle(p, key, data)

    def exists(self, key: str) -> bool:
        p = self._decide("exists", key)
        self._before_sync(p, "exists", key)
        found = self.inner.exists(key)
        self._after(p, "exists", key)
        return found

    async def exists_async(self, key: str) -> bool:
        p = self._decide("exists", key)
        await self._before_async(p, "exists", key)
        found = await self.inner.exists_async(key)
        self._after(p, "exists", key)
        return found

    def put_new(self, key: str, data: Buffer) -> bool:
        p = self._decide("put", key)
        self._before_sync(p, "put", key)
        wrote = self.inner.put_new(key, data)
        self._wrote(wrote)
        self._after(p, "put", key)
        return wrote

    async def put_new_async(self, key: str, data: Buffer) -> bool:
        p = self._decide("put", key)
        await self._before_async(p, "put", key)
        wrote = await self.inner.put_new_async(key, data)
        self._wrote(wrote)
        self._after(p, "put", key)
        return wrote

    async def put_async(self, key: str, data: Buffer) -> None:
        p = self._decide("put", key)
        await self._before_async(p, "put", key)
        await self.inner.put_async(key, data)
        self._wrote()
        self._after(p, "put", key)

    async def list(
        self, prefix: str, *, start_after: str | None = None
    ) -> AsyncIterator[Sequence[ObjectInfo]]:
        p = self._decide("list", prefix)
        await self._before_async(p, "list", prefix)
        async for page in self.inner.list(prefix, start_after=start_after):
            yield page
        self._after(p, "list", prefix)

    def head(self, key: str) -> ObjectInfo | None:
        p = self._decide("head", key)
        self._before_sync(p, "head", key)
        found = self.inner.head(key)
        self._after(p, "head", key)
        return found

    async def head_async(self, key: str) -> ObjectInfo | None:
        p = self._decide("head", key)
        await self._before_async(p, "head", key)
        found = await self.inner.head_async(key)
        self._after(p, "head", key)
        return found

    async def delete_async(self, keys: Sequence[str]) -> None:
        where = keys[0] if keys else ""
        p = self._decide("delete", where)
        await self._before_async(p, "delete", where)
        await self.inner.delete_async(keys)
        self._after(p, "delete", where)
