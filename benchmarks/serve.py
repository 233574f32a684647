"""One ``castore serve`` node over S3: what a GiB in and out costs, for sizing a deployment.

SeaweedFS (:class:`castore.testing.seaweedfs.SeaweedFS`, with its Prometheus metrics on)
is the S3 store, and ``python -m castore serve`` runs against it as an operator runs it:
gRPC and the HTTP gateway (``--http``) in one process, the S3 keys in the environment
(``AWS_ACCESS_KEY_ID``…), only the endpoint in the URL. Clients are separate processes
(:mod:`benchmarks.serve_child`), and each call moves one blob of fresh random data:

- gRPC ``Put`` (castore's client, 256 KiB writes) and ``Read`` of that blob;
- HTTP ``PUT /blobs`` and ``GET /blobs/{digest}`` of another, from raw sockets.

For each call: throughput; CPU seconds per GiB (user + system, every thread) of the serve
process, of the client and of SeaweedFS, from ``/proc`` and ``getrusage``; and the S3
requests per GiB that reached the store, by type, from SeaweedFS's own counters (it counts
HEAD as GET). Each call is the best of ``repeat`` by wall time.

Then the collector over the same S3 server: a bucket is filled with ``N`` tiny chunk
objects and indexes naming 90 % of them (100 each, as the ``gc`` section does), and two
runs of ``collect_garbage`` (mark and condemn; a grace later, sweep) are timed and their
requests counted: LIST pages per 1,000 objects and the time a LIST page and a run take,
which is what the listing of a large bucket costs.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks.child import module_command, module_env
from benchmarks.markdown import GIB, MIB, Table
from benchmarks.section import Context, Section

if TYPE_CHECKING:
    from obstore.store import S3Store

    from castore.testing.seaweedfs import SeaweedFS

__all__ = ["CallRun", "GcS3Run", "ServeBench", "measure_gc_s3", "measure_serve"]

BUCKET = "castore-serve"
GC_BUCKET = "castore-gc"
#: Largest blob a call moves (the data set size when smaller).
MAX_SIZE = 256 << 20
#: Chunk objects of the collector runs at full size.
GC_OBJECTS = 20_000
#: The calls measured, in order: (protocol, call, child role).
CALLS: tuple[tuple[str, str, str], ...] = (
    ("gRPC", "Put", "grpc-put"),
    ("gRPC", "Put, stored already", "grpc-put"),
    ("gRPC", "Read", "grpc-read"),
    ("HTTP", "PUT", "http-put"),
    ("HTTP", "GET", "http-get"),
)
#: Request types SeaweedFS counts, in the order they are reported.
TYPES = ("PUT", "GET", "LIST", "DELETE")


@dataclass
class CallRun:
    """One call's figures: seconds, CPU seconds of each process, bytes, S3 requests."""

    protocol: str
    call: str
    seconds: float
    client_cpu: float
    serve_cpu: float
    store_cpu: float
    moved: int
    requests: dict[str, int]
    digest: str

    def per_gib(self, x: float) -> float:
        return x / (self.moved / GIB)


@dataclass
class GcS3Run:
    """Two collector runs over S3: objects, seconds and requests of each."""

    chunks: int
    indexes: int
    fill_s: float
    mark_s: float
    sweep_s: float
    mark_requests: dict[str, int]
    sweep_requests: dict[str, int]
    deleted: int

    @property
    def objects(self) -> int:
        return self.chunks + self.indexes


def _cpu_of(pid: int) -> float:
    """User plus system seconds of process ``pid`` so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_of(pid: int) -> int:
    """The resident-set high-water mark of process ``pid`` (``VmHWM``), bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}


