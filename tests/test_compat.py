"""Bucket compatibility with Rust tvix/snix castore: keys, index bytes, chunk frames.

What castore writes is compared with what the generated protobuf class and one-shot
FastCDC say Rust writes; buckets laid out the way Rust writes them (frames without a
content size, old single-entry indexes, a key prefix) are read back.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import blake3
import obstore
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from obstore.store import LocalStore, MemoryStore

from castore import EMPTY_DIGEST, B3Digest, ChunkMeta, ObjectStoreBlobService, from_addr
from castore._proto.tvix.castore.v1 import StatBlobResponse, StatBlobResponseChunkMeta
from castore.errors import MalformedIndexError
from castore.objectstore._chunker import make_fastcdc
from castore.objectstore._codec import decode_index, encode_index
from castore.testing.fixtures import BLOB_A, BLOB_A_DIGEST, BLOB_B, BLOB_B_DIGEST


def _keys(store: MemoryStore | LocalStore) -> dict[str, bytes]:
    return {
        m["path"]: bytes(obstore.get(store, m["path"]).bytes())
        for page in obstore.list(store)
        for m in page
    }


def _rust_index(chunks: list[tuple[bytes, int]]) -> bytes:
    """The index Rust writes: StatBlobResponse with the chunks, empty for fewer than 2."""
    if len(chunks) < 2:
        return bytes(StatBlobResponse(chunks=[]))
    return bytes(
        StatBlobResponse(chunks=[StatBlobResponseChunkMeta(digest=d, size=s) for d, s in chunks])
    )


def _rust_chunks(data: bytes, avg: int = 262144) -> list[tuple[bytes, bytes, int]]:
    """(digest, data, size) of the chunks the Rust crate cuts ``data`` into."""
    out = []
    for c in make_fastcdc(avg).cut_buf(data):
        piece = bytes(c.data)
        out.append((blake3.blake3(piece).digest(), piece, c.length))
    return out


def _rust_frame(data: bytes) -> bytes:
    """A chunk frame as Rust's ``zstd::encode_all`` writes it: streamed, no content size."""
    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    frame = cobj.compress(data) + cobj.flush()
    assert zstandard.frame_content_size(frame) == -1
    return frame


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _unzstd(frame: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(frame, max_output_size=1 << 21)


# --- what castore writes ---------------------------------------------------------------


async def test_blob_a_layout() -> None:
    store = MemoryStore()
    svc = ObjectStoreBlobService(store)
    assert await svc.put(BLOB_A) == BLOB_A_DIGEST
    h = "7b7015bb92cf0b318037702a6cdd81dee41224f734684c2c122cd6359cb1ee63"
    objects = _keys(store)
    assert sorted(objects) == [f"blobs/b3/7b70/{h}", f"chunks/b3/7b70/{h}"]
    assert objects[f"blobs/b3/7b70/{h}"] == b""  # empty chunk list: 0 bytes on the wire
    frame = objects[f"chunks/b3/7b70/{h}"]
    assert zstandard.get_frame_parameters(frame)  # one zstd frame …
    assert _unzstd(frame) == BLOB_A


async def test_blob_b_layout() -> None:
    store = MemoryStore()
    svc = ObjectStoreBlobService(store)
    assert await svc.put(BLOB_B) == BLOB_B_DIGEST
    chunks = _rust_chunks(BLOB_B)
    assert [s for _, _, s in chunks] == [524288, 520192]
    h = BLOB_B_DIGEST.hex()
    assert h == "a82c5154a7a0c262c6fdb929a317585646f8fbcf80326d0a7b8747edaf2d99d2"
    objects = _keys(store)
    expected = {f"blobs/b3/a82c/{h}"} | {f"chunks/b3/{d.hex()[:4]}/{d.hex()}" for d, _, _ in chunks}
    assert set(objects) == expected
    index = objects[f"blobs/b3/a82c/{h}"]
    assert index == _rust_index([(d, s) for d, _, s in chunks])
    assert len(index) == 2 * (2 + 2 + 32 + 1 + 3)
    for d, piece, _ in chunks:
        assert _unzstd(objects[f"chunks/b3/{d.hex()[:4]}/{d.hex()}"]) == piece


async def test_multi_chunk_layout_and_prefix(tmp_path: Path) -> None:
    """A 5 MB blob with a key prefix on local disk: the files Rust would write."""
    data = random.Random(7).randbytes(5_000_000)
    svc = from_addr(f"objectstore+file://{tmp_path}")
    assert isinstance(svc, ObjectStoreBlobService)
    prefixed = ObjectStoreBlobService(LocalStore(tmp_path), prefix="/tenant/a/")
    digest = await prefixed.put(data)
    chunks = _rust_chunks(data)
    assert len(chunks) > 5
    files = _files(tmp_path)
    h = digest.hex()
    assert files == sorted(
        [f"tenant/a/blobs/b3/{h[:4]}/{h}"]
        + [f"tenant/a/chunks/b3/{d.hex()[:4]}/{d.hex()}" for d, _, _ in set(chunks)]
    )
    index = _read(tmp_path / f"tenant/a/blobs/b3/{h[:4]}/{h}")
    assert index == _rust_index([(d, s) for d, _, s in chunks])
    assert await prefixed.get(digest) == data
    assert await svc.has(digest) is False  # the prefix separates them


async def test_empty_blob_layout() -> None:
    store = MemoryStore()
    svc = ObjectStoreBlobService(store)
    assert await svc.put(b"") == EMPTY_DIGEST
    h = EMPTY_DIGEST.hex()
    assert _keys(store) == {f"blobs/b3/af13/{h}": b""}  # a 0-byte index and no chunk


# --- the index codec against the generated class -----------------------------------------

_chunk = st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 2**64 - 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(_chunk, max_size=40))
def test_encoder_is_byte_identical_to_generated_class(chunks: list[tuple[bytes, int]]) -> None:
    ours = encode_index([d for d, _ in chunks], [s for _, s in chunks])
    assert ours == _rust_index(chunks)


