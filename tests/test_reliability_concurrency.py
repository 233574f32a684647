"""Many concurrent writers with overlapping content, and readers at the same time.

200 writers (on memory and on local disk; 24 on the S3 server unless ``CASTORE_STRESS``
is set) each stream a blob built from a shared pool of blocks, so blobs share chunks and
some writers write exactly the same blob. Readers run meanwhile: they read blobs already
acknowledged (whole and after seeks) and probe blobs still being written, which must be
absent or whole. Afterwards every digest is right, every index in the bucket names only
chunks that are there (walking the store's keys with obstore), and every byte of every
blob reads back.

``CASTORE_STRESS=N`` multiplies the writers on S3 by N (up to 200) and the blob sizes
everywhere by N.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import obstore
import pytest
from obstore.store import LocalStore, MemoryStore

from castore import B3Digest, BlobService, ObjectStoreBlobService
from castore.objectstore._codec import decode_index
from castore.registry import from_addr
from castore.testing.conformance import pseudo_random_bytes

STRESS = max(1, int(os.environ.get("CASTORE_STRESS", "1")))
AVG = 16 * 1024
_BLOCKS = [pseudo_random_bytes(64 << 10, seed=700 + i) for i in range(12)]


def _blob(i: int, max_blocks: int) -> bytes:
    """Writer ``i``'s blob: blocks (or parts) of the shared pool, from a seeded layout.
    Every fourth writer writes the same blob as the writer before it."""
    rng = random.Random(i - 1 if i % 4 == 3 else i)
    parts = []
    for _ in range(rng.randint(2, max_blocks)):
        block = _BLOCKS[rng.randrange(len(_BLOCKS))]
        start = rng.randrange(0, 32 << 10)
        parts.append(block[start : start + rng.randint(16 << 10, 64 << 10)])
    return b"".join(parts)


async def _exercise(svc: BlobService, writers: int, max_blocks: int) -> dict[str, int]:
    """Run the writers and readers concurrently; return the figures."""
    datas = [_blob(i, max_blocks) for i in range(writers)]
    expected = {B3Digest.of(d): d for d in datas}
    acked: dict[B3Digest, bytes] = {}
    writing_done = anyio.Event()
    figures = {"writers": writers, "blobs": len(expected), "bytes_written": 0, "reads": 0}
    figures.update(bytes_read_during=0, probes_absent=0, probes_whole=0)

    async def writer(i: int) -> None:
        data = datas[i]
        rng = random.Random(10_000 + i)
        async with await svc.open_write() as w:
            pos = 0
            while pos < len(data):
                n = rng.choice([1000, 16_000, 70_000, 250_000])
                await w.write(data[pos : pos + n])
                pos += n
            digest = await w.close()
        assert digest == B3Digest.of(data), f"writer {i}: wrong digest"
        acked[digest] = data
        figures["bytes_written"] += len(data)

    async def reader(r: int) -> None:
        rng = random.Random(20_000 + r)
        while not writing_done.is_set():
            if acked and rng.random() < 0.7:
                digest = rng.choice(list(acked))
                data = acked[digest]
                reader = await svc.open_read(digest)
                assert reader is not None, "an acknowledged blob is missing"
                async with reader:
                    pos = rng.randrange(len(data))
                    await reader.seek(pos)
                    got = await reader.read(100_000)
                    assert got == data[pos : pos + 100_000]
                    await reader.seek(0)
                    whole = await reader.read()
                    assert whole == data
                figures["bytes_read_during"] += len(got) + len(whole)
            else:
                # A blob that may be in flight: absent, or whole.
                digest = rng.choice(list(expected))
                got_reader = await svc.open_read(digest)
                if got_reader is None:
                    figures["probes_absent"] += 1
                else:
                    async with got_reader:
                        assert await got_reader.read() == expected[digest]
                    figures["probes_whole"] += 1
            figures["reads"] += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as readers:
        for r in range(16):
            readers.start_soon(reader, r)
        async with anyio.create_task_group() as tg:
            for i in range(writers):
                tg.start_soon(writer, i)
        writing_done.set()
    assert set(acked) == set(expected)
    return figures


def _check_bucket(list_keys: Callable[[str], list[str]], get: Callable[[str], bytes]) -> int:
    """Every index names only chunks that exist; the number of chunk objects."""
    chunk_keys = set(list_keys("chunks/"))
    for key in list_keys("blobs/"):
        for meta in decode_index(get(key), 1 << 20):
            h = meta.digest.hex()
            assert f"chunks/b3/{h[:4]}/{h}" in chunk_keys, f"{key} names a missing chunk {h}"
    return len(chunk_keys)


async def _verify_all(svc: BlobService, writers: int, max_blocks: int) -> int:
    verified = 0
    for data in {_blob(i, max_blocks) for i in range(writers)}:
        assert await svc.get(B3Digest.of(data)) == data
        verified += len(data)
    return verified


def _keys_of(store: MemoryStore | LocalStore) -> Callable[[str], list[str]]:
    def list_keys(prefix: str) -> list[str]:
        return [m["path"] for page in obstore.list(store, prefix=prefix) for m in page]

    return list_keys


@pytest.mark.parametrize("where", ["memory", "local"])
async def test_200_concurrent_writers_and_readers(where: str, tmp_path: Path) -> None:
    writers, max_blocks = 200, 8 * STRESS
    store = MemoryStore() if where == "memory" else LocalStore(str(tmp_path))
    async with ObjectStoreBlobService(store, avg_chunk_size=AVG) as svc:
        figures = await _exercise(svc, writers, max_blocks)

    def get(key: str) -> bytes:
        return bytes(obstore.get(store, key).bytes())

    chunks = await anyio.to_thread.run_sync(_check_bucket, _keys_of(store), get)
    # A fresh service (another process, say) reads every byte back.
    async with ObjectStoreBlobService(store, avg_chunk_size=AVG) as fresh:
        verified = await _verify_all(fresh, writers, max_blocks)
    print(f"\n{where}: {figures}, {chunks} chunk objects, {verified} bytes verified after")


async def test_concurrent_writers_and_readers_on_s3(castore_s3_url: str) -> None:
    writers = min(200, 24 * STRESS)
    max_blocks = 6 * STRESS
    svc = from_addr(castore_s3_url + f"&avg_chunk_size={AVG}")
    assert isinstance(svc, ObjectStoreBlobService)
    async with svc:
        figures = await _exercise(svc, writers, max_blocks)
        s3 = svc.adapter.store  # type: ignore[attr-defined]

        async def list_keys(prefix: str) -> list[str]:
            return [m["path"] async for page in obstore.list(s3, prefix=prefix) for m in page]

        chunk_keys = set(await list_keys("chunks/"))
        for key in await list_keys("blobs/"):
            raw = await (await obstore.get_async(s3, key)).bytes_async()
            for meta in decode_index(raw, 1 << 20):
                h = meta.digest.hex()
                assert f"chunks/b3/{h[:4]}/{h}" in chunk_keys, f"{key} names a missing chunk"
        verified = await _verify_all(from_addr(castore_s3_url), writers, max_blocks)
    print(f"\ns3: {figures}, {len(chunk_keys)} chunk objects, {verified} bytes verified after")
