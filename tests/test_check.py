"""``ObjectStoreBlobService.check``: corruption injected into memory and local-disk buckets
is found (structurally, or by reading data), orphans are counted, subsets read what they
say, and repair mends chunks from a second store, from a gRPC server, or by deleting a
corrupt chunk so that putting its blob again heals it."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import obstore
import pytest
from obstore.store import LocalStore, MemoryStore
from serving import castore_serve

from castore import B3Digest, MemoryBlobService, ObjectStoreBlobService, from_addr
from castore.errors import StoreError
from castore.objectstore import CheckProblem, CheckSummary, Subset
from castore.objectstore._codec import encode_index
from castore.testing.faults import Fault, FaultyStore

# A small chunk size makes blobs of many chunks from little data.
AVG = 4096

Store = MemoryStore | LocalStore


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _ckey(d: B3Digest | bytes) -> str:
    h = d.hex()
    return f"chunks/b3/{h[:4]}/{h}"


def _ikey(d: B3Digest) -> str:
    h = d.hex()
    return f"blobs/b3/{h[:4]}/{h}"


def _raw(store: Store, key: str) -> bytes:
    return bytes(obstore.get(store, key).bytes())


def _keys(store: Store, prefix: str) -> list[str]:
    return sorted(m["path"] for page in obstore.list(store, prefix) for m in page)


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    (tmp_path / "bucket").mkdir()
    return LocalStore(tmp_path / "bucket")


@pytest.fixture
async def svc(store: Store) -> AsyncIterator[ObjectStoreBlobService]:
    async with ObjectStoreBlobService(store, avg_chunk_size=AVG) as service:
        yield service


async def _run(
    svc: ObjectStoreBlobService, **kw: object
) -> tuple[list[CheckProblem], CheckSummary]:
    check = svc.check(**kw)  # type: ignore[arg-type]
    problems = await check.collect()
    return problems, check.summary


async def _fill(svc: ObjectStoreBlobService) -> tuple[B3Digest, B3Digest, bytes]:
    """A blob of many chunks and one stored as one chunk; returns their digests and the
    big one's bytes."""
    big = _data(200_000, seed=1)
    return await svc.put(big), await svc.put(b"small enough to be one chunk"), big


async def test_a_clean_store_checks_clean(svc: ObjectStoreBlobService, store: Store) -> None:
    big, _small, _ = await _fill(svc)
    await svc.put(b"")  # the empty blob: an index and no chunk
    chunks = await svc.chunks(big)
    assert chunks is not None and len(chunks) > 10
    problems, s = await _run(svc)
    assert problems == []
    assert (s.blobs, s.chunks, s.referenced, s.orphans) == (3, len(chunks) + 1, len(chunks) + 1, 0)
    assert s.chunk_bytes == sum(m["size"] for page in obstore.list(store, "chunks") for m in page)
    assert s.chunks_read == 0 and not s.read_data and s.clean
    problems, s = await _run(svc, read_data=True)
    assert problems == [] and s.chunks_read == s.chunks == len(chunks) + 1
    assert s.bytes_read == s.chunk_bytes and s.clean and s.seconds > 0


async def test_structural_check_finds_a_missing_chunk(
    svc: ObjectStoreBlobService, store: Store
) -> None:
    big, small, _ = await _fill(svc)
    chunks = await svc.chunks(big)
    assert chunks
    gone = chunks[3].digest
    obstore.delete(store, _ckey(gone))
    obstore.delete(store, _ckey(small))  # a one-chunk blob's only chunk
    problems, s = await _run(svc)
    assert sorted((p.kind, p.digest, p.blob) for p in problems) == sorted(
        [("missing-chunk", gone, big), ("missing-chunk", small, small)]
    )
    assert {p.key for p in problems} == {_ckey(gone), _ckey(small)}
    assert s.missing_chunks == 2 and s.problems == 2 and not s.clean
    assert all(p.repair is None and not p.repaired for p in problems)


