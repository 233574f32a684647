"""Garbage collection, case by case, on a store with a fake clock and barriers.

Each test scripts one interleaving of a writer and the collector that the protocol in
``docs/lifecycle.md`` must survive (or, for the hooks that switch a part of it off, one
it must not), holding store calls at the barrier and moving the fake clock by hand. The
Hypothesis stress test (``test_gc_stress.py``) searches the interleavings at random.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import obstore
import pytest

from castore import B3Digest, ObjectStoreBlobService
from castore.errors import GcConflictError, GcLeaseError, MalformedIndexError
from castore.objectstore import _gc, _gc_writer
from castore.objectstore._gc_state import MIN_GRACE
from castore.testing.clockstore import ClockStore
from tests.gcsupport import (
    chunk_keys,
    dangling,
    drop,
    index_exists,
    pieces,
    run_until,
    service,
)

GRACE = 60.0


@contextlib.contextmanager
def hook(module: object, name: str, value: bool) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


async def condemned_blob(
    store: ClockStore, svc: ObjectStoreBlobService, data: bytes, *, min_age: float = 10
) -> B3Digest:
    """Store ``data``, delete its index, age it and condemn its chunks (generation 1)."""
    d = await svc.put(data)
    await drop(svc, d)
    store.clock.advance(min_age + 5)
    report = await svc.collect_garbage(grace=GRACE, min_age=min_age)
    assert report.generation == 1 and report.condemned >= 2
    return d


async def test_collects_unreferenced_chunks_after_the_grace() -> None:
    store = ClockStore()
    svc = service(store)
    clock = store.clock
    p = pieces(5)
    kept = {await svc.put(p[0] + p[1]): p[0] + p[1], await svc.put(p[2]): p[2]}
    # Shares its leading chunks with the first kept blob.
    gone = [await svc.put(p[0] + p[3]), await svc.put(p[4])]
    for d in gone:
        await drop(svc, d)
    clock.advance(100)
    first = await svc.collect_garbage(grace=GRACE, min_age=10)
    assert first.generation == 1 and first.deleted == 0 and first.swept == ()
    assert first.indexes == 2 and first.condemned > 0 and first.kept == len(chunk_keys(store))
    clock.advance(GRACE - 10)
    early = await svc.collect_garbage(grace=GRACE, min_age=10)
    assert early.swept == () and early.deleted == 0 and early.pending == 1
    assert early.due_in is not None and 0 < early.due_in <= 10
    clock.advance(11)
    before = len(chunk_keys(store))
    second = await svc.collect_garbage(grace=GRACE, min_age=10)
    assert second.swept == (1,) and second.deleted == first.condemned
    assert second.deleted_bytes == first.condemned_bytes and second.rescued == 0
    assert len(chunk_keys(store)) == before - first.condemned == second.kept
    for d, data in kept.items():
        assert await svc.get(d) == data
    assert dangling(store) == []
    # Nothing is left to collect.
    clock.advance(GRACE + 100)
    third = await svc.collect_garbage(grace=GRACE, min_age=10)
    assert third.condemned == 0 and third.generation is None


async def test_a_writer_rescues_a_condemned_chunk_it_reuses() -> None:
    """The index lands after the sweep marked (held at the barrier), so only the rescue
    (the chunk rewritten, its LastModified past the cutoff) keeps the chunk."""
    store = ClockStore()
    svc = service(store)
    data = pieces(1, seed=1)[0] * 2
    d = await condemned_blob(store, svc, data)
    store.clock.advance(GRACE)
    store.hold(lambda op, key: op == "put" and key.startswith("blobs/"))
    async with anyio.create_task_group() as tg:
        result: list[B3Digest] = []

        async def write() -> None:
            result.append(await svc.put(data))

        tg.start_soon(write)
        held = await store.next_held()
        report = await svc.collect_garbage(grace=GRACE, min_age=10)
        assert report.swept == (1,) and report.deleted == 0 and report.rescued >= 2
        store.let_go(held)
    assert result == [d] and await svc.get(d) == data
    assert dangling(store) == []


@pytest.mark.parametrize("keep_only_newer", [False, True])
async def test_a_rescue_in_the_cutoffs_second(keep_only_newer: bool) -> None:
    """min_age=0: the cutoff is the second the chunks were listed in, and a rescue in that
    same second has the very same LastModified. Keeping only chunks strictly newer than
    the cutoff (the private hook) deletes it: a lost chunk."""
    store = ClockStore()
    svc = service(store)
    data = pieces(1, seed=2)[0] * 2
    d = await svc.put(data)
    await drop(svc, d)
    store.clock.advance(3)
    # Condemn and rescue within one second of the fake clock.
    assert (await svc.collect_garbage(grace=GRACE, min_age=0)).generation == 1
    store.hold(lambda op, key: op == "put" and key.startswith("blobs/"))
    with hook(_gc, "_KEEP_ONLY_NEWER", keep_only_newer):
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.put, data)
            held = await store.next_held()
            store.clock.advance(GRACE + 1)
            report = await svc.collect_garbage(grace=GRACE, min_age=0)
            store.let_go(held)
    if keep_only_newer:
        assert report.deleted >= 2 and dangling(store)
    else:
        assert report.deleted == 0 and dangling(store) == []
        assert await svc.get(d) == data


async def test_a_writer_waits_for_a_sweep_that_has_begun_then_fails_cleanly() -> None:
    store = ClockStore()
    svc = service(store)
    data = pieces(1, seed=3)[0] * 2
    d = await condemned_blob(store, svc, data)
    store.clock.advance(GRACE)
    store.hold(lambda op, key: op == "delete" and key.startswith("chunks/"))
    outcome: list[BaseException | B3Digest] = []

    async def write() -> None:
        try:
            outcome.append(await svc.put(data))
        except GcConflictError as e:
            outcome.append(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: svc.collect_garbage(grace=GRACE, min_age=10))
        deleting = await store.next_held()  # after begun, the marking and the HEADs
        tg.start_soon(write)
        await run_until(store.clock, lambda: bool(store.clock.sleepers), step=0.0)
        store.let_go(deleting)
        await run_until(store.clock, lambda: bool(outcome))
    assert isinstance(outcome[0], GcConflictError), outcome
    assert "deleted by garbage collection" in str(outcome[0])
    assert not index_exists(store, d) and dangling(store) == []
    # Writing it again uploads the chunks and succeeds.
    assert await svc.put(data) == d and await svc.get(d) == data


async def test_without_the_writer_check_the_reuse_race_loses_a_chunk() -> None:
    """The hazard itself: a writer reuses an old condemned chunk, the sweep deletes it,
    the index lands. With the writer's check switched off (private hook)."""
    store = ClockStore()
    svc = service(store)
    data = pieces(1, seed=4)[0] * 2
    await condemned_blob(store, svc, data)
    store.clock.advance(GRACE)
    store.hold(lambda op, key: op == "delete" and key.startswith("chunks/"))
    with hook(_gc_writer, "_SKIP_FOR_TESTS", True):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: svc.collect_garbage(grace=GRACE, min_age=10))
            deleting = await store.next_held()
            await svc.put(data)  # its chunks exist: skipped; its index lands now
            store.let_go(deleting)
    assert dangling(store)