def _serve_env(s3: SeaweedFS) -> dict[str, str]:
    """The serve node's environment: the S3 identity as an operator gives it."""
    env = {k: v for k, v in module_env().items() if not k.startswith(("CASTORE_", "AWS_"))}
    if os.environ.get("CASTORE_NO_MALLOC_TUNING"):
        env["CASTORE_NO_MALLOC_TUNING"] = os.environ["CASTORE_NO_MALLOC_TUNING"]
    env["AWS_ACCESS_KEY_ID"] = s3.access_key
    env["AWS_SECRET_ACCESS_KEY"] = s3.secret_key
    env["AWS_REGION"] = s3.region
    return env


@contextmanager
def _serve_node(s3: SeaweedFS, log: pathlib.Path) -> Iterator[tuple[int, str, int]]:
    """``castore serve`` on the bucket, gRPC and HTTP on free ports: (pid, gRPC URL, HTTP
    port). Its stderr goes to ``log`` (a pipe nobody reads could stall it)."""
    store = f"objectstore+s3://{BUCKET}/serve?endpoint={s3.endpoint}&allow_http=true"
    command = module_command("castore", "serve", "--store", store, "--grace", "1")
    command += ["--listen", "grpc+http://127.0.0.1:0", "--http", "127.0.0.1:0"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            env=_serve_env(s3),
        )  # fmt: skip
    try:
        grpc_url, http_url = _wait_announced(proc, log)
        yield proc.pid, grpc_url, int(http_url.rsplit(":", 1)[1].rstrip("/"))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_announced(proc: subprocess.Popen[bytes], log: pathlib.Path) -> tuple[str, str]:
    deadline = time.monotonic() + 60
    grpc_url = http_url = ""
    while not (grpc_url and http_url):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("castore serve: listening on "):
                grpc_url = line.rsplit(" ", 1)[1]
            elif line.startswith("castore serve: HTTP gateway on "):
                http_url = line.rsplit(" ", 1)[1]
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"castore serve did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return grpc_url, http_url


def _call(s3: SeaweedFS, call: str, args: tuple[str, ...], pids: tuple[int, int]) -> CallRun:
    """Run one client to its end; the figures of its measured call."""
    protocol, role = next((p, r) for p, c, r in CALLS if c == call)
    serve_pid, store_pid = pids
    client = module_command("benchmarks.serve_child", role, *args)
    proc = subprocess.Popen(client, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=module_env())
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the {role} client did not get ready")
        before = s3.s3_request_counts(BUCKET, settle=0.3)
        serve0, store0 = _cpu_of(serve_pid), _cpu_of(store_pid)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        doc = json.loads(proc.stdout.readline())
        serve1, store1 = _cpu_of(serve_pid), _cpu_of(store_pid)
        after = s3.s3_request_counts(BUCKET, settle=0.5)
    finally:
        proc.stdin.close()
        if proc.wait(timeout=120) != 0:
            raise RuntimeError(f"the {role} client exited with {proc.returncode}")
    return CallRun(
        protocol, call, doc["seconds"], doc["cpu"], serve1 - serve0, store1 - store0,
        int(doc["bytes"]), _grown(before, after), doc["digest"],
    )  # fmt: skip


def measure_serve(
    size: int, repeat: int, work: pathlib.Path, gc_objects: int, progress: Callable[[str], None]
) -> tuple[list[CallRun], int, GcS3Run]:
    """The four calls, best of ``repeat`` each, the serve node's peak RSS over them all,
    then the collector on ``gc_objects``."""
    from castore.testing.seaweedfs import SeaweedFS

    root = pathlib.Path(tempfile.mkdtemp(prefix="serve-", dir=work))
    best: dict[str, CallRun] = {}
    try:
        with SeaweedFS(root / "s3", metrics=True) as s3:
            s3.create_bucket(BUCKET)
            s3.create_bucket(GC_BUCKET)
            assert s3.pid is not None
            with _serve_node(s3, root / "serve.log") as (pid, grpc_url, http_port):
                pids = (pid, s3.pid)
                for i in range(repeat):
                    progress(f"serve over S3, {size >> 20} MiB, run {i + 1}/{repeat}")
                    seed = str(random.getrandbits(64))
                    put = _call(s3, "Put", (grpc_url, str(size), seed), pids)
                    again = _call(s3, "Put, stored already", (grpc_url, str(size), seed), pids)
                    read = _call(s3, "Read", (grpc_url, put.digest), pids)
                    hput = _call(s3, "PUT", (str(http_port), str(size)), pids)
                    hget = _call(s3, "GET", (str(http_port), hput.digest), pids)
                    for run in (put, again, read, hput, hget):
                        key = run.protocol + run.call
                        if key not in best or run.seconds < best[key].seconds:
                            best[key] = run
                peak = _peak_rss_of(pid)
            progress(f"collector over S3, {gc_objects} chunk objects")
            gc_run = measure_gc_s3(s3, gc_objects)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [best[p + c] for p, c, _ in CALLS], peak, gc_run


