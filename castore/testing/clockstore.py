"""A store on a fake clock, for testing garbage collection beside concurrent writers.

:class:`ClockStore` is a :class:`~castore.testing.faults.FaultyStore` (so it injects the
same planned faults) over an in-memory store, with two more powers:

- **Time.** Every object's LastModified comes from a :class:`FakeClock`, cut to whole
  seconds as S3 keeps it, and the store hands the same clock to the garbage collector
  and the writers as their suspend-counting clock (its ``gc_clock``). A test moves time
  with :meth:`FakeClock.advance`; sleepers on the clock wake as it passes their time.
- **Barriers.** With :meth:`ClockStore.hold`, every async call whose operation and key
  match waits before it reaches the store, until the test releases it
  (:meth:`ClockStore.let_go`), optionally holding its answer back once more after the
  store has acted. That is a process paused at any store call, for as long as the test
  likes, or a response that arrives late.

::

    clock = FakeClock()
    store = ClockStore(clock=clock)
    service = ObjectStoreBlobService(store, avg_chunk_size=1024)
    store.hold(lambda op, key: op == "put" and "/blobs/" in key)   # stop index puts
    ...
    held = await store.next_held()
    clock.advance(3600)                                             # an hour passes
    store.let_go(held)
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import obstore
from obstore.exceptions import AlreadyExistsError
from obstore.store import MemoryStore

from castore.objectstore._adapter import ObjectInfo, StoreAdapter
from castore.testing.faults import FaultyStore

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["ACTOR", "ClockStore", "FakeClock", "Held"]

#: The name of the actor (a writer, a collector) whose calls a task makes; a test sets
#: it when it starts the task, and :class:`Held` records it.
ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("castore_actor", default=None)

_T = TypeVar("_T")

#: A call the store can hold: ``(operation, key)`` -> hold it?
Matcher = Callable[[str, str], bool]


class FakeClock:
    """Seconds since the epoch that move only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None], str | None]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has moved ``seconds`` on."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._now + seconds, fut, ACTOR.get())
        self._sleepers.append(entry)
        try:
            await fut
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def wall(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock on and wake every sleeper whose time has come."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds
        for entry in list(self._sleepers):
            if entry[0] <= self._now and not entry[1].done():
                entry[1].set_result(None)
                self._sleepers.remove(entry)

    @property
    def sleepers(self) -> list[str | None]:
        """The actors sleeping on the clock now."""
        return [a for _, f, a in self._sleepers if not f.done()]

    def next_wakeup(self) -> float | None:
        """When the earliest sleeper wakes."""
        return min((t for t, f, _ in self._sleepers if not f.done()), default=None)


@dataclass(eq=False)
class Held:
    """One call waiting at the store's barrier."""

    seq: int
    op: str
    key: str
    actor: str | None
    #: "before": the store has not acted yet; "after": it has, the answer waits.
    phase: str
    #: Fake time at which it stopped.
    since: float
    _gate: asyncio.Future[bool] = field(repr=False, default_factory=asyncio.Future)


class _Stamped(StoreAdapter):
    """An in-memory store whose writes are stamped with the fake clock, atomically."""

    def __init__(self, clock: FakeClock, resolution: float) -> None:
        self.store = MemoryStore()
        self.clock = clock
        self.resolution = resolution
        self._stamps: dict[str, float] = {}
        self._lock = threading.Lock()

    def stamp(self) -> float:
        r = self.resolution
        return math.floor(self.clock.now() / r) * r if r > 0 else self.clock.now()

    def _info(self, meta: obstore.ObjectMeta) -> ObjectInfo:
        with self._lock:
            t = self._stamps.get(meta["path"])
        when = meta["last_modified"] if t is None else datetime.fromtimestamp(t, UTC)
        return ObjectInfo(meta["path"], meta["size"], when, meta["e_tag"], meta["version"])

    def get(self, key: str) -> Buffer | None:
        try:
            return obstore.get(self.store, key).bytes()
        except FileNotFoundError:
            return None

    async def get_async(self, key: str) -> Buffer | None:
        return self.get(key)

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    async def exists_async(self, key: str) -> bool:
        return self.exists(key)

    def put_new(self, key: str, data: Buffer) -> bool:
        with self._lock:
            try:
                obstore.put(self.store, key, data, mode="create", use_multipart=False)
            except AlreadyExistsError:
                return False
            self._stamps[key] = self.stamp()
            return True

    async def put_new_async(self, key: str, data: Buffer) -> bool:
        return self.put_new(key, data)

    async def put_async(self, key: str, data: Buffer) -> None:
        with self._lock:
            obstore.put(self.store, key, data, use_multipart=False)
            self._stamps[key] = self.stamp()

    async def list(
        self, prefix: str, *, start_after: str | None = None
    ) -> AsyncIterator[Sequence[ObjectInfo]]:
        # One consistent listing, taken at once (the real stores' listings are strongly
        # consistent too).
        pages = [
            [self._info(m) for m in page]
            for page in obstore.list(self.store, prefix, offset=start_after, chunk_size=1000)
        ]
        for page in pages:
            yield page

    def head(self, key: str) -> ObjectInfo | None:
        try:
            return self._info(obstore.head(self.store, key))
        except FileNotFoundError:
            return None

    async def head_async(self, key: str) -> ObjectInfo | None:
        return self.head(key)

    async def delete_async(self, keys: Sequence[str]) -> None:
        with self._lock:
            obstore.delete(self.store, list(keys))
            for k in keys:
                self._stamps.pop(k, None)


class ClockStore(FaultyStore):
    """A :class:`~castore.testing.faults.FaultyStore` over memory, on a fake clock, with
    barriers (see the module's docstring).

    ``resolution`` is the LastModified granularity in seconds (1, as S3). ``in_process``
    is False by default, so that a writer's chunk puts are async calls that barriers
    can hold (synchronous calls from worker threads are never held).
    """

    def __init__(
        self,
        *,
        clock: FakeClock | None = None,
        resolution: float = 1.0,
        seed: int = 0,
        in_process: bool = False,
    ) -> None:
        self.clock = clock or FakeClock()
        self.stamped = _Stamped(self.clock, resolution)
        super().__init__(self.stamped, seed=seed, in_process=in_process)
        self._holding: Matcher | None = None
        self._seq = itertools.count(1)
        self.held: list[Held] = []
        self._arrived: asyncio.Event | None = None

    def __repr__(self) -> str:
        return "ClockStore()"

    @property
    def gc_clock(self) -> FakeClock:
        """The clock the garbage collector and the writers read (see ``_gc_state``)."""
        return self.clock

    # --- barriers ---------------------------------------------------------------------------

    def hold(self, matcher: Matcher | None) -> None:
        """Hold every async call that ``matcher(op, key)`` accepts (``None``: none).

        Operations: ``get``, ``exists``, ``put``, ``list``, ``head``, ``delete``.
        """
        self._holding = matcher

    async def _park(self, op: str, key: str, phase: str) -> bool:
        h = Held(next(self._seq), op, key, ACTOR.get(), phase, self.clock.now())
        h._gate = asyncio.get_running_loop().create_future()
        self.held.append(h)
        if self._arrived is not None:
            self._arrived.set()
        try:
            return await h._gate
        finally:
            if h in self.held:
                self.held.remove(h)

    def let_go(self, h: Held, *, hold_answer: bool = False) -> None:
        """Let a held call go on; with ``hold_answer`` its answer is held once more."""
        if h in self.held:
            self.held.remove(h)
        if not h._gate.done():
            h._gate.set_result(hold_answer)

    def let_all_go(self) -> None:
        """Stop holding and let every held call go."""
        self._holding = None
        for h in list(self.held):
            self.let_go(h)

    async def next_held(self, match: Matcher | None = None, wait: float = 10.0) -> Held:
        """The first held call (matching ``match``), waiting for one to arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            for h in self.held:
                if match is None or match(h.op, h.key):
                    return h
            self._arrived = asyncio.Event()
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("no call arrived at the barrier")
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                continue

    async def _gated(self, op: str, key: str, call: Callable[[], Awaitable[_T]]) -> _T:
        matcher = self._holding
        hold_answer = False
        if matcher is not None and matcher(op, key):
            hold_answer = await self._park(op, key, "before")
        result = await call()
        if hold_answer:
            await self._park(op, key, "after")
        return result

    # --- the async calls, each behind the barrier -------------------------------------------

    async def get_async(self, key: str) -> Buffer | None:
        return await self._gated("get", key, lambda: FaultyStore.get_async(self, key))

    async def exists_async(self, key: str) -> bool:
        return await self._gated("exists", key, lambda: FaultyStore.exists_async(self, key))

    async def put_new_async(self, key: str, data: Buffer) -> bool:
        return await self._gated("put", key, lambda: FaultyStore.put_new_async(self, key, data))

    async def put_async(self, key: str, data: Buffer) -> None:
        await self._gated("put", key, lambda: FaultyStore.put_async(self, key, data))

    async def head_async(self, key: str) -> ObjectInfo | None:
        return await self._gated("head", key, lambda: FaultyStore.head_async(self, key))

    async def delete_async(self, keys: Sequence[str]) -> None:
        where = keys[0] if keys else ""
        await self._gated("delete", where, lambda: FaultyStore.delete_async(self, keys))

    async def list(
        self, prefix: str, *, start_after: str | None = None
    ) -> AsyncIterator[Sequence[ObjectInfo]]:
        async def take() -> list[Sequence[ObjectInfo]]:
            return [p async for p in FaultyStore.list(self, prefix, start_after=start_after)]

        for page in await self._gated("list", prefix, take):
            yield page
