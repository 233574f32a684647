"""``CombinedBlobService``: conformance on near/far pairs, and the near-cache behaviour.

Far calls are counted with :class:`~castore.wrappers.StatsBlobService`; failures come
from :class:`~castore.testing.faults.FaultyBlobService`.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from helpers import memory_objectstore

import castore
from castore import (
    EMPTY_DIGEST,
    B3Digest,
    BlobService,
    BlobWriter,
    CombinedBlobService,
    MemoryBlobService,
)
from castore.errors import DigestMismatchError, StoreUnavailableError
from castore.testing.conformance import BlobServiceConformance, pseudo_random_bytes
from castore.testing.faults import Fault, FaultyBlobService
from castore.testing.fixtures import BLOB_A, BLOB_A_DIGEST, BLOB_B, BLOB_B_DIGEST
from castore.wrappers import StatsBlobService, WrapperBlobService, WrapperBlobWriter


class _FarWriteCombined(CombinedBlobService):
    """Writes go to far only, so every first read goes through the far path and fills near.

    With this, the conformance suite drives the far-read code (chunk fallback, copying,
    the whole-blob check) with its seek walks and random seeks.
    """

    async def open_write(self) -> BlobWriter:
        return await self.far.open_write()


# --- conformance -------------------------------------------------------------------------


class TestCombinedMemory(BlobServiceConformance):
    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with CombinedBlobService(MemoryBlobService(), MemoryBlobService()) as svc:
            yield svc


class TestCombinedMemoryWriteThrough(BlobServiceConformance):
    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        near, far = MemoryBlobService(), MemoryBlobService()
        async with CombinedBlobService(near, far, write_through=True) as svc:
            yield svc


class TestCombinedMemoryReadsFromFar(BlobServiceConformance):
    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with _FarWriteCombined(MemoryBlobService(), MemoryBlobService()) as svc:
            yield svc


class TestCombinedObjectStore(BlobServiceConformance):
    large_blob_size = 16 * 1024 * 1024

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with CombinedBlobService(
            memory_objectstore(), memory_objectstore(), write_through=True
        ) as svc:
            yield svc


class TestCombinedMemoryNearObjectStoreFar(BlobServiceConformance):
    """Far chunks: reads go chunk by chunk through far's list and fill a memory near."""

    large_blob_size = 16 * 1024 * 1024

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with _FarWriteCombined(MemoryBlobService(), memory_objectstore()) as svc:
            yield svc


class TestCombinedObjectStoreReadsFromFar(BlobServiceConformance):
    large_blob_size = 16 * 1024 * 1024

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with _FarWriteCombined(memory_objectstore(), memory_objectstore()) as svc:
            yield svc


class TestCombinedObjectStoreNearGRPCFar(BlobServiceConformance):
    """The deployed shape: a local object store in front of a gRPC server over a bucket."""

    # A gRPC far can neither delete nor list (the tvix protocol has neither).
    can_delete = can_list = False

    large_blob_size = 16 * 1024 * 1024

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        from castore.grpc import serve

        async with (
            memory_objectstore() as backend,
            serve(backend, "grpc+http://127.0.0.1:0") as running,
            _FarWriteCombined(memory_objectstore(), castore.from_addr(running.url)) as svc,
        ):
            yield svc


# --- far once, near after that -----------------------------------------------------------


def _far_calls(far: StatsBlobService) -> dict[str, int]:
    return dict(far.statistics().calls)


@pytest.mark.parametrize("far_kind", ["memory", "objectstore", "grpc"])
async def test_read_fetches_from_far_once_then_from_near(far_kind: str) -> None:
    if far_kind == "grpc":
        from castore.grpc import serve

        async with (
            memory_objectstore() as backend,
            serve(backend, "grpc+http://127.0.0.1:0") as srv,
        ):
            await _far_once_then_near(castore.from_addr(srv.url))
    else:
        await _far_once_then_near(
            MemoryBlobService() if far_kind == "memory" else memory_objectstore()
        )


async def _far_once_then_near(far_service: BlobService) -> None:
    far = StatsBlobService(far_service)
    near = StatsBlobService(MemoryBlobService())
    combined = CombinedBlobService(near, far)
    data = pseudo_random_bytes(1_500_000, seed=40)
    digest = await far.put(data)
    far_chunks = await far.chunks(digest)
    assert far_chunks is not None
    far.reset()

    assert await combined.get(digest) == data
    first = far.statistics()
    assert first.calls["chunks"] == 1
    # memory: one open_read of the blob; objectstore: one per chunk.
    assert first.calls["open_read"] == max(1, len(far_chunks))
    assert first.bytes_read == len(data)
    assert await near.inner.has(digest)

    for _ in range(3):
        assert await combined.get(digest) == data
        assert await combined.has(digest)
    assert _far_calls(far) == dict(first.calls)  # far saw nothing more
    assert far.statistics().bytes_read == len(data)
    assert near.statistics().hits["open_read"] >= 3
    await combined.aclose()


