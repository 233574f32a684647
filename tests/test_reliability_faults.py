"""Faults at every point of a write and of a read, injected between the object-store
service and a real obstore store by :class:`castore.testing.faults.FaultyStore`.

Writes: for every store call N of a clean write of a multi-chunk blob, the same write
with call N failing raises on ``close()``, leaves no index and ``has()`` false, and the
write after it succeeds, storing only the chunks that were not stored yet.

Reads: for every store call N of a clean read, the same read with call N failing, timing
out, hanging, returning a prefix or a flipped bit raises an error from castore's tree or
returns the exact bytes; never other bytes, and never a hang.

The figures (cases run, faults injected) are printed with ``-s`` and quoted in
``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import obstore
import pytest
from helpers import index_keys, write_in_pieces
from obstore.store import MemoryStore

from castore import (
    B3Digest,
    BlobService,
    GRPCBlobService,
    MemoryBlobService,
    ObjectStoreBlobService,
)
from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    DataCorruptionError,
    StoreError,
    StoreTimeoutError,
)
from castore.grpc import serve
from castore.grpc.client import DEFAULT_TIMEOUT as GRPC_DEFAULT_TIMEOUT
from castore.objectstore._puts import Uploads
from castore.objectstore._service import DEFAULT_TIMEOUT
from castore.registry import from_addr
from castore.testing.conformance import pseudo_random_bytes
from castore.testing.faults import (
    Fault,
    FaultyBlobService,
    FaultyStore,
    InjectedStoreError,
    InjectedStoreTimeout,
)

AVG = 16 * 1024  # FastCDC average: 8 KiB minimum, 32 KiB maximum
# Half unique bytes, then a run that repeats one block: chunks repeat within the blob.
_BLOCK = pseudo_random_bytes(40_000, seed=51)
DATA = pseudo_random_bytes(250_000, seed=50) + _BLOCK * 4
DIGEST = B3Digest.of(DATA)
ONE_CHUNK = pseudo_random_bytes(6_000, seed=52)

#: Every failure a read may end in: the store's (StoreError), corruption, or a chunk or
#: index that a corrupted index named and that is not there (BlobNotFoundError).
READ_ERRORS = (StoreError, DataCorruptionError, BlobNotFoundError)


def _chunk_keys(store: MemoryStore) -> set[str]:
    return {m["path"] for page in obstore.list(store, prefix="chunks/") for m in page}


# Process-wide pools, bounded by design: anyio's worker threads (idle ones stay up to
# 10 s) and the readers' CPU pool.
_POOLS = ("AnyIO worker thread", "castore-reader")


def _castore_threads() -> set[threading.Thread]:
    """Threads castore or this test started, less the process-wide pools."""
    return {
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.name.startswith(_POOLS)
    }


async def _settled(baseline: set[asyncio.Task[object]]) -> None:
    """Wait until no task beyond ``baseline`` is left (a leak fails after 5 s)."""
    me = asyncio.current_task()
    with anyio.fail_after(5):
        while {t for t in asyncio.all_tasks() if not t.done()} - baseline - {me}:  # noqa: ASYNC110
            await anyio.sleep(0.01)


# --- the tool itself --------------------------------------------------------------------


def test_faulty_store_plans_are_checked() -> None:
    faulty = FaultyStore(MemoryStore())
    with pytest.raises(ValueError, match="unknown operation"):
        faulty.plan("rename", Fault.ERROR, nth=1)
    with pytest.raises(ValueError, match="nth"):
        faulty.plan("get", Fault.ERROR)
    with pytest.raises(ValueError, match="plan it on 'get'"):
        faulty.plan("put", Fault.FLIP, nth=1)
    with pytest.raises(ValueError, match="after=True"):
        faulty.plan("get", Fault.TRUNCATE, nth=1, after=True)


def test_faulty_store_sync_faults() -> None:
    store = MemoryStore()
    faulty = FaultyStore(store, seed=4)
    assert faulty.in_process
    data = bytes(range(256)) * 4
    assert faulty.put_new("chunks/a", data)
    assert not faulty.put_new("chunks/a", data)
    assert faulty.written == 1
    faulty.plan("get", Fault.TRUNCATE, nth=1)
    faulty.plan("get", Fault.FLIP, nth=2)
    cut = bytes(faulty.get("chunks/a") or b"")
    assert len(cut) < len(data) and data.startswith(cut)
    flipped = bytes(faulty.get("chunks/a") or b"")
    assert len(flipped) == len(data)
    assert sum(bin(x ^ y).count("1") for x, y in zip(flipped, data, strict=True)) == 1
    assert bytes(faulty.get("chunks/a") or b"") == data
    # nth counts the calls the plan matches: here, gets of index keys only.
    faulty.plan("get", Fault.ERROR, nth=2, where="blobs/")
    assert faulty.get("chunks/a") is not None
    assert faulty.get("blobs/x") is None
    with pytest.raises(StoreError, match="blobs/x") as failed:
        faulty.get("blobs/x")
    assert isinstance(failed.value.__cause__, InjectedStoreError)
    faulty.plan("exists", Fault.TIMEOUT, nth=1)
    with pytest.raises(StoreTimeoutError) as timed_out:
        faulty.exists("chunks/a")
    assert isinstance(timed_out.value.__cause__, InjectedStoreTimeout)
    # after=True: the put happens, then the caller is told it failed.
    faulty.plan("put", Fault.ERROR, nth=1, after=True)
    with pytest.raises(StoreError, match="injected"):
        faulty.put_new("chunks/b", b"b")
    assert bytes(obstore.get(store, "chunks/b").bytes()) == b"b"
    assert faulty.injected == {
        "get": 3,
        "exists": 1,
        "put": 1,
        "list": 0,
        "head": 0,
        "delete": 0,
        "any": 5,
    }
    assert faulty.calls["any"] == faulty.total_calls == len(faulty.keys) == 10


def test_faulty_store_sync_hang_is_released() -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.plan("get", Fault.HANG, nth=1)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            faulty.get("k")
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()
    faulty.release()
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], StoreError)
    assert isinstance(outcome[0].__cause__, InjectedStoreError)


async def test_faulty_store_async_faults() -> None:
    faulty = FaultyStore(MemoryStore(), seed=1, in_process=False)
    assert not faulty.in_process
    await faulty.put_async("blobs/i", b"index")
    faulty.plan("get", Fault.DELAY, nth=1, delay=0.2)
    started = time.monotonic()
    assert bytes(await faulty.get_async("blobs/i") or b"") == b"index"
    assert time.monotonic() - started >= 0.2
    faulty.plan("put", Fault.ERROR, rate=1.0, times=2)
    for _ in range(2):
        with pytest.raises(StoreError, match="injected"):
            await faulty.put_new_async("chunks/x", b"x")
    assert await faulty.put_new_async("chunks/x", b"x")
    faulty.plan("exists", Fault.HANG, nth=1)
    with anyio.move_on_after(0.2) as scope:
        await faulty.exists_async("chunks/x")
    assert scope.cancelled_caught


# --- a fault at every point of a write ---------------------------------------------------


def _clean_write_calls(in_process: bool) -> tuple[int, int]:
    """The store calls and the objects written by a clean write of DATA."""

    async def go() -> tuple[int, int]:
        faulty = FaultyStore(MemoryStore(), in_process=in_process)
        async with ObjectStoreBlobService(faulty, avg_chunk_size=AVG) as svc:
            assert await write_in_pieces(svc, DATA, 50_000) == DIGEST
        return faulty.total_calls, faulty.written

    return anyio.run(go)


WRITE_FAULTS = [
    pytest.param(Fault.ERROR, False, id="error"),
    pytest.param(Fault.TIMEOUT, False, id="timeout"),
    pytest.param(Fault.ERROR, True, id="error-after-the-call"),
]


@pytest.mark.parametrize("in_process", [True, False], ids=["sync-puts", "async-puts"])
@pytest.mark.parametrize(("fault", "after"), WRITE_FAULTS)
async def test_a_fault_at_every_point_of_a_write(
    in_process: bool, fault: Fault, after: bool
) -> None:
    total, objects = await anyio.to_thread.run_sync(_clean_write_calls, in_process)
    chunks = objects - 1  # the distinct chunks, then the index
    assert chunks >= 15, "the blob must have many chunks"
    tasks = set(asyncio.all_tasks())
    threads = _castore_threads()
    failed = 0
    for n in range(1, total + 1):
        store = MemoryStore()
        faulty = FaultyStore(store, in_process=in_process)
        async with ObjectStoreBlobService(faulty, avg_chunk_size=AVG) as svc:
            faulty.plan("any", fault, nth=n, after=after)
            try:
                await write_in_pieces(svc, DATA, 50_000)
            except StoreError as e:
                assert "injected" in str(e)
                failed += 1
                if index_keys(store):
                    # The index put succeeded and only its answer was lost: the blob is
                    # there, whole.
                    assert after and n == total
                    assert await svc.get(DIGEST) == DATA
                else:
                    assert not await svc.has(DIGEST), f"call {n}: has() after a failed write"
                    assert await svc.chunks(DIGEST) is None
                    assert await svc.open_read(DIGEST) is None
            else:
                raise AssertionError(f"call {n} of {total} failed and close() did not raise")
            assert faulty.injected["any"] == 1
            await _settled(tasks)
            # The same write now succeeds and stores only what was missing. (Uploads to a
            # remote store that were in flight when the write failed may still land: they
            # are whole chunk objects, named by no index.)
            faulty.clear()
            chunks_before = len(_chunk_keys(store))
            written = faulty.written
            assert await write_in_pieces(svc, DATA, 50_000) == DIGEST
            assert faulty.written - written <= chunks - chunks_before + 1
            assert len(_chunk_keys(store)) == chunks
            assert await svc.get(DIGEST) == DATA
    assert failed == total
    with anyio.fail_after(5):
        while _castore_threads() - threads:  # noqa: ASYNC110 - threads have no event
            await anyio.sleep(0.02)
    print(f"\nwrite faults ({fault.name}, after={after}, in_process={in_process}): {total} points")


async def test_a_write_hung_on_the_store_can_be_cancelled() -> None:
    """A put that never answers holds close() until the caller gives up; then nothing is
    left running and no index is written (writes are bounded by cancellation)."""
    tasks = set(asyncio.all_tasks())
    for in_process in (True, False):
        store = MemoryStore()
        faulty = FaultyStore(store, in_process=in_process)
        async with ObjectStoreBlobService(faulty, avg_chunk_size=AVG) as svc:
            faulty.plan("put", Fault.HANG, nth=3)
            with anyio.move_on_after(0.5) as scope:
                await write_in_pieces(svc, DATA, 50_000)
            assert scope.cancelled_caught
            faulty.release()
            await _settled(tasks)
            assert index_keys(store) == []
            faulty.clear()
            assert await svc.put(DATA) == DIGEST


# --- a fault at every point of a read ----------------------------------------------------


@pytest.fixture(scope="module")
def stored() -> Iterator[MemoryStore]:
    """A store holding DATA (multi-chunk) and ONE_CHUNK, written once for the module."""
    store = MemoryStore()

    async def fill() -> None:
        async with ObjectStoreBlobService(store, avg_chunk_size=AVG) as svc:
            assert await svc.put(DATA) == DIGEST
            await svc.put(ONE_CHUNK)

    anyio.run(fill)
    yield store


async def _read_in_pieces(svc: ObjectStoreBlobService, digest: B3Digest) -> tuple[bytes, bool]:
    """Read sequentially in 10 000-byte pieces: (bytes returned, reached a clean end)."""
    got = bytearray()
    try:
        reader = await svc.open_read(digest)
        assert reader is not None, "a stored blob read as absent"
        async with reader:
            while piece := await reader.read(10_000):
                got += piece
    except READ_ERRORS:
        return bytes(got), False
    return bytes(got), True


READ_FAULTS = [Fault.ERROR, Fault.TIMEOUT, Fault.TRUNCATE, Fault.FLIP, Fault.HANG, Fault.DELAY]


@pytest.mark.parametrize("fault", READ_FAULTS, ids=lambda f: f.name.lower())
@pytest.mark.parametrize("blob", ["multi-chunk", "one-chunk"])
async def test_a_fault_at_every_point_of_a_read(
    stored: MemoryStore, fault: Fault, blob: str
) -> None:
    data = DATA if blob == "multi-chunk" else ONE_CHUNK
    digest = B3Digest.of(data)
    probe = FaultyStore(stored)
    svc = ObjectStoreBlobService(probe, avg_chunk_size=AVG)
    assert await svc.get(digest) == data
    total = probe.total_calls
    assert total >= (15 if blob == "multi-chunk" else 1)
    tasks = set(asyncio.all_tasks())
    outcomes = {"error": 0, "exact": 0}
    # Short for hangs, to keep the sweep quick; generous otherwise, for loaded machines.
    timeout = 0.25 if fault is Fault.HANG else 3.0
    for seed in range(3 if fault in (Fault.TRUNCATE, Fault.FLIP) else 1):
        for n in range(1, total + 1):
            faulty = FaultyStore(stored, seed=seed)
            svc = ObjectStoreBlobService(faulty, avg_chunk_size=AVG, timeout=timeout)
            faulty.plan("get", fault, nth=n, delay=0.01)
            started = time.monotonic()
            try:
                got = await svc.get(digest)
            except READ_ERRORS as e:
                outcomes["error"] += 1
                if fault is Fault.HANG:
                    assert isinstance(e, StoreTimeoutError)
            else:
                assert got == data, f"call {n}: wrong bytes"
                outcomes["exact"] += 1
            finally:
                faulty.release()
            assert time.monotonic() - started < 5, "a read hung"
            if faulty.injected["get"] == 0:
                continue  # nothing to corrupt (an absent or empty object)
            # Sequentially: a clean end means the exact blob, and what came before an
            # error is the blob's start unless the fault hit the index (see
            # docs/reliability.md: an index is verified by reading to its end).
            faulty = FaultyStore(stored, seed=seed)
            svc = ObjectStoreBlobService(faulty, avg_chunk_size=AVG, timeout=timeout)
            faulty.plan("get", fault, nth=n, delay=0.01)
            got, clean = await _read_in_pieces(svc, digest)
            faulty.release()
            if clean:
                assert got == data, f"call {n}: a clean end on wrong bytes"
            elif not any("blobs/" in key for _, key, _ in faulty.faults):
                assert data.startswith(got), f"call {n}: wrong bytes before the error"
    await _settled(tasks)
    if fault in (Fault.ERROR, Fault.TIMEOUT, Fault.HANG):
        assert outcomes["exact"] == 0
    if fault is Fault.DELAY:
        assert outcomes["error"] == 0
    print(f"\nread faults ({fault.name}, {blob}): {total} points, {outcomes}")


async def test_defaults_bound_every_read() -> None:
    """Reads have finite timeouts unless told otherwise, in the object-store service and
    in the gRPC client (from a URL or built directly)."""
    assert 0 < DEFAULT_TIMEOUT <= 120
    assert ObjectStoreBlobService(MemoryStore()).timeout == DEFAULT_TIMEOUT
    svc = from_addr("objectstore+memory:///")
    assert isinstance(svc, ObjectStoreBlobService) and svc.timeout == DEFAULT_TIMEOUT
    assert 0 < GRPC_DEFAULT_TIMEOUT <= 120
    assert GRPCBlobService("127.0.0.1", 1)._timeout == GRPC_DEFAULT_TIMEOUT
    client = from_addr("grpc+http://127.0.0.1:1")
    assert isinstance(client, GRPCBlobService) and client._timeout == GRPC_DEFAULT_TIMEOUT
    with pytest.raises(ValueError, match="timeout"):
        ObjectStoreBlobService(MemoryStore(), timeout=0)


async def test_a_hung_store_behind_grpc_is_a_timeout(stored: MemoryStore) -> None:
    """A store that stops answering behind a gRPC server: the client gets a timeout error
    in bounded time, from the server's store timeout or its own deadline."""
    # First the server's store timeout acts, then the client's own deadline.
    for store_timeout, client_timeout in ((0.3, 10.0), (10.0, 0.5)):
        faulty = FaultyStore(stored)
        backend = ObjectStoreBlobService(faulty, avg_chunk_size=AVG, timeout=store_timeout)
        async with (
            serve(backend) as running,
            from_addr(f"{running.url}?timeout={client_timeout}") as client,
        ):
            # has() is a HEAD; get() reads the index (Stat), then each chunk (Read).
            for op, nth in (("exists", 1), ("get", 1), ("get", 2), ("get", 9)):
                faulty.plan(op, Fault.HANG, nth=nth)
                started = time.monotonic()
                with pytest.raises(StoreTimeoutError):
                    if op == "exists":
                        await client.has(DIGEST)
                    else:
                        await client.get(DIGEST)
                assert time.monotonic() - started < 5
                faulty.release()
                faulty.clear()
            assert await client.get(DIGEST) == DATA