async def _fill(store: S3Store, n: int, seed: int = 0) -> int:
    """``n`` tiny chunk objects and indexes naming 90 % of them, 100 each, 64 puts in
    flight; returns the number of indexes."""
    import obstore

    from castore.objectstore._codec import encode_index
    from castore.objectstore._layout import Layout

    layout, rng = Layout(), random.Random(seed)
    digests = [rng.randbytes(32) for _ in range(n)]
    live = digests[: int(n * 0.9)]
    objects = [(layout.chunk(d), b"\x00" * 16) for d in digests]
    for i in range(0, len(live), 100):
        named = live[i : i + 100]
        objects.append((layout.blob(rng.randbytes(32)), encode_index(named, [1024] * len(named))))
    pending = iter(objects)

    async def worker() -> None:
        for key, data in pending:
            await obstore.put_async(store, key, data)

    await asyncio.gather(*(worker() for _ in range(64)))
    return len(objects) - n


async def _collect(s3: SeaweedFS, n: int) -> GcS3Run:
    from castore import ObjectStoreBlobService
    from castore.objectstore._gc_state import MIN_GRACE

    store = s3.s3_store(GC_BUCKET)
    began = time.perf_counter()
    indexes = await _fill(store, n)
    fill_s = time.perf_counter() - began
    # LastModified has whole seconds, and chunks of the cutoff's own second are not
    # condemned: start the first run in a later second than the last put.
    await asyncio.sleep(1.5)
    async with ObjectStoreBlobService(store) as service:
        counts = [s3.s3_request_counts(GC_BUCKET, settle=0.5)]
        began = time.perf_counter()
        first = await service.collect_garbage(grace=MIN_GRACE, min_age=0)
        mark_s = time.perf_counter() - began
        counts.append(s3.s3_request_counts(GC_BUCKET, settle=0.5))
        await asyncio.sleep((first.due_in or 0) + 1.5)
        counts.append(s3.s3_request_counts(GC_BUCKET, settle=0.5))
        began = time.perf_counter()
        second = await service.collect_garbage(grace=MIN_GRACE, min_age=0)
        sweep_s = time.perf_counter() - began
        counts.append(s3.s3_request_counts(GC_BUCKET, settle=0.5))
    return GcS3Run(
        n, indexes, fill_s, mark_s, sweep_s, _grown(counts[0], counts[1]),
        _grown(counts[2], counts[3]), second.deleted,
    )  # fmt: skip


def measure_gc_s3(s3: SeaweedFS, n: int) -> GcS3Run:
    """Fill the collector's bucket with ``n`` chunk objects and run the collector twice."""
    return asyncio.run(_collect(s3, n))


def _requests(run: CallRun) -> list[str]:
    return [f"{run.per_gib(run.requests.get(t, 0)):,.0f}" for t in ("PUT", "GET", "LIST")]


