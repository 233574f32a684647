"""ObjectStoreBlobService: the conformance suite on memory and local disk, URLs, and the
behaviour specific to this backend (chunk lists, dedup, layout of what it writes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from obstore.store import MemoryStore

from castore import (
    BlobService,
    ObjectStoreBlobService,
    from_addr,
)
from castore.objectstore import ObstoreAdapter
from castore.testing.conformance import BlobServiceConformance


class TestObjectStoreMemory(BlobServiceConformance):
    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with from_addr("objectstore+memory:///") as svc:
            yield svc


class TestObjectStoreLocal(BlobServiceConformance):
    @pytest.fixture
    async def service(self, tmp_path: Path) -> AsyncIterator[BlobService]:
        async with from_addr(f"objectstore+file://{tmp_path}/store") as svc:
            yield svc


class _RemoteLike(ObstoreAdapter):
    """A memory store that the writer treats as remote: chunks go up as async puts."""

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.in_process = False


class TestObjectStoreAsyncUploads(BlobServiceConformance):
    """The upload path used for S3 and other remote stores, over a memory store."""

    large_blob_size = 24 * 1024 * 1024

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with ObjectStoreBlobService(_RemoteLike()) as svc:
            yield svc