@contextlib.asynccontextmanager
async def _streaming(data: bytes) -> AsyncIterator[tuple[FaultyBlobService, B3Digest, BlobService]]:
    """A server over a faulty memory store holding ``data`` (no chunk list: ``Read``
    streams it whole, in 64 KiB messages), and a client with a 1 s timeout."""
    faulty = FaultyBlobService(MemoryBlobService())
    digest = await faulty.inner.put(data)
    async with (
        serve(faulty, read_message_size=64 << 10) as running,
        from_addr(f"{running.url}?timeout=1") as client,
    ):
        yield faulty, digest, client


async def test_a_server_that_stops_mid_stream_is_a_timeout() -> None:
    """A blob streamed whole (no chunk list): the server's backend hangs after the first
    message; the client's reader gives up after its timeout instead of waiting for ever."""
    data = pseudo_random_bytes(3 << 20, seed=53)
    async with _streaming(data) as (faulty, digest, client):
        faulty.plan("read", Fault.HANG, nth=20)
        reader = await client.open_read(digest)
        assert reader is not None
        started = time.monotonic()
        async with reader:
            with pytest.raises(StoreTimeoutError):
                await reader.read()
        assert time.monotonic() - started < 6
        faulty.clear()
        assert await client.get(digest) == data


async def test_a_slow_stream_that_keeps_moving_is_not_a_timeout() -> None:
    """The client's timeout bounds each wait for the next message of a blob streamed
    whole, not the whole stream: 24 messages 0.08 s apart take longer than the 1 s
    timeout and arrive whole (past the 1 MiB the client reads while it opens the blob).
    Cancelling the reading task meanwhile is a cancellation, not a timeout, and the
    reader starts a fresh stream afterwards."""
    data = pseudo_random_bytes(24 << 16, seed=54)
    async with _streaming(data) as (faulty, digest, client):
        faulty.plan("read", Fault.DELAY, rate=1.0, delay=0.08)
        started = time.monotonic()
        reader = await client.open_read(digest)
        assert reader is not None
        async with reader:
            assert await reader.read() == data
        assert time.monotonic() - started > 1.5  # longer than the timeout, as planned

        reader = await client.open_read(digest)
        assert reader is not None
        async with reader:
            with anyio.move_on_after(0.3) as scope:
                await reader.read()
            assert scope.cancelled_caught
            faulty.clear()
            assert await reader.read() == data


