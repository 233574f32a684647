"""HTTP gateway: ``GET /blobs/{digest}`` through ``castore serve --http`` against a read.

The same blob of random data in an ``objectstore+file://`` store is read twice per run:
in process, through ``open_read`` and ``readinto`` one reused 4 MiB buffer (the reader's
fastest path), and over HTTP from ``castore serve --no-grpc --http`` in a child process,
by a raw socket that receives into one reused buffer (a client that costs next to
nothing). The ratio of the two speeds, taken in the same run, is what serving a blob
over HTTP keeps of a plain read; the server's CPU per GiB (from ``/proc``) is beside it.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from benchmarks import data as datasets
from benchmarks.api import read_blob
from benchmarks.markdown import GIB, MIB
from benchmarks.section import Context, Section, Table

__all__ = ["GatewayBench", "GatewayRun", "measure_gateway"]

_PIECE = 4 << 20


@dataclass
class GatewayRun:
    """Best-of-``repeat`` figures for one blob."""

    size: int
    read_s: float
    read_cpu: float
    get_s: float
    server_cpu: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get(port: int, digest: str, size: int) -> None:
    """GET the blob over a raw socket into one reused buffer; checks the byte count."""
    buf = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        request = f"GET /blobs/{digest} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        conn.sendall(request.encode())
        total = 0
        while n := conn.recv_into(buf):
            total += n
    if total < size:  # headers come on top of the body
        raise RuntimeError(f"GET returned {total} bytes for a {size}-byte blob")


async def _put_and_read(url: str, data: bytes, repeat: int) -> tuple[str, float, float]:
    from castore import from_addr

    async with from_addr(url) as svc:
        digest = await svc.put(data)
        best, cpu = float("inf"), 0.0
        for _ in range(repeat):
            c0, t0 = time.process_time(), time.perf_counter()
            got = await read_blob(svc, digest, _PIECE)
            wall = time.perf_counter() - t0
            if got != len(data):
                raise RuntimeError(f"read {got} bytes of a {len(data)}-byte blob")
            if wall < best:
                best, cpu = wall, time.process_time() - c0
    return digest.hex(), best, cpu


def measure_gateway(size: int, repeat: int, work: pathlib.Path) -> GatewayRun:
    """One blob of ``size`` random bytes, read in process and over HTTP."""
    data = datasets.random_data(size)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="gateway-", dir=work))
    try:
        return _measure(folder, data, repeat)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _measure(folder: pathlib.Path, data: bytes, repeat: int) -> GatewayRun:
    size = len(data)
    url = "objectstore+" + folder.as_uri()
    digest, read_s, read_cpu = asyncio.run(_put_and_read(url, data, repeat))
    port = _free_port()
    command = [sys.executable, "-m", "castore", "serve", "--store", url, "--no-grpc"]
    command += ["--http", f"127.0.0.1:{port}", "--grace", "1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("castore serve --http did not start") from None
                time.sleep(0.05)
        get_s, server_cpu = float("inf"), 0.0
        for _ in range(repeat):
            c0, t0 = _cpu_of(server.pid), time.perf_counter()
            _get(port, digest, size)
            wall = time.perf_counter() - t0
            if wall < get_s:
                get_s, server_cpu = wall, _cpu_of(server.pid) - c0
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return GatewayRun(size, read_s, read_cpu, get_s, server_cpu)


class GatewayBench(Section):
    name = "http"
    help = "GET through castore serve --http against an in-process read of the same blob"

    def __init__(self) -> None:
        self.run: GatewayRun | None = None

    def measure(self, ctx: Context) -> None:
        size = min(ctx.size, 256 << 20)
        ctx.progress(f"HTTP gateway, {size >> 20} MiB blob")
        self.run = measure_gateway(size, max(1, ctx.repeat), ctx.work)

    def tables(self, ctx: Context) -> list[Table]:
        r = self.run
        if r is None:
            return []
        gib = r.size / GIB
        row = [
            f"{r.size / MIB:.0f} MiB",
            f"{r.size / MIB / r.read_s:,.0f}",
            f"{r.size / MIB / r.get_s:,.0f}",
            f"{r.read_s / r.get_s:.2f}x",
            f"{r.read_cpu / gib:.2f}",
            f"{r.server_cpu / gib:.2f}",
        ]
        return [
            Table(
                "HTTP gateway: GET against a read (random data, local disk)",
                [
                    "blob",
                    "read MiB/s",
                    "GET MiB/s",
                    "GET / read",
                    "read CPU s/GiB",
                    "server CPU s/GiB",
                ],
                [row],
                notes=[
                    "Best of the run's repeats. Read = open_read and readinto one reused"
                    " 4 MiB buffer, in process. GET = castore serve --no-grpc --http in a"
                    " child process (uvicorn), read by a raw socket into one buffer; the"
                    " server's CPU comes from /proc. Both verify every chunk and the whole"
                    " blob; the server also copies each 64 KiB piece into the bytes it sends"
                    " and writes them to the socket."
                ],
            )
        ]
