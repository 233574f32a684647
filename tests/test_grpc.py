"""castore's gRPC server and client: wire behaviour, limits, errors, verification, drain.

Everything runs over real sockets on 127.0.0.1 (and unix sockets). Raw calls go through a
plain grpc.aio channel with the generated messages, to see exactly what is on the wire;
:mod:`h2raw` goes below gRPC where a test needs HTTP/2 frames themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence

import anyio
import grpc
import grpc.aio
import h2.events
import pytest
from h2raw import H2, frame, headers_of
from obstore.store import MemoryStore

from castore import (
    B3Digest,
    ChunkMeta,
    DataCorruptionError,
    DigestMismatchError,
    GRPCBlobService,
    InvalidAddressError,
    MemoryBlobService,
    ObjectStoreBlobService,
    StoreError,
    from_addr,
)
from castore._proto.tvix.castore.v1 import (
    BlobChunk,
    PutBlobResponse,
    ReadBlobRequest,
    StatBlobRequest,
    StatBlobResponse,
)
from castore.errors import (
    BlobNotFoundError,
    InvalidDigestError,
    StorePermissionError,
    StoreTimeoutError,
    StoreUnavailableError,
    WriteAbortedError,
)
from castore.grpc import RunningServer, serve
from castore.grpc._channel import target
from castore.grpc._errors import from_grpc_error, status_for
from castore.testing.conformance import pseudo_random_bytes
from castore.testing.faults import Fault, FaultyBlobService

Status = grpc.StatusCode
TVIX = "tvix.castore.v1"
SNIX = "snix.castore.v1"
KiB = 1024
MiB = 1024 * 1024


def _path(method: str, package: str = TVIX) -> str:
    return f"/{package}.BlobService/{method}"


def _same(b: bytes) -> bytes:
    return b


@contextlib.asynccontextmanager
async def raw_channel(running: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(target(running.endpoint)) as channel:
        yield channel


def raw_put_call(
    channel: grpc.aio.Channel, package: str = TVIX
) -> grpc.aio.StreamUnaryCall[BlobChunk, PutBlobResponse]:
    put = channel.stream_unary(
        _path("Put", package),
        request_serializer=bytes,
        response_deserializer=PutBlobResponse.parse,
    )
    return put()


def raw_read_call(
    channel: grpc.aio.Channel, digest: bytes, package: str = TVIX
) -> grpc.aio.UnaryStreamCall[ReadBlobRequest, BlobChunk]:
    read = channel.unary_stream(
        _path("Read", package), request_serializer=bytes, response_deserializer=BlobChunk.parse
    )
    return read(ReadBlobRequest(digest=digest))


async def raw_stat(
    channel: grpc.aio.Channel, digest: bytes, send_chunks: bool = False, package: str = TVIX
) -> StatBlobResponse:
    stat = channel.unary_unary(
        _path("Stat", package),
        request_serializer=bytes,
        response_deserializer=StatBlobResponse.parse,
    )
    return await stat(StatBlobRequest(digest=digest, send_chunks=send_chunks))


async def raw_read(channel: grpc.aio.Channel, digest: bytes, package: str = TVIX) -> list[bytes]:
    """The payloads of every message of a Read, as sent."""
    return [message.data async for message in raw_read_call(channel, digest, package)]


async def raw_put(channel: grpc.aio.Channel, pieces: Sequence[bytes], package: str = TVIX) -> bytes:
    call = raw_put_call(channel, package)
    for piece in pieces:
        await call.write(BlobChunk(data=piece))
    await call.done_writing()
    return (await call).digest


async def eventually(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (state that has no event to wait on)."""
    with anyio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def wait_idle(running: RunningServer) -> None:
    """Until the server has finished every call (a reset reaches it asynchronously)."""
    await eventually(lambda: running.servicer.calls_in_flight == 0)


@pytest.fixture
async def memory_server() -> AsyncIterator[tuple[MemoryBlobService, RunningServer]]:
    async with MemoryBlobService() as backend, serve(backend) as running:
        yield backend, running


# --- protocol -----------------------------------------------------------------------------


