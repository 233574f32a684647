"""The off-loop helper: CPU count from the affinity mask, pools sized from it, and work
that runs in a worker thread only from its threshold on."""

from __future__ import annotations

import os
import threading

import blake3
import pytest

from castore._threads import (
    THRESHOLDS,
    BatchHasher,
    cpu_pool,
    hash_update,
    run_sized,
    usable_cpus,
)


def test_usable_cpus_follows_the_affinity_mask() -> None:
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_usable_cpus_falls_back_without_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(pid: int) -> set[int]:
        raise OSError("not allowed")

    monkeypatch.setattr(os, "sched_getaffinity", refused)
    assert usable_cpus() == max(1, os.cpu_count() or 1)


def test_cpu_pool_is_sized_per_cpu() -> None:
    pool = cpu_pool("castore-test", per_cpu=3)
    go = threading.Event()

    def job() -> str:
        go.wait(10)
        return threading.current_thread().name

    try:
        # Every job blocks until all are queued, so the pool starts all its threads.
        futures = [pool.submit(job) for _ in range(3 * usable_cpus() + 2)]
        go.set()
        names = {f.result() for f in futures}
    finally:
        pool.shutdown()
    assert len(names) == 3 * usable_cpus()
    assert all(n.startswith("castore-test") for n in names)


async def test_run_sized_leaves_the_loop_from_the_threshold_on() -> None:
    def where() -> threading.Thread:
        return threading.current_thread()

    loop_thread = threading.current_thread()
    assert await run_sized(9, 10, where) is loop_thread
    assert await run_sized(10, 10, where) is not loop_thread


async def test_hash_update_hashes_small_and_large_inputs() -> None:
    for size in (1, THRESHOLDS.hash - 1, THRESHOLDS.hash, 3 * THRESHOLDS.hash):
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        hasher = blake3.blake3()
        await hash_update(hasher, data)
        await hash_update(hasher, memoryview(data))
        assert hasher.digest() == blake3.blake3(data + data).digest()


@pytest.mark.parametrize(
    "sizes", [[], [5], [3000] * 7, [1 << 20] * 9 + [17], [4 << 20, 1, 4 << 20]]
)
async def test_batch_hasher_hashes_in_order(sizes: list[int]) -> None:
    pieces = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    hasher = BatchHasher(batch=2 << 20)
    for piece in pieces:
        await hasher.add(memoryview(piece) if len(piece) % 2 else piece)
    assert await hasher.digest() == blake3.blake3(b"".join(pieces)).digest()


async def test_batch_hasher_survives_a_cancelled_wait() -> None:
    # A cancelled add() leaves the batch being hashed in place: the digest still covers
    # every piece once, in order.
    import anyio

    pieces = [bytes([i]) * (1 << 20) for i in range(12)]
    hasher = BatchHasher(batch=1 << 20)
    for piece in pieces:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await hasher.add(piece)
    assert await hasher.digest() == blake3.blake3(b"".join(pieces)).digest()


async def test_batch_hasher_owns_views_it_is_given() -> None:
    # own=True: views come back as bytes of their own, bytes as themselves, in order.
    source = bytes(range(256)) * 8192
    pieces: list[bytes | memoryview] = []
    for i in range(40):
        piece = source[i * 50_000 : (i + 1) * 50_000]
        pieces.append(piece if i % 3 else memoryview(source)[i * 50_000 : (i + 1) * 50_000])
    hasher = BatchHasher(batch=300_000, own=True)
    for given in pieces:
        await hasher.add(given)
    assert await hasher.digest() == blake3.blake3(source[: 40 * 50_000]).digest()
    assert len(hasher.pieces) == len(pieces)
    for given, kept in zip(pieces, hasher.pieces, strict=True):
        assert type(kept) is bytes and kept == bytes(given)
        if type(given) is bytes:
            assert kept is given
