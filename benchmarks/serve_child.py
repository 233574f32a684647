"""The client processes of the serve section: ``python -m benchmarks.serve_child ROLE …``.

Each role moves one blob through a running ``castore serve`` and reports what that cost
the client. It prepares first (imports, connection, the random data to send), prints
``ready``, waits for a line on standard input, moves the blob, then prints one JSON line:
wall seconds, CPU seconds of this process (``getrusage``: user and system, every thread),
bytes moved, and the blob's digest in hex.

Roles:

- ``grpc-put URL SIZE SEED``: castore's gRPC client, ``open_write`` and 256 KiB writes of
  ``SIZE`` random bytes made from ``SEED`` (the same seed twice puts the same blob again,
  every chunk of it already stored), ``close``;
- ``grpc-read URL HEX``: castore's gRPC client, ``open_read`` and 256 KiB reads to the end
  (one ``Read`` per chunk, each chunk and the whole blob verified);
- ``http-put PORT SIZE``: ``PUT /blobs`` of ``SIZE`` fresh random bytes with a
  ``Content-Length``, from a raw socket;
- ``http-get PORT HEX``: ``GET /blobs/HEX`` into one reused buffer from a raw socket.

The raw sockets cost the client next to nothing, so the HTTP rows show the server's cost
alone. Every process sets glibc's allocator as the ``castore`` command does.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import sys
import time

__all__ = ["PIECE"]

#: Bytes a write or read moves at a time.
PIECE = 256 * 1024


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _wait_for_go() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def _report(seconds: float, cpu: float, moved: int, digest: str) -> None:
    doc = {"seconds": seconds, "cpu": cpu, "bytes": moved, "digest": digest}
    print(json.dumps(doc), flush=True)


async def _grpc_put(url: str, size: int, seed: int) -> None:
    import random

    import castore

    rng = random.Random(seed)
    # randbytes takes at most 2**31 bits at a time: 16 MiB pieces.
    data = b"".join(rng.randbytes(min(16 << 20, size - i)) for i in range(0, size, 16 << 20))
    pieces = [data[i : i + PIECE] for i in range(0, size, PIECE)]
    async with castore.from_addr(url) as service:
        await service.put(os.urandom(1024))  # connects, and warms both sides up
        await asyncio.to_thread(_wait_for_go)
        t0, c0 = time.perf_counter(), _cpu()
        writer = await service.open_write()
        for piece in pieces:
            await writer.write(piece)
        digest = await writer.close()
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    _report(seconds, cpu, size, digest.hex())


async def _grpc_read(url: str, hexdigest: str) -> None:
    import castore

    digest = castore.B3Digest(bytes.fromhex(hexdigest))
    async with castore.from_addr(url) as service:
        if not await service.has(digest):
            raise SystemExit(f"blob {hexdigest} is not stored")
        await asyncio.to_thread(_wait_for_go)
        t0, c0 = time.perf_counter(), _cpu()
        moved = 0
        reader = await service.open_read(digest)
        assert reader is not None
        async with reader:
            while block := await reader.read(PIECE):
                moved += len(block)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    _report(seconds, cpu, moved, hexdigest)


def _http_answer(conn: socket.socket) -> bytes:
    """The whole answer of a ``Connection: close`` request."""
    parts = []
    while part := conn.recv(1 << 16):
        parts.append(part)
    return b"".join(parts)


def _http_put(port: int, size: int) -> None:
    data = memoryview(os.urandom(size))
    with socket.create_connection(("127.0.0.1", port)) as conn:
        _wait_for_go()
        t0, c0 = time.perf_counter(), _cpu()
        head = (
            f"PUT /blobs HTTP/1.1\r\nHost: bench\r\nContent-Length: {size}\r\n"
            "Connection: close\r\n\r\n"
        )
        conn.sendall(head.encode())
        for i in range(0, size, 1 << 20):
            conn.sendall(data[i : i + (1 << 20)])
        answer = _http_answer(conn)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    status, _, body = answer.partition(b"\r\n\r\n")
    if not status.startswith(b"HTTP/1.1 201"):
        raise SystemExit(f"PUT /blobs answered {answer[:300]!r}")
    _report(seconds, cpu, size, json.loads(body)["hex"])


def _http_get(port: int, hexdigest: str) -> None:
    buf = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        _wait_for_go()
        t0, c0 = time.perf_counter(), _cpu()
        request = f"GET /blobs/{hexdigest} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        conn.sendall(request.encode())
        first = conn.recv_into(buf)
        head, sep, _ = bytes(buf[: min(first, 4096)]).partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"GET answered {bytes(buf[:300])!r}")
        moved = first - len(head) - len(sep)
        while n := conn.recv_into(buf):
            moved += n
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    _report(seconds, cpu, moved, hexdigest)


def main(argv: list[str]) -> None:
    from castore.cli._allocator import tune_allocator

    tune_allocator()
    role, where, what, *more = argv
    if role == "grpc-put":
        asyncio.run(_grpc_put(where, int(what), int(more[0])))
    elif role == "grpc-read":
        asyncio.run(_grpc_read(where, what))
    elif role == "http-put":
        _http_put(int(where), int(what))
    elif role == "http-get":
        _http_get(int(where), what)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