async def test_snix_paths_answer_like_tvix(
    memory_server: tuple[MemoryBlobService, RunningServer],
) -> None:
    _, running = memory_server
    async with raw_channel(running) as channel:
        digest = await raw_put(channel, [b"via snix"], package=SNIX)
        assert digest == B3Digest.of(b"via snix").digest
        await raw_stat(channel, digest, package=SNIX)
        await raw_stat(channel, digest, package=TVIX)
        assert b"".join(await raw_read(channel, digest, package=SNIX)) == b"via snix"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_stat(channel, digest, package="nix.castore.v1")
        assert info.value.code() is Status.UNIMPLEMENTED
    async with GRPCBlobService(
        running.endpoint.host, running.endpoint.port, package="snix"
    ) as client:
        assert await client.get(B3Digest(digest)) == b"via snix"
    async with from_addr(running.url + "?package=snix") as client:
        assert isinstance(client, GRPCBlobService)
        assert client.package == SNIX
        assert await client.has(B3Digest(digest))


async def test_stat_lists_chunks_only_when_asked() -> None:
    data = pseudo_random_bytes(3 * MiB, seed=11)
    async with (
        from_addr("objectstore+memory:///") as backend,
        serve(backend) as running,
        raw_channel(running) as channel,
    ):
        digest = await backend.put(data)
        listed = await raw_stat(channel, digest.digest, send_chunks=True)
        assert len(listed.chunks) >= 2
        offset = 0
        for chunk in listed.chunks:
            assert chunk.digest == B3Digest.of(data[offset : offset + chunk.size]).digest
            offset += chunk.size
        assert offset == len(data)
        bare = await raw_stat(channel, digest.digest, send_chunks=False)
        assert bare.chunks == []
        # The client reads such a blob chunk by chunk, by the chunks' digests.
        async with from_addr(running.url) as client:
            assert await client.chunks(digest) == [
                ChunkMeta(B3Digest(c.digest), c.size) for c in listed.chunks
            ]
            assert await client.get(digest) == data


@pytest.mark.parametrize("length", [0, 31, 33])
async def test_bad_digest_is_invalid_argument(
    memory_server: tuple[MemoryBlobService, RunningServer], length: int
) -> None:
    _, running = memory_server
    async with raw_channel(running) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_stat(channel, b"\x01" * length)
        assert info.value.code() is Status.INVALID_ARGUMENT
        assert f"got {length}" in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_read(channel, b"\x01" * length)
        assert info.value.code() is Status.INVALID_ARGUMENT


async def test_missing_blob_is_not_found_before_any_data(
    memory_server: tuple[MemoryBlobService, RunningServer],
) -> None:
    _, running = memory_server
    missing = B3Digest.of(b"missing").digest
    async with raw_channel(running) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_stat(channel, missing, send_chunks=True)
        assert info.value.code() is Status.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_read(channel, missing)
        assert info.value.code() is Status.NOT_FOUND
    # Trailers-only: the status comes in the response's only HEADERS frame, which ends
    # the stream, before any message.
    assert running.endpoint.port is not None
    h = await H2.connect(running.endpoint.port)
    try:
        sid = await h.start("Read")
        await h.send(sid, frame(bytes(ReadBlobRequest(digest=missing))), end=True)
        with anyio.fail_after(10):
            events: list[h2.events.Event] = []
            while not any(isinstance(e, h2.events.StreamEnded) for e in events):
                events += [e for e in await h.events() if getattr(e, "stream_id", sid) == sid]
    finally:
        await h.aclose()
    kinds = [type(e) for e in events if not isinstance(e, h2.events.SettingsAcknowledged)]
    assert h2.events.DataReceived not in kinds, kinds
    response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert headers_of(response)["grpc-status"] == str(Status.NOT_FOUND.value[0])


async def test_read_message_size() -> None:
    data = pseudo_random_bytes(1_000_000, seed=12)
    async with MemoryBlobService() as backend:
        digest = await backend.put(data)
        async with serve(backend) as running, raw_channel(running) as channel:
            sizes = [len(m) for m in await raw_read(channel, digest.digest)]
        assert sizes == [256 * KiB] * 3 + [1_000_000 - 3 * 256 * KiB]
        async with (
            serve(backend, read_message_size=100_000) as running,
            raw_channel(running) as channel,
        ):
            pieces = await raw_read(channel, digest.digest)
        assert [len(m) for m in pieces] == [100_000] * 10
        assert b"".join(pieces) == data


