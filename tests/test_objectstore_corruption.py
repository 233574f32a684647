"""Corrupt, truncated, bomb and foreign data in the bucket: castore raises errors from its
own tree and never returns bytes that are not the blob."""

from __future__ import annotations

import random
import struct

import obstore
import pytest
import zstandard
from obstore.store import MemoryStore

from castore import B3Digest, ObjectStoreBlobService
from castore._proto.tvix.castore.v1 import StatBlobResponse, StatBlobResponseChunkMeta
from castore.errors import (
    BlobNotFoundError,
    DataCorruptionError,
    DecompressionBombError,
    DecompressionError,
    DigestMismatchError,
    MalformedIndexError,
)

ONE_CHUNK = b"a blob small enough to be one chunk " * 100
MULTI = random.Random(1).randbytes(2_000_000)


def _ckey(d: B3Digest | bytes) -> str:
    h = d.hex()
    return f"chunks/b3/{h[:4]}/{h}"


def _ikey(d: B3Digest) -> str:
    h = d.hex()
    return f"blobs/b3/{h[:4]}/{h}"


def _get(store: MemoryStore, key: str) -> bytes:
    return bytes(obstore.get(store, key).bytes())


def _put(store: MemoryStore, key: str, data: bytes) -> None:
    obstore.put(store, key, data)


async def _read_all(svc: ObjectStoreBlobService, d: B3Digest) -> bytes:
    reader = await svc.open_read(d)
    assert reader is not None
    async with reader:
        return await reader.read()


Setup = tuple[MemoryStore, ObjectStoreBlobService, B3Digest, B3Digest]


@pytest.fixture
async def setup() -> Setup:
    store = MemoryStore()
    svc = ObjectStoreBlobService(store)
    one = await svc.put(ONE_CHUNK)
    multi = await svc.put(MULTI)
    return store, svc, one, multi


def _bomb_frame_declaring(size: int) -> bytes:
    """A tiny frame whose header declares ``size`` bytes (8-byte content-size field)."""
    fhd = 0xC0  # content-size field of 8 bytes, not single-segment, no checksum/dict
    window = 0x58  # window descriptor: 2^(10 + 11) = 2 MiB
    block = (1 | (1 << 1) | (16 << 3)).to_bytes(3, "little")  # last RLE block of 16 bytes
    return b"\x28\xb5\x2f\xfd" + bytes([fhd, window]) + struct.pack("<Q", size) + block + b"x"


def _frame_without_size(data: bytes) -> bytes:
    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    return cobj.compress(data) + cobj.flush()


