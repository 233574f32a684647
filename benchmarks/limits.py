"""The per-stage CPU limit: what each stage of ingest and read costs on its own.

Every stage is timed with ``time.process_time()`` (CPU of the whole process, so work a
library hands to a helper thread, such as obstore's runtime writing files, is counted
too), single-threaded, on the whole data set, with castore's parameters:

- FastCDC 2020 (pyfastcdc, average 256 KiB, minimum half, maximum twice, normalization 1),
  one ``cut_buf`` over the whole data set;
- BLAKE3 of the whole blob, one call;
- then one loop over the chunks that runs, for each chunk in turn and timed stage by
  stage: BLAKE3 of the chunk (one thread per hash, as castore hashes), zstd level 3 of
  the chunk (one ``compress`` call), and the put of the compressed chunk into an
  ``obstore`` ``MemoryStore`` (``mode="create"``, as castore writes chunks);
- a second loop compresses each chunk again and puts it into a ``LocalStore`` in a
  temporary folder. zstd is timed in both loops, because the memory store keeps every
  frame, so that each compression writes fresh memory (on these VMs first touch costs
  ~1 s/GiB), while frames written to disk are dropped and their memory reused;
- the read side, again one loop over the chunks: the get from each store (``obstore.get``
  from memory; from local disk a plain read of the chunk's file, as castore reads a
  local store: ``open``, ``fstat``, one ``read``), zstd
  decompression, BLAKE3 of the decompressed chunk (verification). The whole-blob BLAKE3
  counts on this side too: a reader checks it on every read of a whole blob in order.

Local disk: the folders written here (and by the ingest runs) are kept until the
benchmark ends. On an ext4 file system without a journal (such as these VMs'), the
kernel skips inodes freed in the last minutes when it allocates one, reading each one's
inode to tell, so that after deleting thousands of chunk files, creating a file costs
up to a millisecond of CPU instead of microseconds; a measurement right after another
one's ``rmtree`` would pay for it.

The loops handle one chunk at a time and drop what a pipeline would drop, so memory is
reused the way a streaming pipeline reuses it (on these VMs the first touch of fresh
memory costs as much as a stage). Each measurement is repeated and the cheapest kept, as
the benchmark does for castore itself.

The limit of a side (write or read) for a store is the sum of its stages, that store's
put or get included, divided by the usable cores: what the machine would do with the
stages perfectly overlapped and no overhead at all. Copies, allocation of buffers between
stages and the event loop are castore's overhead, not part of it.
"""

from __future__ import annotations

import gc
import os
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import blake3
import obstore
import zstandard
from obstore.store import LocalStore, MemoryStore
from pyfastcdc import FastCDC

__all__ = ["GIB", "STORES", "Limits", "measure_limits"]

GIB = float(1 << 30)
AVG = 256 << 10
ZSTD_LEVEL = 3

T = TypeVar("T")


@dataclass
class Limits:
    """CPU seconds per GiB of input for each stage, on one data set."""

    dataset: str
    size: int
    chunks: int
    unique_chunks: int
    compressed: int
    cdc: float
    chunk_b3: float
    zstd: dict[str, float]  # by store kind ("memory", "file"): see measure_limits
    blob_b3: float
    put: dict[str, float]
    get: dict[str, float]
    unzstd: float
    verify_b3: float

    def write_cpu(self, store: str) -> float:
        """CPU s/GiB of all write stages, with ``store``'s put."""
        return self.cdc + self.chunk_b3 + self.zstd[store] + self.blob_b3 + self.put[store]

    def read_cpu(self, store: str) -> float:
        """CPU s/GiB of all read stages (get from ``store``, decompress, verify the chunk,
        and the whole-blob BLAKE3 that an in-order read of a whole blob checks)."""
        return self.get[store] + self.unzstd + self.verify_b3 + self.blob_b3

    def write_limit(self, cores: int, store: str) -> float:
        """Ingest MiB/s with the write stages perfectly overlapped on ``cores``."""
        return cores / self.write_cpu(store) * 1024

    def read_limit(self, cores: int, store: str) -> float:
        """Read MiB/s with the read stages perfectly overlapped on ``cores``."""
        return cores / self.read_cpu(store) * 1024


def _timed(fn: Callable[[], T], gib: float, repeat: int) -> tuple[T, float]:
    """Run ``fn`` ``repeat`` times; its last result and the least CPU s/GiB taken."""
    best = float("inf")
    result: T | None = None
    for _ in range(repeat):
        result = None  # let the previous result go before the next run allocates
        gc.collect()
        start = time.process_time()
        result = fn()
        best = min(best, (time.process_time() - start) / gib)
    assert result is not None
    return result, best


def _chunk_key(digest: bytes) -> str:
    h = digest.hex()
    return f"chunks/b3/{h[:4]}/{h}"


