"""Garbage collection of chunk objects that no blob index names (the collector's side).

One run of :func:`collect_garbage`, under the collector's lease (``_gc_lease.Lease``):

1. Sweep every generation that is due, that is condemned at least its grace ago by the
   store's clock: write its ``begun`` marker, mark again from every index (after the
   marker, so that a writer either saw the marker or committed before this listing),
   read each condemned chunk that is still unmarked with a HEAD, delete it only if its
   LastModified is still before the generation's cutoff (a writer that reuses a condemned
   chunk rewrites it, which moves its LastModified past the cutoff: a rescue), then write
   ``done``.
2. If no generation is left pending, condemn a new one: the chunks that no index named
   at the marking and whose LastModified lies before ``store now - min_age``.

Deleting nothing that a writer may still rely on is the writers' part of the protocol
(``_gc_writer``); ``docs/lifecycle.md`` gives the whole argument. The collector checks
its lease before every delete batch, and stops once it ran out.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from castore.objectstore._errors import store_error
from castore.objectstore._gc_lease import Lease
from castore.objectstore._gc_mark import (
    Marks,
    Progress,
    bucketed,
    list_chunks,
    mark,
    unmarked,
)
from castore.objectstore._gc_state import (
    DEFAULT_LEASE,
    MIN_GRACE,
    MIN_TAKEOVER_MARGIN,
    RECORD,
    Condemned,
    GcKeys,
    Generation,
    clock_of,
    each_bounded,
    encode_json,
    holder_name,
    list_view,
    marker_doc,
    read_condemned,
    read_marker,
    store_now,
)

if TYPE_CHECKING:
    from castore.objectstore._adapter import ObjectInfo, StoreAdapter
    from castore.objectstore._layout import Layout

__all__ = ["DEFAULT_GRACE", "GcReport", "collect_garbage"]

#: Default seconds between condemning chunks and deleting them.
DEFAULT_GRACE = 24 * 3600.0

# Chunks read (HEAD) and then deleted per batch; S3 deletes up to 1000 keys a request.
_BATCH = 1000
# HEAD requests in flight at once on a remote store.
_HEADS_IN_FLIGHT = 32

# Private test hook: keep a condemned chunk only if its LastModified is strictly after
# the cutoff. Wrong with one-second timestamps (a rescue in the cutoff's own second would
# be deleted); the stress test must catch it.
_KEEP_ONLY_NEWER = False


@dataclass(frozen=True, slots=True)
class GcReport:
    """What one :meth:`~castore.ObjectStoreBlobService.collect_garbage` run did (or, with
    ``dry_run``, would do). Objects and bytes are chunk objects and their stored
    (compressed) sizes.
    """

    dry_run: bool
    #: The grace and minimum age the run was given, in seconds.
    grace: float
    min_age: float
    #: Blob indexes read (every one is a root).
    indexes: int
    #: Chunk objects (and bytes) left in the store after the run.
    kept: int
    kept_bytes: int
    #: Chunk objects deleted by the sweeps of this run.
    deleted: int
    deleted_bytes: int
    #: Chunk objects condemned by this run, to be deleted by a run ``grace`` later unless
    #: an index names them again or a writer rescues them.
    condemned: int
    condemned_bytes: int
    #: Condemned chunks the sweeps kept: named again by an index, or rewritten since.
    rescued: int
    rescued_bytes: int
    #: Generations swept by this run.
    swept: tuple[int, ...]
    #: The generation this run condemned, if any.
    generation: int | None
    #: A generation still waiting for its grace, and in how many seconds it is due.
    pending: int | None
    due_in: float | None
    #: Wall-clock seconds the run took.
    seconds: float

    def as_dict(self) -> dict[str, object]:
        """The report as plain JSON-ready values."""
        d = asdict(self)
        d["swept"] = list(self.swept)
        return d


@dataclass(slots=True)
class _Tally:
    deleted: int = 0
    deleted_bytes: int = 0
    rescued: int = 0
    rescued_bytes: int = 0
    swept: list[int] = field(default_factory=list)


def _keep(info: ObjectInfo, cutoff: float) -> bool:
    """Whether a condemned chunk was rewritten (rescued) since it was condemned."""
    t = info.last_modified.timestamp()
    return t > cutoff if _KEEP_ONLY_NEWER else t >= cutoff


async def _heads(adapter: StoreAdapter, keys: Sequence[str]) -> list[ObjectInfo | None]:
    if adapter.in_process:
        return await anyio.to_thread.run_sync(lambda: [adapter.head(k) for k in keys])
    out: list[ObjectInfo | None] = [None] * len(keys)

    async def one(i: int) -> None:
        out[i] = await adapter.head_async(keys[i])

    await each_bounded(one, range(len(keys)), _HEADS_IN_FLIGHT)
    return out


class _Run:
    """One collector run: its store, clock, lease and tallies."""

    def __init__(
        self,
        adapter: StoreAdapter,
        layout: Layout,
        read_limit: int,
        progress: Progress | None,
        dry_run: bool,
    ) -> None:
        self.adapter = adapter
        self.layout = layout
        self.keys = GcKeys(layout)
        self.read_limit = read_limit
        self.progress = progress
        self.dry_run = dry_run
        self.clock = clock_of(adapter)
        self.holder = holder_name()
        self.tally = _Tally()
        self.lease: Lease | None = None

    def _step(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    async def _create(self, key: str, doc: dict[str, object]) -> bool:
        try:
            return await self.adapter.put_new_async(key, encode_json(doc))
        except Exception as e:
            raise store_error(e, f"writing {key}") from e

    async def _head(self, key: str) -> ObjectInfo | None:
        try:
            return await self.adapter.head_async(key)
        except Exception as e:
            raise store_error(e, f"reading {key}") from e

    async def grace_of(self, g: Generation) -> float:
        doc = await read_marker(self.adapter, self.keys, g.number)
        value = None if doc is None else doc.get("grace")
        grace = float(value) if isinstance(value, int | float) else MIN_GRACE
        return max(grace, MIN_GRACE)

    async def begin(self, g: Generation, grace: float) -> bool:
        """Write ``begun`` (unless a dead collector did); False if its time is wrong."""
        key = self.keys.marker(g.number, "begun")
        await self._create(key, {"holder": self.holder})
        info = await self._head(key)
        # s_k >= t_k + grace is what the writers rely on; "now" was read from the store
        # before this, so only a store clock that went back can break it.
        return info is not None and info.last_modified.timestamp() >= g.t + grace

    async def finish(self, g: Generation, doc: dict[str, object]) -> None:
        """Write ``done``: writers waiting on the sweep go on. Only while the lease holds,
        so that a collector past its lease can never announce the end of a sweep that its
        successor is still running."""
        assert self.lease is not None
        await self.lease.check()
        await self._create(self.keys.marker(g.number, "done"), {"holder": self.holder, **doc})

    async def sweep(self, g: Generation, marks: Marks) -> None:
        """Delete generation ``g``'s chunks that are still unnamed and not rewritten."""
        condemned = await read_condemned(self.adapter, self.keys, g.number)
        if condemned is None:  # its list is gone: nothing can be deleted safely
            if not self.dry_run:
                await self.finish(g, {"deleted": 0, "note": "condemned list missing"})
            return
        candidates, named, named_bytes = await anyio.to_thread.run_sync(
            _unmarked_condemned, condemned, marks
        )
        self.tally.rescued += named
        self.tally.rescued_bytes += named_bytes
        before = self.tally.deleted, self.tally.deleted_bytes
        n = len(candidates) // RECORD
        for start in range(0, n, _BATCH):
            stop = min(n, start + _BATCH)
            batch = [candidates[i * RECORD : i * RECORD + 32] for i in range(start, stop)]
            await self._sweep_batch(g, condemned, batch)
            self._step(f"sweeping generation {g.number}", stop, n)
        if not self.dry_run:
            await self.finish(
                g,
                {
                    "deleted": self.tally.deleted - before[0],
                    "deleted_bytes": self.tally.deleted_bytes - before[1],
                },
            )
        self.tally.swept.append(g.number)

    async def _sweep_batch(self, g: Generation, condemned: Condemned, batch: list[bytes]) -> None:
        keys = [self.layout.chunk(d) for d in batch]
        try:
            infos = await _heads(self.adapter, keys)
        except Exception as e:
            raise store_error(e, f"reading condemned chunks of generation {g.number}") from e
        doomed: list[str] = []
        doomed_bytes = 0
        for key, info in zip(keys, infos, strict=True):
            if info is None:
                continue  # already gone (a sweep that died after deleting it)
            if _keep(info, condemned.cutoff):
                self.tally.rescued += 1
                self.tally.rescued_bytes += info.size
            else:
                doomed.append(key)
                doomed_bytes += info.size
        if not doomed:
            return
        if not self.dry_run:
            assert self.lease is not None
            await self.lease.check()
            try:
                await self.adapter.delete_async(doomed)
            except Exception as e:
                raise store_error(e, f"deleting chunks of generation {g.number}") from e
        self.tally.deleted += len(doomed)
        self.tally.deleted_bytes += doomed_bytes

    async def condemn(
        self,
        number: int,
        candidates: list[bytearray],
        marks: Marks,
        cutoff: float,
        grace: float,
        min_age: float,
    ) -> tuple[int, int]:
        """Write generation ``number`` from the unmarked candidates; (count, bytes)."""
        records, size = await anyio.to_thread.run_sync(unmarked, candidates, marks)
        count = len(records) // RECORD
        if not count or self.dry_run:
            return count, size
        name = f"list-{secrets.token_hex(8)}"
        list_key = self.keys.marker(number, name)
        try:
            await self.adapter.put_async(list_key, records)
        except Exception as e:
            raise store_error(e, f"writing {list_key}") from e
        doc = marker_doc(
            cutoff=cutoff, grace=grace, min_age=min_age, list_name=name, count=count, size=size
        )
        if not await self._create(self.keys.marker(number, "condemned"), doc):
            # A collector that lost its lease wrote this generation late: leave it be.
            try:
                await self.adapter.delete_async([list_key])
            except Exception as e:
                raise store_error(e, f"deleting {list_key}") from e
            return 0, 0
        return count, size


