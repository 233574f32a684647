"""The store adapter's lifecycle primitives (list, head, delete) on memory, local disk
and a real S3 server (SeaweedFS), and through the fault-injecting adapter."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import anyio
import pytest
from obstore.store import LocalStore, MemoryStore

from castore import B3Digest, ObjectStoreBlobService, from_addr
from castore.errors import StoreError, UnsupportedOperationError
from castore.objectstore import ObjectInfo, ObstoreAdapter, StoreAdapter
from castore.objectstore._layout import Layout
from castore.testing.faults import Fault, FaultyStore, InjectedStoreError


@pytest.fixture(params=["memory", "local", "s3"])
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> StoreAdapter:
    # Built outside the event loop: creating an S3 client reads certificates.
    if request.param == "memory":
        return ObstoreAdapter(MemoryStore())
    if request.param == "local":
        return ObstoreAdapter(LocalStore(tmp_path))
    svc = from_addr(request.getfixturevalue("castore_s3_url"))
    assert isinstance(svc, ObjectStoreBlobService)
    return svc.adapter


async def _keys(adapter: StoreAdapter, prefix: str, start_after: str | None = None) -> list[str]:
    return sorted(
        [i.key async for page in adapter.list(prefix, start_after=start_after) for i in page]
    )


async def test_list_head_delete(adapter: StoreAdapter) -> None:
    assert await _keys(adapter, "blobs/b3/") == []
    await adapter.put_async("blobs/b3/aaaa/one", b"1")
    await adapter.put_async("blobs/b3/aaab/two", b"22")
    await adapter.put_async("blobs/b3x/three", b"333")  # not under blobs/b3/
    await adapter.put_async("chunks/b3/aaaa/four", b"4444")

    assert await _keys(adapter, "blobs/b3/") == ["blobs/b3/aaaa/one", "blobs/b3/aaab/two"]
    assert await _keys(adapter, "blobs/b3") == ["blobs/b3/aaaa/one", "blobs/b3/aaab/two"]
    assert await _keys(adapter, "blobs/b3/", "blobs/b3/aaaa/one") == ["blobs/b3/aaab/two"]
    infos = {i.key: i async for page in adapter.list("blobs/b3/") for i in page}
    assert infos["blobs/b3/aaab/two"].size == 2
    assert isinstance(infos["blobs/b3/aaab/two"].last_modified, datetime)
    assert infos["blobs/b3/aaab/two"].last_modified.tzinfo is not None

    head = await adapter.head_async("chunks/b3/aaaa/four")
    assert head is not None and head.key == "chunks/b3/aaaa/four" and head.size == 4
    assert adapter.head("chunks/b3/aaaa/four") == head
    assert await adapter.head_async("chunks/b3/aaaa/nope") is None
    assert adapter.head("chunks/b3/aaaa/nope") is None

    # A batch with an absent key deletes the others and does not fail.
    await adapter.delete_async(["blobs/b3/aaaa/one", "blobs/b3/ffff/absent", "blobs/b3x/three"])
    assert await _keys(adapter, "blobs") == ["blobs/b3/aaab/two"]
    assert await adapter.head_async("blobs/b3/aaaa/one") is None
    await adapter.delete_async([])
    await adapter.delete_async(["blobs/b3/ffff/absent"])
    assert await _keys(adapter, "") == ["blobs/b3/aaab/two", "chunks/b3/aaaa/four"]


async def test_list_pages_of_many(adapter: StoreAdapter) -> None:
    """Listings longer than one page (S3 answers 1000 keys a request) come back whole."""
    keys = [f"chunks/b3/{i:04x}/{i:064x}" for i in range(1050)]
    todo = iter(keys)

    async def putter() -> None:
        for k in todo:
            await adapter.put_async(k, b"x")

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(putter)
    pages = [page async for page in adapter.list("chunks/b3/")]
    assert sorted(i.key for p in pages for i in p) == keys
    assert all(len(p) <= 1000 for p in pages)


async def test_defaults_raise_a_clear_error() -> None:
    """An adapter written before listing existed still works; the lifecycle calls say
    what is missing."""

    class ReadWriteOnly(StoreAdapter):
        def get(self, key: str) -> None:
            return None

        async def get_async(self, key: str) -> None:
            return None

        def exists(self, key: str) -> bool:
            return False

        async def exists_async(self, key: str) -> bool:
            return False

        def put_new(self, key: str, data: object) -> bool:
            return True

        async def put_new_async(self, key: str, data: object) -> bool:
            return True

        async def put_async(self, key: str, data: object) -> None:
            pass

    a = ReadWriteOnly()
    with pytest.raises(UnsupportedOperationError, match="ReadWriteOnly does not support listing"):
        [p async for p in a.list("blobs/")]
    with pytest.raises(NotImplementedError, match="HEAD"):
        a.head("k")
    with pytest.raises(UnsupportedOperationError, match="HEAD"):
        await a.head_async("k")
    with pytest.raises(UnsupportedOperationError, match="deletion"):
        await a.delete_async(["k"])


async def test_faulty_store_forwards_and_injects() -> None:
    store = FaultyStore(MemoryStore())
    await store.put_async("blobs/b3/aaaa/one", b"1")
    assert [i.key async for p in store.list("blobs/") for i in p] == ["blobs/b3/aaaa/one"]
    info = await store.head_async("blobs/b3/aaaa/one")
    assert isinstance(info, ObjectInfo) and info.size == 1
    # Injected faults come out translated, as a real store's errors do.
    store.plan("list", Fault.ERROR, nth=1)
    with pytest.raises(StoreError, match="listing blobs/") as listing:
        [p async for p in store.list("blobs/")]
    assert isinstance(listing.value.__cause__, InjectedStoreError)
    store.plan("head", Fault.ERROR, nth=1)
    with pytest.raises(StoreError, match="checking blobs/"):
        store.head("blobs/b3/aaaa/one")
    store.plan("delete", Fault.ERROR, nth=1, after=True)  # deleted, then told it failed
    with pytest.raises(StoreError, match="deleting blobs/"):
        await store.delete_async(["blobs/b3/aaaa/one"])
    assert await store.head_async("blobs/b3/aaaa/one") is None
    assert store.calls["list"] == 2 and store.calls["head"] == 3 and store.calls["delete"] == 1


def test_layout_prefixes_and_digest_of() -> None:
    d = B3Digest(bytes(range(32))).digest
    for layout in (Layout(), Layout("/some/prefix/")):
        assert layout.blob(d).startswith(layout.blobs)
        assert layout.chunk(d).startswith(layout.chunks)
        assert layout.digest_of(layout.blob(d)) == d
        assert layout.digest_of(layout.chunk(d)) == d
    assert Layout("p").blobs == "p/blobs/b3/"
    h = d.hex()
    assert Layout.digest_of(f"blobs/b3/{h[:4]}/{h}.tmp") is None
    assert Layout.digest_of(f"blobs/b3/{h[:2]}/{h}") is None  # the doc comment's 2-char shard
    assert Layout.digest_of(f"blobs/b3/{h[:4]}/{h.upper()}") is None
    assert Layout.digest_of(f"blobs/b3/ffff/{h}") is None
    assert Layout.digest_of(f"blobs/b3/{h[:4]}/{'z' * 64}") is None