async def test_read_waits_for_a_slow_client() -> None:
    """Backpressure: the server reads from the store only as fast as the client reads."""
    data = pseudo_random_bytes(1 * MiB, seed=13) * 48  # 48 MiB
    faulty = FaultyBlobService(MemoryBlobService())
    digest = await faulty.inner.put(data)
    async with serve(faulty) as running:
        async with raw_channel(running) as channel:
            call = raw_read_call(channel, digest.digest)
            first = await call.read()
            assert isinstance(first, BlobChunk)
            await anyio.sleep(0.3)
            ahead = faulty.calls["read"] * 256 * KiB
            # HTTP/2 windows plus socket buffers, not 48 MiB.
            assert ahead < 12 * MiB, ahead
            received = len(first.data)
            while isinstance(message := await call.read(), BlobChunk):
                received += len(message.data)
            assert received == len(data)
        # The same through castore's client, which must not read ahead either.
        async with from_addr(running.url) as client:
            before = faulty.calls["read"]
            reader = await client.open_read(digest)
            assert reader is not None
            async with reader:
                assert await reader.read(MiB) == data[:MiB]
                await anyio.sleep(0.3)
                ahead = (faulty.calls["read"] - before) * 256 * KiB
                assert ahead < 12 * MiB, ahead


# --- Put ----------------------------------------------------------------------------------


async def test_put_ignores_client_framing(
    memory_server: tuple[MemoryBlobService, RunningServer],
) -> None:
    backend, running = memory_server
    data = pseudo_random_bytes(3 * MiB + 5, seed=14)
    pieces = [b"", data[:1], data[1:2], b"", data[2 : 3 * MiB], data[3 * MiB :], b""]
    async with raw_channel(running) as channel:
        assert await raw_put(channel, pieces) == B3Digest.of(data).digest
        assert await raw_put(channel, []) == B3Digest.of(b"").digest
    assert await backend.get(B3Digest.of(data)) == data


async def test_reset_put_stores_nothing(
    memory_server: tuple[MemoryBlobService, RunningServer],
) -> None:
    backend, running = memory_server
    async with raw_channel(running) as channel:
        call = raw_put_call(channel)
        await call.write(BlobChunk(data=b"x" * MiB))
        await call.write(BlobChunk(data=b"y" * 1000))
        assert call.cancel()
        await wait_idle(running)
        assert len(backend) == 0
        # The connection stays usable.
        assert await raw_put(channel, [b"after"]) == B3Digest.of(b"after").digest
    assert len(backend) == 1


async def test_reset_put_into_object_store_writes_no_index() -> None:
    partial = pseudo_random_bytes(2 * MiB, seed=21)  # several chunks
    async with (
        from_addr("objectstore+memory:///") as backend,
        serve(backend) as running,
        raw_channel(running) as channel,
    ):
        call = raw_put_call(channel)
        for i in range(0, len(partial), 256 * KiB):
            await call.write(BlobChunk(data=partial[i : i + 256 * KiB]))
        assert call.cancel()
        await wait_idle(running)
        assert not await backend.has(B3Digest.of(partial))
        # The same bytes with a clean end of stream are stored: the check could fail.
        assert await raw_put(channel, [partial]) == B3Digest.of(partial).digest
        assert await backend.has(B3Digest.of(partial))


async def test_client_timeout_bounds_stat() -> None:
    faulty = FaultyBlobService(MemoryBlobService())
    faulty.plan("has", Fault.HANG, nth=1)
    async with serve(faulty) as running:
        async with from_addr(running.url + "?timeout=0.3") as client:
            started = time.monotonic()
            with pytest.raises(StoreTimeoutError):
                await client.has(B3Digest.of(b"x"))
            assert time.monotonic() - started < 3
        # The deadline travelled with the call: the server gave up on it too.
        await wait_idle(running)


async def test_dropped_connection_mid_put_stores_nothing(
    memory_server: tuple[MemoryBlobService, RunningServer],
) -> None:
    backend, running = memory_server
    assert running.endpoint.port is not None
    h = await H2.connect(running.endpoint.port)
    sid = await h.start("Put")
    await h.send(sid, frame(bytes(BlobChunk(data=b"z" * 30_000))), end=False)
    await eventually(lambda: running.servicer.calls_in_flight > 0)
    await h.aclose()  # the TCP connection goes away with the stream half-sent
    await wait_idle(running)
    assert len(backend) == 0


