"""An application's test suite using castore's pytest fixtures.

Installing castore registers its pytest plugin (entry point ``pytest11``, name
``castore``), so these fixtures need no import and no ``conftest.py``:

- ``castore_memory``: a fresh, empty in-memory service;
- ``castore_local`` / ``castore_local_url``: an ``objectstore+file://`` service in an empty
  folder of ``tmp_path`` (and its URL, for code that takes a URL);
- ``castore_s3`` / ``castore_s3_url``: a fresh prefix on a real SeaweedFS S3 server that
  starts once per session when a test first asks for it (opt-in; skipped with the reason
  when the ``weed`` binary is absent);
- ``seaweedfs``: that server itself.

The fixtures are synchronous and return services, so the same ``async def`` tests run under
either async plugin; pick one in the application's pytest configuration::

    [tool.pytest.ini_options]
    asyncio_mode = "auto"      # pytest-asyncio
    # or: anyio_mode = "auto"  # anyio's plugin

castore's own suite runs this file both ways (tests/test_examples.py). To run it yourself::

    pytest -o asyncio_mode=auto -p no:anyio examples/test_app_with_fixtures.py
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pytest

import castore
import castore.http

# --- the application code under test: attachments kept in castore -------------------


class Attachments:
    """Stores attachments by content: the reference is the digest, so a re-sent file is
    stored once, and a reference can be checked without trusting whoever sent it."""

    def __init__(self, service: castore.BlobService) -> None:
        self.service = service

    async def save(self, data: bytes) -> str:
        return str(await self.service.put(data))

    async def load(self, ref: str) -> bytes | None:
        return await self.service.get(castore.B3Digest.parse(ref))

    async def preview(self, ref: str, size: int = 16) -> bytes:
        """The first ``size`` bytes, read without fetching the rest."""
        reader = await self.service.open_read(castore.B3Digest.parse(ref))
        if reader is None:
            raise KeyError(ref)
        async with reader:
            return await reader.read(size)


# --- its tests ------------------------------------------------------------------------


async def test_save_and_load(castore_memory: castore.MemoryBlobService) -> None:
    attachments = Attachments(castore_memory)
    ref = await attachments.save(b"Hello World!")
    assert ref.startswith("blake3-")
    assert await attachments.load(ref) == b"Hello World!"
    assert await attachments.save(b"Hello World!") == ref
    assert len(castore_memory) == 1


@pytest.fixture(params=["castore_memory", "castore_local"])
def any_store(request: pytest.FixtureRequest) -> castore.BlobService:
    """The same tests on memory and on local disk: ask the plugin's fixtures by name."""
    service: castore.BlobService = request.getfixturevalue(request.param)
    return service


async def test_every_backend(any_store: castore.BlobService) -> None:
    attachments = Attachments(any_store)
    data = bytes(range(256)) * 8192  # 2 MiB: several chunks on the object store
    ref = await attachments.save(data)
    assert await attachments.load(ref) == data
    assert await attachments.preview(ref) == data[:16]
    assert await attachments.load(str(castore.B3Digest.of(b"never saved"))) is None


async def test_local_store_dedups(
    castore_local: castore.BlobService, castore_local_url: str
) -> None:
    attachments = Attachments(castore_local)
    data = bytes(range(256)) * 4096
    assert await attachments.save(data) == await attachments.save(data)
    # The URL points at a folder in tmp_path: the chunk objects can be inspected there.
    root = Path(unquote(urlsplit(castore_local_url).path))
    chunk_files = [p for p in (root / "chunks").rglob("*") if p.is_file()]
    digest = castore.B3Digest.of(data)
    chunks = await castore_local.chunks(digest)
    assert chunks is not None
    # One object per distinct chunk (a blob of one chunk is stored under its own digest);
    # this repetitive MiB even repeats chunks within itself.
    assert len(chunk_files) == len({c.digest for c in chunks} or {digest})


async def test_http_gateway_in_process(castore_memory: castore.MemoryBlobService) -> None:
    """The gateway is plain ASGI: httpx can call it in-process, no server needed."""
    transport = httpx.ASGITransport(app=castore.http.app(castore_memory))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        r = await client.put("/blobs", content=b"0123456789")
        assert r.status_code == 201
        r = await client.get(r.headers["location"], headers={"Range": "bytes=2-4"})
        assert (r.status_code, r.content) == (206, b"234")


async def test_on_real_s3(castore_s3: castore.BlobService, castore_s3_url: str) -> None:
    """Opt-in: asking for ``castore_s3`` starts SeaweedFS for the session."""
    assert castore_s3_url.startswith("objectstore+s3://")
    attachments = Attachments(castore_s3)
    ref = await attachments.save(b"on S3")
    assert await attachments.load(ref) == b"on S3"
