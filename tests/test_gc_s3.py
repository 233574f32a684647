"""Garbage collection against SeaweedFS, in real time, with writers and collectors in
separate processes.

- Writer processes put blobs that share chunks (and reuse condemned ones) and delete some
  of them, while this process runs the collector with the smallest grace, over and over:
  every blob a writer was told is stored, and did not delete, reads back exactly, and a
  check finds no index naming a missing chunk.
- A collector killed (SIGKILL) in the middle of a sweep keeps its lease until it runs
  out; the next collector is refused until then, then takes over and finishes the sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from castore import B3Digest, ObjectStoreBlobService
from castore.errors import GcLeaseError
from castore.objectstore._gc_state import MIN_GRACE
from castore.registry import from_addr
from tests.gcsupport import blob_bytes, with_chunk_size

ROOT = Path(__file__).resolve().parent.parent
WRITERS = 3
SECONDS = 3 * MIN_GRACE + 4


def _spawn(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _service(url: str) -> ObjectStoreBlobService:
    svc = from_addr(url)
    assert isinstance(svc, ObjectStoreBlobService)
    return svc


async def _no_missing_chunk(svc: ObjectStoreBlobService) -> None:
    check = svc.check()
    problems = [p async for p in check]
    assert not problems, problems[:3]


async def test_writers_in_processes_beside_the_collector(
    castore_s3_url: str, tmp_path: Path
) -> None:
    url = with_chunk_size(castore_s3_url)
    outs = [tmp_path / f"writer{i}.jsonl" for i in range(WRITERS)]
    procs = [
        _spawn(
            "from tests.gcsupport import writer_main; "
            f"writer_main({url!r}, {i + 1}, {SECONDS}, {str(out)!r})"
        )
        for i, out in enumerate(outs)
    ]
    svc = await _service(url)
    totals = {"deleted": 0, "condemned": 0, "rescued": 0, "swept": 0}
    try:
        while any(p.poll() is None for p in procs):
            r = await svc.collect_garbage(grace=MIN_GRACE, min_age=0)
            for k in ("deleted", "condemned", "rescued"):
                totals[k] += getattr(r, k)
            totals["swept"] += len(r.swept)
            await anyio.sleep(1.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err[-2000:]

    stored: dict[str, int] = {}  # hex -> seed, for acknowledged blobs still live
    conflicts = 0
    for out in outs:
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            if rec["op"] == "put" and rec["ok"]:
                stored[rec["hex"]] = rec["seed"]
            elif rec["op"] == "put":
                conflicts += 1
            else:
                stored.pop(rec["hex"], None)
    # Two writers can store the same bytes, and one may delete them after the other's put
    # was acknowledged: a blob any writer deleted is left out.
    deleted_anywhere = {
        json.loads(line)["hex"]
        for out in outs
        for line in out.read_text().splitlines()
        if json.loads(line)["op"] == "delete"
    }
    live = {h: s for h, s in stored.items() if h not in deleted_anywhere}
    assert len(live) >= 10, f"too few blobs to prove anything: {len(live)}"
    for h, seed in live.items():
        assert await svc.get(B3Digest.from_hex(h)) == blob_bytes(seed), f"blob {h} is lost"
    await _no_missing_chunk(svc)
    assert totals["swept"] >= 1 and totals["deleted"] > 0, totals
    print(f"\nGC on SeaweedFS: {totals}, {len(live)} live blobs, {conflicts} conflicts")
    await svc.aclose()


async def test_a_collector_killed_mid_sweep_is_taken_over_after_its_lease(
    castore_s3_url: str,
) -> None:
    url = with_chunk_size(castore_s3_url)
    svc = await _service(url)
    keep = blob_bytes(1)
    keep_digest = await svc.put(keep)
    garbage = [blob_bytes(10_000 + i) + os.urandom(4000) for i in range(40)]
    for data in garbage:
        digest = await svc.put(data)
        assert await svc.delete(digest)
    await anyio.sleep(1.1)  # chunks of the current second are not older than the cutoff
    first = await svc.collect_garbage(grace=MIN_GRACE, min_age=0)
    assert first.generation is not None and first.condemned >= 60, first
    await anyio.sleep(MIN_GRACE + 1.5)

    lease = 6.0
    proc = _spawn(
        "from tests.gcsupport import collector_main; "
        f"collector_main({url!r}, lease={lease}, batch=25, margin=1.0)"
    )
    try:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.startswith("SWEEPING 25/"), (line, proc.stderr.read() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()

    with pytest.raises(GcLeaseError) as refused:
        await svc.collect_garbage(grace=MIN_GRACE, min_age=0)
    assert refused.value.holder is not None and refused.value.free_in is not None
    assert 0 < refused.value.free_in <= 2 * lease + 1
    await anyio.sleep(refused.value.free_in + 1.5)

    started = time.monotonic()
    after = await svc.collect_garbage(grace=MIN_GRACE, min_age=0)
    assert after.swept == (first.generation,), after
    # The killed collector deleted one batch; the successor deletes the rest.
    assert after.deleted == first.condemned - 25, (after, first)
    assert await svc.get(keep_digest) == keep
    await _no_missing_chunk(svc)
    assert time.monotonic() - started < 120
    await svc.aclose()