STORES = ("memory", "file")


def _read_local(folder: pathlib.Path, key: str) -> bytes:
    """A chunk's file in a local store's folder, read the way castore reads it."""
    fd = os.open(folder / key, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def measure_limits(name: str, data: bytes, work: pathlib.Path, repeat: int = 3) -> Limits:
    """Measure every stage on ``data`` (see the module docstring); files go under ``work``."""
    gib = len(data) / GIB
    mv = memoryview(data)
    cdc = FastCDC(AVG, min_size=AVG // 2, max_size=AVG * 2, normalized_chunking=1, seed=0)
    spans, t_cdc = _timed(lambda: [(c.offset, c.length) for c in cdc.cut_buf(data)], gib, repeat)
    _, t_blob = _timed(lambda: blake3.blake3(data, max_threads=1).digest(), gib, repeat)

    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    clock = time.process_time
    # Memory store: it keeps every frame, so each compression writes fresh memory.
    best_m = [float("inf")] * 3  # chunk BLAKE3, zstd, put
    memory = MemoryStore()
    keys: list[str] = []
    todo: list[tuple[int, int, str]] = []  # unique chunks: offset, length, key
    for _ in range(repeat):
        memory = MemoryStore()
        keys, todo = [], []
        seen: set[bytes] = set()
        acc = [0.0] * 3
        gc.collect()
        for o, n in spans:
            t0 = clock()
            d = blake3.blake3(mv[o : o + n], max_threads=1).digest()
            t1 = clock()
            acc[0] += t1 - t0
            if d in seen:  # a repeat within the data set is stored once, as castore does
                continue
            seen.add(d)
            frame = cctx.compress(mv[o : o + n])
            t2 = clock()
            key = _chunk_key(d)
            obstore.put(memory, key, frame, mode="create", use_multipart=False)
            t3 = clock()
            acc[1] += t2 - t1
            acc[2] += t3 - t2
            keys.append(key)
            todo.append((o, n, key))
        best_m = [min(b, a / gib) for b, a in zip(best_m, acc, strict=True)]

    # Local disk: each frame is dropped once written, so its memory is reused.
    best_f = [float("inf")] * 2  # zstd, put
    local: LocalStore | None = None
    for k in range(repeat):
        folder = work / f"limits-{name}-{k}"
        folder.mkdir(parents=True)
        # Start with no dirty pages from earlier writes: the kernel's writeback of a
        # backlog makes file writes several times dearer, and varies from run to run.
        os.sync()
        local = LocalStore(folder)
        acc = [0.0] * 2
        gc.collect()
        for o, n, key in todo:
            t0 = clock()
            frame = cctx.compress(mv[o : o + n])
            t1 = clock()
            obstore.put(local, key, frame, mode="create", use_multipart=False)
            t2 = clock()
            acc[0] += t1 - t0
            acc[1] += t2 - t1
            del frame
        best_f = [min(b, a / gib) for b, a in zip(best_f, acc, strict=True)]
    assert local is not None

    dctx = zstandard.ZstdDecompressor()
    best_r = [float("inf")] * 4  # get memory, get file, decompress, verify
    compressed = plain_total = 0
    for _ in range(repeat):
        acc = [0.0] * 4
        compressed = plain_total = 0
        gc.collect()
        for key in keys:
            t0 = clock()
            frame_m = obstore.get(memory, key).bytes()
            t1 = clock()
            frame_f = _read_local(folder, key)
            t2 = clock()
            plain = dctx.decompress(memoryview(frame_m))
            t3 = clock()
            blake3.blake3(plain, max_threads=1).digest()
            t4 = clock()
            acc[0] += t1 - t0
            acc[1] += t2 - t1
            acc[2] += t3 - t2
            acc[3] += t4 - t3
            compressed += len(memoryview(frame_f))
            plain_total += len(plain)
            del frame_m, frame_f, plain
        best_r = [min(b, a / gib) for b, a in zip(best_r, acc, strict=True)]
    # Only unique chunks were stored and read back; scale the read stages to all chunks
    # so that both sides are per GiB of the blob (identical when nothing repeats).
    scale = len(data) / max(1, plain_total)
    return Limits(
        dataset=name,
        size=len(data),
        chunks=len(spans),
        unique_chunks=len(keys),
        compressed=compressed,
        cdc=t_cdc,
        chunk_b3=best_m[0],
        zstd={"memory": best_m[1], "file": best_f[0]},
        blob_b3=t_blob,
        put={"memory": best_m[2], "file": best_f[1]},
        get={"memory": best_r[0] * scale, "file": best_r[1] * scale},
        unzstd=best_r[2] * scale,
        verify_b3=best_r[3] * scale,
    )