async def test_read_data_finds_truncated_and_flipped_chunks(
    svc: ObjectStoreBlobService, store: Store
) -> None:
    big, _small, _ = await _fill(svc)
    chunks = await svc.chunks(big)
    assert chunks
    truncated, flipped = chunks[1].digest, chunks[5].digest
    frame = _raw(store, _ckey(truncated))
    obstore.put(store, _ckey(truncated), frame[: len(frame) // 2])
    flip = bytearray(_raw(store, _ckey(flipped)))
    flip[len(flip) // 2] ^= 0x10
    obstore.put(store, _ckey(flipped), bytes(flip))
    # The structure is intact: only reading the data shows it.
    problems, s = await _run(svc)
    assert problems == [] and s.clean
    problems, s = await _run(svc, read_data=True)
    assert sorted((p.kind, p.digest, p.blob) for p in problems) == sorted(
        [("corrupt-chunk", truncated, big), ("corrupt-chunk", flipped, big)]
    )
    assert s.corrupt_chunks == 2 and not s.clean
    assert all(p.detail for p in problems)


async def test_malformed_index_and_wrong_size(svc: ObjectStoreBlobService, store: Store) -> None:
    big, _small, _unused = await _fill(svc)
    other = await svc.put(_data(50_000, seed=2))
    obstore.put(store, _ikey(other), b"\x12\x05garbage")  # a chunk entry that runs off
    chunks = await svc.chunks(big)
    assert chunks
    # An index that names the right chunks with one size wrong (the chunk is fine).
    sizes = [m.size for m in chunks]
    sizes[2] += 1
    obstore.put(store, _ikey(big), encode_index([m.digest.digest for m in chunks], sizes))
    problems, s = await _run(svc)
    assert [(p.kind, p.key, p.digest) for p in problems] == [
        ("malformed-index", _ikey(other), other)
    ]
    problems, s = await _run(svc, read_data=True)
    kinds = sorted((p.kind, p.key) for p in problems)
    assert kinds == sorted([("malformed-index", _ikey(other)), ("wrong-size", _ikey(big))])
    wrong = next(p for p in problems if p.kind == "wrong-size")
    assert wrong.digest == chunks[2].digest and wrong.blob == big
    assert str(chunks[2].size) in wrong.detail and str(chunks[2].size + 1) in wrong.detail
    assert s.malformed_indexes == 1 and s.wrong_sizes == 1
    # The other blob's chunks are no longer named by a readable index: orphans.
    assert s.orphans > 0


async def test_orphans_are_counted(svc: ObjectStoreBlobService, store: Store) -> None:
    big, small, _ = await _fill(svc)
    chunks = await svc.chunks(big)
    assert chunks
    _, s = await _run(svc)
    assert s.orphans == 0
    assert await svc.delete(big)
    problems, s = await _run(svc)
    assert problems == [] and s.clean
    assert s.orphans == len(chunks) and s.referenced == 1 and s.blobs == 1
    assert s.orphan_bytes == sum(
        m["size"] for page in obstore.list(store, "chunks") for m in page
    ) - len(_raw(store, _ckey(small)))
    # A stray object under chunks/ that is not a chunk key is not counted at all.
    obstore.put(store, "chunks/b3/zz/not-a-chunk", b"x")
    _, again = await _run(svc)
    assert again.chunks == s.chunks


async def test_subsets_read_their_share(svc: ObjectStoreBlobService, store: Store) -> None:
    big, _small, _ = await _fill(svc)
    chunks = await svc.chunks(big)
    assert chunks
    bad = chunks[4].digest
    frame = bytearray(_raw(store, _ckey(bad)))
    frame[-3] ^= 1
    obstore.put(store, _ckey(bad), bytes(frame))
    total = len(chunks) + 1
    found_in: list[str] = []
    read = 0
    for n in range(1, 4):
        problems, s = await _run(svc, read_data=True, subset=f"{n}/3")
        assert s.subset == f"{n}/3"
        assert 0 < s.chunks_read < total
        read += s.chunks_read
        if problems:
            assert [p.digest for p in problems] == [bad]
            found_in.append(f"{n}/3")
    # The slices cover every chunk exactly once; the corrupt one in exactly one slice.
    assert read == total and len(found_in) == 1
    _, s = await _run(svc, read_data=True, subset="100%")
    assert s.chunks_read == total
    _, s = await _run(svc, read_data=True, subset=Subset(percent=50))
    assert 0 < s.chunks_read < total  # 2 * 2**-50 odds of a false failure


def test_subset_parsing() -> None:
    assert Subset.parse("2/5") == Subset(2, 5) and str(Subset.parse(" 2 / 5 ")) == "2/5"
    assert Subset.parse("12.5%").percent == 12.5 and str(Subset.parse("10%")) == "10%"
    for bad in ("0/5", "6/5", "0%", "101%", "five", "1/0", "-1/3"):
        with pytest.raises(ValueError, match="subset"):
            Subset.parse(bad)
    s = Subset(1, 4)
    assert sum(s.selects(bytes([i]) * 32) for i in range(256)) == 64


async def _corrupt_three(
    svc: ObjectStoreBlobService, store: Store
) -> tuple[B3Digest, bytes, list[B3Digest]]:
    """Truncate one chunk, flip another, delete a third, of a blob of many chunks."""
    big, _, data = await _fill(svc)
    chunks = await svc.chunks(big)
    assert chunks
    a, b, c = chunks[0].digest, chunks[6].digest, chunks[-1].digest
    frame = _raw(store, _ckey(a))
    obstore.put(store, _ckey(a), frame[:-5])
    flip = bytearray(_raw(store, _ckey(b)))
    flip[10] ^= 0xFF
    obstore.put(store, _ckey(b), bytes(flip))
    obstore.delete(store, _ckey(c))
    return big, data, [a, b, c]


async def test_repair_from_a_second_store(svc: ObjectStoreBlobService, store: Store) -> None:
    async with ObjectStoreBlobService(MemoryStore(), avg_chunk_size=AVG) as replica:
        big, data, bad = await _corrupt_three(svc, store)
        assert await replica.put(data) == big
        problems, s = await _run(svc, read_data=True, repair_from=replica)
        assert sorted(p.digest.hex() for p in problems) == sorted(d.hex() for d in bad)
        assert all(p.repaired and p.repair == "replaced from the source" for p in problems)
        assert s.problems == s.repaired == 3 and s.clean
        problems, s = await _run(svc, read_data=True)
        assert problems == [] and s.clean
        assert await svc.get(big) == data


async def test_repair_from_a_store_of_whole_blobs(
    svc: ObjectStoreBlobService, store: Store
) -> None:
    """A memory service has no chunk objects: repair reads the chunk's range of the blob."""
    source = MemoryBlobService()
    big, data, _bad = await _corrupt_three(svc, store)
    problems, s = await _run(svc, read_data=True, repair_from=source)
    assert all(not p.repaired and p.repair and "does not have" in p.repair for p in problems)
    assert s.unrepaired == 3
    assert await source.put(data) == big
    problems, s = await _run(svc, read_data=True, repair_from=source)
    assert len(problems) == 3 and all(p.repaired for p in problems) and s.clean
    assert await svc.get(big) == data


async def test_a_bad_source_copy_is_never_stored(svc: ObjectStoreBlobService, store: Store) -> None:
    async with ObjectStoreBlobService(MemoryStore(), avg_chunk_size=AVG) as replica:
        big, data, bad = await _corrupt_three(svc, store)
        assert await replica.put(data) == big
        # The replica's copies are corrupt too (flipped under the same keys).
        for d in bad:
            frame = bytearray(_raw(replica.adapter.store, _ckey(d)))  # type: ignore[attr-defined]
            frame[-2] ^= 0x40
            obstore.put(replica.adapter.store, _ckey(d), bytes(frame))  # type: ignore[attr-defined]
        before = {d: _raw(store, _ckey(d)) for d in bad[:2]}
        problems, s = await _run(svc, read_data=True, repair_from=replica)
        assert len(problems) == 3 and s.repaired == 0
        assert all("does not match" in (p.repair or "") for p in problems)
        assert {d: _raw(store, _ckey(d)) for d in bad[:2]} == before
        assert _ckey(bad[2]) not in _keys(store, "chunks")


async def test_repair_through_a_grpc_server(
    svc: ObjectStoreBlobService, store: Store, tmp_path: Path
) -> None:
    (tmp_path / "replica").mkdir()
    replica_url = f"objectstore+file://{tmp_path / 'replica'}?avg_chunk_size={AVG}"
    big, data, _bad = await _corrupt_three(svc, store)
    async with from_addr(replica_url) as replica:
        assert await replica.put(data) == big
    async with (
        castore_serve("--store", replica_url, "--listen", "grpc+http://127.0.0.1:0") as served,
        from_addr(await served.url()) as remote,
    ):
        problems, s = await _run(svc, read_data=True, repair_from=remote)
    assert len(problems) == 3 and all(p.repaired for p in problems) and s.clean
    problems, s = await _run(svc, read_data=True)
    assert problems == []
    assert await svc.get(big) == data


async def test_without_a_source_repair_deletes_and_a_put_heals(
    svc: ObjectStoreBlobService, store: Store
) -> None:
    big, data, bad = await _corrupt_three(svc, store)
    problems, _ = await _run(svc, read_data=True)
    assert sorted(p.kind for p in problems) == ["corrupt-chunk", "corrupt-chunk", "missing-chunk"]
    # Putting the blob again stores the missing chunk, but never replaces a corrupt one:
    # chunk puts skip keys that exist.
    assert await svc.put(data) == big
    problems, _ = await _run(svc, read_data=True)
    assert sorted((p.kind, p.digest.hex()) for p in problems) == sorted(
        ("corrupt-chunk", d.hex()) for d in bad[:2]
    )
    # Check with repair and no source: the corrupt chunks are deleted, nothing else.
    chunks_before = _keys(store, "chunks")
    problems, s = await _run(svc, read_data=True, repair=True)
    assert len(problems) == 2
    assert all(p.repair and "deleted" in p.repair for p in problems)
    assert not any(p.repaired for p in problems) and s.unrepaired == 2
    assert _keys(store, "chunks") == sorted(set(chunks_before) - {_ckey(bad[0]), _ckey(bad[1])})
    problems, _ = await _run(svc)
    assert sorted(p.kind for p in problems) == ["missing-chunk"] * 2
    # Now a put of the blob stores the chunks anew.
    assert await svc.put(data) == big
    problems, s = await _run(svc, read_data=True)
    assert problems == [] and s.clean
    assert await svc.get(big) == data


async def test_a_check_that_cannot_run_raises(store: Store) -> None:
    faulty = FaultyStore(store)
    async with ObjectStoreBlobService(faulty, avg_chunk_size=AVG) as svc:
        await _fill(svc)
        faulty.plan("list", Fault.ERROR, nth=1)
        with pytest.raises(StoreError):
            await svc.check().collect()
        faulty.clear()
        faulty.plan("get", Fault.ERROR, nth=1, where="chunks/")
        with pytest.raises(StoreError):
            await svc.check(read_data=True).collect()
        check = svc.check()
        await check.collect()
        with pytest.raises(RuntimeError, match="runs once"):
            await check.collect()


async def test_seaweedfs_check_finds_and_repairs_a_truncated_chunk(
    castore_s3_url: str, tmp_path: Path
) -> None:
    """Against a real S3 server: a chunk truncated in the bucket is found by a data check
    (not by a structural one), repaired from a replica, and the blob reads back exactly;
    the command line does the same on the next truncation."""
    import sys

    data = _data(3_000_000, seed=9)
    async with from_addr(castore_s3_url) as svc, from_addr("objectstore+memory:///") as replica:
        assert isinstance(svc, ObjectStoreBlobService)
        bucket = svc.adapter.store  # type: ignore[attr-defined]
        digest = await svc.put(data)
        assert await replica.put(data) == digest
        chunks = await svc.chunks(digest)
        assert chunks is not None and len(chunks) >= 3
        # The service's store carries the URL's prefix: its keys are the layout's own.
        key = _ckey(chunks[1].digest)
        frame = bytes(obstore.get(bucket, key).bytes())
        obstore.put(bucket, key, frame[: len(frame) // 3])

        problems, s = await _run(svc)
        assert problems == [] and s.chunks == len(chunks)
        problems, s = await _run(svc, read_data=True)
        assert [(p.kind, p.digest, p.blob) for p in problems] == [
            ("corrupt-chunk", chunks[1].digest, digest)
        ]
        problems, s = await _run(svc, read_data=True, repair_from=replica)
        assert [p.repaired for p in problems] == [True] and s.clean
        assert bytes(obstore.get(bucket, key).bytes()) == frame
        problems, s = await _run(svc, read_data=True)
        assert problems == [] and s.chunks_read == len(chunks)
        assert await svc.get(digest) == data

        # The same through the command line, with a file replica as the source.
        (tmp_path / "replica").mkdir()
        replica_url = f"objectstore+file://{tmp_path / 'replica'}"
        async with from_addr(replica_url) as files:
            assert await files.put(data) == digest
        key = _ckey(chunks[-1].digest)
        frame = bytes(obstore.get(bucket, key).bytes())
        obstore.put(bucket, key, frame[:-1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASTORE_")}
        command = [sys.executable, "-m", "castore", "--store", castore_s3_url, "check"]
        found = await anyio.run_process([*command, "--read-data"], env=env, check=False)
        assert found.returncode == 1 and b"corrupt-chunk" in found.stdout
        fixed = await anyio.run_process(
            [*command, "--read-data", "--repair-from", replica_url], env=env, check=False
        )
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert b"[repaired: replaced from the source]" in fixed.stdout
        assert bytes(obstore.get(bucket, key).bytes()) == frame
        assert await svc.get(digest) == data


async def test_writers_and_deleters_during_a_check_cause_no_false_problems(
    store: Store,
) -> None:
    """Blobs written and deleted while checks run: no check reports a problem (indexes are
    read before chunks are listed, and a blob deleted meanwhile is skipped). Every listing
    is slowed down so that writers commit blobs between a check's steps."""
    faulty = FaultyStore(store)
    faulty.plan("list", Fault.DELAY, rate=1.0, delay=0.05, where="/b3")
    async with ObjectStoreBlobService(faulty, avg_chunk_size=AVG) as svc:
        await _check_beside_writers(svc)


async def _check_beside_writers(svc: ObjectStoreBlobService) -> None:
    rng = random.Random(11)
    pool = [_data(3000, seed=100 + i) for i in range(12)]
    written: list[B3Digest] = []
    done = anyio.Event()

    async def write_and_delete() -> None:
        for i in range(40):
            blob = b"".join(rng.choice(pool) for _ in range(rng.randint(2, 12)))
            written.append(await svc.put(blob))
            if i % 3 == 2:
                await svc.delete(written.pop(rng.randrange(len(written))))
        done.set()

    checks = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(write_and_delete)
        while not done.is_set() or checks < 3:
            problems, s = await _run(svc, read_data=checks % 2 == 1)
            assert problems == [], problems
            checks += 1
    problems, s = await _run(svc, read_data=True)
    assert problems == [] and s.blobs == len(set(written)) and checks >= 3
