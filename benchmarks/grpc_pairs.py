"""The gRPC section: castore's client and ``castore serve`` against a minimal grpc.aio pair.

Two pairs move the same data in the same run, one stream at a time over TCP on loopback,
each side in its own process (:mod:`benchmarks.grpc_child`):

- the minimal pair: a grpc.aio server and client that only pass 256 KiB ``BlobChunk``
  messages through, encoded once;
- castore: ``castore serve --store memory://`` as users start it, and castore's client
  (``from_addr``, ``open_write``/``write``/``close`` and ``open_read``/``read``) in 256 KiB
  writes and reads.

``Put`` and ``Read`` are measured apart, the pairs taking turns, each the best of
``--repeat`` runs. Each side's CPU is its process's user and system time over the
transfer: the client's from ``getrusage``, the server's from ``/proc/PID/stat`` (the same
counters). The targets: castore at 0.8x the minimal pair's MB/s or better, and at most
1.2 ms of CPU per MiB on each side.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from benchmarks.child import module_command, module_env
from benchmarks.markdown import MIB, Table, Target
from benchmarks.section import Context, Section

__all__ = ["GRPC_CPU_TARGET", "GRPC_RATIO_TARGET", "Grpc", "PairRun", "measure_pairs"]

GRPC_RATIO_TARGET = 0.8
GRPC_CPU_TARGET = 1.2  # ms of CPU per MiB, each side
#: At most this much data per stream (the data set size when smaller).
MAX_SIZE = 256 << 20
OPS = ("put", "read")
PAIRS = ("minimal grpc.aio", "castore")


@dataclass
class PairRun:
    """One stream's transfer: wall seconds, each side's CPU seconds, bytes moved."""

    pair: str
    op: str
    seconds: float
    client_cpu: float
    server_cpu: float
    moved: int

    @property
    def mbps(self) -> float:
        return self.moved / self.seconds / 1e6

    def ms_per_mib(self, cpu: float) -> float:
        return cpu * 1000 / (self.moved / MIB)


def _server_cpu(pid: int) -> float:
    """User plus system seconds of process ``pid`` so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return ticks / os.sysconf("SC_CLK_TCK")


def _env() -> dict[str, str]:
    env = module_env()
    keep = "CASTORE_NO_MALLOC_TUNING"
    return {k: v for k, v in env.items() if k == keep or not k.startswith("CASTORE_")}


