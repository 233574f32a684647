"""The memory backend against the conformance suite, on asyncio and on uvloop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from castore import BlobService, MemoryBlobService
from castore.testing.conformance import BlobServiceConformance


class TestMemory(BlobServiceConformance):
    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with MemoryBlobService() as svc:
            yield svc


class TestMemoryOnUvloop(TestMemory):
    @pytest.fixture
    def anyio_backend(self) -> tuple[str, dict[str, bool]]:
        return ("asyncio", {"use_uvloop": True})
