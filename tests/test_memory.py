"""The memory backend against the conformance suite, on asyncio and on uvloop."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castore import B3Digest, BlobService, MemoryBlobService
from castore.testing.conformance import BlobServiceConformance, check_reader_op


class TestMemory(BlobServiceConformance):
    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with MemoryBlobService() as svc:
            yield svc


class TestMemoryOnUvloop(TestMemory):
    @pytest.fixture
    def anyio_backend(self) -> tuple[str, dict[str, bool]]:
        return ("asyncio", {"use_uvloop": True})


# A blob is kept in the parts it was written in: reads, seeks and readinto across part
# boundaries, and writes of every kind of buffer, must give back exactly the bytes written.

_DATA = random.Random(11).randbytes(3 << 20)


async def _write_in(service: MemoryBlobService, sizes: list[int], kinds: list[str]) -> bytes:
    """Write a prefix of _DATA in pieces of ``sizes``, each passed as bytes, a bytearray
    (changed after the write), a view of bytes (released after the write) or a view of
    a bytearray; the bytes written."""
    writer = await service.open_write()
    pos = 0
    for i, size in enumerate(sizes):
        piece = _DATA[pos : pos + size]
        kind = kinds[i % len(kinds)]
        if kind == "bytes":
            await writer.write(piece)
        elif kind == "bytearray":
            buf = bytearray(piece)
            await writer.write(buf)
            buf[:] = b"\xff" * len(buf)
        elif kind == "view":
            view = memoryview(_DATA)[pos : pos + size]
            await writer.write(view)
            view.release()
        else:
            await writer.write(memoryview(bytearray(piece)))
        pos += size
    digest = await writer.close()
    assert digest == B3Digest.of(_DATA[:pos])
    return _DATA[:pos]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(
        st.sampled_from([1, 100, 4096, 65535, 65536, 70000, 262144, 262148, 1 << 20]),
        min_size=1,
        max_size=10,
    ),
    kinds=st.lists(
        st.sampled_from(["bytes", "bytearray", "view", "bytearray-view"]), min_size=1, max_size=4
    ),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("read"), st.integers(-1, 600_000)),
            st.tuples(st.just("readinto"), st.integers(0, 600_000)),
            st.tuples(st.just("seek0"), st.integers(0, 3_000_000)),
        ),
        max_size=10,
    ),
)
async def test_parts_read_back_exactly(
    sizes: list[int], kinds: list[str], ops: list[tuple[str, int]]
) -> None:
    service = MemoryBlobService()
    data = await _write_in(service, sizes, kinds)
    reader = await service.open_read(B3Digest.of(data))
    assert reader is not None
    pos = 0
    async with reader:
        for op in ops:
            pos = await check_reader_op(reader, data, pos, op, past_end=True)
        await reader.seek(0)
        assert await reader.read() == data


async def test_written_bytes_are_kept_without_a_copy() -> None:
    # A read that takes exactly one written part returns that part: a server streaming
    # a blob in the messages' size copies nothing.
    service = MemoryBlobService()
    parts = [random.Random(i).randbytes(256 << 10) for i in range(3)]
    writer = await service.open_write()
    for part in parts:
        await writer.write(part)
    digest = await writer.close()
    reader = await service.open_read(digest)
    assert reader is not None
    async with reader:
        for part in parts:
            assert await reader.read(len(part)) is part
        assert await reader.read(1) == b""


async def test_abort_while_hashing_stores_nothing() -> None:
    # More than one hashing batch is written, then the writer is aborted: nothing stored.
    service = MemoryBlobService()
    writer = await service.open_write()
    for i in range(40):
        await writer.write(_DATA[i * 262144 : (i + 1) * 262144])
    await writer.abort()
    assert len(service) == 0
    assert [info async for info in service.list_blobs()] == []


async def test_listing_gives_sizes_of_parted_blobs() -> None:
    service = MemoryBlobService()
    data = await _write_in(service, [100, 70000, 262144, 5], ["bytes", "bytearray"])
    infos = [info async for info in service.list_blobs(details=True)]
    assert [(i.digest, i.size) for i in infos] == [(B3Digest.of(data), len(data))]