async def test_a_collector_past_its_lease_stops_before_deleting() -> None:
    store = ClockStore()
    svc = service(store)
    data = pieces(1, seed=5)[0] * 2
    await condemned_blob(store, svc, data)
    store.clock.advance(GRACE)
    before = chunk_keys(store)
    # Suspend the collector at its HEADs of condemned chunks, past its 10 s lease.
    store.hold(lambda op, key: op == "head" and key.startswith("chunks/"))
    failed: list[GcLeaseError] = []

    async def collect() -> None:
        with pytest.raises(GcLeaseError, match="ran out") as e:
            await svc.collect_garbage(grace=GRACE, min_age=10, lease=10)
        failed.append(e.value)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        await store.next_held()
        store.clock.advance(11)
        store.let_all_go()
    assert failed and chunk_keys(store) == before
    # Its lease was not released: another collector must wait for it to end, plus the
    # margin (at least three minutes), and then takes the sweep over.
    with pytest.raises(GcLeaseError) as busy:
        await svc.collect_garbage(grace=GRACE, min_age=10, lease=10)
    assert busy.value.free_in is not None and busy.value.free_in > 150
    store.clock.advance(busy.value.free_in + 1)
    report = await svc.collect_garbage(grace=GRACE, min_age=10, lease=10)
    assert report.swept == (1,) and report.deleted == len(before)
    assert dangling(store) == []


