"""Garbage collection at scale: mark-and-sweep time and peak memory, in a child process.

The child (``python -m benchmarks.collect STORE N FOLDER``) fills a store with ``N``
chunk objects (tiny payloads: the collector lists chunks and reads their LastModified, it
never reads their bytes) and blob indexes naming 90 % of them, 100 chunks an index, so
10 % are garbage. Then it times two collector runs with the smallest grace:

1. **mark and condemn**: list and read every index, list every chunk, write the
   generation of the unnamed ones;
2. **sweep** (once the grace has passed, waited in real time): mark again, read each
   condemned chunk's LastModified, delete the garbage.

Peaks are the child's resident-set high-water mark (``VmHWM``), reset before each run, so
each run gets its own; the baseline is the resident set just before the first run, which
holds the filled memory store itself. ``STORE`` is ``memory`` or ``local`` (a folder
under ``FOLDER``). The child prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from benchmarks.child import module_command, module_env
from benchmarks.markdown import MIB, Target
from benchmarks.rss import _reset_peak, _status_kib
from benchmarks.section import Context, Section, Table

__all__ = ["GcBench", "GcRun", "measure_gc"]

#: Chunks named per index.
PER_INDEX = 100
#: The share of chunks that no index names.
GARBAGE = 0.10
#: Peak resident memory allowed while marking a million chunks.
MARK_RSS_LIMIT = 512 * MIB


@dataclass
class GcRun:
    """One store's figures (seconds, bytes)."""

    store: str
    chunks: int
    indexes: int
    fill_s: float
    mark_s: float
    sweep_s: float
    condemned: int
    deleted: int
    baseline: int
    mark_peak: int
    sweep_peak: int
    phase_peaks: bool


def _secs(s: float) -> str:
    """Seconds to one decimal, or to three below one second (a quick run's small figures
    would print as 0.0)."""
    return f"{s:.1f}" if s >= 1 else f"{s:.3f}"


def _fill(adapter: object, n: int, seed: int = 0) -> int:
    """``n`` chunk objects and indexes naming all but the garbage share; returns the
    number of indexes."""
    from castore.objectstore import StoreAdapter
    from castore.objectstore._codec import encode_index
    from castore.objectstore._layout import Layout

    assert isinstance(adapter, StoreAdapter)
    layout = Layout()
    rng = random.Random(seed)
    live = int(n * (1 - GARBAGE))
    payload = b"\x00" * 16
    named: list[bytes] = []
    indexes = 0
    for i in range(n):
        d = rng.randbytes(32)
        adapter.put_new(layout.chunk(d), payload)
        if i < live:
            named.append(d)
        if len(named) == PER_INDEX or (i == live - 1 and named):
            index = encode_index(named, [1024] * len(named))
            adapter.put_new(layout.blob(rng.randbytes(32)), index)
            indexes += 1
            named = []
    return indexes


async def _collect_twice(service: object) -> tuple[float, float, int, int, int, int]:
    from castore import ObjectStoreBlobService
    from castore.objectstore._gc_state import MIN_GRACE

    assert isinstance(service, ObjectStoreBlobService)
    _reset_peak()
    began = time.perf_counter()
    first = await service.collect_garbage(grace=MIN_GRACE, min_age=0)
    mark_s = time.perf_counter() - began
    mark_peak = _status_kib("VmHWM") * 1024
    await asyncio.sleep((first.due_in or 0) + 1.5)
    _reset_peak()
    began = time.perf_counter()
    second = await service.collect_garbage(grace=MIN_GRACE, min_age=0)
    sweep_s = time.perf_counter() - began
    sweep_peak = _status_kib("VmHWM") * 1024
    return mark_s, sweep_s, first.condemned, second.deleted, mark_peak, sweep_peak


def _child(store: str, n: int, folder: pathlib.Path) -> dict[str, object]:
    from obstore.store import LocalStore, MemoryStore

    from castore import ObjectStoreBlobService

    if store == "memory":
        backend: MemoryStore | LocalStore = MemoryStore()
    else:
        root = folder / "gc-store"
        root.mkdir(parents=True, exist_ok=True)
        backend = LocalStore(root)
    service = ObjectStoreBlobService(backend)
    began = time.perf_counter()
    indexes = _fill(service.adapter, n)
    fill_s = time.perf_counter() - began
    baseline = _status_kib("VmRSS") * 1024
    phase_peaks = _reset_peak()
    mark_s, sweep_s, condemned, deleted, mark_peak, sweep_peak = asyncio.run(
        _collect_twice(service)
    )
    return {
        "store": store,
        "chunks": n,
        "indexes": indexes,
        "fill_s": fill_s,
        "mark_s": mark_s,
        "sweep_s": sweep_s,
        "condemned": condemned,
        "deleted": deleted,
        "baseline": baseline,
        "mark_peak": mark_peak,
        "sweep_peak": sweep_peak,
        "phase_peaks": phase_peaks,
    }