@pytest.mark.parametrize("op", ["get", "exists", "put"])
@pytest.mark.parametrize("fault", [Fault.ERROR, Fault.TIMEOUT])
async def test_injected_errors_are_castore_errors(op: str, fault: Fault) -> None:
    """FaultyStore injects a foreign error (obstore's, a builtin), as a real store would
    fail, and translates it as the adapter translates a real store's: what comes out of
    the adapter, sync or async, is in castore's tree, with the foreign error as cause."""
    faulty = FaultyStore(MemoryStore())
    calls = {
        "get": (lambda: faulty.get("k"), lambda: faulty.get_async("k")),
        "exists": (lambda: faulty.exists("k"), lambda: faulty.exists_async("k")),
        "put": (lambda: faulty.put_new("k", b"x"), lambda: faulty.put_new_async("k", b"x")),
    }
    sync_call, async_call = calls[op]
    expected = StoreTimeoutError if fault is Fault.TIMEOUT else StoreError
    cause = InjectedStoreTimeout if fault is Fault.TIMEOUT else InjectedStoreError
    faulty.plan(op, fault, rate=1.0)
    with pytest.raises(expected) as sync_failed:
        sync_call()
    with pytest.raises(expected) as async_failed:
        await async_call()
    for failed in (sync_failed, async_failed):
        assert isinstance(failed.value, CastoreError)
        assert isinstance(failed.value.__cause__, cause)