@contextmanager
def _minimal_server() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc = subprocess.Popen(
        module_command("benchmarks.grpc_child", "minimal-server"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("port "):
            raise RuntimeError(f"the minimal server did not start: {line!r}")
        yield proc, line.split()[1]
    finally:
        _stop(proc)


@contextmanager
def _castore_serve() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    command = module_command("castore", "serve", "--store", "memory://")
    command += ["--listen", "grpc+http://127.0.0.1:0", "--grace", "1"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        assert proc.stderr is not None
        prefix = b"castore serve: listening on "
        line = proc.stderr.readline()
        while line and not line.startswith(prefix):
            line = proc.stderr.readline()
        if not line:
            raise RuntimeError("castore serve did not start")
        yield proc, line[len(prefix) :].decode().strip()
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _transfer(pair: str, op: str, client: list[str], server_pid: int) -> PairRun:
    """Run one client to its end; the figures of its measured transfer."""
    proc = subprocess.Popen(client, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env())
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the {pair} client did not get ready")
        before = _server_cpu(server_pid)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        doc = json.loads(proc.stdout.readline())
        after = _server_cpu(server_pid)
    finally:
        proc.stdin.close()
        if proc.wait(timeout=60) != 0:
            raise RuntimeError(f"the {pair} client exited with {proc.returncode}")
    return PairRun(pair, op, doc["seconds"], doc["cpu"], after - before, int(doc["bytes"]))


def measure_pairs(size: int, repeat: int, ctx: Context | None = None) -> list[PairRun]:
    """The best of ``repeat`` runs of each pair and operation, ``size`` bytes a stream."""
    best: dict[tuple[str, str], PairRun] = {}
    for i in range(repeat):
        for op in OPS:
            for pair in PAIRS:
                if ctx is not None:
                    ctx.progress(f"gRPC {pair} {op}, {size >> 20} MiB, run {i + 1}/{repeat}")
                if pair == "castore":
                    with _castore_serve() as (server, url):
                        cmd = module_command("benchmarks.grpc_child", "castore-client", url)
                        run = _transfer(pair, op, [*cmd, op, str(size)], server.pid)
                else:
                    with _minimal_server() as (server, port):
                        cmd = module_command("benchmarks.grpc_child", "minimal-client", port)
                        run = _transfer(pair, op, [*cmd, op, str(size)], server.pid)
                old = best.get((pair, op))
                if old is None or run.seconds < old.seconds:
                    best[(pair, op)] = run
    return [best[(pair, op)] for op in OPS for pair in PAIRS]


def _tuning_note() -> str:
    if os.environ.get("CASTORE_NO_MALLOC_TUNING", "") not in ("", "0"):
        return ", except in this run: CASTORE_NO_MALLOC_TUNING was set"
    return ""


def _x(r: float) -> str:
    return f"{r:.2f}x"


class Grpc(Section):
    name = "grpc"
    help = "one gRPC stream on loopback, Put and Read: castore against a minimal grpc.aio pair"

    def __init__(self) -> None:
        self.runs: list[PairRun] = []

    def measure(self, ctx: Context) -> None:
        size = min(ctx.size, MAX_SIZE)
        self.runs = measure_pairs(size, ctx.repeat, ctx)

    def _ratio(self, op: str) -> float:
        by = {r.pair: r for r in self.runs if r.op == op}
        return by["castore"].mbps / by["minimal grpc.aio"].mbps

    def tables(self, ctx: Context) -> list[Table]:
        if not self.runs:
            return []
        rows = []
        for run in self.runs:
            ratio = _x(self._ratio(run.op)) if run.pair == "castore" else ""
            rows.append(
                [
                    run.op.capitalize(),
                    run.pair,
                    f"{run.mbps:,.0f}",
                    ratio,
                    f"{run.ms_per_mib(run.client_cpu):.2f}",
                    f"{run.ms_per_mib(run.server_cpu):.2f}",
                ]
            )
        size = self.runs[0].moved / MIB
        notes = [
            f"One stream of {size:,.0f} MiB in 256 KiB messages over TCP on 127.0.0.1, each"
            " side its own process; best of the runs. castore: `castore serve --store"
            " memory://` and castore's client (`open_write`/`open_read`, 256 KiB writes and"
            " reads, every byte hashed on both sides; on `Put` the server keeps the whole"
            " blob, so it touches that much fresh memory). The minimal pair passes"
            " pre-encoded messages through grpc.aio and does nothing else (its server drops"
            " what it receives). CPU is user + system time of"
            " each process over the transfer, every thread counted. Every process runs with"
            " the glibc allocator settings of the castore command (mmap threshold 32 MiB,"
            f" trim threshold 256 MiB){_tuning_note()}.",
        ]
        columns = ["call", "pair", "MB/s", "ratio", "client CPU ms/MiB", "server CPU ms/MiB"]
        return [Table("gRPC: one stream on loopback", columns, rows, notes)]

    def targets(self, ctx: Context) -> list[Target]:
        if not self.runs:
            return [
                Target(f"gRPC {op.capitalize()} >= {GRPC_RATIO_TARGET}x minimal grpc.aio")
                for op in OPS
            ] + [Target(f"gRPC CPU <= {GRPC_CPU_TARGET} ms/MiB each side")]
        rows = []
        for op in OPS:
            r = self._ratio(op)
            label = f"gRPC {op.capitalize()} >= {GRPC_RATIO_TARGET}x minimal grpc.aio"
            rows.append(Target.judged(label, _x(r), r >= GRPC_RATIO_TARGET))
        for run in self.runs:
            if run.pair != "castore":
                continue
            client, server = run.ms_per_mib(run.client_cpu), run.ms_per_mib(run.server_cpu)
            label = f"gRPC {run.op.capitalize()} CPU <= {GRPC_CPU_TARGET} ms/MiB each side"
            measured = f"client {client:.2f}, server {server:.2f}"
            ok = max(client, server) <= GRPC_CPU_TARGET
            rows.append(Target.judged(label, measured, ok))
        return rows
