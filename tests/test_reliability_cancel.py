"""Cancellation at every await point of a writer and of a reader.

Each operation (a whole write, a read with seeks) runs as its own task, which is
cancelled after ``k`` turns of the event loop, for every ``k`` from 0 until the operation
finishes on its own. After each cancellation: no task is left, no thread is left once
the service is closed, no index names a blob whose write was cancelled (unless the
cancel came after the index was stored, when the blob must read back whole), and the
same service goes on working.

The innermost castore line each cancellation landed on is collected and printed (with
``-s``): the "await points reached" of ``docs/reliability.md``.
``CASTORE_STRESS=N`` repeats every sweep N times with different pieces and seeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import obstore
import pytest
from helpers import index_keys, write_in_pieces
from obstore.store import MemoryStore

from castore import B3Digest, BlobService, ObjectStoreBlobService
from castore.grpc import RunningServer, serve
from castore.objectstore import PipelineConfig
from castore.registry import from_addr
from castore.testing.conformance import pseudo_random_bytes
from castore.testing.faults import FaultyStore

STRESS = max(1, int(os.environ.get("CASTORE_STRESS", "1")))
AVG = 16 * 1024
# Small segments and pieces: a 320 KB blob of about 20 chunks crosses several segments.
PIPELINE = PipelineConfig(segment=64 << 10, piece=32 << 10, coalesce=4 << 10, uploads=4)
DATA = pseudo_random_bytes(200_000, seed=61) + pseudo_random_bytes(40_000, seed=62) * 3
DIGEST = B3Digest.of(DATA)
SITES: dict[str, set[str]] = {}


def _cancel_site(exc: BaseException) -> str | None:
    """The innermost ``castore/`` source line in the cancellation's traceback."""
    site = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if "/castore/" in frame.filename and "/castore/testing/" not in frame.filename:
            site = f"{frame.filename.rsplit('/castore/', 1)[1]}:{frame.lineno}"
    return site


async def _cancel_after(k: int, op: Callable[[], Awaitable[object]]) -> tuple[bool, str | None]:
    """Run ``op`` as a task and cancel it after ``k`` loop turns: (cancelled, where)."""
    task = asyncio.ensure_future(op())
    for _ in range(k):
        if task.done():
            break
        await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError as e:
        return True, _cancel_site(e)
    return False, None


# Process-wide pools, bounded by design: anyio's worker threads (idle ones stay up to
# 10 s) and the readers' CPU pool.
_POOLS = ("AnyIO worker thread", "castore-reader")
# grpc.aio's poller thread, which castore keeps for the life of the process (docs/grpc.md).
_GRPC_POLLER = "(_poll_wrapper)"


def _threads() -> set[threading.Thread]:
    """Live threads, less the process-wide pools."""
    return {
        t
        for t in threading.enumerate()
        if t.is_alive() and not t.name.startswith(_POOLS) and not t.name.endswith(_GRPC_POLLER)
    }


# grpc.aio's server always keeps one task waiting for the next call, and starts a new one
# for each call it accepts: it is the server's, not left behind by a call.
_SERVER_ACCEPT = "AioServer._request_call"


def _live_tasks() -> set[asyncio.Task[object]]:
    return {
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "") != _SERVER_ACCEPT
    }


async def _no_task_left(baseline: set[asyncio.Task[object]], what: str) -> None:
    me = asyncio.current_task()
    left: set[asyncio.Task[object]] = set()
    with anyio.move_on_after(5):
        while left := _live_tasks() - baseline - {me}:  # noqa: ASYNC110
            await anyio.sleep(0.005)
    assert not left, f"{what}: tasks left after cancellation: {left}"


async def _no_thread_left(baseline: set[threading.Thread], what: str) -> None:
    with anyio.move_on_after(5):
        while _threads() - baseline:  # noqa: ASYNC110 - threads have no event to wait on
            await anyio.sleep(0.01)
    assert not _threads() - baseline, f"{what}: threads left: {_threads() - baseline}"


async def _read(svc: BlobService, digest: B3Digest, seed: int, seeks: int = 3) -> None:
    rng = random.Random(seed)
    reader = await svc.open_read(digest)
    assert reader is not None
    async with reader:
        for _ in range(seeks):
            pos = rng.randrange(len(DATA))
            await reader.seek(pos)
            assert await reader.read(70_000) == DATA[pos : pos + 70_000]
        await reader.seek(0)
        assert await reader.read() == DATA


def _record(kind: str, site: str | None) -> None:
    if site is not None:
        SITES.setdefault(kind, set()).add(site)