async def test_a_partial_read_copies_its_chunks_into_near() -> None:
    far = StatsBlobService(memory_objectstore())
    near = MemoryBlobService()
    combined = CombinedBlobService(near, far, prefetch=0)
    data = pseudo_random_bytes(1_500_000, seed=42)
    digest = await far.put(data)
    chunks = await far.chunks(digest)
    assert chunks is not None and len(chunks) >= 3
    second = chunks[1]
    start = chunks[0].size
    reader = await combined.open_read(digest)
    assert reader is not None
    async with reader:
        await reader.seek(start + 5)
        assert await reader.read(10) == data[start + 5 : start + 15]
    # Only the chunk that was read reached near, and near does not claim the blob.
    assert await near.has(second.digest)
    assert not await near.has(chunks[0].digest)
    assert not await near.has(digest)

    far.reset()
    assert await combined.get(digest) == data
    # The chunk near already had was not fetched from far again.
    assert far.statistics().calls["open_read"] == len(chunks) - 1
    assert await near.has(digest)


async def test_a_partial_read_of_an_unchunked_blob_does_not_fill_near() -> None:
    far, near = MemoryBlobService(), MemoryBlobService()
    combined = CombinedBlobService(near, far)
    await far.put(BLOB_B)
    reader = await combined.open_read(BLOB_B_DIGEST)
    assert reader is not None
    async with reader:
        assert await reader.read(100) == BLOB_B[:100]
        await reader.seek(5000)
        assert await reader.read() == BLOB_B[5000:]
    assert not await near.has(BLOB_B_DIGEST)
    # Re-reading inside the prefix read so far is fine: the copy continues.
    reader = await combined.open_read(BLOB_B_DIGEST)
    assert reader is not None
    async with reader:
        assert await reader.read(300_000) == BLOB_B[:300_000]
        await reader.seek(1000)
        assert await reader.read(2000) == BLOB_B[1000:3000]
        await reader.seek(0, io.SEEK_CUR)
        assert await reader.read() == BLOB_B[3000:]
    assert await near.get(BLOB_B_DIGEST) == BLOB_B


async def test_the_empty_blob_is_copied_too() -> None:
    far, near = MemoryBlobService(), MemoryBlobService()
    combined = CombinedBlobService(near, far)
    assert await far.put(b"") == EMPTY_DIGEST
    assert await combined.get(EMPTY_DIGEST) == b""
    assert await near.has(EMPTY_DIGEST)


# --- verification ------------------------------------------------------------------------


async def test_corrupt_far_bytes_raise_and_are_not_kept() -> None:
    far = FaultyBlobService(MemoryBlobService(), seed=5)
    near = MemoryBlobService()
    combined = CombinedBlobService(near, far)
    await far.put(BLOB_B)
    far.plan("read", Fault.FLIP, nth=1)
    with pytest.raises(DigestMismatchError):
        await combined.get(BLOB_B_DIGEST)
    assert len(near) == 0
    assert await combined.get(BLOB_B_DIGEST) == BLOB_B  # the fault was one-off
    assert await near.has(BLOB_B_DIGEST)


async def test_corrupt_far_chunk_raises_and_is_not_kept() -> None:
    far = FaultyBlobService(memory_objectstore(), seed=6)
    near = MemoryBlobService()
    combined = CombinedBlobService(near, far, prefetch=0)
    await far.put(BLOB_B)
    far.plan("read", Fault.FLIP, nth=2)  # the second chunk
    with pytest.raises(DigestMismatchError):
        await combined.get(BLOB_B_DIGEST)
    chunks = await far.chunks(BLOB_B_DIGEST)
    assert chunks is not None
    assert await near.has(chunks[0].digest)
    assert not await near.has(chunks[1].digest)
    assert not await near.has(BLOB_B_DIGEST)


async def test_a_corrupt_chunk_in_near_falls_back_to_far() -> None:
    far = memory_objectstore()
    near = FaultyBlobService(MemoryBlobService(), seed=2)
    combined = CombinedBlobService(near, far, prefetch=0)
    await far.put(BLOB_B)
    chunks = await far.chunks(BLOB_B_DIGEST)
    assert chunks is not None
    for c in chunks:  # near holds every chunk, but not the blob
        reader = await far.open_read(c.digest)
        assert reader is not None
        async with reader:
            await near.inner.put(await reader.read())
    near.plan("read", Fault.FLIP, nth=1)
    assert await combined.get(BLOB_B_DIGEST) == BLOB_B


# --- near failures are not the caller's problem ------------------------------------------


async def test_a_failing_near_does_not_fail_reads() -> None:
    far = MemoryBlobService()
    near = FaultyBlobService(MemoryBlobService())
    combined = CombinedBlobService(near, far)
    await far.put(BLOB_B)
    near.plan("open_read", Fault.ERROR, nth=1)
    near.plan("write", Fault.ERROR, nth=1)
    assert await combined.get(BLOB_B_DIGEST) == BLOB_B
    assert not await near.inner.has(BLOB_B_DIGEST)  # the copy failed, the read did not
    near.plan("has", Fault.ERROR, nth=1)
    assert await combined.has(BLOB_B_DIGEST)
    near.plan("chunks", Fault.ERROR, nth=1)
    assert await combined.chunks(BLOB_B_DIGEST) == []
    assert await combined.get(BLOB_B_DIGEST) == BLOB_B
    assert await near.inner.has(BLOB_B_DIGEST)


