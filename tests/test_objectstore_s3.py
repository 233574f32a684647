"""The conformance suite against a real S3 server (SeaweedFS, started by the session
fixture from castore's pytest plugin), through an ``objectstore+s3://`` URL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio.to_thread
import obstore
import pytest

from castore import B3Digest, BlobService, ObjectStoreBlobService, StoreError, from_addr
from castore.errors import StoreUnavailableError
from castore.objectstore import ObstoreAdapter
from castore.testing.conformance import BlobServiceConformance, pseudo_random_bytes

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from castore.testing.seaweedfs import SeaweedFS


class TestObjectStoreS3(BlobServiceConformance):
    large_blob_size = 32 * 1024 * 1024

    @pytest.fixture
    async def service(self, castore_s3_url: str) -> AsyncIterator[BlobService]:
        async with from_addr(castore_s3_url) as svc:
            yield svc


class _Counting(ObstoreAdapter):
    """Counts the chunk objects the service actually wrote (conditional creates that won)."""

    written = 0

    async def put_new_async(self, key: str, data: Buffer) -> bool:
        wrote = await super().put_new_async(key, data)
        self.written += wrote
        return wrote


async def test_s3_layout_and_dedup(castore_s3_url: str) -> None:
    """Chunks and indexes land under the URL's prefix with tvix's keys; a second write of
    the same bytes stores no chunk again (conditional creates against a real server)."""
    plain = from_addr(castore_s3_url)
    assert isinstance(plain, ObjectStoreBlobService)
    assert isinstance(plain.adapter, ObstoreAdapter)
    assert not plain.adapter.in_process
    store = plain.adapter.store
    counting = _Counting(store)
    svc = ObjectStoreBlobService(counting)
    data = pseudo_random_bytes(3_000_000, seed=11)
    digest = await svc.put(data)
    chunks = await svc.chunks(digest)
    assert chunks is not None and len(chunks) >= 2
    assert counting.written == len({c.digest for c in chunks})
    keys = sorted([m["path"] async for page in obstore.list(store) for m in page])
    h = digest.hex()
    assert keys == sorted(
        [f"blobs/b3/{h[:4]}/{h}"]
        + [f"chunks/b3/{c.digest.hex()[:4]}/{c.digest.hex()}" for c in chunks]
    )
    assert await svc.put(data) == digest
    assert counting.written == len({c.digest for c in chunks}), "a chunk was written twice"
    # A different service instance (another node) sees the same blob.
    assert await plain.get(digest) == data


async def test_s3_dies_mid_upload(seaweedfs: SeaweedFS, castore_s3_url: str) -> None:
    """The server is killed while a blob streams in: close() raises a store error within
    seconds, no index is written, and once the server is back the same bytes go in."""
    url = castore_s3_url + "&max_retries=1&retry_timeout=3&connect_timeout=1s&timeout=5s"
    svc = from_addr(url)
    data = pseudo_random_bytes(24 << 20, seed=12)
    digest = B3Digest.of(data)
    writer = await svc.open_write()
    await writer.write(data[: 4 << 20])
    await anyio.to_thread.run_sync(seaweedfs.kill)
    try:
        start = time.monotonic()
        with pytest.raises(StoreError) as info:
            for i in range(4 << 20, len(data), 1 << 20):
                await writer.write(data[i : i + (1 << 20)])
            await writer.close()
        assert time.monotonic() - start < 30
        assert isinstance(info.value, StoreUnavailableError), repr(info.value)
    finally:
        await anyio.to_thread.run_sync(seaweedfs.start)
    assert not await svc.has(digest)
    assert await svc.put(data) == digest
    assert await svc.get(digest) == data