@pytest.mark.parametrize("in_process", [True, False], ids=["sync-puts", "async-puts"])
async def test_cancel_a_write_at_every_point(in_process: bool) -> None:
    kind = f"objectstore writer ({'sync' if in_process else 'async'} puts)"
    threads = _threads()
    tasks = set(asyncio.all_tasks())
    cases = cancelled = committed = 0
    for round_ in range(STRESS):
        piece = [10_000, 33_000, 7_000, 100_000][round_ % 4]
        k = 0
        while True:
            store = MemoryStore()
            adapter = FaultyStore(store, in_process=in_process)
            svc = ObjectStoreBlobService(adapter, avg_chunk_size=AVG, pipeline=PIPELINE)
            was_cancelled, site = await _cancel_after(
                k, lambda s=svc, p=piece: write_in_pieces(s, DATA, p)
            )
            cases += 1
            await _no_task_left(tasks, f"{kind}, k={k}")
            if was_cancelled:
                cancelled += 1
                _record(kind, site)
                if index_keys(store):
                    # Cancelled after the index was stored: the blob is there, whole.
                    committed += 1
                    assert await svc.get(DIGEST) == DATA
                else:
                    assert not await svc.has(DIGEST)
            # The service goes on working.
            assert await write_in_pieces(svc, DATA, piece) == DIGEST
            assert await svc.get(DIGEST) == DATA
            await svc.aclose()
            if not was_cancelled:
                break
            k += 1
    await _no_thread_left(threads, kind)
    assert cancelled >= 10, "the sweep never reached the pipeline"
    print(
        f"\n{kind}: {cases} cases, {cancelled} cancelled ({committed} after the index was "
        f"stored), await points reached: {sorted(SITES.get(kind, ()))}"
    )


async def test_cancel_a_read_at_every_point() -> None:
    kind = "objectstore reader"
    store = MemoryStore()
    async with ObjectStoreBlobService(store, avg_chunk_size=AVG) as writer_svc:
        assert await writer_svc.put(DATA) == DIGEST
    threads = _threads()
    tasks = set(asyncio.all_tasks())
    cases = cancelled = 0
    for round_ in range(STRESS):
        k = 0
        while True:
            svc = ObjectStoreBlobService(store, avg_chunk_size=AVG, read_prefetch=3)
            was_cancelled, site = await _cancel_after(
                k, lambda s=svc, r=round_: _read(s, DIGEST, r)
            )
            cases += 1
            await _no_task_left(tasks, f"{kind}, k={k}")
            if was_cancelled:
                cancelled += 1
                _record(kind, site)
            assert await svc.get(DIGEST) == DATA
            await svc.aclose()
            if not was_cancelled:
                break
            k += 1
    await _no_thread_left(threads, kind)
    assert cancelled >= 10
    print(
        f"\n{kind}: {cases} cases, {cancelled} cancelled, "
        f"await points reached: {sorted(SITES.get(kind, ()))}"
    )


@contextlib.asynccontextmanager
async def _grpc_over(store: MemoryStore) -> AsyncIterator[tuple[BlobService, RunningServer]]:
    async with (
        ObjectStoreBlobService(store, avg_chunk_size=AVG) as backend,
        serve(backend) as running,
        from_addr(running.url) as client,
    ):
        yield client, running


async def _server_idle(running: RunningServer) -> None:
    with anyio.fail_after(5):
        while running.servicer.calls_in_flight:  # noqa: ASYNC110 - a counter, no event
            await anyio.sleep(0.005)


@pytest.mark.parametrize("what", ["write", "read"])
async def test_cancel_a_grpc_client_at_every_point(what: str) -> None:
    """The same through the gRPC client: the server sees every cancelled call end, a
    cancelled Put stores no index, and the client's connection keeps serving."""
    kind = f"gRPC client {what}"
    store = MemoryStore()
    threads = _threads()
    async with _grpc_over(store) as (client, running):
        if what == "read":
            assert await client.put(DATA) == DIGEST
        else:
            assert await client.put(b"warm the connection up") is not None
        tasks = set(asyncio.all_tasks())
        cases = cancelled = committed = 0
        for round_ in range(STRESS):
            k = 0
            while True:
                if what == "write":
                    for key in index_keys(store):
                        if DIGEST.hex() in key:
                            obstore.delete(store, key)
                    op: Callable[[], Awaitable[object]] = lambda: write_in_pieces(  # noqa: E731
                        client, DATA, 33_000
                    )
                else:
                    op = lambda r=round_: _read(client, DIGEST, r, 1)  # noqa: E731
                was_cancelled, site = await _cancel_after(k, op)
                cases += 1
                await _server_idle(running)
                await _no_task_left(tasks, f"{kind}, k={k}")
                if was_cancelled:
                    cancelled += 1
                    _record(kind, site)
                    if what == "write":
                        if any(DIGEST.hex() in key for key in index_keys(store)):
                            committed += 1
                            assert await client.get(DIGEST) == DATA
                        else:
                            assert not await client.has(DIGEST)
                if what == "write":
                    assert await write_in_pieces(client, DATA, 33_000) == DIGEST
                assert await client.get(DIGEST) == DATA
                if not was_cancelled:
                    break
                k += 1
    await _no_thread_left(threads, kind)
    assert cancelled >= 10
    print(
        f"\n{kind}: {cases} cases, {cancelled} cancelled ({committed} committed), "
        f"await points reached: {sorted(SITES.get(kind, ()))}"
    )