class ServeBench(Section):
    name = "serve"
    help = "one castore serve node over SeaweedFS S3: CPU and S3 requests per GiB, gRPC and HTTP"

    def __init__(self) -> None:
        self.calls: list[CallRun] = []
        self.peak_rss = 0
        self.gc: GcS3Run | None = None

    def measure(self, ctx: Context) -> None:
        size = min(ctx.size, MAX_SIZE)
        scale = min(1.0, ctx.size / (512 << 20))
        objects = max(1000, int(GC_OBJECTS * scale))
        self.calls, self.peak_rss, self.gc = measure_serve(
            size, ctx.repeat, ctx.work, objects, ctx.progress
        )

    def tables(self, ctx: Context) -> list[Table]:
        if not self.calls:
            return []
        rows = [
            [
                r.protocol,
                r.call,
                f"{r.moved / MIB / r.seconds:,.0f}",
                f"{r.per_gib(r.serve_cpu):.2f}",
                f"{r.per_gib(r.client_cpu):.2f}",
                f"{r.per_gib(r.store_cpu):.2f}",
                *_requests(r),
            ]
            for r in self.calls
        ]
        size = self.calls[0].moved / MIB
        tuning = "on" if not os.environ.get("CASTORE_NO_MALLOC_TUNING") else "off"
        columns = ["protocol", "call", "MiB/s", "serve CPU s/GiB", "client CPU s/GiB"]
        columns += ["S3 server CPU s/GiB", "S3 PUT/GiB", "S3 GET+HEAD/GiB", "S3 LIST/GiB"]
        tables = [
            Table(
                "One castore serve node over S3: CPU and requests per GiB",
                columns,
                rows,
                notes=[
                    f"One blob of {size:,.0f} MiB of fresh random data a call, best of the"
                    " run's repeats; each process its own (castore serve with gRPC and"
                    " --http, the client, SeaweedFS), all on the same cores, on loopback."
                    " CPU is user + system time of each process over the call, every thread"
                    " counted. gRPC: castore's client, 256 KiB writes and reads, every byte"
                    " hashed on both sides; HTTP: raw sockets. S3 requests are SeaweedFS's"
                    " own counts of the requests on the bucket (HEAD counts as GET). The"
                    " serve node runs with the castore command's allocator settings"
                    f" ({tuning}); its peak RSS over all the calls was"
                    f" {self.peak_rss / MIB:,.0f} MiB."
                ],
            )
        ]
        if self.gc is not None:
            tables.append(self._gc_table(self.gc))
        return tables

    @staticmethod
    def _gc_table(g: GcS3Run) -> Table:
        thousands = g.objects / 1000
        lists = g.mark_requests.get("LIST", 0)
        rows = []
        for run, seconds, req, deleted in (
            ("mark + condemn", g.mark_s, g.mark_requests, 0),
            ("sweep", g.sweep_s, g.sweep_requests, g.deleted),
        ):
            rows.append(
                [
                    run,
                    f"{g.chunks:,}",
                    f"{g.indexes:,}",
                    f"{seconds:.2f}",
                    f"{seconds / thousands * 1000:.0f}",
                    *(f"{req.get(t, 0):,}" for t in TYPES),
                    f"{req.get('LIST', 0) / thousands:.2f}",
                    f"{deleted:,}",
                ]
            )
        columns = ["run", "chunk objects", "indexes", "seconds", "ms per 1,000 objects"]
        columns += [f"S3 {t}" for t in TYPES] + ["LIST per 1,000 objects", "deleted"]
        notes = [
            "Chunk objects of 16 bytes and indexes naming 90 % of them, 100 each, in a bucket"
            " of their own on the same SeaweedFS; the collector runs in the benchmark's"
            " process with the smallest grace. Mark + condemn lists every index and reads it,"
            " lists every chunk, condemns the 10 % unnamed; the sweep, a grace later, marks"
            " again, reads each condemned chunk's LastModified and deletes it. The mark's"
            f" {lists:,} LIST requests over {g.objects:,} objects: pages"
            " of up to 1,000 keys, plus the collector's own state (lease, generations)."
        ]
        return Table("Garbage collection over S3: requests and time", columns, rows, notes)