_VANISHING_CLIENT = """
import asyncio, sys
import grpc.aio
from castore._proto.tvix.castore.v1 import BlobChunk

async def main():
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sys.argv[1]}")
    put = channel.stream_unary("/tvix.castore.v1.BlobService/Put", request_serializer=bytes)
    call = put()
    await call.write(BlobChunk(data=b"partial" * 100_000))
    print("sent", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_killed_client_mid_put_stores_nothing() -> None:
    faulty = FaultyBlobService(MemoryBlobService())
    async with serve(faulty) as running:
        async with await anyio.open_process(
            [sys.executable, "-c", _VANISHING_CLIENT, str(running.endpoint.port)]
        ) as proc:
            assert proc.stdout is not None
            with anyio.fail_after(20):
                assert b"sent" in await proc.stdout.receive()
            await eventually(lambda: faulty.calls["write"] > 0)
            proc.kill()
            await proc.wait()
        await wait_idle(running)
        assert faulty.calls["close"] == 0
        assert len(faulty.inner) == 0  # type: ignore[arg-type]


async def test_message_size_limit() -> None:
    async with MemoryBlobService() as backend, serve(backend, max_message_size=MiB) as running:
        async with raw_channel(running) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw_put(channel, [b"a" * 1000, b"b" * (MiB + 1)])
            assert info.value.code() is Status.RESOURCE_EXHAUSTED
            ok = b"c" * (MiB - 8)  # payload plus the field tag and length
            assert await raw_put(channel, [ok]) == B3Digest.of(ok).digest
        await wait_idle(running)
        assert len(backend) == 1
        big = GRPCBlobService(
            running.endpoint.host, running.endpoint.port, put_message_size=2 * MiB
        )
        async with big:
            with pytest.raises(StoreError, match="RESOURCE_EXHAUSTED"):
                await big.put(b"d" * 3 * MiB)
        await wait_idle(running)
        assert len(backend) == 1


# --- errors -------------------------------------------------------------------------------


async def test_store_errors_cross_the_wire() -> None:
    faulty = FaultyBlobService(MemoryBlobService())
    digest = await faulty.inner.put(b"present")
    async with serve(faulty) as running, from_addr(running.url) as client:
        faulty.plan("has", Fault.ERROR, nth=1)
        with pytest.raises(StoreUnavailableError, match="UNAVAILABLE"):
            await client.has(digest)
        faulty.plan("chunks", Fault.TIMEOUT, nth=1)
        with pytest.raises(StoreTimeoutError, match="DEADLINE_EXCEEDED"):
            await client.open_read(digest)
        faulty.plan("write", Fault.ERROR, nth=1)
        with pytest.raises(StoreUnavailableError):
            await client.put(b"doomed")
        assert await client.get(digest) == b"present"
        assert not await faulty.inner.has(B3Digest.of(b"doomed"))


async def test_corrupt_chunk_is_data_loss() -> None:
    store = MemoryStore()
    data = pseudo_random_bytes(100_000, seed=15)
    async with ObjectStoreBlobService(store) as backend:
        digest = await backend.put(data)
        key = f"chunks/b3/{digest.hex()[:4]}/{digest.hex()}"
        await store.put_async(key, b"not a zstd frame")
        async with serve(backend) as running:
            async with raw_channel(running) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await raw_read(channel, digest.digest)
                assert info.value.code() is Status.DATA_LOSS
            async with from_addr(running.url) as client:
                with pytest.raises(DataCorruptionError, match="DATA_LOSS"):
                    await client.get(digest)


def test_status_tables() -> None:
    from castore import errors as e

    assert status_for(e.InvalidDigestError("x")) is Status.INVALID_ARGUMENT
    assert status_for(e.BlobNotFoundError("x")) is Status.NOT_FOUND
    assert status_for(FileNotFoundError("x")) is Status.NOT_FOUND
    assert status_for(e.DigestMismatchError("x")) is Status.DATA_LOSS
    assert status_for(e.DecompressionBombError("x")) is Status.DATA_LOSS
    assert status_for(e.StoreUnavailableError("x")) is Status.UNAVAILABLE
    assert status_for(e.StoreError("x")) is Status.UNAVAILABLE
    assert status_for(e.StoreTimeoutError("x")) is Status.DEADLINE_EXCEEDED
    assert status_for(e.StorePermissionError("x")) is Status.PERMISSION_DENIED
    assert status_for(e.WriteAbortedError("x")) is Status.ABORTED
    assert status_for(ValueError("a bug")) is Status.INTERNAL
    assert status_for(RuntimeError("a bug")) is Status.INTERNAL

    def back(status: Status) -> type[BaseException]:
        return type(from_grpc_error(grpc.aio.AioRpcError(status, None, None, "m"), "call"))

    assert back(Status.INVALID_ARGUMENT) is InvalidDigestError
    assert back(Status.NOT_FOUND) is BlobNotFoundError
    assert back(Status.DATA_LOSS) is DataCorruptionError
    assert back(Status.OUT_OF_RANGE) is DataCorruptionError
    assert back(Status.UNAVAILABLE) is StoreUnavailableError
    assert back(Status.DEADLINE_EXCEEDED) is StoreTimeoutError
    assert back(Status.PERMISSION_DENIED) is StorePermissionError
    assert back(Status.UNAUTHENTICATED) is StorePermissionError
    assert back(Status.INTERNAL) is StoreError
    assert type(from_grpc_error(ConnectionRefusedError(), "c")) is StoreUnavailableError
    cancelled = asyncio.CancelledError()
    assert from_grpc_error(cancelled, "c") is cancelled
    already = WriteAbortedError("x")
    assert from_grpc_error(already, "c") is already


# --- client verification and reading -----------------------------------------------------


async def test_client_rejects_flipped_small_blob() -> None:
    faulty = FaultyBlobService(MemoryBlobService())
    data = pseudo_random_bytes(500_000, seed=16)
    digest = await faulty.inner.put(data)
    async with serve(faulty) as running, from_addr(running.url) as client:
        faulty.plan("read", Fault.FLIP, nth=1)
        # Small: verified before open_read returns anything.
        with pytest.raises(DigestMismatchError):
            await client.open_read(digest)
        assert await client.get(digest) == data


@pytest.mark.parametrize("fault", [Fault.FLIP, Fault.TRUNCATE])
async def test_client_rejects_bad_large_stream_before_its_end(fault: Fault) -> None:
    faulty = FaultyBlobService(MemoryBlobService())
    data = pseudo_random_bytes(8 * MiB, seed=17)
    digest = await faulty.inner.put(data)
    async with serve(faulty) as running, from_addr(running.url) as client:
        # The 10th 256 KiB message, well after the first MiB that open_read buffers.
        faulty.plan("read", fault, nth=10)
        reader = await client.open_read(digest)
        assert reader is not None
        got = bytearray()
        async with reader:
            with pytest.raises(DigestMismatchError):
                while block := await reader.read(100_000):
                    got += block
        # The stream's end (and the digest check) came before its last bytes went out.
        assert len(got) < len(data)


async def test_stream_reader_seeks() -> None:
    faulty = FaultyBlobService(MemoryBlobService())
    data = pseudo_random_bytes(5 * MiB, seed=18)
    digest = await faulty.inner.put(data)
    async with serve(faulty) as running, from_addr(running.url) as client:
        reader = await client.open_read(digest)
        assert reader is not None
        assert faulty.calls["open_read"] == 1
        async with reader:
            assert await reader.read(100) == data[:100]
            assert await reader.seek(4 * MiB) == 4 * MiB  # forward: skip along the stream
            assert await reader.read(10) == data[4 * MiB : 4 * MiB + 10]
            assert faulty.calls["open_read"] == 1
            assert await reader.seek(10) == 10  # backward: a new stream
            assert await reader.read(5) == data[10:15]
            assert faulty.calls["open_read"] == 2
            # No chunk list, so the length is learnt by reading to the end (verified).
            assert await reader.seek(-3, io.SEEK_END) == len(data) - 3
            assert await reader.read() == data[-3:]
            assert await reader.seek(len(data) + 10) == len(data) + 10
            assert await reader.read(5) == b""
            assert reader.tell() == len(data) + 10
            assert await reader.seek(-7, io.SEEK_END) == len(data) - 7
            assert await reader.read() == data[-7:]
        with pytest.raises(ValueError):
            await reader.read(1)


class _OldIndexService(MemoryBlobService):
    """Lists a blob's single chunk, as indexes written before 2024-07 do."""

    def __init__(self, claimed_extra: int = 0) -> None:
        super().__init__()
        self.claimed_extra = claimed_extra

    async def chunks(self, digest: B3Digest) -> list[ChunkMeta] | None:
        data = await self.get(digest)
        if data is None:
            return None
        return [ChunkMeta(digest, len(data) + self.claimed_extra)]