@settings(max_examples=300, deadline=None)
@given(st.lists(_chunk, max_size=40), st.binary(max_size=40))
def test_decoder_reads_generated_class(chunks: list[tuple[bytes, int]], bao: bytes) -> None:
    msg = StatBlobResponse(
        chunks=[StatBlobResponseChunkMeta(digest=d, size=s) for d, s in chunks], bao=bao
    )
    raw = bytes(msg)
    if all(0 < s <= 2**40 for _, s in chunks):
        got = decode_index(raw, 2**40)
        assert got == [ChunkMeta(B3Digest(d), s) for d, s in chunks]
    else:
        with pytest.raises(MalformedIndexError):
            decode_index(raw, 2**40)


def test_decoder_skips_unknown_fields() -> None:
    d = bytes(range(32))
    entry = b"\x0a\x20" + d + b"\x10\x05" + b"\x18\x07" + b"\x25\x00\x00\x00\x00"
    raw = b"\x08\x01" + b"\x12" + bytes([len(entry)]) + entry + b"\x1a\x02ab" + b"\x29" + bytes(8)
    assert decode_index(raw, 1 << 20) == [ChunkMeta(B3Digest(d), 5)]


# --- reading a bucket that Rust wrote ----------------------------------------------------


def _write_rust_bucket(
    store: MemoryStore, data: bytes, prefix: str = "", old_index: bool = False
) -> B3Digest:
    """Lay ``data`` out the way Rust tvix-castore does (frames without content size)."""
    base = prefix.strip("/") + "/" if prefix.strip("/") else ""
    chunks = _rust_chunks(data)
    for d, piece, _ in chunks:
        obstore.put(store, f"{base}chunks/b3/{d.hex()[:4]}/{d.hex()}", _rust_frame(piece))
    digest = B3Digest.of(data)
    listed = [(d, s) for d, _, s in chunks]
    if old_index and len(chunks) == 1:  # before 2024-07 a single chunk was listed
        index = bytes(
            StatBlobResponse(
                chunks=[StatBlobResponseChunkMeta(digest=d, size=s) for d, s in listed]
            )
        )
        assert index
    else:
        index = _rust_index(listed)
    obstore.put(store, f"{base}blobs/b3/{digest.hex()[:4]}/{digest.hex()}", index)
    return digest


@pytest.mark.parametrize("prefix", ["", "nix/castore"])
async def test_read_rust_bucket(prefix: str) -> None:
    store = MemoryStore()
    big = random.Random(3).randbytes(2_500_000)
    small = b"a small blob, one chunk"
    d_big = _write_rust_bucket(store, big, prefix)
    d_small = _write_rust_bucket(store, small, prefix)
    d_b = _write_rust_bucket(store, BLOB_B, prefix)
    svc = ObjectStoreBlobService(store, prefix=prefix)
    for d, data in [(d_big, big), (d_small, small), (d_b, BLOB_B)]:
        assert await svc.has(d)
        assert await svc.get(d) == data
    chunks = await svc.chunks(d_big)
    assert chunks is not None and sum(c.size for c in chunks) == len(big)
    assert await svc.chunks(d_small) == []
    # A chunk of a Rust-written blob is itself a readable blob.
    assert chunks[1].digest != d_big
    reader = await svc.open_read(chunks[1].digest)
    assert reader is not None
    async with reader:
        assert len(await reader.read()) == chunks[1].size
    # Writing the same bytes from Python stores nothing new: the chunks are shared.
    before = _keys(store)
    assert await svc.put(big) == d_big
    after = _keys(store)
    assert set(after) == set(before)


async def test_read_old_single_entry_index() -> None:
    store = MemoryStore()
    data = os.urandom(100_000)
    d = _write_rust_bucket(store, data, old_index=True)
    svc = ObjectStoreBlobService(store)
    assert await svc.get(d) == data
    assert await svc.chunks(d) == []
    # With its chunk gone, has() still sees the index and reading says what is missing.
    obstore.delete(store, f"chunks/b3/{d.hex()[:4]}/{d.hex()}")
    assert await svc.has(d)
    with pytest.raises(FileNotFoundError):
        await svc.get(d)


async def test_frames_with_and_without_content_size() -> None:
    store = MemoryStore()
    with_size = b"with a declared size" * 10
    without = b"without a declared size" * 10
    for data, frame in [
        (with_size, zstandard.ZstdCompressor(level=3).compress(with_size)),
        (without, _rust_frame(without)),
    ]:
        d = blake3.blake3(data).hexdigest()
        obstore.put(store, f"chunks/b3/{d[:4]}/{d}", frame)
    svc = ObjectStoreBlobService(store)
    assert await svc.get(B3Digest.of(with_size)) == with_size
    assert await svc.get(B3Digest.of(without)) == without
