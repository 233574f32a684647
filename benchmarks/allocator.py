"""Page faults and kernel time of repeated ingests into memory, one process.

Run ``python -m benchmarks.allocator [--kind random|text] [--mib 512] [--runs 4]``,
once as is and once with allocator settings in the environment, for example::

    MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        MALLOC_TOP_PAD_=67108864 python -m benchmarks.allocator

Each run writes the data set into a fresh ``objectstore+memory:///`` through the public
API, then reads it back with 4 MiB reads, and prints MiB/s, user and system CPU seconds
per GiB (``getrusage``) and minor page faults per GiB for both. The figures in the notes
of ``docs/benchmarks.md`` come from it. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections.abc import Sequence

from obstore.store import MemoryStore

from benchmarks.api import ingest_blob, read_blob
from benchmarks.data import random_data, split, text_data
from castore.objectstore import ObjectStoreBlobService

_READ = 4 << 20


def _usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def _line(what: str, mib: float, seconds: float, before: tuple[float, float, int]) -> str:
    user, system, faults = (a - b for a, b in zip(_usage(), before, strict=True))
    gib = mib / 1024
    return (
        f"{what} {mib / seconds:6.0f} MiB/s, user {user / gib:.2f} s/GiB, "
        f"system {system / gib:.2f} s/GiB, {faults / gib:8.0f} faults/GiB"
    )


async def _once(pieces: Sequence[bytes], mib: float) -> str:
    async with ObjectStoreBlobService(MemoryStore()) as svc:
        before, t0 = _usage(), time.perf_counter()
        digest = await ingest_blob(svc, pieces)
        wrote = _line("ingest", mib, time.perf_counter() - t0, before)
        before, t0 = _usage(), time.perf_counter()
        await read_blob(svc, digest, _READ)
        return wrote + " | " + _line("read", mib, time.perf_counter() - t0, before)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.allocator")
    parser.add_argument("--kind", choices=("random", "text"), default="random")
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args(argv)
    make = random_data if args.kind == "random" else text_data
    pieces = split(make(args.mib << 20))
    for _ in range(args.runs):
        print(asyncio.run(_once(pieces, float(args.mib))), flush=True)


if __name__ == "__main__":
    main()
