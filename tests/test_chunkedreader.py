"""ChunkedReader: Rust's vectors, prefetch, verification, and edge cases."""

from __future__ import annotations

import io

import anyio
import pytest

from castore import B3Digest, BlobNotFoundError, ChunkedReader, ChunkMeta, MemoryBlobService
from castore.errors import DigestMismatchError, InvalidSeekError

PIECES = [bytes.fromhex(h) for h in ("0001", "02030405", "06", "0708", "090a0b0c0d0e0f")]
WHOLE = b"".join(PIECES)


async def _reader(svc: MemoryBlobService, **kw: object) -> ChunkedReader:
    metas = []
    for p in PIECES:
        metas.append(ChunkMeta(await svc.put(p), len(p)))
    return ChunkedReader.from_service(svc, metas, **kw)  # type: ignore[arg-type]


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
    async with ChunkedReader.from_service(svc, metas) as r:
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
    good = ChunkedReader.from_service(
        svc, [ChunkMeta(await svc.put(p), len(p)) for p in PIECES], blob_digest=B3Digest.of(WHOLE)
    )
    async with good:
        assert await good.read() == WHOLE
    # An index that lists real chunks but not this blob's: the full read raises.
    wrong = ChunkedReader.from_service(
        svc, [ChunkMeta(await svc.put(p), len(p)) for p in PIECES], blob_digest=B3Digest.of(b"x")
    )
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
