"""Check: ``check(read_data=True)`` against a plain sequential read of the same blob.

Both fetch and verify every chunk of the blob once (decompress, BLAKE3), so a check that
reads data should run at about the reader's speed; the ratio shows what the check's
batching (32 chunks a fetch, one worker hop a batch) costs or saves against the reader's
prefetching pullers. The structural check (LIST and index reads only) is timed too. The
figures are same-run ratios, on memory and on local disk.
"""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import time
from dataclasses import dataclass

from obstore.store import LocalStore, MemoryStore

from benchmarks import data as datasets
from benchmarks.markdown import MIB
from benchmarks.section import Context, Section, Table

__all__ = ["CheckBench", "CheckRun", "measure_check"]

_PIECE = 4 << 20


@dataclass
class CheckRun:
    """Best-of-``repeat`` seconds on one store for one blob."""

    store: str
    size: int
    chunks: int
    read: float
    check_data: float
    check_structure: float


async def _one(store: str, backend: MemoryStore | LocalStore, data: bytes, repeat: int) -> CheckRun:
    from castore import ObjectStoreBlobService

    async with ObjectStoreBlobService(backend) as svc:
        digest = await svc.put(data)
        chunks = len(await svc.chunks(digest) or []) or 1
        read = data_check = structure = float("inf")
        for _ in range(repeat):
            began = time.perf_counter()
            reader = await svc.open_read(digest)
            assert reader is not None
            async with reader:
                while await reader.read(_PIECE):
                    pass
            read = min(read, time.perf_counter() - began)
            began = time.perf_counter()
            problems = await svc.check(read_data=True).collect()
            data_check = min(data_check, time.perf_counter() - began)
            assert not problems, problems
            began = time.perf_counter()
            await svc.check().collect()
            structure = min(structure, time.perf_counter() - began)
    return CheckRun(store, len(data), chunks, read, data_check, structure)


def measure_check(size: int, repeat: int, work: pathlib.Path) -> list[CheckRun]:
    """One blob of ``size`` random bytes on memory and on local disk."""
    data = datasets.random_data(size)
    folder = work / "check-store"
    try:
        memory = asyncio.run(_one("memory", MemoryStore(), data, repeat))
        folder.mkdir(parents=True, exist_ok=True)
        local = asyncio.run(_one("local", LocalStore(folder), data, repeat))
        return [memory, local]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class CheckBench(Section):
    name = "check"
    help = "check --read-data against a plain read of the same blob (memory, local disk)"

    def __init__(self) -> None:
        self.runs: list[CheckRun] = []

    def measure(self, ctx: Context) -> None:
        size = min(ctx.size, 256 << 20)
        ctx.progress(f"check, {size >> 20} MiB blob")
        self.runs = measure_check(size, max(1, ctx.repeat), ctx.work)

    def tables(self, ctx: Context) -> list[Table]:
        if not self.runs:
            return []
        rows = [
            [
                r.store,
                f"{r.size / MIB:.0f} MiB",
                str(r.chunks),
                f"{r.size / MIB / r.read:.0f}",
                f"{r.size / MIB / r.check_data:.0f}",
                f"{r.read / r.check_data:.2f}",
                f"{r.check_structure * 1000:.0f}",
            ]
            for r in self.runs
        ]
        return [
            Table(
                "Check",
                [
                    "store",
                    "blob",
                    "chunks",
                    "read MiB/s",
                    "check --read-data MiB/s",
                    "check / read",
                    "structural check ms",
                ],
                rows,
                notes=[
                    "Random data, best of the run's repeats. `check / read` is the data "
                    "check's speed as a share of a sequential read of the same blob in the "
                    "same run: both fetch, decompress and hash every chunk once."
                ],
            )
        ]