async def test_single_listed_chunk_is_streamed_with_its_size() -> None:
    data = pseudo_random_bytes(2 * MiB, seed=19)
    for extra, ok in [(0, True), (1, False)]:
        async with (
            _OldIndexService(extra) as backend,
            serve(backend) as running,
            from_addr(running.url) as client,
        ):
            digest = await backend.put(data)
            reader = await client.open_read(digest)
            assert reader is not None
            async with reader:
                assert await reader.seek(-5, io.SEEK_END) == len(data) - 5 + extra
                await reader.seek(0)
                if ok:
                    assert await reader.read() == data
                else:
                    with pytest.raises(DigestMismatchError, match="expected"):
                        await reader.read()


# --- connecting ---------------------------------------------------------------------------


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_connect_lazily_or_eagerly(
    memory_server: tuple[MemoryBlobService, RunningServer],
) -> None:
    _, running = memory_server
    dead = f"grpc+http://127.0.0.1:{_dead_port()}"
    lazy = from_addr(dead)  # no connection attempt yet: cannot fail
    with pytest.raises(StoreUnavailableError):
        await lazy.has(B3Digest.of(b""))
    await lazy.aclose()
    eager = from_addr(dead + "?wait-connect=1")
    with pytest.raises(StoreUnavailableError):
        async with eager:
            pass
    await eager.aclose()

    async with from_addr(running.url) as client:
        assert isinstance(client, GRPCBlobService)
        assert not client.connected
        await client.has(B3Digest.of(b""))
        assert client.connected
    client = from_addr(running.url + "?wait-connect=1")
    assert isinstance(client, GRPCBlobService)
    # Connecting began in from_addr, in the background.
    await eventually(lambda: client.connected)
    async with client:
        assert client.connected


