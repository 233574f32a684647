"""Ingest and sequential read through castore's public API, timed, with CPU per thread.

Ingest is ``svc.open_write()``, ``write`` of each 4 MiB piece (``bytes``, as a file read
gives them), ``close()``, into a fresh store each run (a store that already holds the
chunks would turn the puts into cheap refusals). Read is ``svc.open_read(digest)`` and
``readinto`` one reused 4 MiB buffer until the end. Each is repeated and the fastest run kept.

Besides wall time, each run records the CPU the process spent and how it split across
threads, from ``/proc/self/task/*/schedstat`` (nanoseconds on CPU per thread): the event
loop's thread, castore's writer pool, anyio's worker threads, and the rest (obstore's
tokio runtime and other native threads). That is the profile evidence of where castore's
time goes, taken in the same run as the figures. It also records the part of that CPU
spent in the kernel and the minor page faults (``getrusage``): on these VMs the first
touch of fresh memory is, after castore's own stages and the file system's, the largest
and most variable cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pathlib
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from castore import B3Digest, BlobService, from_addr

__all__ = ["Run", "StoreKind", "ingest_and_read", "ingest_blob", "read_blob", "thread_cpu"]

#: Thread categories of the per-thread CPU split, in display order.
CATEGORIES = ("loop", "writer pool", "reader pool", "anyio threads", "other native")


@dataclass
class Run:
    """The best ingest and read runs of one data set into one kind of store."""

    store: str
    size: int
    ingest_s: float = float("inf")
    ingest_cpu: float = 0.0
    ingest_threads: dict[str, float] = field(default_factory=dict)
    ingest_kernel: float = 0.0
    ingest_faults: int = 0
    read_s: float = float("inf")
    read_cpu: float = 0.0
    read_threads: dict[str, float] = field(default_factory=dict)
    read_kernel: float = 0.0
    read_faults: int = 0
    digest: str = ""
    stored_bytes: int = 0

    @property
    def ingest_mibps(self) -> float:
        """Ingest throughput of the fastest run, MiB/s."""
        return self.size / self.ingest_s / (1 << 20)

    @property
    def read_mibps(self) -> float:
        """Read throughput of the fastest run, MiB/s."""
        return self.size / self.read_s / (1 << 20)


def thread_cpu() -> dict[int, float]:
    """CPU seconds of each live thread of this process, by native thread id."""
    out: dict[int, float] = {}
    task_dir = "/proc/self/task"
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return out


def kernel_and_faults() -> tuple[float, int]:
    """System CPU seconds and minor page faults of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_stime, r.ru_minflt


def _since(before: tuple[float, int]) -> tuple[float, int]:
    kernel, faults = kernel_and_faults()
    return kernel - before[0], faults - before[1]


def _category(tid: int, names: dict[int, str]) -> str:
    if tid == threading.main_thread().native_id:
        return "loop"
    name = names.get(tid)
    if name is None:
        return "other native"
    if name.startswith("castore-writer"):
        return "writer pool"
    if name.startswith("castore-reader"):
        return "reader pool"
    if "AnyIO" in name or "asyncio" in name:
        return "anyio threads"
    return "other native"


def _split(before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """CPU seconds per thread category between two :func:`thread_cpu` snapshots."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out = dict.fromkeys(CATEGORIES, 0.0)
    for tid, cpu in after.items():
        out[_category(tid, names)] += cpu - before.get(tid, 0.0)
    return out


class StoreKind:
    """A kind of store for the ingest runs: a fresh empty store on each :meth:`fresh`."""

    def __init__(self, name: str, base: pathlib.Path | None = None) -> None:
        self.name = name
        self._base = base
        self._dirs: list[pathlib.Path] = []

    def fresh(self) -> str:
        """The URL of a new, empty store of this kind.

        Before a local-disk store, dirty pages of earlier writes are flushed: the kernel's
        writeback of a backlog makes file writes several times dearer and varies a lot.
        Earlier stores are kept until :meth:`cleanup` (see :mod:`benchmarks.limits`
        on why deleting files between measurements makes the next ones dearer).
        """
        if self.name == "memory":
            return "objectstore+memory:///"
        assert self._base is not None
        os.sync()
        path = pathlib.Path(tempfile.mkdtemp(prefix="castore-bench-", dir=self._base))
        self._dirs.append(path)
        return "objectstore+" + path.as_uri()

    def cleanup(self) -> None:
        """Remove the folders of the stores made so far."""
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._dirs.clear()


def _du(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def ingest_blob(svc: BlobService, pieces: Sequence[bytes]) -> B3Digest:
    """Write ``pieces`` as one blob through ``open_write``; its digest."""
    writer = await svc.open_write()
    for piece in pieces:
        await writer.write(piece)
    return await writer.close()


async def read_blob(svc: BlobService, digest: B3Digest, piece: int) -> int:
    """Read the blob through ``open_read``, ``readinto`` a ``piece``-byte buffer; the bytes read."""
    reader = await svc.open_read(digest)
    if reader is None:
        raise RuntimeError(f"blob {digest} just written is not in the store")
    total = 0
    buf = bytearray(piece)  # one buffer, reused: the fastest way to read a blob
    async with reader:
        while n := await reader.readinto(buf):
            total += n
    return total


async def _one(kind: StoreKind, pieces: Sequence[bytes], size: int, repeat: int, piece: int) -> Run:
    run = Run(kind.name, size)
    for _ in range(repeat):
        gc.collect()
        url = kind.fresh()
        svc = from_addr(url)
        try:
            before, sys0 = thread_cpu(), kernel_and_faults()
            cpu0, t0 = time.process_time(), time.perf_counter()
            digest = await ingest_blob(svc, pieces)
            wall = time.perf_counter() - t0
            cpu, after, sys1 = time.process_time() - cpu0, thread_cpu(), _since(sys0)
            if wall < run.ingest_s:
                run.ingest_s, run.ingest_cpu = wall, cpu
                run.ingest_threads = _split(before, after)
                run.ingest_kernel, run.ingest_faults = sys1
            run.digest = str(digest)
            gc.collect()
            before, sys0 = thread_cpu(), kernel_and_faults()
            cpu0, t0 = time.process_time(), time.perf_counter()
            got = await read_blob(svc, digest, piece)
            wall = time.perf_counter() - t0
            cpu, after, sys1 = time.process_time() - cpu0, thread_cpu(), _since(sys0)
            if got != size:
                raise RuntimeError(f"read {got} bytes of a {size}-byte blob")
            if wall < run.read_s:
                run.read_s, run.read_cpu = wall, cpu
                run.read_threads = _split(before, after)
                run.read_kernel, run.read_faults = sys1
        finally:
            with contextlib.suppress(Exception):
                await svc.aclose()
        if url.startswith("objectstore+file://"):
            run.stored_bytes = _du(pathlib.Path(url.removeprefix("objectstore+file://")))
    return run


def ingest_and_read(
    kinds: Sequence[StoreKind],
    pieces: Sequence[bytes],
    size: int,
    repeat: int,
    piece: int,
    progress: Callable[[str], None] = lambda _msg: None,
) -> list[Run]:
    """For each kind of store: the best of ``repeat`` ingests and read-backs."""
    runs = []
    for kind in kinds:
        progress(f"ingest and read, {kind.name} store")
        runs.append(asyncio.run(_one(kind, pieces, size, repeat, piece)))
    return runs
