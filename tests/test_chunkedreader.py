"""ChunkedReader: Rust's vectors, prefetch, verification, and edge cases."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

import anyio
import pytest
from obstore.store import MemoryStore
from typing_extensions import Buffer

from castore import (
    B3Digest,
    BlobNotFoundError,
    ChunkedReader,
    ChunkMeta,
    ChunkSource,
    MemoryBlobService,
    ObjectStoreBlobService,
)
from castore.errors import DigestMismatchError, InvalidSeekError, StoreTimeoutError
from castore.reader import ServiceChunkSource, ThreadChunkSource, read_chunk, verify_chunk

PIECES = [bytes.fromhex(h) for h in ("0001", "02030405", "06", "0708", "090a0b0c0d0e0f")]
WHOLE = b"".join(PIECES)


async def _reader(svc: MemoryBlobService, **kw: object) -> ChunkedReader:
    metas = []
    for p in PIECES:
        metas.append(ChunkMeta(await svc.put(p), len(p)))
    return ChunkedReader(metas, ServiceChunkSource(svc), **kw)  # type: ignore[arg-type]


async def test_offsets_and_full_read() -> None:
    r = await _reader(MemoryBlobService())
    assert [r.offset_of(i) for i in range(5)] == [0, 2, 6, 7, 9]
    assert r.length == 16
    assert await r.read() == WHOLE
    await r.aclose()


async def test_rust_seek_vectors() -> None:
    r = await _reader(MemoryBlobService())
    async with r:
        assert await r.seek(-1, io.SEEK_END) == 15
        assert await r.read() == b"\x0f"
        assert await r.seek(-3, io.SEEK_CUR) == 13
        assert await r.read(2) == bytes.fromhex("0d0e")


@pytest.mark.parametrize("start", range(17))
@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, -1])
async def test_every_start_and_length(start: int, n: int) -> None:
    r = await _reader(MemoryBlobService(), prefetch=1)
    async with r:
        await r.seek(start)
        want = WHOLE[start:] if n < 0 else WHOLE[start : start + n]
        assert await r.read(n) == want
        assert r.tell() == start + len(want)


async def test_seek_bounds() -> None:
    r = await _reader(MemoryBlobService())
    async with r:
        assert await r.seek(16) == 16
        assert await r.read() == b""
        with pytest.raises(InvalidSeekError):
            await r.seek(17)
        with pytest.raises(ValueError):
            await r.seek(-1)
        with pytest.raises(ValueError):
            await r.seek(0, 7)


async def test_empty_reader() -> None:
    async def never(meta: ChunkMeta) -> bytes:
        raise AssertionError("no chunk to fetch")

    async with ChunkedReader([], never) as r:
        assert r.length == 0
        assert await r.read() == b""
        assert await r.seek(0, io.SEEK_END) == 0
        with pytest.raises(InvalidSeekError):
            await r.seek(1)


async def test_missing_chunk_fails_during_read() -> None:
    svc = MemoryBlobService()
    metas = [ChunkMeta(await svc.put(b"ab"), 2), ChunkMeta(B3Digest.of(b"gone"), 4)]
    async with ChunkedReader(metas, ServiceChunkSource(svc)) as r:
        assert await r.read(2) == b"ab"
        with pytest.raises(BlobNotFoundError):
            await r.read(1)


async def test_corrupt_chunk_is_rejected() -> None:
    async def lying(meta: ChunkMeta) -> bytes:
        return b"XY"

    async with ChunkedReader([ChunkMeta(B3Digest.of(b"ab"), 2)], lying) as r:
        with pytest.raises(DigestMismatchError):
            await r.read()

    async def short(meta: ChunkMeta) -> bytes:
        return b"a"

    async with ChunkedReader([ChunkMeta(B3Digest.of(b"ab"), 2)], short) as r:
        with pytest.raises(DigestMismatchError, match="expected 2 bytes"):
            await r.read()


async def test_whole_blob_digest_checked() -> None:
    svc = MemoryBlobService()
    metas = [ChunkMeta(await svc.put(p), len(p)) for p in PIECES]
    good = ChunkedReader(metas, ServiceChunkSource(svc), blob_digest=B3Digest.of(WHOLE))
    async with good:
        assert await good.read() == WHOLE
    # An index that lists real chunks but not this blob's: the full read raises.
    wrong = ChunkedReader(metas, ServiceChunkSource(svc), blob_digest=B3Digest.of(b"x"))
    async with wrong:
        with pytest.raises(DigestMismatchError):
            await wrong.read()


async def test_prefetch_overlaps_fetches() -> None:
    """With prefetch, a sequential read keeps several fetches in flight at once."""
    data = [bytes([i]) * 10 for i in range(12)]
    metas = [ChunkMeta(B3Digest.of(d), len(d)) for d in data]
    by_digest = {m.digest: d for m, d in zip(metas, data, strict=True)}
    inflight = peak = 0

    async def slow(meta: ChunkMeta) -> bytes:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await anyio.sleep(0.02)
        inflight -= 1
        return by_digest[meta.digest]

    async with ChunkedReader(metas, slow, prefetch=4) as r:
        with anyio.fail_after(5):
            assert await r.read() == b"".join(data)
    assert peak >= 4

    peak = 0
    async with ChunkedReader(metas, slow, prefetch=0) as r:
        assert await r.read() == b"".join(data)
    assert peak == 1


async def test_aclose_cancels_prefetches() -> None:
    started = anyio.Event()
    cancelled = 0

    async def hang(meta: ChunkMeta) -> bytes:
        nonlocal cancelled
        started.set()
        try:
            await anyio.sleep(60)
        except BaseException:
            cancelled += 1
            raise
        return b""

    metas = [ChunkMeta(B3Digest.of(bytes([i])), 1) for i in range(5)]
    r = ChunkedReader(metas, hang, prefetch=3)
    with anyio.move_on_after(0.1):
        await r.read(1)
    await started.wait()
    await r.aclose()
    assert cancelled == 4
    with pytest.raises(ValueError):
        await r.read()


# --- sources that fetch in worker threads ------------------------------------------------


class TaskSource:
    """A chunk source over a dict, verifying as a real source does; async only."""

    def __init__(self, by: dict[B3Digest, bytes], *, timeout: float | None = None) -> None:
        self.by = by
        self.timeout = timeout
        self.async_calls = 0

    @property
    def read_timeout(self) -> float | None:
        return self.timeout

    async def fetch_chunk(self, meta: ChunkMeta) -> bytes:
        self.async_calls += 1
        return verify_chunk(meta, self.by[meta.digest])


class ThreadSource(TaskSource):
    """The same, also fetching in worker threads, through ``get`` (a blocking store)."""

    def __init__(
        self,
        by: dict[B3Digest, bytes],
        *,
        timeout: float | None = None,
        get: Callable[[ChunkMeta], bytes] | None = None,
    ) -> None:
        super().__init__(by, timeout=timeout)
        self.get = get or (lambda meta: by[meta.digest])
        self.sync_calls: list[ChunkMeta] = []

    def load_chunk(self, meta: ChunkMeta) -> bytes:
        self.sync_calls.append(meta)
        return self.get(meta)

    def decode_chunk_into(self, meta: ChunkMeta, stored: Buffer, out: memoryview) -> None:
        out[:] = verify_chunk(meta, bytes(stored))


def _sync_store(pieces: list[bytes]) -> tuple[list[ChunkMeta], dict[B3Digest, bytes]]:
    metas = [ChunkMeta(B3Digest.of(p), len(p)) for p in pieces]
    return metas, {m.digest: p for m, p in zip(metas, pieces, strict=True)}


def test_sources_are_recognized() -> None:
    _, by = _sync_store(PIECES)
    assert isinstance(TaskSource(by), ChunkSource)
    assert not isinstance(TaskSource(by), ThreadChunkSource)
    assert isinstance(ThreadSource(by), ThreadChunkSource)
    svc = ObjectStoreBlobService(MemoryStore())
    assert isinstance(svc, ThreadChunkSource)
    assert not isinstance(MemoryBlobService(), ChunkSource)


@pytest.mark.parametrize("prefetch", [0, 1, 4])
@pytest.mark.parametrize("n", [1, 3, 5, 16, 100, -1])
async def test_thread_source_reads_and_seeks(prefetch: int, n: int) -> None:
    metas, by = _sync_store(PIECES)
    source = ThreadSource(by)
    r = ChunkedReader(metas, source, prefetch=prefetch, blob_digest=B3Digest.of(WHOLE))
    async with r:
        out = b""
        while block := await r.read(n):
            out += block
        assert out == WHOLE
        for start in (13, 2, 0, 7, 15):
            await r.seek(start)
            assert await r.read(n) == (WHOLE[start:] if n < 0 else WHOLE[start : start + n])
    assert source.sync_calls
    assert source.async_calls == 0  # the async fetch is for refetches only


async def test_a_whole_chunk_is_returned_without_a_copy() -> None:
    pieces = [bytes([i]) * 1000 for i in range(4)]
    metas, by = _sync_store(pieces)

    async def fetch(meta: ChunkMeta) -> bytes:
        return by[meta.digest]

    async with ChunkedReader(metas, fetch, blob_digest=B3Digest.of(b"".join(pieces))) as r:
        for p in pieces:
            got = await r.read(1000)
            assert got == p
            assert got is by[B3Digest.of(p)]


async def test_thread_source_verifies() -> None:
    metas, by = _sync_store([b"ab", b"cd"])
    async with ChunkedReader(metas, ThreadSource(by, get=lambda m: b"XY")) as r:
        with pytest.raises(DigestMismatchError):
            await r.read()


async def _unused(meta: ChunkMeta) -> bytes:
    raise AssertionError("not called")


def _stuck_at(
    metas: list[ChunkMeta], by: dict[B3Digest, bytes], i: int, release: threading.Event
) -> Callable[[ChunkMeta], bytes]:
    def get(meta: ChunkMeta) -> bytes:
        if meta.digest == metas[i].digest:
            release.wait(10)
        return by[meta.digest]

    return get


async def test_thread_source_timeout_and_recovery() -> None:
    """A fetch stuck in the store: the read raises StoreTimeoutError after the source's
    read_timeout; once the store answers, the same reader reads on."""
    metas, by = _sync_store(PIECES)
    release = threading.Event()
    source = ThreadSource(by, timeout=0.2, get=_stuck_at(metas, by, 2, release))
    r = ChunkedReader(metas, source, prefetch=1)
    async with r:
        assert await r.read(6) == WHOLE[:6]
        with anyio.fail_after(5), pytest.raises(StoreTimeoutError, match=r"within 0\.2 s"):
            await r.read(3)
        release.set()
        assert await r.read(3) == WHOLE[6:9]
        assert await r.read() == WHOLE[9:]


async def test_task_source_timeout() -> None:
    """The read_timeout of a source that fetches in tasks bounds a read just the same."""
    metas, by = _sync_store(PIECES)

    class Hanging(TaskSource):
        async def fetch_chunk(self, meta: ChunkMeta) -> bytes:
            if meta.digest == metas[1].digest:
                await anyio.sleep(60)
            return await super().fetch_chunk(meta)

    async with ChunkedReader(metas, Hanging(by, timeout=0.2), prefetch=0) as r:
        assert await r.read(2) == WHOLE[:2]
        with anyio.fail_after(5), pytest.raises(StoreTimeoutError):
            await r.read(1)


async def test_thread_source_failure_is_fetched_again() -> None:
    """A chunk whose fetch failed is fetched again (through the async fetch) by the next
    read that needs it."""
    metas, by = _sync_store(PIECES)
    failed = False

    def flaky(meta: ChunkMeta) -> bytes:
        nonlocal failed
        if meta.digest == metas[1].digest and not failed:
            failed = True
            raise BlobNotFoundError("gone for now")
        return by[meta.digest]

    source = ThreadSource(by, get=flaky)
    async with ChunkedReader(metas, source, prefetch=2) as r:
        assert await r.read(2) == WHOLE[:2]
        with pytest.raises(BlobNotFoundError):
            await r.read(4)
        assert await r.read() == WHOLE[2:]
    assert source.async_calls == 1


# --- the deprecated forms keep working ----------------------------------------------------


async def test_legacy_keywords_warn_and_work() -> None:
    metas, by = _sync_store(PIECES)
    release = threading.Event()
    with pytest.warns(DeprecationWarning, match="fetch_sync, timeout"):
        r = ChunkedReader(
            metas, _unused, prefetch=1, fetch_sync=_stuck_at(metas, by, 2, release), timeout=0.2
        )
    async with r:
        assert await r.read(6) == WHOLE[:6]
        with anyio.fail_after(5), pytest.raises(StoreTimeoutError):
            await r.read(3)
        release.set()
        assert await r.read() == WHOLE[6:]
    with pytest.warns(DeprecationWarning):
        r = ChunkedReader(metas, _unused, fetch_sync=lambda m: b"XY")
    async with r:
        with pytest.raises(DigestMismatchError):
            await r.read()


async def test_legacy_keywords_do_not_apply_to_a_source() -> None:
    _, by = _sync_store(PIECES)
    with pytest.raises(TypeError, match="verified_fetch"):
        ChunkedReader([], TaskSource(by), verified_fetch=True)


async def test_from_service_and_the_old_module_warn_and_work() -> None:
    svc = MemoryBlobService()
    metas = [ChunkMeta(await svc.put(p), len(p)) for p in PIECES]
    with pytest.warns(DeprecationWarning, match="from_service"):
        r = ChunkedReader.from_service(svc, metas, blob_digest=B3Digest.of(WHOLE))
    async with r:
        assert await r.read() == WHOLE
    with pytest.warns(DeprecationWarning, match="castore.reader"):
        from castore.chunkedreader import ChunkedReader as Old
    assert Old is ChunkedReader


async def test_read_chunk_says_none_for_a_missing_chunk() -> None:
    for svc in (MemoryBlobService(), ObjectStoreBlobService(MemoryStore())):
        meta = ChunkMeta(await svc.put(b"abc"), 3)
        assert await read_chunk(svc, meta) == b"abc"
        assert await read_chunk(svc, ChunkMeta(B3Digest.of(b"gone"), 4)) is None
        with pytest.raises(DigestMismatchError):
            await read_chunk(svc, ChunkMeta(meta.digest, 4))


async def test_wrong_index_fails_every_later_read() -> None:
    """Read in small pieces, in order, to the end: the last read raises, and so does any
    read after it (no byte of a blob whose chunks are not its own is handed out again)."""
    metas, by = _sync_store(PIECES)

    async def fetch(meta: ChunkMeta) -> bytes:
        return by[meta.digest]

    async with ChunkedReader(metas, fetch, blob_digest=B3Digest.of(b"other")) as r:
        assert await r.read(10) == WHOLE[:10]
        with pytest.raises(DigestMismatchError):
            await r.read(6)
        await r.seek(0)
        with pytest.raises(DigestMismatchError):
            await r.read(1)


async def test_whole_blob_check_needs_an_in_order_read_from_zero() -> None:
    """Reads that skip bytes are not checked against the blob digest (they cannot be)."""
    metas, by = _sync_store(PIECES)

    async def fetch(meta: ChunkMeta) -> bytes:
        return by[meta.digest]

    async with ChunkedReader(metas, fetch, blob_digest=B3Digest.of(b"other")) as r:
        await r.seek(1)
        assert await r.read() == WHOLE[1:]


# --- readinto and reused buffers -----------------------------------------------------------


@pytest.mark.parametrize("threads", [True, False], ids=["thread-source", "task-source"])
@pytest.mark.parametrize("size", [1, 3, 5, 16, 100])
async def test_readinto_matches_read(threads: bool, size: int) -> None:
    metas, by = _sync_store(PIECES)
    source = ThreadSource(by) if threads else TaskSource(by)
    async with ChunkedReader(metas, source, prefetch=1, blob_digest=B3Digest.of(WHOLE)) as r:
        buf = bytearray(size)
        out = b""
        while n := await r.readinto(buf):
            out += buf[:n]
        assert out == WHOLE
        for start in (13, 2, 0, 7, 15):
            await r.seek(start)
            n = await r.readinto(memoryview(buf))
            assert bytes(buf[:n]) == WHOLE[start : start + size]
            assert r.tell() == start + n


async def test_readinto_checks_the_whole_blob() -> None:
    metas, by = _sync_store(PIECES)
    async with ChunkedReader(metas, ThreadSource(by), blob_digest=B3Digest.of(b"other")) as r:
        buf = bytearray(10)
        assert await r.readinto(buf) == 10
        with pytest.raises(DigestMismatchError):
            await r.readinto(buf)
        with pytest.raises(DigestMismatchError):
            await r.readinto(buf)


async def test_thread_pullers_reuse_their_buffers() -> None:
    """A long sequential read decodes into a handful of buffers, not one per chunk."""
    pieces = [bytes([i]) * (1000 + i) for i in range(200)]
    metas, by = _sync_store(pieces)
    buffers: set[int] = set()
    source = ThreadSource(by)
    original = source.decode_chunk_into

    def into(meta: ChunkMeta, stored: Buffer, out: memoryview) -> None:
        buffers.add(id(out.obj))
        original(meta, stored, out)

    source.decode_chunk_into = into  # type: ignore[method-assign]
    whole = b"".join(pieces)
    async with ChunkedReader(metas, source, prefetch=2, blob_digest=B3Digest.of(whole)) as r:
        buf = bytearray(5000)
        out = bytearray()
        while n := await r.readinto(buf):
            out += buf[:n]
    assert out == whole
    assert len(buffers) <= 20, len(buffers)


async def test_large_readinto_is_copied_in_a_worker() -> None:
    """A read of at least the join threshold copies in the readers' pool, and is exact."""
    pieces = [bytes([i]) * (300 << 10) for i in range(8)]
    metas, by = _sync_store(pieces)
    whole = b"".join(pieces)
    async with ChunkedReader(metas, ThreadSource(by), blob_digest=B3Digest.of(whole)) as r:
        buf = bytearray(1 << 20)
        out = bytearray()
        while n := await r.readinto(buf):
            out += buf[:n]
    assert out == whole