def test_addresses() -> None:
    ok = {
        "grpc+http://127.0.0.1:8000": "grpc+http://127.0.0.1:8000",
        "grpc+http://[::1]:8000": "grpc+http://[::1]:8000",
        "grpc+unix:///run/castore.sock": "grpc+unix:///run/castore.sock",
        "grpc+https://example.org:443?ca-file=/x.pem": "grpc+https://example.org:443",
        "grpc+http://localhost:1?timeout=2.5&package=tvix": "grpc+http://localhost:1",
    }
    for url, canonical in ok.items():
        client = from_addr(url)
        assert isinstance(client, GRPCBlobService)
        assert client.url == canonical
    bad = [
        "grpc+http://127.0.0.1",  # no port
        "grpc+http://127.0.0.1:80/path",
        "grpc+unix://relative/path",
        "grpc+unix://",
        "grpc+http://127.0.0.1:1?frobnicate=1",
        "grpc+http://127.0.0.1:1?wait-connect=maybe",
        "grpc+http://127.0.0.1:1?ca-file=/x.pem",  # TLS options need grpc+https
        "grpc+http://127.0.0.1:1?package=nix",
        "grpc+http://127.0.0.1:1?timeout=soon",
        "grpc+http://127.0.0.1:99999",
    ]
    for url in bad:
        with pytest.raises(InvalidAddressError):
            from_addr(url)


# --- graceful stop ------------------------------------------------------------------------


async def test_stop_lets_calls_in_flight_finish() -> None:
    backend = MemoryBlobService()
    data = pseudo_random_bytes(2 * MiB, seed=20)
    stack = contextlib.AsyncExitStack()
    running = await stack.enter_async_context(serve(backend, grace=10))
    client = GRPCBlobService(running.endpoint.host, running.endpoint.port)
    other = GRPCBlobService(running.endpoint.host, running.endpoint.port)
    await other.connect()
    writer = await client.open_write()
    await writer.write(data[:MiB])
    await eventually(lambda: running.servicer.calls_in_flight > 0)
    stopped = anyio.Event()

    async def stop() -> None:
        await stack.aclose()
        stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop)
        await anyio.sleep(0.2)
        assert not stopped.is_set()  # waiting for the Put
        # A new call, even from a client connected before, is turned away: the server
        # said GOAWAY on the connection and no longer listens.
        with pytest.raises(StoreUnavailableError):
            await other.has(B3Digest.of(b""))
        await writer.write(data[MiB:])
        assert await writer.close() == B3Digest.of(data)
        with anyio.fail_after(5):
            await stopped.wait()
    assert await backend.get(B3Digest.of(data)) == data
    await client.aclose()
    await other.aclose()