def _unmarked_condemned(condemned: Condemned, marks: Marks) -> tuple[bytes, int, int]:
    """In a worker: the condemned records no index names now, and the count and bytes of
    those an index names again."""
    candidates, candidate_bytes = unmarked(bucketed(condemned.records), marks)
    total_bytes = sum(condemned.size(i) for i in range(len(condemned)))
    named = len(condemned) - len(candidates) // RECORD
    return candidates, named, total_bytes - candidate_bytes


def check_durations(grace: float, min_age: float, lease: float) -> None:
    if not grace >= MIN_GRACE:
        raise ValueError(
            f"grace must be at least {MIN_GRACE:g} s (twice the writers' window plus two "
            f"seconds for one-second timestamps), got {grace!r}"
        )
    if not min_age >= 0:
        raise ValueError(f"min_age must be zero or more seconds, got {min_age!r}")
    if not lease > 0:
        raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")


async def collect_garbage(
    adapter: StoreAdapter,
    layout: Layout,
    read_limit: int,
    *,
    grace: float = DEFAULT_GRACE,
    min_age: float | None = None,
    dry_run: bool = False,
    lease: float = DEFAULT_LEASE,
    progress: Progress | None = None,
) -> GcReport:
    """One collector run; see :meth:`castore.ObjectStoreBlobService.collect_garbage`."""
    age = grace if min_age is None else min_age
    check_durations(grace, age, lease)
    began = time.monotonic()
    run = _Run(adapter, layout, read_limit, progress, dry_run)
    if dry_run:
        now = run.clock.wall()
    else:
        run.lease = Lease(
            adapter,
            run.keys,
            run.clock,
            duration=lease,
            margin=max(lease, MIN_TAKEOVER_MARGIN),
            holder=run.holder,
        )
        now = await run.lease.acquire()
    try:
        return await _collect(run, now, grace, age, began)
    finally:
        if run.lease is not None and run.lease.held:
            with anyio.CancelScope(shield=True):
                await run.lease.release()