async def test_readinto_decodes_whole_chunks_into_the_callers_buffer() -> None:
    pieces = [bytes([i]) * 1000 for i in range(40)]
    metas, by = _sync_store(pieces)
    whole = b"".join(pieces)
    seen: list[object] = []
    source = ThreadSource(by)
    original = source.decode_chunk_into

    def into(meta: ChunkMeta, stored: Buffer, out: memoryview) -> None:
        seen.append(out.obj)
        original(meta, stored, out)

    source.decode_chunk_into = into  # type: ignore[method-assign]
    buf = bytearray(10_000)
    async with ChunkedReader(metas, source, prefetch=0, blob_digest=B3Digest.of(whole)) as r:
        got = bytearray()
        while n := await r.readinto(buf):
            got += buf[:n]
    assert got == whole
    assert any(obj is buf for obj in seen)


async def test_sequential_readinto_decodes_most_chunks_into_the_callers_buffer() -> None:
    """readinto fetches only ``prefetch`` chunks ahead, not a whole read: the chunks of its
    next call are decoded straight into the caller's buffer, not copied into it."""
    pieces = [bytes([i]) * 1000 for i in range(40)]
    metas, by = _sync_store(pieces)
    whole = b"".join(pieces)
    direct = 0
    source = ThreadSource(by)
    original = source.decode_chunk_into
    buf = bytearray(10_000)

    def into(meta: ChunkMeta, stored: Buffer, out: memoryview) -> None:
        nonlocal direct
        direct += out.obj is buf
        original(meta, stored, out)

    source.decode_chunk_into = into  # type: ignore[method-assign]
    async with ChunkedReader(metas, source, prefetch=1, blob_digest=B3Digest.of(whole)) as r:
        got = bytearray()
        while n := await r.readinto(buf):
            got += buf[:n]
    assert got == whole
    # At most the one chunk fetched ahead of each of the 4 reads is copied.
    assert direct >= 36, direct


