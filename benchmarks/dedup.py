"""Dedup: ten edited versions of one file (:func:`benchmarks.data.versions`) in castore.

Every version is written through the public API into one ``objectstore+file://`` store.
Stored bytes are the sizes of all objects in the store's folder (compressed chunks and
blob indexes); unique chunk bytes are the uncompressed sizes of the distinct chunks the
versions' indexes list. Both are set against the bytes written (the sum of the versions'
sizes).
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from castore import B3Digest, from_addr

__all__ = ["DedupResult", "measure_dedup"]


@dataclass
class DedupResult:
    """What the versions set cost castore."""

    versions: int
    written: int
    stored: int
    unique_chunk_bytes: int
    chunks: int
    unique_chunks: int
    seconds: float

    @property
    def ratio(self) -> float:
        """Bytes written per byte stored."""
        return self.written / self.stored

    @property
    def unique_ratio(self) -> float:
        """Bytes written per byte of distinct chunks, uncompressed."""
        return self.written / self.unique_chunk_bytes


async def _run(
    url: str, versions: Sequence[bytes], piece: int
) -> tuple[float, int, dict[bytes, int]]:
    svc = from_addr(url)
    digests: list[B3Digest] = []
    t0 = time.perf_counter()
    try:
        for data in versions:
            writer = await svc.open_write()
            for i in range(0, len(data), piece):
                await writer.write(data[i : i + piece])
            digests.append(await writer.close())
        seconds = time.perf_counter() - t0
        sizes: dict[bytes, int] = {}
        total_chunks = 0
        for digest, data in zip(digests, versions, strict=True):
            metas = await svc.chunks(digest)
            if metas is None:
                raise RuntimeError(f"version {digest} is not in the store")
            if not metas:  # stored as one chunk
                sizes[digest.digest] = len(data)
                total_chunks += 1
            for m in metas:
                sizes[m.digest.digest] = m.size
                total_chunks += 1
    finally:
        await svc.aclose()
    return seconds, total_chunks, sizes


def measure_dedup(folder: pathlib.Path, versions: Sequence[bytes], piece: int) -> DedupResult:
    """Write ``versions`` into a castore store in ``folder`` (empty or missing)."""
    url = "objectstore+" + folder.resolve().as_uri()
    seconds, total_chunks, sizes = asyncio.run(_run(url, versions, piece))
    return DedupResult(
        versions=len(versions),
        written=sum(len(v) for v in versions),
        stored=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        unique_chunk_bytes=sum(sizes.values()),
        chunks=total_chunks,
        unique_chunks=len(sizes),
        seconds=seconds,
    )