async def test_flipped_byte_in_single_chunk(setup: Setup) -> None:
    store, svc, one, _ = setup
    frame = bytearray(_get(store, _ckey(one)))
    for pos in (len(frame) // 2, len(frame) - 1, 5):
        bad = bytearray(frame)
        bad[pos] ^= 0x40
        _put(store, _ckey(one), bytes(bad))
        with pytest.raises(DataCorruptionError):
            await svc.open_read(one)


async def test_other_data_under_a_chunk_digest(setup: Setup) -> None:
    store, svc, one, _ = setup
    _put(store, _ckey(one), zstandard.ZstdCompressor().compress(b"not the blob"))
    with pytest.raises(DigestMismatchError):
        await svc.open_read(one)


async def test_flipped_byte_in_chunk_of_multi_chunk_blob(setup: Setup) -> None:
    store, svc, _, multi = setup
    chunks = await svc.chunks(multi)
    assert chunks is not None and len(chunks) >= 3
    victim = chunks[2]
    frame = bytearray(_get(store, _ckey(victim.digest)))
    frame[len(frame) // 2] ^= 1  # random data: a raw block, so zstd itself won't notice
    _put(store, _ckey(victim.digest), bytes(frame))
    with pytest.raises(DigestMismatchError):
        await _read_all(svc, multi)
    # Reading only the intact first chunk still works.
    reader = await svc.open_read(multi)
    assert reader is not None
    async with reader:
        assert await reader.read(1000) == MULTI[:1000]


async def test_truncated_frame(setup: Setup) -> None:
    store, svc, one, multi = setup
    frame = _get(store, _ckey(one))
    _put(store, _ckey(one), frame[:-4])
    with pytest.raises(DecompressionError):
        await svc.open_read(one)
    chunks = await svc.chunks(multi)
    assert chunks is not None
    cframe = _get(store, _ckey(chunks[0].digest))
    _put(store, _ckey(chunks[0].digest), cframe[: len(cframe) // 2])
    with pytest.raises(DecompressionError):
        await _read_all(svc, multi)


async def test_trailing_data_and_second_frame(setup: Setup) -> None:
    store, svc, one, _ = setup
    frame = _get(store, _ckey(one))
    for bad in (frame + b"junk", frame + zstandard.ZstdCompressor().compress(b"more")):
        _put(store, _ckey(one), bad)
        with pytest.raises(DecompressionError):
            await svc.open_read(one)


@pytest.mark.parametrize("declared", [1 << 40, 1 << 63, 2 * 524288 + 1])
async def test_bomb_declaring_huge_size(setup: Setup, declared: int) -> None:
    """Refused from the header alone: decompressing would allocate ``declared`` bytes."""
    store, svc, one, multi = setup
    bomb = _bomb_frame_declaring(declared)
    assert zstandard.frame_content_size(bomb) == declared
    _put(store, _ckey(one), bomb)
    with pytest.raises(DecompressionBombError):
        await svc.open_read(one)
    chunks = await svc.chunks(multi)
    assert chunks is not None
    _put(store, _ckey(chunks[1].digest), bomb)
    with pytest.raises(DecompressionBombError):
        await _read_all(svc, multi)


async def test_bomb_without_declared_size(setup: Setup) -> None:
    store, svc, one, multi = setup
    bomb = _frame_without_size(bytes(64 << 20))  # 64 MiB of zeros in a few KiB
    assert len(bomb) < 64 << 10
    assert zstandard.frame_content_size(bomb) == -1
    _put(store, _ckey(one), bomb)
    with pytest.raises(DecompressionBombError):
        await svc.open_read(one)
    # Listed in an index, the chunk's own size is the bound.
    chunks = await svc.chunks(multi)
    assert chunks is not None
    _put(store, _ckey(chunks[0].digest), _frame_without_size(bytes(chunks[0].size + 1)))
    with pytest.raises(DecompressionBombError):
        await _read_all(svc, multi)


async def test_foreign_object(setup: Setup) -> None:
    store, svc, one, _ = setup
    for junk in (b"", b"hello, not zstd", b"\x28\xb5\x2f\xfd", random.Random(2).randbytes(500)):
        _put(store, _ckey(one), junk)
        with pytest.raises(DecompressionError):
            await svc.open_read(one)


async def test_index_listing_other_chunks(setup: Setup) -> None:
    """Every chunk verifies, but they are another blob's: the end of the read raises."""
    store, svc, _, multi = setup
    other = random.Random(9).randbytes(1_500_000)
    d_other = await svc.put(other)
    _put(store, _ikey(multi), _get(store, _ikey(d_other)))
    reader = await svc.open_read(multi)
    assert reader is not None
    async with reader:
        with pytest.raises(DigestMismatchError):
            await reader.read()
    with pytest.raises(DigestMismatchError):
        await svc.get(multi)


async def test_index_with_wrong_size(setup: Setup) -> None:
    store, svc, _, multi = setup
    chunks = await svc.chunks(multi)
    assert chunks is not None
    lied = [StatBlobResponseChunkMeta(digest=c.digest.digest, size=c.size) for c in chunks]
    lied[0].size -= 1
    _put(store, _ikey(multi), bytes(StatBlobResponse(chunks=lied)))
    with pytest.raises(DataCorruptionError):
        await _read_all(svc, multi)


async def test_index_listing_missing_chunk(setup: Setup) -> None:
    store, svc, _, multi = setup
    chunks = await svc.chunks(multi)
    assert chunks is not None
    obstore.delete(store, _ckey(chunks[-1].digest))
    with pytest.raises(BlobNotFoundError):
        await _read_all(svc, multi)


def _entry(digest: bytes, size: int) -> bytes:
    inner = b"\x0a" + bytes([len(digest)]) + digest + b"\x10" + _varint(size)
    return b"\x12" + bytes([len(inner)]) + inner


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


GOOD = _entry(bytes(32), 1000)
MALFORMED = {
    "garbage": random.Random(5).randbytes(300),
    "digest_31_bytes": GOOD + _entry(bytes(31), 1000),
    "digest_33_bytes": GOOD + _entry(bytes(33), 1000),
    "size_zero": GOOD + _entry(bytes(32), 0)[:-2] + b"\x10\x00",
    "size_beyond_a_chunk": GOOD + _entry(bytes(32), 1 << 40),
    "truncated": (GOOD + GOOD)[:-5],
    "chunks_as_varint": b"\x10\x05",
    "endless_varint": b"\x12" + b"\xff" * 11,
    "field_zero": b"\x02\x00",
    "group_wire_type": b"\x0b\x0c",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_index(setup: Setup, name: str) -> None:
    store, svc, _, _ = setup
    d = B3Digest.of(b"a blob with a malformed index: " + name.encode())
    _put(store, _ikey(d), MALFORMED[name])
    with pytest.raises(MalformedIndexError):
        await svc.open_read(d)
    with pytest.raises(MalformedIndexError):
        await svc.chunks(d)
    assert await svc.has(d)  # present, but unreadable: has() does not read the index


async def test_index_without_its_chunk(setup: Setup) -> None:
    """An empty chunk list names a one-chunk blob; if that chunk is gone, say so."""
    store, svc, one, _ = setup
    obstore.delete(store, _ckey(one))
    assert await svc.has(one)
    with pytest.raises(BlobNotFoundError):
        await svc.open_read(one)
