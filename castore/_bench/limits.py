"""The per-stage CPU limit: what each stage of ingest and read costs on its own.

Each stage runs as a plain single-threaded loop over the whole data set, timed with
``time.process_time()`` (CPU of the whole process, so work a library hands to a helper
thread, such as obstore's runtime, is counted too). Each loop is repeated and the
cheapest run kept, as the benchmark does for castore itself. The stages are the ones
castore's writer runs, with castore's parameters:

- FastCDC 2020 (pyfastcdc, average 256 KiB, minimum half, maximum twice, normalization 1)
  over the whole data set;
- BLAKE3 of each chunk (one thread per hash, as castore hashes);
- zstd level 3 of each chunk, one ``compress`` call each;
- BLAKE3 of the whole blob;
- ``obstore.put`` of each compressed chunk into a fresh ``MemoryStore`` (``mode="create"``,
  as castore writes chunks).

The read side: ``obstore.get`` of each chunk from that store, zstd decompression, and
BLAKE3 of each decompressed chunk (verification).

The limit is the sum of a side's stages divided by the cores: what the machine would do
with the stages perfectly overlapped and no overhead at all. Copies, allocation of
buffers between stages and the event loop are castore's overhead, not part of it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import blake3
import obstore
import zstandard
from obstore.store import MemoryStore
from pyfastcdc import FastCDC

__all__ = ["GIB", "Limits", "measure_limits"]

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
    zstd: float
    blob_b3: float
    put: float
    get: float
    unzstd: float
    verify_b3: float

    @property
    def write_cpu(self) -> float:
        """CPU s/GiB of all write stages."""
        return self.cdc + self.chunk_b3 + self.zstd + self.blob_b3 + self.put

    @property
    def read_cpu(self) -> float:
        """CPU s/GiB of all read stages (get, decompress, verify each chunk)."""
        return self.get + self.unzstd + self.verify_b3

    def write_limit(self, cores: int) -> float:
        """Ingest MiB/s with the write stages perfectly overlapped on ``cores``."""
        return cores / self.write_cpu * 1024

    def read_limit(self, cores: int) -> float:
        """Read MiB/s with the read stages perfectly overlapped on ``cores``."""
        return cores / self.read_cpu * 1024


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


def measure_limits(name: str, data: bytes, repeat: int = 3) -> Limits:
    """Measure every stage on ``data`` (see the module docstring)."""
    gib = len(data) / GIB
    mv = memoryview(data)
    cdc = FastCDC(AVG, min_size=AVG // 2, max_size=AVG * 2, normalized_chunking=1, seed=0)

    spans, t_cdc = _timed(lambda: [(c.offset, c.length) for c in cdc.cut_buf(data)], gib, repeat)
    digests, t_b3 = _timed(
        lambda: [blake3.blake3(mv[o : o + n], max_threads=1).digest() for o, n in spans],
        gib,
        repeat,
    )
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    frames, t_zstd = _timed(lambda: [cctx.compress(mv[o : o + n]) for o, n in spans], gib, repeat)
    _, t_blob = _timed(lambda: blake3.blake3(data, max_threads=1).digest(), gib, repeat)

    # Repeats of a chunk (none, in these data sets) are stored once, as castore does.
    unique: dict[bytes, int] = {}
    for i, d in enumerate(digests):
        unique.setdefault(d, i)
    keys = [(_chunk_key(d), frames[i]) for d, i in unique.items()]

    def put() -> MemoryStore:
        store = MemoryStore()
        for key, frame in keys:
            obstore.put(store, key, frame, mode="create", use_multipart=False)
        return store

    store, t_put = _timed(put, gib, repeat)
    del frames

    fetched, t_get = _timed(lambda: [obstore.get(store, k).bytes() for k, _ in keys], gib, repeat)
    dctx = zstandard.ZstdDecompressor()
    plain, t_unzstd = _timed(lambda: [dctx.decompress(memoryview(f)) for f in fetched], gib, repeat)
    _, t_verify = _timed(
        lambda: [blake3.blake3(p, max_threads=1).digest() for p in plain], gib, repeat
    )
    compressed = sum(len(f) for f in fetched)
    # Only unique chunks were stored and read back; scale the read stages to all chunks
    # so that both sides are per GiB of the blob (identical when nothing repeats).
    scale = len(data) / max(1, sum(len(p) for p in plain))
    return Limits(
        dataset=name,
        size=len(data),
        chunks=len(spans),
        unique_chunks=len(unique),
        compressed=compressed,
        cdc=t_cdc,
        chunk_b3=t_b3,
        zstd=t_zstd,
        blob_b3=t_blob,
        put=t_put,
        get=t_get * scale,
        unzstd=t_unzstd * scale,
        verify_b3=t_verify * scale,
    )