async def test_combined_never_answers_absent_on_a_failing_near() -> None:
    """Writes go to near, so a near that fails a lookup may hold the only copy: when far
    lacks the blob, the lookup raises near's error instead of answering "absent"."""
    from castore import CombinedBlobService

    faulty = FaultyStore(MemoryStore())
    near = ObjectStoreBlobService(faulty, avg_chunk_size=AVG)
    async with CombinedBlobService(near, MemoryBlobService()) as combined:
        assert await combined.put(DATA) == DIGEST
        for op, call in (("exists", "has"), ("get", "chunks"), ("get", "open_read")):
            faulty.plan(op, Fault.ERROR, nth=1)
            with pytest.raises(StoreError, match="injected"):
                await getattr(combined, call)(DIGEST)
            faulty.clear()
        assert await combined.has(DIGEST)
        assert await combined.get(DIGEST) == DATA
        missing = B3Digest.of(b"nowhere")
        assert not await combined.has(missing)
        assert await combined.open_read(missing) is None


class _UploadTarget:
    """The blob side of a writer's uploads, for driving :class:`Uploads` alone."""

    def __init__(self, adapter: FaultyStore) -> None:
        self.adapter = adapter
        self.aborted = False
        self.put_pool = None
        self.stored = 0

    def count_new(self, size: int) -> None:
        self.stored += size


async def test_uploads_that_fail_together_have_every_error_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Several uploads to a remote store fail in one turn of the loop: the writer gets
    one of their errors, and the others are taken too, so that no task is collected
    with an error nobody saw (asyncio then logs it from whatever code the collection
    interrupts; one .ci/run failed when that was inside the AST parser)."""
    faulty = FaultyStore(MemoryStore(), in_process=False)
    faulty.plan("put", Fault.ERROR, rate=1.0)

    async def upload_four() -> None:
        uploads = Uploads(_UploadTarget(faulty), max_count=8, max_bytes=1 << 20)
        for i in range(4):
            await uploads.add(f"chunks/{i}", b"frame", 5)
        try:
            await uploads.drain()
        except StoreError as e:
            assert "injected fault in put" in str(e)
        else:
            pytest.fail("the uploads succeeded")

    await upload_four()
    assert faulty.injected["put"] == 4
    gc.collect()
    await anyio.lowlevel.checkpoint()
    never = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert never == []
