"""A local store's gets and existence checks read the file system directly: the same
objects, absences and errors as a call through obstore, on files obstore wrote."""

from __future__ import annotations

import os
from pathlib import Path

import obstore
import pytest
from obstore.store import LocalStore

from castore import ObjectStoreBlobService
from castore.errors import DataCorruptionError, StoreError
from castore.objectstore import ObstoreAdapter

KEYS = [
    "chunks/b3/ab/abcdef0123",
    "blobs/b3/00/0011",
    "some-prefix/v1.2/chunks/b3/ff/ff00",  # a layout prefix of plain characters
    "odd prefix/chunks/b3/aa/aa",  # percent-encoded by obstore: read through it
    "100%/x",
    "ü/key",
]


@pytest.fixture
def local(tmp_path: Path) -> tuple[LocalStore, ObstoreAdapter]:
    store = LocalStore(tmp_path)
    return store, ObstoreAdapter(store)


@pytest.mark.parametrize("key", KEYS)
def test_reads_what_obstore_wrote(local: tuple[LocalStore, ObstoreAdapter], key: str) -> None:
    store, adapter = local
    data = os.urandom(5000) + key.encode()
    assert adapter.get(key) is None
    assert not adapter.exists(key)
    obstore.put(store, key, data)
    got = adapter.get(key)
    assert got is not None and bytes(got) == data
    assert adapter.exists(key)
    assert bytes(obstore.get(store, key).bytes()) == data  # the same object both ways


def test_transient_gets_reuse_one_buffer_a_thread(
    local: tuple[LocalStore, ObstoreAdapter],
) -> None:
    store, adapter = local
    small = [os.urandom(n) for n in (1000, 300_000, 1 << 20, 5)]
    big = os.urandom(5 << 20)  # over the size read into the thread's buffer
    for i, data in enumerate([*small, big]):
        obstore.put(store, f"chunks/{i}", data)
    views = []
    for i, data in enumerate(small):
        got = adapter.get_transient(f"chunks/{i}")
        assert got is not None and bytes(got) == data
        views.append(got)
    # The small ones shared the thread's buffer: the first view now shows other bytes.
    assert bytes(views[0]) != small[0]
    got = adapter.get_transient("chunks/4")
    assert isinstance(got, bytes) and got == big
    assert adapter.get_transient("chunks/missing") is None
    # get() always returns bytes of their own.
    first = adapter.get("chunks/0")
    adapter.get("chunks/1")
    assert first == small[0]


def test_empty_object_and_sizes(local: tuple[LocalStore, ObstoreAdapter]) -> None:
    store, adapter = local
    for n in (0, 1, 4095, 4096, 1 << 20, (1 << 20) + 3):
        data = os.urandom(n)
        obstore.put(store, f"chunks/b3/{n:08x}", data)
        got = adapter.get(f"chunks/b3/{n:08x}")
        assert got is not None and bytes(got) == data


def test_a_folder_or_a_file_on_the_path_is_absent(
    local: tuple[LocalStore, ObstoreAdapter], tmp_path: Path
) -> None:
    store, adapter = local
    obstore.put(store, "chunks/b3/aa/aaaa", b"x")
    # A key that names a folder, and one that goes through a file: no such object.
    for key in ("chunks/b3/aa", "chunks/b3/aa/aaaa/below"):
        assert adapter.get(key) is None
        assert not adapter.exists(key)
    assert (tmp_path / "chunks/b3/aa").is_dir()


def test_obstore_staging_files_are_not_objects(
    local: tuple[LocalStore, ObstoreAdapter], tmp_path: Path
) -> None:
    _, adapter = local
    # obstore writes "<key>#<n>" first and renames it: such a name is never read directly.
    (tmp_path / "chunks").mkdir()
    (tmp_path / "chunks" / "k#1").write_bytes(b"partial")
    (tmp_path / "chunks" / "k").write_bytes(b"whole")
    assert bytes(adapter.get("chunks/k") or b"") == b"whole"
    assert adapter._local_path("chunks/k#1") is None
    for key in ("../escape", "chunks/../x", "/abs", "chunks//x", "chunks/", ".hidden/x"):
        assert adapter._local_path(key) is None, key


def test_a_relative_folder_is_read_through_obstore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # obstore resolves a relative folder when the store is made; a later chdir must not
    # send direct reads elsewhere.
    monkeypatch.chdir(tmp_path)
    store = LocalStore("rel", mkdir=True)
    adapter = ObstoreAdapter(store)
    obstore.put(store, "chunks/b3/aa/x", b"here")
    monkeypatch.chdir("/")
    assert adapter._local_path("chunks/b3/aa/x") is None
    assert bytes(adapter.get("chunks/b3/aa/x") or b"") == b"here"
    assert adapter.exists("chunks/b3/aa/x")


def test_a_broken_folder_is_a_store_error(tmp_path: Path) -> None:
    # A loop of symlinks where the store's folder should be: not absent, an error.
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    adapter = ObstoreAdapter(LocalStore(tmp_path))
    adapter._root = str(tmp_path / "a")
    with pytest.raises(StoreError, match="reading chunks/x"):
        adapter.get("chunks/x")
    with pytest.raises(StoreError, match="checking chunks/x"):
        adapter.exists("chunks/x")


def _flip_last_byte_of_a_chunk(root: Path) -> None:
    victim = next(p for p in sorted(root.rglob("*")) if p.is_file() and "chunks" in p.parts)
    data = victim.read_bytes()
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


async def test_service_reads_back_through_direct_reads(tmp_path: Path) -> None:
    svc = ObjectStoreBlobService(LocalStore(tmp_path))
    data = os.urandom(3 << 20)
    digest = await svc.put(data)
    reader = await svc.open_read(digest)
    assert reader is not None
    async with reader:
        assert await reader.read() == data
    # A chunk corrupted on disk is caught by the digest check, read directly or not.
    chunks = await svc.chunks(digest)
    assert chunks is not None and len(chunks) >= 2
    _flip_last_byte_of_a_chunk(tmp_path)
    reader = await svc.open_read(digest)
    assert reader is not None
    with pytest.raises(DataCorruptionError):
        async with reader:
            await reader.read()
