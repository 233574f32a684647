"""The garbage collector's state in the bucket, its clocks, and its protocol constants.

Everything the collector and the writers agree on lives in small objects under
``<prefix>/gc/`` (see ``docs/lifecycle.md`` for the protocol they implement)::

    gc/clock                        overwritten to read the store's time (its LastModified)
    gc/lease/<epoch>                one object per claim of the collector's lease
    gc/gen/<k>/list-<token>         generation k's condemned chunk digests, sorted
    gc/gen/<k>/condemned            marker: k exists; its LastModified is t_k
    gc/gen/<k>/begun                marker: k's sweep has started (s_k)
    gc/gen/<k>/done                 marker: k's sweep has ended; it deletes nothing more

Markers and lease epochs are only ever created (a conditional put that fails when the key
exists), never overwritten, so that a collector whose requests arrive late can never
undo what a newer one wrote. Numbers are zero-padded so that keys sort as numbers.

Clocks: durations on the local side (the writer's window, the collector's lease) are read
from a clock that keeps counting while the machine is suspended (``CLOCK_BOOTTIME``;
``time.monotonic`` stops during suspend on Linux). Points in time that must be compared
with object timestamps come from the store itself: the LastModified of an object just
written. Tests put a fake clock in the store adapter (its ``gc_clock`` attribute).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import anyio

from castore.errors import StoreError
from castore.objectstore._errors import store_error

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from castore.objectstore._adapter import ObjectInfo, StoreAdapter
    from castore.objectstore._layout import Layout

_T = TypeVar("_T")

__all__ = [
    "MIN_GRACE",
    "SYSTEM_CLOCK",
    "WRITER_WINDOW",
    "GcClock",
    "GcKeys",
    "GcView",
    "Generation",
    "clock_of",
    "each_bounded",
    "store_now",
]

#: Seconds within which a writer sends its index put after sending the listing of
#: ``gc/gen/`` that cleared it (else it lists again), and within which the put should
#: return (else it lists once more afterwards). See ``docs/lifecycle.md``.
WRITER_WINDOW = 3.0
#: The smallest grace a generation may have: twice the writer window, plus a second for
#: the stores' one-second timestamps and a second of slack for the marker's own upload.
MIN_GRACE = 2 * WRITER_WINDOW + 2.0
#: Default seconds a collector's lease lasts before it must be renewed.
DEFAULT_LEASE = 300.0
#: The least time, past a lease's end, before another collector may take over. It must
#: exceed the longest a request already sent can take to reach the store (obstore retries
#: a request for up to three minutes), so that a collector that stopped at its lease's
#: end can have no delete still arriving when its successor starts.
MIN_TAKEOVER_MARGIN = 180.0


@runtime_checkable
class GcClock(Protocol):
    """A clock of seconds that counts time suspended, and a sleep on it."""

    def now(self) -> float:
        """Seconds since an arbitrary origin; never goes back."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""

    def wall(self) -> float:
        """Seconds since the epoch by the local clock (only a dry run uses it)."""


class _SystemClock:
    """``CLOCK_BOOTTIME`` where the system has it (Linux), else the monotonic clock."""

    def __init__(self) -> None:
        self._id = getattr(time, "CLOCK_BOOTTIME", None)

    def now(self) -> float:
        if self._id is not None:
            return time.clock_gettime(self._id)
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def wall(self) -> float:
        return time.time()


#: The clock castore uses outside tests.
SYSTEM_CLOCK: GcClock = _SystemClock()


def clock_of(adapter: StoreAdapter) -> GcClock:
    """The adapter's ``gc_clock`` if it has one (a test's fake clock), else the system's."""
    clock = getattr(adapter, "gc_clock", None)
    return clock if isinstance(clock, GcClock) else SYSTEM_CLOCK


