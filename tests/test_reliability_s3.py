"""The S3 server (SeaweedFS) killed with SIGKILL in the middle of an upload or a read,
then started again.

``test_objectstore_s3.py::test_s3_dies_mid_upload`` kills it once, mid-stream. Here it is
killed at chosen points of the upload: when the first chunk is being stored, halfway
through the chunks, and while the blob index is being stored. Each time: ``close()``
raises a clear store error within seconds; afterwards, with the server back, nothing
half-written is visible (a HEAD finds no index, and every chunk object a HEAD finds
decodes to exactly its digest); the same write then succeeds. A reader whose server dies
mid-blob gets an error, not a hang and not short data, and reads the blob once the
server is back.
"""

from __future__ import annotations

import time

import anyio
import obstore
import pytest
from helpers import get_after_restart
from obstore.store import MemoryStore

from castore import B3Digest, ObjectStoreBlobService, from_addr
from castore.errors import StoreError
from castore.objectstore import ObstoreAdapter
from castore.objectstore._codec import decode_chunk
from castore.testing.conformance import pseudo_random_bytes
from castore.testing.faults import Fault, FaultyStore
from castore.testing.seaweedfs import SeaweedFS

AVG = 64 * 1024
DATA = pseudo_random_bytes(6 << 20, seed=91)
DIGEST = B3Digest.of(DATA)
# Fail fast once the server is gone: obstore's defaults retry for up to 3 minutes.
FAST = "&max_retries=1&retry_timeout=3&connect_timeout=1s&timeout=5s"


def _chunk_digests() -> list[bytes]:
    async def go() -> list[bytes]:
        async with ObjectStoreBlobService(MemoryStore(), avg_chunk_size=AVG) as svc:
            chunks = await svc.chunks(await svc.put(DATA))
        assert chunks is not None and len(chunks) > 20
        return sorted({c.digest.digest for c in chunks})

    return anyio.run(go)


CHUNKS = _chunk_digests()


async def _nothing_half_written(s3: object, *, indexed: bool = False) -> int:
    """No index for DATA (unless ``indexed``); every chunk object that exists is whole.
    The number of chunk objects found."""
    h = DIGEST.hex()
    assert (
        await anyio.to_thread.run_sync(get_after_restart, s3, f"blobs/b3/{h[:4]}/{h}") is not None
    ) == indexed
    if not indexed:
        with pytest.raises(FileNotFoundError):
            await obstore.head_async(s3, f"blobs/b3/{h[:4]}/{h}")  # type: ignore[arg-type]
    found = 0
    for d in CHUNKS:
        frame = await anyio.to_thread.run_sync(
            get_after_restart, s3, f"chunks/b3/{d.hex()[:4]}/{d.hex()}"
        )
        if frame is not None:
            decode_chunk(frame, d, expected_size=None, max_size=1 << 20)  # raises unless whole
            found += 1
    return found


@pytest.mark.parametrize("point", ["first-chunk", "half-the-chunks", "the-index"])
async def test_s3_killed_at_a_point_of_an_upload(
    seaweedfs: SeaweedFS, castore_s3_url: str, point: str
) -> None:
    plain = from_addr(castore_s3_url + FAST + f"&avg_chunk_size={AVG}")
    assert isinstance(plain, ObjectStoreBlobService)
    adapter = plain.adapter
    assert isinstance(adapter, ObstoreAdapter)
    s3 = adapter.store
    faulty = FaultyStore(adapter)
    svc = ObjectStoreBlobService(faulty, avg_chunk_size=AVG)
    # Hold the chosen put a moment, kill the server meanwhile: the put meets a dead server.
    if point == "the-index":
        faulty.plan("put", Fault.DELAY, nth=1, where="blobs/", delay=1.0)
    else:
        nth = 1 if point == "first-chunk" else len(CHUNKS) // 2
        faulty.plan("put", Fault.DELAY, nth=nth, where="chunks/", delay=1.0)

    async def kill_when_held() -> None:
        while not faulty.faults:  # noqa: ASYNC110 - the wrapper's log has no event
            await anyio.sleep(0.01)
        await anyio.to_thread.run_sync(seaweedfs.kill)

    started = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_when_held)
            with pytest.raises(StoreError) as info:
                await svc.put(DATA)
        elapsed = time.monotonic() - started
        assert elapsed < 30, f"the failure took {elapsed:.0f} s to surface"
        assert "chunk" in str(info.value) or "index" in str(info.value), str(info.value)
    finally:
        await anyio.to_thread.run_sync(seaweedfs.start)
    found = await _nothing_half_written(s3)
    assert not await svc.has(DIGEST)
    # The same write succeeds now, storing only what is missing.
    faulty.clear()
    written = faulty.written
    assert await svc.put(DATA) == DIGEST
    assert faulty.written - written == len(CHUNKS) - found + 1
    assert await plain.get(DIGEST) == DATA
    print(
        f"\nS3 killed at {point}: {type(info.value).__name__} after {elapsed:.1f} s, "
        f"{found} whole chunk objects left, no index; retry stored {len(CHUNKS) - found} "
        "chunks and the index"
    )


async def test_s3_killed_in_the_middle_of_a_read(seaweedfs: SeaweedFS, castore_s3_url: str) -> None:
    svc = from_addr(castore_s3_url + FAST + f"&avg_chunk_size={AVG}")
    assert await svc.put(DATA) == DIGEST
    reader = await svc.open_read(DIGEST)
    assert reader is not None
    got = bytearray()
    started = time.monotonic()
    try:
        async with reader:
            got += await reader.read(1 << 20)
            await anyio.to_thread.run_sync(seaweedfs.kill)
            with pytest.raises(StoreError):
                while piece := await reader.read(256 << 10):
                    got += piece
        assert time.monotonic() - started < 30
        assert DATA.startswith(bytes(got)) and len(got) < len(DATA)
    finally:
        await anyio.to_thread.run_sync(seaweedfs.start)
    assert isinstance(svc, ObjectStoreBlobService)
    await _nothing_half_written(svc.adapter.store, indexed=True)  # type: ignore[attr-defined]
    assert await svc.get(DIGEST) == DATA