async def test_has_and_chunks_ask_near_then_far() -> None:
    near, far = StatsBlobService(MemoryBlobService()), StatsBlobService(MemoryBlobService())
    combined = CombinedBlobService(near, far)
    await near.put(BLOB_A)
    await far.put(BLOB_B)
    assert await combined.has(BLOB_A_DIGEST)
    assert far.statistics().calls.get("has", 0) == 0
    assert await combined.has(BLOB_B_DIGEST)
    assert await combined.chunks(BLOB_B_DIGEST) == []
    assert not await combined.has(B3Digest.of(b"nowhere"))
    assert await combined.chunks(B3Digest.of(b"nowhere")) is None
    assert await combined.open_read(B3Digest.of(b"nowhere")) is None


# --- writes ------------------------------------------------------------------------------


async def test_writes_go_to_near_unless_write_through() -> None:
    near, far = MemoryBlobService(), MemoryBlobService()
    assert await CombinedBlobService(near, far).put(BLOB_A) == BLOB_A_DIGEST
    assert await near.has(BLOB_A_DIGEST) and not await far.has(BLOB_A_DIGEST)
    through = CombinedBlobService(near, far, write_through=True)
    data = pseudo_random_bytes(2_000_000, seed=41)
    writer = await through.open_write()
    for i in range(0, len(data), 300_000):
        await writer.write(data[i : i + 300_000])
    digest = await writer.close()
    assert await writer.close() == digest
    assert await near.get(digest) == data and await far.get(digest) == data


async def test_write_through_fails_when_far_fails_and_aborts_both() -> None:
    near = MemoryBlobService()
    far = FaultyBlobService(MemoryBlobService())
    combined = CombinedBlobService(near, far, write_through=True)
    far.plan("write", Fault.ERROR, nth=2)
    writer = await combined.open_write()
    await writer.write(BLOB_B[:100_000])
    with pytest.raises(StoreUnavailableError):
        await writer.write(BLOB_B[100_000:200_000])
    with pytest.raises(StoreUnavailableError):
        await writer.close()
    assert len(near) == 0 and len(far.inner) == 0  # type: ignore[arg-type]


async def test_write_through_gathers_small_writes_and_fails_on_close() -> None:
    near = MemoryBlobService()
    far = FaultyBlobService(MemoryBlobService())
    combined = CombinedBlobService(near, far, write_through=True)
    writer = await combined.open_write()
    for i in range(1000):
        await writer.write(BLOB_B[i : i + 1])
    assert far.calls["write"] == 0  # gathered, nothing sent yet
    assert await writer.close() == B3Digest.of(BLOB_B[:1000])
    assert far.calls["write"] == 1
    far.plan("write", Fault.ERROR, nth=1)
    writer = await combined.open_write()
    await writer.write(b"small")  # gathered: the failure comes at close
    with pytest.raises(StoreUnavailableError):
        await writer.close()
    assert not await near.has(B3Digest.of(b"small"))


class _DropsLastByte(WrapperBlobService):
    """A broken far whose writer loses the last byte of every write."""

    async def open_write(self) -> BlobWriter:
        class Lossy(WrapperBlobWriter):
            async def write(self, data: bytes | bytearray | memoryview) -> int:
                await self.inner.write(bytes(data)[:-1])
                return len(data)

        return Lossy(await self.inner.open_write())


async def test_write_through_digests_must_agree() -> None:
    combined = CombinedBlobService(
        MemoryBlobService(), _DropsLastByte(MemoryBlobService()), write_through=True
    )
    with pytest.raises(DigestMismatchError, match="write-through"):
        await combined.put(b"hello, far")


async def test_aclose_closes_near_and_far_once() -> None:
    closed: list[str] = []

    class Closing(MemoryBlobService):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        async def aclose(self) -> None:
            closed.append(self.name)

    combined = CombinedBlobService(Closing("near"), Closing("far"))
    async with combined:
        pass
    await combined.aclose()
    assert closed == ["near", "far"]


async def test_an_object_store_near_ends_up_with_far_s_chunks() -> None:
    near, far = memory_objectstore(), memory_objectstore()
    combined = CombinedBlobService(near, far)
    data = pseudo_random_bytes(2_500_000, seed=43)
    digest = await far.put(data)
    assert await combined.get(digest) == data
    # The per-chunk copies and the whole-blob copy agree: the same cut points, so near's
    # index lists exactly far's chunks, and near can serve the blob on its own.
    assert await near.chunks(digest) == await far.chunks(digest)
    assert await near.get(digest) == data
