"""Measure ingest throughput against the per-stage CPU limit (DESIGN section 8's method).

Run ``python -m castore.objectstore._measure [--mib 256] [--runs 3]``. For random data and
for text (source files found on this machine), it measures in one thread the CPU seconds
each stage of the writer costs on the same bytes (FastCDC, BLAKE3 of each chunk, zstd
level 3, the puts into a MemoryStore, the whole-blob BLAKE3), derives the throughput two
cores could reach with perfect overlap, then times real ingests through
``objectstore+memory:///`` and prints both and their ratio. A measurement tool, not a
test: timings on a shared machine swing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import obstore
import zstandard
from obstore.store import MemoryStore

from castore.objectstore._chunker import DEFAULT_AVG_CHUNK_SIZE, make_fastcdc
from castore.objectstore._codec import ZSTD_LEVEL
from castore.objectstore._service import ObjectStoreBlobService

SEGMENT = 16 << 20
PIECE = 1 << 20
TEXT_SUFFIXES = (".py", ".pyi", ".c", ".h", ".txt", ".rst", ".md", ".html", ".js", ".css")
TEXT_ROOTS = (Path(sys.prefix), Path(sys.base_prefix), Path("/usr/share"), Path("/usr/include"))


def text_corpus(size: int) -> bytes:
    """``size`` bytes of distinct text files from this machine (no file twice)."""
    seen: set[bytes] = set()
    parts: list[bytes] = []
    total = 0
    for root in TEXT_ROOTS:
        for dirpath, _dirs, files in os.walk(root):
            for name in sorted(files):
                if not name.endswith(TEXT_SUFFIXES):
                    continue
                try:
                    data = Path(dirpath, name).read_bytes()
                except OSError:
                    continue
                key = hashlib.blake2b(data, digest_size=16).digest()
                if not data or key in seen:
                    continue
                seen.add(key)
                parts.append(data)
                total += len(data)
                if total >= size:
                    return b"".join(parts)[:size]
    raise SystemExit(f"found only {total >> 20} MiB of text files; ask for less with --mib")


def _segments(data: bytes) -> Iterator[memoryview]:
    view = memoryview(data)
    for i in range(0, len(data), SEGMENT):
        yield view[i : i + SEGMENT]


def _cpu(fn: Callable[[], object]) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def stage_costs(data: bytes) -> dict[str, float]:
    """CPU seconds per GiB of each pipeline stage, measured in this thread."""
    cdc = make_fastcdc(DEFAULT_AVG_CHUNK_SIZE)
    segs = list(_segments(data))
    cuts: list[list[int]] = []

    def cut() -> None:
        for s in segs:
            cuts.append([c.offset + c.length for c in cdc.cut_buf(s)])

    def chunk_views() -> Iterator[tuple[memoryview, array[int]]]:
        for s, ends in zip(segs, cuts, strict=True):
            spans = array("Q")
            start = 0
            for e in ends:
                spans.append(start)
                spans.append(e - start)
                start = e
            yield s, spans

    def hash_chunks() -> None:
        for s, spans in chunk_views():
            for i in range(0, len(spans), 2):
                blake3.blake3(s[spans[i] : spans[i] + spans[i + 1]], max_threads=1).digest()

    frames: list[bytes] = []
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    def compress() -> None:
        for s, spans in chunk_views():
            for i in range(0, len(spans), 2):
                frames.append(cctx.compress(s[spans[i] : spans[i] + spans[i + 1]]))

    store = MemoryStore()

    def put() -> None:
        for n, frame in enumerate(frames):
            obstore.put(store, f"chunks/b3/{n:08x}", frame, mode="create")

    def whole() -> None:
        blake3.blake3(data, max_threads=1).digest()

    gib = len(data) / (1 << 30)
    costs = {
        "fastcdc": _cpu(cut),
        "blake3 chunks": _cpu(hash_chunks),
        "zstd 3": _cpu(compress),
        "put MemoryStore": _cpu(put),
        "blake3 whole": _cpu(whole),
    }
    return {k: v / gib for k, v in costs.items()}


async def ingest(pieces: list[bytes]) -> tuple[float, float]:
    """Wall and process CPU seconds to write ``pieces`` as one blob into a fresh
    objectstore+memory:/// service."""
    async with ObjectStoreBlobService(MemoryStore()) as svc:
        cpu = time.process_time()
        start = time.perf_counter()
        writer = await svc.open_write()
        for p in pieces:
            await writer.write(p)
        await writer.close()
        return time.perf_counter() - start, time.process_time() - cpu


async def read_back(data: bytes) -> float:
    async with ObjectStoreBlobService(MemoryStore()) as svc:
        digest = await svc.put(data)
        start = time.perf_counter()
        reader = await svc.open_read(digest)
        assert reader is not None
        async with reader:
            while await reader.read(PIECE):
                pass
        return time.perf_counter() - start


def report(name: str, data: bytes, runs: int) -> None:
    gb = len(data) / 1e9
    costs = stage_costs(data)
    total = sum(costs.values())
    limit = 2 * (1 << 30) / total / 1e9  # GB/s with both cores busy
    print(f"\n{name}: {len(data) >> 20} MiB")
    for k, v in costs.items():
        print(f"  {k:<16} {v:5.2f} CPU s/GiB")
    print(f"  {'sum':<16} {total:5.2f} CPU s/GiB -> limit on 2 cores {limit:.2f} GB/s")
    pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)]
    results = [asyncio.run(ingest(pieces)) for _ in range(runs)]
    rates = [gb / wall for wall, _ in results]
    best, median = max(rates), statistics.median(rates)
    cpu = statistics.median(c for _, c in results) / (len(data) / (1 << 30))
    print(
        f"  ingest           best {best:.2f} GB/s ({best / limit:.2f} of limit), "
        f"median {median:.2f} GB/s ({median / limit:.2f}) over {runs} runs"
    )
    print(f"  ingest CPU       {cpu:5.2f} CPU s/GiB ({cpu / total:.2f} of the stages' sum)")
    print(f"  full read        {gb / asyncio.run(read_back(data)):.2f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="blob size in MiB (256)")
    parser.add_argument("--runs", type=int, default=3, help="ingest runs per data kind (3)")
    args = parser.parse_args()
    size = args.mib << 20
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}")
    report("random", os.urandom(size), args.runs)
    report("text", text_corpus(size), args.runs)


if __name__ == "__main__":
    main()