def measure_gc(store: str, n: int, work: pathlib.Path) -> GcRun:
    """Run the child for one store and ``n`` chunks."""
    folder = work / f"gc-{store}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            module_command("benchmarks.collect", store, str(n), str(folder)),
            env=module_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError(f"the gc benchmark child failed: {out.stderr[-2000:]}")
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    return GcRun(**doc)


class GcBench(Section):
    name = "gc"
    help = "garbage collection: mark, condemn and sweep time and peak RSS (memory, local disk)"

    #: Chunk objects at full size: a million in memory, a hundred thousand on disk.
    MEMORY_CHUNKS = 1_000_000
    LOCAL_CHUNKS = 100_000

    def __init__(self) -> None:
        self.runs: list[GcRun] = []

    def _sizes(self, ctx: Context) -> tuple[int, int]:
        # Scaled with the run's data size: full size from the default 512 MiB on.
        scale = min(1.0, ctx.size / (512 << 20))
        return max(2000, int(self.MEMORY_CHUNKS * scale)), max(1000, int(self.LOCAL_CHUNKS * scale))

    def measure(self, ctx: Context) -> None:
        memory, local = self._sizes(ctx)
        ctx.progress(f"gc, {memory} chunk objects in memory")
        self.runs = [measure_gc("memory", memory, ctx.work)]
        ctx.progress(f"gc, {local} chunk objects on local disk")
        self.runs.append(measure_gc("local", local, ctx.work))

    def tables(self, ctx: Context) -> list[Table]:
        if not self.runs:
            return []
        rows = [
            [
                r.store,
                f"{r.chunks:,}",
                f"{r.indexes:,}",
                _secs(r.mark_s),
                _secs(r.sweep_s),
                f"{r.chunks / r.mark_s / 1000:.0f}",
                f"{r.deleted:,}",
                f"{r.baseline / MIB:.0f}",
                f"{r.mark_peak / MIB:.0f}",
                f"{r.sweep_peak / MIB:.0f}",
            ]
            for r in self.runs
        ]
        return [
            Table(
                "Garbage collection",
                [
                    "store",
                    "chunk objects",
                    "indexes",
                    "mark + condemn s",
                    "sweep s",
                    "k chunks/s marked",
                    "deleted",
                    "RSS before MiB",
                    "peak RSS marking MiB",
                    "peak RSS sweeping MiB",
                ],
                rows,
                notes=[
                    "Indexes name 90 % of the chunks, 100 each; the other 10 % are garbage. "
                    "The first run lists and reads every index, lists every chunk and "
                    "condemns the garbage; the second, a grace later, marks again, reads "
                    "each condemned chunk's LastModified and deletes it. Peaks are the "
                    "collector process's, which for the memory store includes the store "
                    "itself (`RSS before`). obstore's memory store also builds a whole "
                    "listing before it returns the first page (listing 200 k chunk objects "
                    "alone peaked 45 MiB above the filled store), so most of the memory "
                    "store's peak above `RSS before` is that listing, not the collector; "
                    "S3 and local disk list page by page."
                ],
            )
        ]

    def targets(self, ctx: Context) -> list[Target]:
        # The memory store lives in the collector's process, so the target is the
        # collector's own share: the peak above the resident set of the filled store.
        label = "peak RSS of marking 1 M chunks, above the store, < 512 MiB"
        memory = next((r for r in self.runs if r.store == "memory"), None)
        if memory is None or memory.chunks < self.MEMORY_CHUNKS:
            return [Target(label)]  # not run at full size
        above = memory.mark_peak - memory.baseline
        return [
            Target.judged(
                label,
                f"{above / MIB:.0f} MiB (process peak {memory.mark_peak / MIB:.0f} MiB, "
                f"of which the filled store {memory.baseline / MIB:.0f} MiB)",
                above < MARK_RSS_LIMIT,
            )
        ]


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]))))
    sys.stdout.flush()
    os._exit(0)