async def each_bounded(
    fn: Callable[[_T], Awaitable[None]], items: Sequence[_T], limit: int
) -> None:
    """``fn(item)`` for every item, at most ``limit`` at once; the first failure is
    raised as itself (not inside an exception group), and stops the others."""
    limiter = anyio.Semaphore(limit)

    async def one(item: _T) -> None:
        async with limiter:
            await fn(item)

    try:
        async with anyio.create_task_group() as tg:
            for item in items:
                tg.start_soon(one, item)
    except BaseExceptionGroup as group:
        raise _first(group) from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _first(e)
        return e
    return group


def holder_name() -> str:
    """Who this process is, for lease and marker contents (diagnostics only)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _translated(e: Exception, what: str) -> Exception:
    return store_error(e, what)


async def store_now(adapter: StoreAdapter, keys: GcKeys) -> float:
    """The store's present time, in seconds since the epoch: the LastModified of an object
    written now. It is never later than the true time of the read that returns it."""
    try:
        await adapter.put_async(keys.clock, b"castore gc clock\n")
        info = await adapter.head_async(keys.clock)
    except Exception as e:
        raise _translated(e, f"reading the store's time at {keys.clock}") from e
    if info is None:
        raise StoreError(f"the object {keys.clock} vanished right after it was written")
    return info.last_modified.timestamp()


class GcKeys:
    """Keys of the collector's state under a service's prefix."""

    __slots__ = ("clock", "gen_prefix", "lease_prefix", "root")

    def __init__(self, layout: Layout) -> None:
        self.root = layout.blobs[: -len("blobs/b3/")] + "gc/"
        self.clock = self.root + "clock"
        self.lease_prefix = self.root + "lease/"
        self.gen_prefix = self.root + "gen/"

    def lease(self, epoch: int) -> str:
        return f"{self.lease_prefix}{epoch:020d}"

    def marker(self, generation: int, kind: str) -> str:
        return f"{self.gen_prefix}{generation:020d}/{kind}"

    def parse_gen(self, key: str) -> tuple[int, str] | None:
        """``(generation, name)`` for a key under ``gc/gen/``, else ``None``."""
        if not key.startswith(self.gen_prefix):
            return None
        number, _, name = key[len(self.gen_prefix) :].partition("/")
        if len(number) != 20 or not number.isdigit() or not name or "/" in name:
            return None
        return int(number), name

    def parse_lease(self, key: str) -> int | None:
        if not key.startswith(self.lease_prefix):
            return None
        number = key[len(self.lease_prefix) :]
        return int(number) if len(number) == 20 and number.isdigit() else None


def encode_json(doc: Mapping[str, object]) -> bytes:
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def decode_json(raw: Buffer, what: str) -> dict[str, object]:
    try:
        doc = json.loads(bytes(memoryview(raw)).decode())
    except (ValueError, TypeError) as e:
        raise StoreError(f"{what}: not the JSON castore writes: {e}") from e
    if not isinstance(doc, dict):
        raise StoreError(f"{what}: not the JSON object castore writes")
    return doc


def number(doc: Mapping[str, object], name: str, what: str) -> float:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StoreError(f"{what}: field {name!r} is missing or not a number")
    return float(value)


# --- generations ---------------------------------------------------------------------------


@dataclass(slots=True)
class Generation:
    """What one listing of ``gc/gen/`` shows of generation ``number``."""

    number: int
    condemned: ObjectInfo | None = None
    begun: ObjectInfo | None = None
    done: ObjectInfo | None = None
    lists: list[str] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        """Whether its condemned marker is there (a list without one is a leftover)."""
        return self.condemned is not None

    @property
    def t(self) -> float:
        """t_k: when it was condemned (store time, the marker's LastModified)."""
        assert self.condemned is not None
        return self.condemned.last_modified.timestamp()


@dataclass(frozen=True, slots=True)
class GcView:
    """One listing of ``gc/gen/``: every generation and its markers."""

    generations: Mapping[int, Generation]

    def is_done(self, k: int) -> bool:
        g = self.generations.get(k)
        return g is not None and g.done is not None

    def existing(self) -> list[Generation]:
        return [g for _, g in sorted(self.generations.items()) if g.exists]

    def pending(self) -> list[Generation]:
        """Generations condemned and not yet swept, oldest first."""
        return [g for g in self.existing() if g.done is None]

    def next_number(self) -> int:
        return max(self.generations, default=0) + 1


async def list_view(adapter: StoreAdapter, keys: GcKeys) -> GcView:
    """List ``gc/gen/`` once (one LIST request for up to a thousand marker objects)."""
    gens: dict[int, Generation] = {}
    try:
        async for page in adapter.list(keys.gen_prefix.rstrip("/")):
            for info in page:
                parsed = keys.parse_gen(info.key)
                if parsed is None:
                    continue
                k, name = parsed
                g = gens.get(k)
                if g is None:
                    g = gens[k] = Generation(k)
                if name == "condemned":
                    g.condemned = info
                elif name == "begun":
                    g.begun = info
                elif name == "done":
                    g.done = info
                elif name.startswith("list-"):
                    g.lists.append(info.key)
    except Exception as e:
        raise _translated(e, f"listing {keys.gen_prefix}") from e
    return GcView(gens)


# --- condemned lists -----------------------------------------------------------------------

#: One condemned record: a chunk's 32-byte digest, then its object size (8 bytes, big
#: endian). Records are sorted by digest.
RECORD = 40


class Condemned:
    """A generation's parameters and its condemned chunks (sorted packed records)."""

    __slots__ = ("cutoff", "grace", "min_age", "records")

    def __init__(self, cutoff: float, grace: float, min_age: float, records: bytes) -> None:
        self.cutoff = cutoff
        self.grace = grace
        self.min_age = min_age
        self.records = records

    def __len__(self) -> int:
        return len(self.records) // RECORD

    def digest(self, i: int) -> bytes:
        return self.records[i * RECORD : i * RECORD + 32]

    def size(self, i: int) -> int:
        return int.from_bytes(self.records[i * RECORD + 32 : (i + 1) * RECORD], "big")

    def __contains__(self, d: object) -> bool:
        if not isinstance(d, bytes):
            return False
        lo, hi = 0, len(self)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.digest(mid) < d:
                lo = mid + 1
            else:
                hi = mid
        return lo < len(self) and self.digest(lo) == d


def marker_doc(
    *, cutoff: float, grace: float, min_age: float, list_name: str, count: int, size: int
) -> dict[str, object]:
    return {
        "version": 1,
        "cutoff": cutoff,
        "grace": grace,
        "min_age": min_age,
        "list": list_name,
        "count": count,
        "bytes": size,
    }


async def read_marker(adapter: StoreAdapter, keys: GcKeys, k: int) -> dict[str, object] | None:
    key = keys.marker(k, "condemned")
    try:
        raw = await adapter.get_async(key)
    except Exception as e:
        raise _translated(e, f"reading {key}") from e
    return None if raw is None else decode_json(raw, key)


async def read_condemned(adapter: StoreAdapter, keys: GcKeys, k: int) -> Condemned | None:
    """Generation ``k``'s parameters and list, or ``None`` if its marker or list is gone."""
    doc = await read_marker(adapter, keys, k)
    if doc is None:
        return None
    what = keys.marker(k, "condemned")
    name = doc.get("list")
    if not isinstance(name, str) or not name.startswith("list-") or "/" in name:
        raise StoreError(f"{what}: names no list")
    key = keys.marker(k, name)
    try:
        raw = await adapter.get_async(key)
    except Exception as e:
        raise _translated(e, f"reading {key}") from e
    if raw is None:
        return None
    records = bytes(memoryview(raw))
    if len(records) % RECORD or len(records) // RECORD != number(doc, "count", what):
        raise StoreError(f"{key}: {len(records)} bytes do not hold the records its marker counts")
    return Condemned(
        number(doc, "cutoff", what),
        number(doc, "grace", what),
        number(doc, "min_age", what),
        records,
    )
