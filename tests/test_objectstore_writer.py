"""The writer pipeline: store faults, cancellation, garbage collection, bounded memory.

Faults and slowness are injected with small :class:`StoreAdapter` subclasses, the seam
the service offers for wrappers, over real obstore memory stores.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from helpers import index_keys
from obstore.store import LocalStore, MemoryStore

from castore import B3Digest, ObjectStoreBlobService
from castore._threads import usable_cpus
from castore.errors import StoreError, WriteAbortedError
from castore.objectstore import DEFAULT_AVG_CHUNK_SIZE, ObstoreAdapter, PipelineConfig
from castore.objectstore._chunker import make_fastcdc
from castore.objectstore._writer import PUT_THREADS_PER_CPU
from castore.testing.conformance import pseudo_random_bytes

if TYPE_CHECKING:
    from typing_extensions import Buffer

SMALL_SEGMENTS = PipelineConfig(segment=1 << 20, piece=256 << 10)
DATA = pseudo_random_bytes(6_000_000, seed=21)


class FaultyAdapter(ObstoreAdapter):
    """Fails the ``fail_at``-th chunk put (1-based), or the index put; counts the rest."""

    def __init__(
        self,
        store: MemoryStore,
        *,
        in_process: bool,
        fail_at: int | None = None,
        overlap_puts: bool = False,
    ) -> None:
        super().__init__(store)
        self.in_process = in_process
        self.overlap_puts = overlap_puts
        self.fail_at = fail_at
        self.fail_index = False
        self.chunk_puts = 0
        self._lock = threading.Lock()

    def _tick(self, key: str) -> None:
        with self._lock:
            self.chunk_puts += 1
            if self.chunk_puts == self.fail_at:
                raise StoreError(f"injected fault storing {key}")

    def put_new(self, key: str, data: Buffer) -> bool:
        self._tick(key)
        return super().put_new(key, data)

    async def put_new_async(self, key: str, data: Buffer) -> bool:
        self._tick(key)
        return await super().put_new_async(key, data)

    async def put_async(self, key: str, data: Buffer) -> None:
        if self.fail_index:
            raise StoreError(f"injected fault storing {key}")
        await super().put_async(key, data)


class SlowAdapter(ObstoreAdapter):
    """Every chunk put takes ``delay`` seconds: the pipeline backs up."""

    def __init__(self, store: MemoryStore, delay: float, *, in_process: bool = True) -> None:
        super().__init__(store)
        self.in_process = in_process
        self.delay = delay
        self.chunk_puts = 0

    def put_new(self, key: str, data: Buffer) -> bool:
        time.sleep(self.delay)
        self.chunk_puts += 1
        return super().put_new(key, data)

    async def put_new_async(self, key: str, data: Buffer) -> bool:
        await asyncio.sleep(self.delay)
        self.chunk_puts += 1
        return await super().put_new_async(key, data)


def _pending_writer_tasks() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name() == "castore-objectstore-writer" and not t.done()
    ]


async def _no_pending_writer_tasks() -> None:
    with anyio.fail_after(5):
        while _pending_writer_tasks():  # noqa: ASYNC110 - polling state no event announces
            await anyio.sleep(0.01)


@pytest.fixture(scope="module")
def unique_64mib() -> bytes:
    return pseudo_random_bytes(64 << 20, seed=4)


# --- store faults ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_process", "pooled"),
    [(True, False), (False, False), (True, True)],
    ids=["sync-puts", "async-puts", "pooled-puts"],
)
@pytest.mark.parametrize("which", ["first", "middle", "last"])
async def test_chunk_put_fault(in_process: bool, pooled: bool, which: str) -> None:
    n = len(list(make_fastcdc(DEFAULT_AVG_CHUNK_SIZE).cut_buf(DATA)))
    assert n > 10
    fail_at = {"first": 1, "middle": n // 2, "last": n}[which]
    store = MemoryStore()
    adapter = FaultyAdapter(store, in_process=in_process, fail_at=fail_at, overlap_puts=pooled)
    svc = ObjectStoreBlobService(adapter, pipeline=SMALL_SEGMENTS)
    writer = await svc.open_write()
    with pytest.raises(StoreError, match="injected fault"):
        for i in range(0, len(DATA), 300_000):
            await writer.write(DATA[i : i + 300_000])
        await writer.close()
    # The same error again from close(); nothing is indexed; the blob is absent.
    with pytest.raises(StoreError, match="injected fault"):
        await writer.close()
    assert index_keys(store) == []
    assert not await svc.has(B3Digest.of(DATA))
    await _no_pending_writer_tasks()
    # The store recovers: the same bytes go in, reusing the chunks already there.
    assert await svc.put(DATA) == B3Digest.of(DATA)
    assert await svc.get(B3Digest.of(DATA)) == DATA
    await svc.aclose()


@pytest.mark.parametrize("in_process", [True, False], ids=["sync-puts", "async-puts"])
async def test_index_put_fault(in_process: bool) -> None:
    store = MemoryStore()
    adapter = FaultyAdapter(store, in_process=in_process)
    adapter.fail_index = True
    svc = ObjectStoreBlobService(adapter)
    with pytest.raises(StoreError, match="injected fault storing blobs/"):
        await svc.put(DATA)
    assert index_keys(store) == []
    adapter.fail_index = False
    assert await svc.get(B3Digest.of(DATA)) is None
    assert await svc.put(DATA) == B3Digest.of(DATA)
    assert await svc.get(B3Digest.of(DATA)) == DATA


async def test_fault_surfaces_on_write() -> None:
    """Once the pipeline has failed, write() raises the store error instead of waiting."""
    store = MemoryStore()
    adapter = FaultyAdapter(store, in_process=True, fail_at=1)
    svc = ObjectStoreBlobService(adapter, pipeline=SMALL_SEGMENTS)
    writer = await svc.open_write()
    piece = pseudo_random_bytes(1 << 20, seed=3)
    with pytest.raises(StoreError, match="injected fault"):
        for _ in range(200):  # far more than the pipeline buffers
            await writer.write(piece)
    assert index_keys(store) == []


# --- cancellation and garbage collection ---------------------------------------------


@pytest.mark.parametrize("in_process", [True, False], ids=["sync-puts", "async-puts"])
async def test_cancelled_write(in_process: bool, unique_64mib: bytes) -> None:
    store = MemoryStore()
    adapter = SlowAdapter(store, 0.02, in_process=in_process)
    svc = ObjectStoreBlobService(adapter, pipeline=SMALL_SEGMENTS)
    writer = await svc.open_write()
    data = unique_64mib  # no repeats: every chunk is a slow put
    with anyio.move_on_after(0.3) as scope:
        for i in range(0, len(data), 1 << 20):
            await writer.write(data[i : i + (1 << 20)])
    assert scope.cancelled_caught, "backpressure should have held the writer back"
    with pytest.raises(WriteAbortedError):
        await writer.close()
    await _no_pending_writer_tasks()
    # Nothing is stored afterwards: running jobs noticed the abort.
    settled = adapter.chunk_puts
    await anyio.sleep(0.2)
    assert adapter.chunk_puts == settled
    assert index_keys(store) == []
    await svc.aclose()


async def test_cancelled_close() -> None:
    store = MemoryStore()
    adapter = SlowAdapter(store, 0.05)
    svc = ObjectStoreBlobService(adapter, pipeline=SMALL_SEGMENTS)
    writer = await svc.open_write()
    await writer.write(pseudo_random_bytes(3 << 20, seed=5))
    with anyio.move_on_after(0.1) as scope:
        await writer.close()
    assert scope.cancelled_caught
    await _no_pending_writer_tasks()
    assert index_keys(store) == []
    with pytest.raises(WriteAbortedError):
        await writer.close()


async def test_exception_in_async_with_leaves_nothing_running() -> None:
    store = MemoryStore()
    svc = ObjectStoreBlobService(SlowAdapter(store, 0.02), pipeline=SMALL_SEGMENTS)
    with pytest.raises(KeyError):
        async with await svc.open_write() as writer:
            await writer.write(pseudo_random_bytes(4 << 20, seed=6))
            raise KeyError("boom")
    await _no_pending_writer_tasks()
    assert index_keys(store) == []


async def test_garbage_collected_writer() -> None:
    store = MemoryStore()
    adapter = SlowAdapter(store, 0.02)
    svc = ObjectStoreBlobService(adapter, pipeline=SMALL_SEGMENTS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer = await svc.open_write()
        await writer.write(pseudo_random_bytes(4 << 20, seed=7))
        assert _pending_writer_tasks()
        del writer
        gc.collect()
        await _no_pending_writer_tasks()
        await anyio.sleep(0.1)
        gc.collect()
    assert [str(w.message) for w in caught] == []
    settled = adapter.chunk_puts
    await anyio.sleep(0.2)
    assert adapter.chunk_puts == settled
    assert index_keys(store) == []


@pytest.mark.parametrize("where", ["memory", "local disk"])
async def test_writer_threads_end_with_the_service(where: str, tmp_path: Path) -> None:
    def writer_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("castore-writer")}

    before = writer_threads()
    store = MemoryStore() if where == "memory" else LocalStore(tmp_path)
    svc = ObjectStoreBlobService(store, pipeline=SMALL_SEGMENTS)
    assert svc.adapter.overlap_puts == (where == "local disk")
    assert await svc.put(DATA) == B3Digest.of(DATA)
    assert await svc.get(B3Digest.of(DATA)) == DATA
    ours = writer_threads() - before
    # A worker a CPU; on local disk also the put pool's threads.
    cpus = usable_cpus()
    assert 1 <= len(ours) <= (cpus if where == "memory" else cpus * (1 + PUT_THREADS_PER_CPU))
    await svc.aclose()
    with anyio.fail_after(5):
        while any(t.is_alive() for t in ours):  # noqa: ASYNC110 - threads, not tasks
            await anyio.sleep(0.01)


# --- bounded memory --------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from castore import ObjectStoreBlobService
    from castore.objectstore import StoreAdapter
    from obstore.store import MemoryStore

    class Discard(StoreAdapter):
        def __init__(self, in_process):
            self.in_process = in_process
        def get(self, key):
            return None
        async def get_async(self, key):
            return None
        def exists(self, key):
            return False
        async def exists_async(self, key):
            return False
        def put_new(self, key, data):
            return True
        async def put_new_async(self, key, data):
            return True
        async def put_async(self, key, data):
            pass

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    async def main(mode, total):
        if mode == "zeros-memory":
            svc = ObjectStoreBlobService(MemoryStore())
            block = bytes(8 << 20)
        else:
            svc = ObjectStoreBlobService(Discard(mode == "random-sync"))
            block = os.urandom(8 << 20)
        piece = 1 << 20
        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        writer = await svc.open_write()
        for i in range(total // piece):
            off = (i * 4099) % (len(block) - piece)
            await writer.write(block[off : off + piece])
        await writer.close()
        print(json.dumps({"base": base, "peak": status("VmHWM")}))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


@pytest.mark.parametrize(
    ("mode", "total"),
    [("random-sync", 1 << 30), ("random-async", 512 << 20), ("zeros-memory", 1 << 30)],
)
def test_memory_is_bounded(mode: str, total: int) -> None:
    """A streamed write grows the process by far less than the blob (VmHWM, in a child)."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc")
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, mode, str(total)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(out.stdout)
    growth = figures["peak"] - figures["base"]
    assert growth < 200 << 20, f"{mode}: peak RSS grew by {growth >> 20} MiB"
