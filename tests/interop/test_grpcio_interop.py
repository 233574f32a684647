"""Interop with the official gRPC stack (grpcio), both ways, over real sockets.

1. A grpcio client, generated from ``protos/`` at test time, stores and reads blobs through
   ``castore serve`` running as a separate process.
2. castore's :class:`~castore.GRPCBlobService` passes the conformance suite against a
   grpcio server backed by a dict (written from the proto alone), over TCP and a unix
   socket; that server streams 4 KiB messages and lists chunks of its own choosing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import blake3
import grpc
import grpc.aio
import pytest
from grpcio_support import (
    DICT_CHUNK,
    CastoreServe,
    DictServer,
    Stubs,
    start_castore_serve,
    stop_castore_serve,
)

from castore import B3Digest, BlobService, GRPCBlobService, from_addr
from castore.errors import InvalidDigestError
from castore.testing.conformance import BlobServiceConformance, pseudo_random_bytes

KiB = 1024
MiB = 1024 * 1024


def b3(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


@pytest.fixture
def stub(stubs: Stubs, castore_server: CastoreServe) -> Iterator[Any]:
    with grpc.insecure_channel(castore_server.grpcio_target) as channel:
        yield stubs.pb2_grpc.BlobServiceStub(channel)


def put(stubs: Stubs, stub: Any, pieces: list[bytes]) -> bytes:
    response = stub.Put(iter([stubs.pb2.BlobChunk(data=p) for p in pieces]), timeout=30)
    digest: bytes = response.digest
    return digest


def read(stubs: Stubs, stub: Any, digest: bytes) -> list[bytes]:
    request = stubs.pb2.ReadBlobRequest(digest=digest)
    return [m.data for m in stub.Read(request, timeout=30)]


# --- 1. grpcio client -> castore serve --------------------------------------------------------


def test_grpcio_client_puts_stats_and_reads(stubs: Stubs, stub: Any) -> None:
    data = pseudo_random_bytes(3 * MiB + 123, seed=41)
    framings = {
        "whole": [data],
        "1 MiB": [data[i : i + MiB] for i in range(0, len(data), MiB)],
        "odd": [data[:1], b"", data[1:70_001], data[70_001:]],
    }
    for pieces in framings.values():
        assert put(stubs, stub, pieces) == b3(data)
    pb2 = stubs.pb2
    assert list(stub.Stat(pb2.StatBlobRequest(digest=b3(data)), timeout=30).chunks) == []
    listed = stub.Stat(pb2.StatBlobRequest(digest=b3(data), send_chunks=True), timeout=30)
    assert len(listed.chunks) >= 2
    assert sum(c.size for c in listed.chunks) == len(data)
    offset = 0
    for chunk in listed.chunks:
        piece = data[offset : offset + chunk.size]
        assert chunk.digest == b3(piece)
        assert b"".join(read(stubs, stub, chunk.digest)) == piece
        offset += chunk.size
    messages = read(stubs, stub, b3(data))
    assert b"".join(messages) == data
    assert max(len(m) for m in messages) == 256 * KiB
    # Small blobs and the empty blob.
    assert put(stubs, stub, [b"Hello World!"]) == b3(b"Hello World!")
    assert read(stubs, stub, b3(b"Hello World!")) == [b"Hello World!"]
    assert put(stubs, stub, []) == b3(b"")
    assert read(stubs, stub, b3(b"")) == []


def test_grpcio_sees_castore_status_codes(stubs: Stubs, stub: Any) -> None:
    pb2 = stubs.pb2
    missing = b3(b"interop: never stored")
    for call in (
        lambda: stub.Stat(pb2.StatBlobRequest(digest=missing), timeout=30),
        lambda: read(stubs, stub, missing),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
    for bad in (b"", b"\x00" * 31, b"\x00" * 64):
        with pytest.raises(grpc.RpcError) as info:
            stub.Stat(pb2.StatBlobRequest(digest=bad), timeout=30)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert f"got {len(bad)}" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            read(stubs, stub, bad)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # A message larger than the server's 4 MiB limit.
    with pytest.raises(grpc.RpcError) as info:
        put(stubs, stub, [b"x" * (5 * MiB)])
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpcio_client_on_snix_paths(stubs: Stubs, castore_server: CastoreServe) -> None:
    pb2 = stubs.pb2
    with grpc.insecure_channel(castore_server.grpcio_target) as channel:
        put_snix = channel.stream_unary(
            "/snix.castore.v1.BlobService/Put",
            request_serializer=pb2.BlobChunk.SerializeToString,
            response_deserializer=pb2.PutBlobResponse.FromString,
        )
        stat_snix = channel.unary_unary(
            "/snix.castore.v1.BlobService/Stat",
            request_serializer=pb2.StatBlobRequest.SerializeToString,
            response_deserializer=pb2.StatBlobResponse.FromString,
        )
        response = put_snix(iter([pb2.BlobChunk(data=b"snix")]), timeout=30)
        assert response.digest == b3(b"snix")
        stat_snix(pb2.StatBlobRequest(digest=b3(b"snix")), timeout=30)
        stub = stubs.pb2_grpc.BlobServiceStub(channel)
        assert read(stubs, stub, b3(b"snix")) == [b"snix"]


def test_grpcio_cancelled_put_stores_nothing(stubs: Stubs, stub: Any) -> None:
    pb2 = stubs.pb2
    partial = pseudo_random_bytes(600_000, seed=42)
    sent = threading.Event()
    release = threading.Event()

    def messages() -> Iterator[Any]:
        yield pb2.BlobChunk(data=partial[:300_000])
        yield pb2.BlobChunk(data=partial[300_000:])
        sent.set()
        release.wait(30)

    future = stub.Put.future(messages(), timeout=30)
    assert sent.wait(10)
    time.sleep(0.3)  # let the bytes reach the server's writer
    future.cancel()
    release.set()
    time.sleep(0.5)  # the reset reaches the server asynchronously
    with pytest.raises(grpc.RpcError) as info:
        stub.Stat(pb2.StatBlobRequest(digest=b3(partial)), timeout=30)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    # The same bytes, ended properly, are stored: the check above could have failed.
    assert put(stubs, stub, [partial]) == b3(partial)
    stub.Stat(pb2.StatBlobRequest(digest=b3(partial)), timeout=30)


def test_grpcio_client_over_unix_socket_and_tls(stubs: Stubs, short_tmp: str) -> None:
    import subprocess

    sock = f"{short_tmp}/castore.sock"
    served = start_castore_serve("--store", "memory://", "--listen", f"grpc+unix://{sock}")
    try:
        assert served.grpcio_target == f"unix:{sock}"
        with grpc.insecure_channel(served.grpcio_target) as channel:
            stub = stubs.pb2_grpc.BlobServiceStub(channel)
            assert put(stubs, stub, [b"unix"]) == b3(b"unix")
            assert read(stubs, stub, b3(b"unix")) == [b"unix"]
    finally:
        assert stop_castore_serve(served) == 0, served.lines

    cert, key = f"{short_tmp}/cert.pem", f"{short_tmp}/key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", key, "-out", cert,
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    served = start_castore_serve(
        "--store", "memory://", "--listen", "grpc+http://127.0.0.1:0",
        "--tls-cert", cert, "--tls-key", key,
    )  # fmt: skip
    try:
        assert served.url.startswith("grpc+https://")
        with open(cert, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        with grpc.secure_channel(served.grpcio_target, credentials) as channel:
            stub = stubs.pb2_grpc.BlobServiceStub(channel)
            assert put(stubs, stub, [b"tls"]) == b3(b"tls")
            assert read(stubs, stub, b3(b"tls")) == [b"tls"]
    finally:
        assert stop_castore_serve(served) == 0, served.lines


# --- 2. castore's client -> a grpcio server ---------------------------------------------------


class TestCastoreClientAgainstGrpcioOverTCP(BlobServiceConformance):
    can_delete = can_list = False  # the tvix gRPC protocol has neither
    large_blob_size = 16 * MiB

    @pytest.fixture
    async def service(self, dict_server: DictServer) -> AsyncIterator[BlobService]:
        async with from_addr(dict_server.tcp_url) as client:
            yield client


class TestCastoreClientAgainstGrpcioOverUnix(BlobServiceConformance):
    can_delete = can_list = False  # the tvix gRPC protocol has neither
    large_blob_size = 16 * MiB

    @pytest.fixture
    async def service(self, dict_server: DictServer) -> AsyncIterator[BlobService]:
        async with from_addr(dict_server.unix_url) as client:
            yield client


async def test_castore_client_reads_grpcio_chunks_and_sees_its_errors(
    dict_server: DictServer,
) -> None:
    data = pseudo_random_bytes(2 * DICT_CHUNK + 1000, seed=43)
    async with from_addr(dict_server.tcp_url) as client:
        assert isinstance(client, GRPCBlobService)
        digest = await client.put(data)
        assert digest == B3Digest.of(data)
        assert digest.digest in dict_server.servicer.blobs
        chunks = await client.chunks(digest)
        assert chunks is not None
        assert [c.size for c in chunks] == [DICT_CHUNK, DICT_CHUNK, 1000]
        reader = await client.open_read(digest)
        assert reader is not None
        async with reader:
            await reader.seek(DICT_CHUNK - 10)
            assert await reader.read(20) == data[DICT_CHUNK - 10 : DICT_CHUNK + 10]
        assert await client.get(digest) == data
        # The grpcio server's own NOT_FOUND and INVALID_ARGUMENT.
        assert await client.open_read(B3Digest.of(b"absent")) is None
        assert not await client.has(B3Digest.of(b"absent"))

    # A digest the grpcio server rejects: castore's client cannot even build one, so ask
    # through the calls the client uses.
    from castore._proto.tvix.castore.v1 import StatBlobRequest
    from castore.grpc._errors import from_grpc_error

    async with GRPCBlobService.from_url(dict_server.tcp_url) as client:
        calls = await client._get_calls()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await calls.stat(StatBlobRequest(digest=b"short"))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(from_grpc_error(info.value, "Stat"), InvalidDigestError)