async def test_readinto_never_writes_after_it_returns() -> None:
    """A read cancelled (or timed out) while chunks are being decoded into its buffer:
    once it has raised, nothing writes into that buffer any more, and the reader goes on
    reading the right bytes."""
    pieces = [bytes([i]) * 1000 for i in range(12)]
    metas, by = _sync_store(pieces)
    whole = b"".join(pieces)
    source = ThreadSource(by)
    original = source.decode_chunk_into
    slow = threading.Event()

    def into(meta: ChunkMeta, stored: Buffer, out: memoryview) -> None:
        if slow.is_set():
            time.sleep(0.05)  # a decode under way when the read is cancelled
        original(meta, stored, out)

    source.decode_chunk_into = into  # type: ignore[method-assign]
    buf = bytearray(6000)
    async with ChunkedReader(metas, source, prefetch=3, blob_digest=B3Digest.of(whole)) as r:
        slow.set()
        with anyio.move_on_after(0.02):
            await r.readinto(buf)
        snapshot = bytes(buf)
        await anyio.sleep(0.3)
        assert bytes(buf) == snapshot, "the buffer changed after readinto returned"
        slow.clear()
        got = bytearray()
        while n := await r.readinto(buf):
            got += buf[:n]
        assert got == whole


async def test_readinto_direct_decoding_still_checks_the_whole_blob() -> None:
    pieces = [bytes([i]) * 1000 for i in range(10)]
    metas, by = _sync_store(pieces)
    async with ChunkedReader(metas, ThreadSource(by), blob_digest=B3Digest.of(b"other")) as r:
        buf = bytearray(3000)
        with pytest.raises(DigestMismatchError):
            while await r.readinto(buf):
                pass