async def test_stop_cancels_calls_after_the_grace_period() -> None:
    backend = MemoryBlobService()
    client_stack = contextlib.AsyncExitStack()
    async with serve(backend, grace=0.3) as running:
        client = await client_stack.enter_async_context(
            GRPCBlobService(running.endpoint.host, running.endpoint.port)
        )
        writer = await client.open_write()
        await writer.write(b"never finished")
        await eventually(lambda: running.servicer.calls_in_flight > 0)
        started = time.monotonic()
    assert 0.25 < time.monotonic() - started < 5
    assert len(backend) == 0
    with pytest.raises((StoreUnavailableError, WriteAbortedError)):
        await writer.close()
    await client_stack.aclose()


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=castore-test", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


async def test_tls(tls_files: tuple[str, str]) -> None:
    cert, key = tls_files
    async with MemoryBlobService() as backend, serve(backend, tls_cert=cert, tls_key=key) as srv:
        assert srv.url.startswith("grpc+https://127.0.0.1:")
        async with from_addr(f"{srv.url}?ca-file={cert}") as client:
            digest = await client.put(b"secret")
            assert await client.get(digest) == b"secret"
        async with from_addr(f"{srv.url}?ca-file={cert}&server-name=localhost") as client:
            assert await client.has(digest)
        # The refused handshakes below are reported to the loop's exception handler in
        # debug mode (as the test loops run); they are expected here.
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
            if isinstance(context.get("exception"), ssl.SSLError | ConnectionResetError):
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)
        # Without the certificate in its trust store, the client refuses the server.
        async with from_addr(srv.url) as client:
            with pytest.raises(StoreUnavailableError, match=r"TLS|SSL|certificate"):
                await client.has(digest)
        # A plaintext client cannot talk to it either.
        plain = f"grpc+http://127.0.0.1:{srv.endpoint.port}"
        async with from_addr(plain) as client:
            with pytest.raises(StoreError):
                with anyio.fail_after(10):
                    await client.has(digest)
        loop.set_exception_handler(previous)


def test_server_ssl_context_is_deprecated_and_still_builds_a_context(
    tls_files: tuple[str, str],
) -> None:
    from castore.grpc.server import server_ssl_context

    cert, key = tls_files
    with pytest.warns(DeprecationWarning, match="server_credentials"):
        ctx = server_ssl_context(cert, key)
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2


async def test_serve_refuses_an_ssl_context(tls_files: tuple[str, str]) -> None:
    cert, key = tls_files
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    async with MemoryBlobService() as backend:
        with pytest.raises(TypeError, match="tls_cert"):
            async with serve(backend, ssl_context=ctx):
                pass


async def test_unix_socket_is_removed_on_stop() -> None:
    import tempfile

    folder = tempfile.mkdtemp(prefix="castore-grpc-", dir="/tmp")
    path = os.path.join(folder, "s.sock")
    try:
        async with MemoryBlobService() as backend:
            async with serve(backend, f"grpc+unix://{path}") as running:
                assert await anyio.Path(path).exists()
                async with from_addr(running.url) as client:
                    assert await client.put(b"u") == B3Digest.of(b"u")
            assert not await anyio.Path(path).exists()
            # A stale socket file left by a killed server does not block a restart.
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(path)
            stale.close()
            async with (
                serve(backend, f"grpc+unix://{path}") as running,
                from_addr(running.url) as client,
            ):
                assert await client.get(B3Digest.of(b"u")) == b"u"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.rmdir(folder)


def test_pieces_buffer_against_bytes() -> None:
    import random

    from castore.grpc._pieces import Pieces

    rng = random.Random(5)
    for _ in range(200):
        model = b""
        pieces = Pieces()
        for _ in range(30):
            op = rng.random()
            if op < 0.4:
                data = rng.randbytes(rng.choice([0, 1, 7, 100]))
                pieces.append(data)
                model += data
            elif op < 0.7:
                n = rng.randint(0, len(model))
                assert pieces.take(n) == model[:n]
                model = model[n:]
            else:
                n = rng.randint(0, len(model))
                pieces.skip(n)
                model = model[n:]
            assert len(pieces) == len(model)
        assert pieces.take(len(pieces)) == model