async def _collect(run: _Run, now: float, grace: float, min_age: float, began: float) -> GcReport:
    view = await list_view(run.adapter, run.keys)
    due: list[tuple[Generation, float]] = []
    pending: tuple[int, float] | None = None
    for g in view.pending():
        g_grace = await run.grace_of(g)
        if now >= g.t + g_grace:
            due.append((g, g_grace))
        elif pending is None:
            pending = (g.number, g.t + g_grace - now)
    swept: list[Generation] = []
    for g, g_grace in due:
        if run.dry_run or await run.begin(g, g_grace):
            swept.append(g)
        else:  # clock trouble: abandon the generation without deleting anything
            await run.finish(g, {"deleted": 0, "note": "begun before its grace ended"})
    marks = await mark(run.adapter, run.layout, run.read_limit, run.progress)
    for g in swept:
        await run.sweep(g, marks)
    n = run.clock.wall() if run.dry_run else await store_now(run.adapter, run.keys)
    cutoff = n - min_age
    listing = await list_chunks(run.adapter, run.layout, cutoff, run.progress)
    generation: int | None = None
    condemned = condemned_bytes = 0
    if pending is None:
        number = view.next_number()
        condemned, condemned_bytes = await run.condemn(
            number, listing.old, marks, cutoff, grace, min_age
        )
        if condemned:
            generation = number
            pending = (number, grace)
    kept, kept_bytes = listing.objects, listing.bytes
    if run.dry_run:  # nothing was deleted: what would have been is still in the listing
        kept -= run.tally.deleted
        kept_bytes -= run.tally.deleted_bytes
    t = run.tally
    return GcReport(
        dry_run=run.dry_run,
        grace=grace,
        min_age=min_age,
        indexes=marks.indexes,
        kept=kept,
        kept_bytes=kept_bytes,
        deleted=t.deleted,
        deleted_bytes=t.deleted_bytes,
        condemned=condemned,
        condemned_bytes=condemned_bytes,
        rescued=t.rescued,
        rescued_bytes=t.rescued_bytes,
        swept=tuple(t.swept),
        generation=generation,
        pending=None if pending is None else pending[0],
        due_in=None if pending is None else pending[1],
        seconds=time.monotonic() - began,
    )
