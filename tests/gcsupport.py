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