async def test_one_collector_at_a_time() -> None:
    store = ClockStore()
    svc = service(store)
    other = service(store)  # another process
    store.hold(lambda op, key: op == "list" and key.startswith("chunks"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: svc.collect_garbage(grace=GRACE))
        await store.next_held()
        with pytest.raises(GcLeaseError, match="holds the lease") as busy:
            await other.collect_garbage(grace=GRACE)
        assert busy.value.holder is not None
        store.let_all_go()
    # Released at the end of the run: the next one need not wait.
    await other.collect_garbage(grace=GRACE)


async def test_an_index_landing_after_a_sweep_is_withdrawn() -> None:
    """Beyond what the protocol assumes (a put held at the barrier while a whole grace
    passes and a sweep deletes its chunks): the writer finds out when the put returns,
    withdraws its index and fails; no index names a missing chunk."""
    store = ClockStore()
    svc = service(store)
    collector = service(store)
    data = pieces(1, seed=6)[0] * 2
    d = await svc.put(data)
    await drop(svc, d)
    store.clock.advance(20)
    store.hold(lambda op, key: op == "put" and key.startswith("blobs/"))
    outcome: list[BaseException | B3Digest] = []

    async def write() -> None:
        try:
            outcome.append(await svc.put(data))
        except GcConflictError as e:
            outcome.append(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(write)
        held = await store.next_held()
        assert (await collector.collect_garbage(grace=GRACE, min_age=10)).generation == 1
        store.clock.advance(GRACE + 1)
        assert (await collector.collect_garbage(grace=GRACE, min_age=10)).deleted >= 2
        store.let_go(held)
    assert isinstance(outcome[0], GcConflictError) and "withdrawn" in str(outcome[0])
    assert not index_exists(store, d) and dangling(store) == []


async def test_a_corrupt_index_stops_the_collector() -> None:
    store = ClockStore()
    svc = service(store)
    d = await svc.put(pieces(1)[0] * 2)
    await drop(svc, d)
    await store.put_async("blobs/b3/" + "ab" * 2 + "/" + "ab" * 32, b"\xff\xff\xff")
    store.clock.advance(100)
    with pytest.raises(MalformedIndexError, match="castore check"):
        await svc.collect_garbage(grace=GRACE, min_age=10)
    assert not [k for k in _all_keys(store) if "/gen/" in k]


def _all_keys(store: ClockStore) -> dict[str, bytes]:
    mem = store.stamped.store
    return {
        m["path"]: bytes(obstore.get(mem, m["path"]).bytes())
        for page in obstore.list(mem)
        for m in page
    }


async def test_a_dry_run_writes_nothing() -> None:
    store = ClockStore()
    svc = service(store)
    d = await condemned_blob(store, svc, pieces(1, seed=7)[0] * 2)
    await svc.put(pieces(1, seed=8)[0])
    store.clock.advance(GRACE)
    # Remove the lease objects' effect on the comparison: compare everything.
    before = _all_keys(store)
    report = await svc.collect_garbage(grace=GRACE, min_age=10, dry_run=True)
    assert _all_keys(store) == before
    assert report.dry_run and report.deleted >= 2 and report.swept == (1,)
    assert not index_exists(store, d)


async def test_one_listing_per_commit_and_nothing_more_without_a_collector() -> None:
    store = ClockStore()
    svc = service(store)
    p = pieces(6, seed=9)
    for data in p:
        await svc.put(data)
    assert store.calls["list"] == len(p) + 1  # the first writer's starting view, then one each
    assert store.calls["head"] == 0


async def test_concurrent_commits_share_one_listing() -> None:
    store = ClockStore()
    svc = service(store)
    await svc.put(b"warm up")  # the starting view is cached from here on
    calls = store.calls["list"]
    store.hold(lambda op, key: op == "list")
    p = pieces(8, seed=10)
    async with anyio.create_task_group() as tg:
        for data in p:
            tg.start_soon(svc.put, data)
        first = await store.next_held()
        await asyncio.sleep(0.2)  # the others reach their commit meanwhile
        store.let_go(first)
        second = await store.next_held()
        store.let_all_go()
        assert second is not first
    # One listing that was running already, and one shared by every writer that came after.
    assert store.calls["list"] - calls <= 3


def test_grace_below_the_minimum_is_refused() -> None:
    async def go() -> None:
        svc = service(ClockStore())
        with pytest.raises(ValueError, match="at least"):
            await svc.collect_garbage(grace=MIN_GRACE - 1)
        with pytest.raises(ValueError, match="min_age"):
            await svc.collect_garbage(grace=MIN_GRACE, min_age=-1)

    anyio.run(go)


async def test_on_local_disk_in_real_time(tmp_path: Path) -> None:
    async with ObjectStoreBlobService(
        obstore.store.LocalStore(str(tmp_path), mkdir=True), avg_chunk_size=1024
    ) as svc:
        p = pieces(3, seed=11)
        keep = await svc.put(p[0] + p[1])
        gone = await svc.put(p[0] + p[2])
        await drop(svc, gone)
        await anyio.sleep(0.05)
        first = await svc.collect_garbage(grace=MIN_GRACE, min_age=0)
        assert first.condemned >= 1
        await anyio.sleep(MIN_GRACE + 0.5)
        second = await svc.collect_garbage(grace=MIN_GRACE, min_age=0)
        assert second.swept == (1,) and second.deleted == first.condemned
        assert await svc.get(keep) == p[0] + p[1]
        assert await svc.get(gone) is None
