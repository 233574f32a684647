"""Helpers for the garbage-collection tests: building stores with old garbage, finding
indexes that name missing chunks, and moving a fake clock while tasks work."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import obstore

from castore import B3Digest, ObjectStoreBlobService
from castore._digest import EMPTY_DIGEST
from castore.objectstore._codec import decode_index
from castore.testing.clockstore import ClockStore, FakeClock

AVG = 1024  # tiny chunks: every blob has a few, and blobs share them


def pieces(n: int, seed: int = 0, size: int = 3000) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(n)]


def service(store: ClockStore) -> ObjectStoreBlobService:
    return ObjectStoreBlobService(store, avg_chunk_size=AVG, timeout=None)


def dangling(store: ClockStore) -> list[tuple[str, str]]:
    """``(index key, missing chunk key)`` for every index naming a chunk that is gone
    (read straight from the memory store, past barriers and faults)."""
    mem = store.stamped.store
    out: list[tuple[str, str]] = []
    keys = {m["path"] for page in obstore.list(mem, "chunks") for m in page}
    for page in obstore.list(mem, "blobs"):
        for meta in page:
            key = meta["path"]
            name = key.rsplit("/", 1)[1]
            raw = obstore.get(mem, key).bytes()
            chunks = [c.digest.hex() for c in decode_index(raw, 1 << 30)]
            if not chunks and name != EMPTY_DIGEST.hex():
                chunks = [name]
            for h in chunks:
                ck = f"chunks/b3/{h[:4]}/{h}"
                if ck not in keys:
                    out.append((key, ck))
    return out


def index_exists(store: ClockStore, digest: B3Digest) -> bool:
    h = digest.hex()
    return store.stamped.head(f"blobs/b3/{h[:4]}/{h}") is not None


def chunk_keys(store: ClockStore) -> set[str]:
    mem = store.stamped.store
    return {m["path"] for page in obstore.list(mem, "chunks") for m in page}


async def drop(svc: ObjectStoreBlobService, digest: B3Digest) -> None:
    """Delete a blob's index (what ``delete`` does on the object store)."""
    h = digest.hex()
    await svc.adapter.delete_async([f"blobs/b3/{h[:4]}/{h}"])


async def run_until(
    clock: FakeClock, done: Callable[[], bool], *, step: float = 0.5, limit: int = 4000
) -> None:
    """Advance the clock by ``step`` between turns of the loop until ``done()``."""
    for _ in range(limit):
        if done():
            return
        for _ in range(5):
            await asyncio.sleep(0)
        if done():
            return
        clock.advance(step)
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never came true")


def with_chunk_size(url: str, avg: int = AVG) -> str:
    """``url`` with a tiny average chunk size, so that blobs share chunks."""
    return f"{url}{'&' if '?' in url else '?'}avg_chunk_size={avg}"


def writer_main(url: str, seed: int, seconds: float, out: str) -> None:
    """A writer process: for ``seconds``, put blobs made of a small pool of pieces (so that
    they reuse each other's chunks, and chunks that garbage collection condemned), and
    delete some of them again. Writes one JSON line per finished operation to ``out``
    at the end:
    ``{"op": "put", "hex": …, "seed": n, "ok": bool, "error": …}`` or
    ``{"op": "delete", "hex": …}``. Blob ``n``'s bytes are :func:`blob_bytes` (n)."""
    import json
    import time

    from castore.errors import GcConflictError
    from castore.registry import from_addr

    async def go() -> list[str]:
        rng = random.Random(seed)
        svc = from_addr(url)
        deadline = time.monotonic() + seconds
        ours: list[str] = []
        lines: list[str] = []
        n = 0
        while time.monotonic() < deadline:
            n += 1
            if ours and rng.random() < 0.3:
                h = ours.pop(rng.randrange(len(ours)))
                await svc.delete(B3Digest.from_hex(h))
                lines.append(json.dumps({"op": "delete", "hex": h}))
                continue
            blob_seed = seed * 1_000_000 + n
            data = blob_bytes(blob_seed)
            record: dict[str, object] = {"op": "put", "seed": blob_seed}
            try:
                digest = await svc.put(data)
                record |= {"hex": digest.hex(), "ok": True}
                ours.append(digest.hex())
            except GcConflictError as e:
                record |= {"hex": B3Digest.of(data).hex(), "ok": False, "error": str(e)}
            lines.append(json.dumps(record))
            await asyncio.sleep(rng.random() * 0.05)
        await svc.aclose()
        return lines

    lines = asyncio.run(go())
    with open(out, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


#: The pieces every writer process builds its blobs of.
POOL = pieces(6, seed=7, size=2500)


def blob_bytes(blob_seed: int) -> bytes:
    """Blob ``blob_seed`` of the writer processes: one to three pieces of :data:`POOL`."""
    rng = random.Random(blob_seed)
    return b"".join(rng.choice(POOL) for _ in range(rng.randint(1, 3)))


def collector_main(url: str, lease: float, batch: int, margin: float) -> None:
    """A collector process that stops after its first delete batch of a sweep: it prints
    ``SWEEPING`` and sleeps, so that a test can kill it there. ``batch`` chunks are
    deleted per batch and a successor may take over ``margin`` seconds after the lease."""
    import sys
    import time

    from castore import ObjectStoreBlobService
    from castore.objectstore import _gc
    from castore.registry import from_addr

    _gc._BATCH = batch
    _gc.MIN_TAKEOVER_MARGIN = margin

    def progress(phase: str, done: int, total: int | None) -> None:
        if phase.startswith("sweeping"):
            print(f"SWEEPING {done}/{total}", flush=True)
            time.sleep(600)  # blocks the loop on purpose: the test kills this process

    async def go() -> None:
        svc = from_addr(url)
        assert isinstance(svc, ObjectStoreBlobService)
        await svc.collect_garbage(grace=_gc.MIN_GRACE, min_age=0, lease=lease, progress=progress)
        print("FINISHED", flush=True)

    asyncio.run(go())
    sys.exit(0)
