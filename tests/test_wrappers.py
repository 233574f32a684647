"""The wrappers (retry, cache, stats, logging, the forwarding base): conformance and behaviour.

Faults come from :class:`castore.testing.faults.FaultyBlobService` and from ``_Failing``
below, a real service that raises a chosen error a chosen number of times.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import AsyncIterator

import pytest
from helpers import memory_objectstore

from castore import (
    B3Digest,
    BlobReader,
    BlobService,
    BlobWriter,
    ChunkMeta,
    MemoryBlobService,
)
from castore.errors import (
    BlobNotFoundError,
    DataCorruptionError,
    DigestMismatchError,
    InvalidDigestError,
    StoreError,
    StorePermissionError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from castore.testing.conformance import BlobServiceConformance, pseudo_random_bytes
from castore.testing.faults import Fault, FaultyBlobService, InjectedFault
from castore.testing.fixtures import BLOB_A, BLOB_A_DIGEST, BLOB_B, BLOB_B_DIGEST
from castore.wrappers import (
    CachingBlobService,
    LoggingBlobService,
    RetryBlobService,
    StatsBlobService,
    WrapperBlobService,
    is_transient,
)

# --- conformance -------------------------------------------------------------------------


class TestWrapperBase(BlobServiceConformance):
    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with WrapperBlobService(MemoryBlobService()) as svc:
            yield svc


class TestStats(BlobServiceConformance):
    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with StatsBlobService(MemoryBlobService()) as svc:
            yield svc


class TestLogging(BlobServiceConformance):
    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with LoggingBlobService(MemoryBlobService(), name="conformance") as svc:
            yield svc


class TestRetry(BlobServiceConformance):
    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with RetryBlobService(MemoryBlobService()) as svc:
            yield svc


class _ReadFaults(FaultyBlobService):
    """Faults for lookups and reads only; writes go straight to the inner service.

    Retries never apply to writer calls, and skipping the faulty writer layer keeps the
    suite's 5000 one-byte writes from holding the event loop on a loaded machine.
    """

    async def open_write(self) -> BlobWriter:
        return await self.inner.open_write()


class TestRetryOverFaults(BlobServiceConformance):
    """One lookup or read in five fails transiently; the suite must not notice."""

    large_blob_size = 16 * 1024 * 1024

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        faulty = _ReadFaults(MemoryBlobService(), seed=7)
        for op in ("has", "chunks", "open_read", "read"):
            faulty.plan(op, Fault.ERROR, rate=0.2)
        async with RetryBlobService(faulty, max_attempts=12, base_delay=0.0005) as svc:
            yield svc


class TestCache(BlobServiceConformance):
    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with CachingBlobService(MemoryBlobService(), max_bytes=4 << 20) as svc:
            yield svc


class TestCacheOverObjectStore(BlobServiceConformance):
    large_blob_size = 16 * 1024 * 1024

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with CachingBlobService(memory_objectstore(), max_bytes=4 << 20) as svc:
            yield svc


class TestRetryOverFaultyObjectStore(BlobServiceConformance):
    large_blob_size = 16 * 1024 * 1024

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        faulty = _ReadFaults(memory_objectstore(), seed=3)
        for op in ("has", "chunks", "open_read", "read"):
            faulty.plan(op, Fault.TIMEOUT, rate=0.15)
        async with RetryBlobService(faulty, max_attempts=12, base_delay=0.0005) as svc:
            yield svc


class TestAllWrappersStacked(BlobServiceConformance):
    large_blob_size = 16 * 1024 * 1024

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        inner: BlobService = MemoryBlobService()
        svc = LoggingBlobService(
            StatsBlobService(CachingBlobService(RetryBlobService(inner), max_bytes=2 << 20))
        )
        async with svc:
            yield svc


# --- a service that fails on purpose -----------------------------------------------------


class _Failing(WrapperBlobService):
    """Raises ``error`` on the first ``times`` lookups (has, chunks, open_read)."""

    def __init__(self, inner: BlobService, error: Exception, times: int) -> None:
        super().__init__(inner)
        self.error = error
        self.times = times
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error

    async def has(self, digest: B3Digest) -> bool:
        self._maybe_fail()
        return await super().has(digest)

    async def chunks(self, digest: B3Digest) -> list[ChunkMeta] | None:
        self._maybe_fail()
        return await super().chunks(digest)

    async def open_read(self, digest: B3Digest) -> BlobReader | None:
        self._maybe_fail()
        return await super().open_read(digest)


# --- retry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [StoreError("boom"), StoreUnavailableError("down"), StoreTimeoutError("slow")],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("op", ["has", "chunks", "open_read"])
async def test_retry_retries_transient_errors(error: Exception, op: str) -> None:
    inner = MemoryBlobService()
    await inner.put(BLOB_A)
    failing = _Failing(inner, error, times=2)
    svc = RetryBlobService(failing, base_delay=0.001)
    result = await getattr(svc, op)(BLOB_A_DIGEST)
    assert result is not None and result is not False
    assert failing.calls == 3
    assert svc.retries == 2


@pytest.mark.parametrize(
    "error",
    [
        BlobNotFoundError("gone"),
        DataCorruptionError("bad bytes"),
        DigestMismatchError("wrong hash"),
        InvalidDigestError("31 bytes"),
        StorePermissionError("denied"),
        ValueError("not castore's"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_retry_never_retries_permanent_errors(error: Exception) -> None:
    failing = _Failing(MemoryBlobService(), error, times=5)
    svc = RetryBlobService(failing, base_delay=0.001)
    with pytest.raises(type(error)):
        await svc.open_read(BLOB_A_DIGEST)
    assert failing.calls == 1
    assert svc.retries == 0
    assert not is_transient(error)


async def test_retry_absence_is_not_retried() -> None:
    faulty = FaultyBlobService(MemoryBlobService())
    svc = RetryBlobService(faulty)
    assert await svc.open_read(BLOB_A_DIGEST) is None
    assert await svc.chunks(BLOB_A_DIGEST) is None
    assert await svc.has(BLOB_A_DIGEST) is False
    assert faulty.calls["open_read"] == faulty.calls["chunks"] == faulty.calls["has"] == 1


async def test_retry_gives_up_after_max_attempts() -> None:
    failing = _Failing(MemoryBlobService(), StoreUnavailableError("down"), times=100)
    svc = RetryBlobService(failing, max_attempts=4, base_delay=0.001)
    with pytest.raises(StoreUnavailableError) as info:
        await svc.has(BLOB_A_DIGEST)
    assert failing.calls == 4
    assert any("after 4 attempts" in note for note in info.value.__notes__)


async def test_retry_respects_the_deadline() -> None:
    failing = _Failing(MemoryBlobService(), StoreError("flaky"), times=100)
    # Waits would be up to 10 s each; a 0.2 s deadline must stop long before that.
    svc = RetryBlobService(failing, max_attempts=100, base_delay=10, max_delay=10, deadline=0.2)
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        await svc.has(BLOB_A_DIGEST)
    assert time.monotonic() - started < 0.5
    assert any("deadline" in note for note in info.value.__notes__)


async def test_retry_backoff_is_jittered_and_capped() -> None:
    import random

    failing = _Failing(MemoryBlobService(), StoreError("flaky"), times=6)
    svc = RetryBlobService(
        failing, max_attempts=7, base_delay=0.01, max_delay=0.02, rng=random.Random(1)
    )
    started = time.monotonic()
    assert await svc.has(BLOB_A_DIGEST) is False
    # Six waits, each at most max_delay: bounded well under what uncapped doubling gives.
    assert time.monotonic() - started < 6 * 0.02 + 0.3
    assert svc.retries == 6


async def test_retry_attempt_timeout_turns_a_hang_into_a_retry() -> None:
    inner = MemoryBlobService()
    await inner.put(BLOB_A)
    faulty = FaultyBlobService(inner)
    faulty.plan("has", Fault.HANG, nth=1)
    svc = RetryBlobService(faulty, attempt_timeout=0.05, base_delay=0.001)
    assert await svc.has(BLOB_A_DIGEST) is True
    assert faulty.calls["has"] == 2


async def test_retry_reopens_and_seeks_on_a_mid_read_failure() -> None:
    inner = MemoryBlobService()
    await inner.put(BLOB_B)
    faulty = FaultyBlobService(inner)
    faulty.plan("read", Fault.ERROR, nth=3)
    faulty.plan("read", Fault.TIMEOUT, nth=6)
    svc = RetryBlobService(faulty, base_delay=0.001)
    reader = await svc.open_read(BLOB_B_DIGEST)
    assert reader is not None
    parts = []
    async with reader:
        await reader.seek(100)
        while part := await reader.read(100_000):
            parts.append(part)
            assert reader.tell() == 100 + sum(map(len, parts))
        await reader.seek(-50, io.SEEK_CUR)
        assert await reader.read() == BLOB_B[-50:]
    assert b"".join(parts) == BLOB_B[100:]
    assert faulty.calls["open_read"] == 3  # the first open and one re-open per fault
    assert svc.retries == 2


async def test_retry_read_of_a_vanished_blob_is_not_found() -> None:
    inner = MemoryBlobService()
    await inner.put(BLOB_B)
    faulty = FaultyBlobService(inner)
    faulty.plan("read", Fault.ERROR, nth=1)
    svc = RetryBlobService(faulty, base_delay=0.001)
    reader = await svc.open_read(BLOB_B_DIGEST)
    assert reader is not None
    inner._blobs.clear()  # the blob disappears between the failure and the re-open
    with pytest.raises(BlobNotFoundError):
        await reader.read(10)
    await reader.aclose()


async def test_retry_does_not_retry_writer_calls_but_retries_put() -> None:
    faulty = FaultyBlobService(MemoryBlobService())
    svc = RetryBlobService(faulty, base_delay=0.001)
    faulty.plan("write", Fault.ERROR, nth=1)
    writer = await svc.open_write()
    with pytest.raises(InjectedFault):
        await writer.write(b"some bytes")
    assert svc.retries == 0
    faulty.plan("close", Fault.ERROR, nth=1)
    assert await svc.put(BLOB_A) == BLOB_A_DIGEST
    assert svc.retries == 1
    assert await faulty.inner.has(BLOB_A_DIGEST)


def test_retry_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryBlobService(MemoryBlobService(), max_attempts=0)
    with pytest.raises(ValueError, match="deadline"):
        RetryBlobService(MemoryBlobService(), deadline=-1)


# --- cache -------------------------------------------------------------------------------


async def test_cache_serves_repeated_reads_from_memory() -> None:
    stats = StatsBlobService(MemoryBlobService())
    data = pseudo_random_bytes(300_000, seed=11)
    digest = await stats.put(data)
    cache = CachingBlobService(stats, max_bytes=2 << 20)
    assert await cache.get(digest) == data
    before = stats.statistics()
    assert before.calls["open_read"] == 1
    for _ in range(3):
        assert await cache.get(digest) == data
        assert await cache.has(digest)
    assert stats.statistics().calls == before.calls  # nothing reached the inner service
    info = cache.statistics()
    assert info.items == 2 and info.bytes >= len(data) and info.hits >= 3


async def test_cache_keeps_chunks_of_chunked_blobs() -> None:
    stats = StatsBlobService(memory_objectstore())
    await stats.put(BLOB_B)
    chunks = await stats.chunks(BLOB_B_DIGEST)
    assert chunks is not None and len(chunks) > 1
    stats.reset()
    cache = CachingBlobService(stats, max_bytes=4 << 20)
    reader = await cache.open_read(BLOB_B_DIGEST)
    assert reader is not None
    async with reader:
        await reader.seek(chunks[0].size + 10)  # a read inside the second chunk only
        assert await reader.read(20) == BLOB_B[chunks[0].size + 10 : chunks[0].size + 30]
    assert stats.statistics().calls["open_read"] == 1
    assert await cache.get(BLOB_B_DIGEST) == BLOB_B
    assert stats.statistics().calls["open_read"] == len(chunks)  # each chunk once
    stats.reset()
    assert await cache.get(BLOB_B_DIGEST) == BLOB_B
    assert await cache.chunks(BLOB_B_DIGEST) == chunks
    assert stats.statistics().calls == {}


async def test_cache_is_bounded_and_evicts_least_recently_used() -> None:
    inner = MemoryBlobService()
    blobs = [pseudo_random_bytes(400_000, seed=20 + i) for i in range(5)]
    digests = [await inner.put(b) for b in blobs]
    cache = CachingBlobService(inner, max_bytes=1_300_000, max_item_bytes=500_000)
    for i in (0, 1, 2):
        assert await cache.get(digests[i]) == blobs[i]
    assert await cache.get(digests[0]) == blobs[0]  # 0 is now the most recent
    assert await cache.get(digests[3]) == blobs[3]  # evicts 1, the least recent
    info = cache.statistics()
    assert info.bytes <= 1_300_000 and info.evictions >= 1
    assert (False, digests[1]) not in cache._lru
    assert (False, digests[0]) in cache._lru and (False, digests[3]) in cache._lru


async def test_cache_skips_items_larger_than_max_item_bytes() -> None:
    inner = MemoryBlobService()
    big = pseudo_random_bytes(600_000, seed=30)
    digest = await inner.put(big)
    cache = CachingBlobService(inner, max_bytes=2_000_000, max_item_bytes=500_000)
    assert await cache.get(digest) == big
    assert (False, digest) not in cache._lru


async def test_cache_keeps_only_verified_bytes() -> None:
    faulty = FaultyBlobService(MemoryBlobService(), seed=1)
    digest = await faulty.put(BLOB_A * 1000)
    cache = CachingBlobService(faulty)
    faulty.plan("read", Fault.FLIP, nth=1)
    with pytest.raises(DigestMismatchError):
        await cache.get(digest)
    assert (False, digest) not in cache._lru
    faulty.clear()
    assert await cache.get(digest) == BLOB_A * 1000
    assert (False, digest) in cache._lru


async def test_cache_does_not_keep_partial_reads_or_writes() -> None:
    inner = MemoryBlobService()
    cache = CachingBlobService(inner)
    digest = await cache.put(BLOB_B)
    assert cache.statistics().items == 0  # writes do not fill the cache
    reader = await cache.open_read(digest)
    assert reader is not None
    async with reader:
        await reader.seek(1000)
        assert await reader.read() == BLOB_B[1000:]
    assert (False, digest) not in cache._lru


# --- stats -------------------------------------------------------------------------------


async def test_stats_counts_calls_bytes_hits_and_errors() -> None:
    faulty = FaultyBlobService(MemoryBlobService())
    stats = StatsBlobService(faulty)
    assert await stats.put(BLOB_B) == BLOB_B_DIGEST
    assert await stats.has(BLOB_B_DIGEST) is True
    assert await stats.has(BLOB_A_DIGEST) is False
    assert await stats.open_read(BLOB_A_DIGEST) is None
    assert await stats.chunks(BLOB_B_DIGEST) == []
    reader = await stats.open_read(BLOB_B_DIGEST)
    assert reader is not None
    async with reader:
        assert len(await reader.read(1000)) == 1000
        await reader.seek(-24, io.SEEK_END)
        assert len(await reader.read()) == 24
    faulty.plan("has", Fault.ERROR, nth=1)
    faulty.plan("read", Fault.TIMEOUT, nth=1)
    with pytest.raises(InjectedFault):
        await stats.has(BLOB_B_DIGEST)
    reader = await stats.open_read(BLOB_B_DIGEST)
    assert reader is not None
    with pytest.raises(StoreTimeoutError):
        await reader.read(1)
    s = stats.statistics()
    assert s.calls["has"] == 3 and s.calls["open_read"] == 3 and s.calls["chunks"] == 1
    assert s.calls["open_write"] == 1 and s.calls["close"] == 1 and s.calls["seek"] == 1
    assert s.hits["has"] == 1 and s.misses["has"] == 1
    assert s.hits["open_read"] == 2 and s.misses["open_read"] == 1
    assert s.hits["chunks"] == 1
    assert s.bytes_written == len(BLOB_B) and s.blobs_written == 1
    assert s.bytes_read == 1024
    assert dict(s.errors) == {"InjectedFault": 1, "StoreTimeoutError": 1}
    assert s.total_errors == 2


async def test_stats_snapshot_is_frozen_and_reset_zeroes() -> None:
    stats = StatsBlobService(MemoryBlobService())
    await stats.has(BLOB_A_DIGEST)
    snap = stats.statistics()
    await stats.has(BLOB_A_DIGEST)
    assert snap.calls["has"] == 1 and stats.statistics().calls["has"] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.bytes_read = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.calls["has"] = 9  # type: ignore[index]
    stats.reset()
    s = stats.statistics()
    assert s.calls == {} and s.bytes_read == 0 and s.errors == {}


# --- logging -----------------------------------------------------------------------------


async def test_logging_records_carry_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    faulty = FaultyBlobService(MemoryBlobService())
    svc = LoggingBlobService(faulty, name="edge")
    with caplog.at_level(logging.DEBUG, logger="castore.blobservice"):
        await svc.put(BLOB_B)
        assert await svc.has(BLOB_A_DIGEST) is False
        assert await svc.get(BLOB_B_DIGEST) == BLOB_B
        faulty.plan("chunks", Fault.ERROR, nth=1)
        with pytest.raises(InjectedFault):
            await svc.chunks(BLOB_B_DIGEST)
        with pytest.raises(RuntimeError):
            async with await svc.open_write() as w:
                await w.write(b"abandoned")
                raise RuntimeError
    records = [r for r in caplog.records if r.name == "castore.blobservice"]
    by_op = [(r.op, r.levelno) for r in records]  # type: ignore[attr-defined]
    assert by_op == [
        ("write", logging.DEBUG),
        ("has", logging.DEBUG),
        ("open_read", logging.DEBUG),
        ("read", logging.DEBUG),
        ("chunks", logging.WARNING),
        ("write", logging.DEBUG),
    ]
    write, has, _, read, chunks, aborted = records
    assert write.digest == BLOB_B_DIGEST.hex() and write.size == len(BLOB_B)  # type: ignore[attr-defined]
    assert has.found is False and has.digest == BLOB_A_DIGEST.hex()  # type: ignore[attr-defined]
    assert read.size == len(BLOB_B) and read.error is None  # type: ignore[attr-defined]
    assert chunks.error.startswith("InjectedFault:")  # type: ignore[attr-defined]
    assert aborted.aborted is True and aborted.size == 9  # type: ignore[attr-defined]
    for r in records:
        assert r.service == "edge"  # type: ignore[attr-defined]
        assert isinstance(r.duration, float) and r.duration >= 0  # type: ignore[attr-defined]
    assert "[edge] has" in has.getMessage()


async def test_logging_is_quiet_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    svc = LoggingBlobService(MemoryBlobService())
    with caplog.at_level(logging.INFO, logger="castore.blobservice"):
        await svc.put(BLOB_A)
        assert await svc.get(BLOB_A_DIGEST) == BLOB_A
    assert [r for r in caplog.records if r.name == "castore.blobservice"] == []


# --- the base ----------------------------------------------------------------------------


async def test_wrapper_closes_inner_once() -> None:
    closed = []

    class Closing(MemoryBlobService):
        async def aclose(self) -> None:
            closed.append(1)

    svc = StatsBlobService(Closing())
    async with svc:
        pass
    await svc.aclose()
    assert closed == [1]
    assert "StatsBlobService(" in repr(svc)
