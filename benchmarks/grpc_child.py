"""The processes of the gRPC section: a minimal grpc.aio server and client, and castore's
client, each run as ``python -m benchmarks.grpc_child ROLE …``.

The minimal pair is the yardstick: a grpc.aio server and client with no work of their own,
moving ``tvix.castore.v1.BlobChunk`` messages of 256 KiB that are encoded once and passed
through as bytes (identity serializers). What castore's client and ``castore serve`` move
in the same run is set against it.

Roles:

- ``minimal-server``: serves ``Put`` (counts the bytes of the messages it receives) and
  ``Read`` (streams as many copies of one message as the request asks for, the count
  being the request's first 8 bytes); prints ``port N`` on stdout and runs until its
  standard input closes.
- ``minimal-client PORT put|read SIZE`` and ``castore-client URL put|read SIZE``: connect
  and warm up (castore's client stores the blob it will read), print ``ready``, wait for a
  line on standard input, move ``SIZE`` bytes in one stream, then print one JSON line:
  wall seconds, CPU seconds of the process (``getrusage``, every thread), bytes moved.

Each process sets glibc's allocator as the ``castore`` command does (see
:mod:`castore.cli._allocator`; ``CASTORE_NO_MALLOC_TUNING=1`` runs all of them, ``castore
serve`` included, on glibc's defaults).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["MESSAGE"]

#: The payload of every message moved.
MESSAGE = 256 * 1024
_SERVICE = "tvix.castore.v1.BlobService"


_Context: TypeAlias = "grpc.aio.ServicerContext[bytes, bytes]"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _blob_chunk(payload: bytes) -> bytes:
    """``BlobChunk(data=payload)`` on the wire: field 1, length-delimited."""
    n, varint = len(payload), bytearray()
    while n > 0x7F:
        varint.append((n & 0x7F) | 0x80)
        n >>= 7
    varint.append(n)
    return b"\x0a" + bytes(varint) + payload


def _payload(seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(MESSAGE)


async def _go_signal() -> None:
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)


def _report(seconds: float, cpu: float, moved: int) -> None:
    print(json.dumps({"seconds": seconds, "cpu": cpu, "bytes": moved}), flush=True)


async def _minimal_server() -> None:
    import grpc
    import grpc.aio

    message = _blob_chunk(_payload(1))

    async def put(requests: AsyncIterator[bytes], context: _Context) -> bytes:
        total = 0
        async for request in requests:
            total += len(request)
        return total.to_bytes(8, "big")

    async def read(request: bytes, context: _Context) -> AsyncIterator[bytes]:
        for _ in range(int.from_bytes(request[:8], "big")):
            yield message

    def same(b: bytes) -> bytes:
        return b

    handlers = {
        "Put": grpc.stream_unary_rpc_method_handler(
            put, request_deserializer=same, response_serializer=same
        ),
        "Read": grpc.unary_stream_rpc_method_handler(
            read, request_deserializer=same, response_serializer=same
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(None)


async def _minimal_client(port: int, op: str, size: int) -> None:
    import grpc.aio

    message = _blob_chunk(_payload(2))
    count = size // MESSAGE

    def same(b: bytes) -> bytes:
        return b

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        put = channel.stream_unary(
            f"/{_SERVICE}/Put", request_serializer=same, response_deserializer=same
        )
        read = channel.unary_stream(
            f"/{_SERVICE}/Read", request_serializer=same, response_deserializer=same
        )

        async def do_put(n: int) -> int:
            call = put()
            for _ in range(n):
                await call.write(message)
            await call.done_writing()
            return int.from_bytes(await call, "big")

        async def do_read(n: int) -> int:
            got = 0
            async for response in read(n.to_bytes(8, "big")):
                got += len(response)
            return got

        await do_put(4)
        await do_read(4)
        await _go_signal()
        t0, c0 = time.perf_counter(), _cpu()
        moved = await (do_put(count) if op == "put" else do_read(count))
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    _report(seconds, cpu, moved)


async def _castore_client(url: str, op: str, size: int) -> None:
    import castore

    payload = _payload(3)
    count = size // MESSAGE
    async with castore.from_addr(url) as service:
        # Warm up, and store the blob that a read will fetch.
        await service.put(payload)
        digest = await service.put(payload * count) if op == "read" else None
        await _go_signal()
        t0, c0 = time.perf_counter(), _cpu()
        moved = 0
        if digest is None:
            writer = await service.open_write()
            for _ in range(count):
                await writer.write(payload)
                moved += len(payload)
            await writer.close()
        else:
            reader = await service.open_read(digest)
            assert reader is not None
            async with reader:
                while block := await reader.read(MESSAGE):
                    moved += len(block)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    _report(seconds, cpu, moved)


def main(argv: list[str]) -> None:
    from castore.cli._allocator import tune_allocator

    # Every process of the section runs with the allocator settings of the castore
    # command, which ``castore serve`` sets for itself: the pairs differ only in their code.
    tune_allocator()
    role, *args = argv
    if role == "minimal-server":
        asyncio.run(_minimal_server())
    elif role == "minimal-client":
        asyncio.run(_minimal_client(int(args[0]), args[1], int(args[2])))
    elif role == "castore-client":
        asyncio.run(_castore_client(args[0], args[1], int(args[2])))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
