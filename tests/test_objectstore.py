"""ObjectStoreBlobService: the conformance suite on memory and local disk, URLs, and the
behaviour specific to this backend (chunk lists, dedup, layout of what it writes)."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path

import obstore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from obstore.store import AzureStore, GCSStore, HTTPStore, LocalStore, MemoryStore, S3Store

from castore import (
    B3Digest,
    BlobService,
    ChunkMeta,
    InvalidAddressError,
    ObjectStoreBlobService,
    from_addr,
)
from castore.objectstore import ObstoreAdapter, PipelineConfig
from castore.objectstore._chunker import make_fastcdc
from castore.testing.conformance import BlobServiceConformance, pseudo_random_bytes


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


# --- from_addr URLs ----------------------------------------------------------------------


def _adapter_store(svc: BlobService) -> object:
    assert isinstance(svc, ObjectStoreBlobService)
    assert isinstance(svc.adapter, ObstoreAdapter)
    return svc.adapter.store


def test_url_memory_and_chunk_size() -> None:
    svc = from_addr("objectstore+memory:///?avg_chunk_size=65536")
    assert isinstance(_adapter_store(svc), MemoryStore)
    assert isinstance(svc, ObjectStoreBlobService)
    assert (svc.min_chunk_size, svc.avg_chunk_size, svc.max_chunk_size) == (32768, 65536, 131072)
    assert isinstance(from_addr("objectstore+memory://"), ObjectStoreBlobService)


def test_url_file_creates_folder(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b c"
    svc = from_addr(f"objectstore+file://{tmp_path}/a/b%20c")
    assert isinstance(_adapter_store(svc), LocalStore)
    assert target.is_dir()


def test_url_remote_stores() -> None:
    s3 = _adapter_store(
        from_addr(
            "objectstore+s3://bucket/some/prefix?endpoint=http://127.0.0.1:9&region=eu-west-1"
            "&access_key_id=AK&secret_access_key=SK&allow_http=true&timeout=5s&max_retries=2"
            "&retry_timeout=1.5"
        )
    )
    assert isinstance(s3, S3Store)
    assert s3.prefix == "some/prefix"
    assert s3.config["endpoint"] == "http://127.0.0.1:9"
    assert s3.config["region"] == "eu-west-1"
    assert s3.client_options == {"allow_http": "true", "timeout": "5s"}
    assert s3.retry_config is not None and s3.retry_config["max_retries"] == 2
    assert isinstance(_adapter_store(from_addr("objectstore+gs://bucket/p")), GCSStore)
    assert isinstance(
        _adapter_store(from_addr("objectstore+az://container/p?account_name=acct")), AzureStore
    )
    assert isinstance(_adapter_store(from_addr("objectstore+https://example.com/x")), HTTPStore)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("objectstore+memory:///x", "no host or path"),
        ("objectstore+memory:///?foo=1", "foo"),
        ("objectstore+memory:///?avg_chunk_size=abc", "avg_chunk_size must be an integer"),
        ("objectstore+memory:///?avg_chunk_size=100", "avg_chunk_size must be an integer from"),
        ("objectstore+memory:///?avg_chunk_size=1&avg_chunk_size=2", "given twice"),
        ("objectstore+memory:///#frag", "fragment"),
        ("objectstore+file://relative/path", "no host"),
        ("objectstore+file://", "absolute path"),
        ("objectstore+s3:///prefix-only", "needs a bucket"),
        ("objectstore+s3://bucket/p?bogus_key=1", "bogus_key"),
        ("objectstore+s3://bucket/p?allow_http=maybe", "boolean"),
        ("objectstore+s3://bucket/p?endpoint=", "has no value"),
        ("objectstore+s3://bucket/p?max_retries=-1", "max_retries"),
        ("objectstore+s3://key:secret@bucket/p", "credentials"),
        ("objectstore+https://example.com/p?region=x", "does not accept"),
        ("objectstore+ftp://host/p", "unknown scheme"),
    ],
)
def test_url_errors(url: str, says: str) -> None:
    with pytest.raises(InvalidAddressError, match=says):
        from_addr(url)


def test_url_errors_do_not_echo_secrets() -> None:
    with pytest.raises(InvalidAddressError) as info:
        from_addr("objectstore+s3://bucket/p?secret_access_key=TOPSECRET&bogus_key=1")
    assert "TOPSECRET" not in str(info.value)
    with pytest.raises(InvalidAddressError) as info:
        from_addr("objectstore+s3://AKIA:TOPSECRET@bucket/p")
    assert "TOPSECRET" not in str(info.value)


def test_constructor_checks() -> None:
    with pytest.raises(TypeError, match="obstore store or a StoreAdapter"):
        ObjectStoreBlobService(object())  # type: ignore[arg-type]
    for bad in (256, 4 << 20, 1.5, True):
        with pytest.raises(ValueError, match="avg_chunk_size"):
            ObjectStoreBlobService(MemoryStore(), avg_chunk_size=bad)  # type: ignore[arg-type]


# --- behaviour specific to this backend --------------------------------------------------


async def test_small_writes_are_coalesced_and_dedup_across_blobs() -> None:
    store = MemoryStore()
    svc = ObjectStoreBlobService(store)
    data = pseudo_random_bytes(3_000_000, seed=31)
    writer = await svc.open_write()
    for i in range(0, len(data), 4096):  # gRPC-sized pieces
        await writer.write(bytearray(data[i : i + 4096]))
    digest = await writer.close()
    assert digest == B3Digest.of(data)
    chunks = await svc.chunks(digest)
    assert chunks is not None and len(chunks) > 3
    count = len([m for page in obstore.list(store, prefix="chunks/") for m in page])
    # A blob sharing a long prefix stores only the chunks that differ.
    other = data[:2_000_000] + pseudo_random_bytes(500_000, seed=32)
    await svc.put(other)
    more = len([m for page in obstore.list(store, prefix="chunks/") for m in page])
    assert more - count <= 3


async def test_writer_copies_mutable_input() -> None:
    """Mutating a written buffer afterwards does not change what is stored."""
    svc = ObjectStoreBlobService(MemoryStore())
    buf = bytearray(pseudo_random_bytes(2_000_000, seed=33))
    original = bytes(buf)
    writer = await svc.open_write()
    await writer.write(buf)
    await writer.write(memoryview(buf)[:100_000])
    buf[:] = bytes(len(buf))
    digest = await writer.close()
    assert digest == B3Digest.of(original + original[:100_000])
    assert await svc.get(digest) == original + original[:100_000]


async def test_chunk_digest_reads_as_blob_and_has_is_consistent() -> None:
    svc = ObjectStoreBlobService(MemoryStore())
    data = pseudo_random_bytes(1_500_000, seed=34)
    digest = await svc.put(data)
    chunks = await svc.chunks(digest)
    assert chunks
    for c in chunks:
        assert await svc.has(c.digest)
        assert await svc.chunks(c.digest) == []
    missing = B3Digest.of(b"missing")
    assert (await svc.has(missing), await svc.open_read(missing), await svc.chunks(missing)) == (
        False,
        None,
        None,
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 60_000),
    cuts=st.lists(st.integers(0, 60_000), max_size=20),
)
async def test_pipeline_cuts_like_one_shot(seed: int, size: int, cuts: list[int]) -> None:
    """Through the whole writer (tiny segments, so a blob spans many jobs), any framing of
    the writes gives the chunk list of one-shot FastCDC over the blob."""
    tiny = PipelineConfig(segment=8192, piece=4096, coalesce=1024, stream_items=2)
    svc = ObjectStoreBlobService(MemoryStore(), avg_chunk_size=1024, pipeline=tiny)
    data = random.Random(seed).randbytes(size)
    bounds = sorted({0, size, *(c for c in cuts if c <= size)})
    writer = await svc.open_write()
    for a, b in itertools.pairwise(bounds):
        await writer.write(data[a:b])
    digest = await writer.close()
    assert digest == B3Digest.of(data)
    expected = [
        ChunkMeta(B3Digest.of(bytes(c.data)), c.length) for c in make_fastcdc(1024).cut_buf(data)
    ]
    assert await svc.chunks(digest) == (expected if len(expected) >= 2 else [])
    assert await svc.get(digest) == data
    await svc.aclose()
