"""Peak memory (RSS) of ingesting and reading back one large blob, in a child process.

The child (``python -m benchmarks.rss SIZE FOLDER_URI``) imports castore, then writes
``SIZE`` bytes from :func:`benchmarks.data.unique_pieces` (generated on the fly, one
4 MiB piece at a time) into ``objectstore+file://FOLDER`` through the public API, and
reads the blob back in 4 MiB reads, dropping each. A local-disk store, because a memory
store would itself hold the whole blob.

Peaks are the kernel's high-water mark of the child's resident set (``VmHWM`` in
``/proc/self/status``), reset between phases by writing ``5`` to ``/proc/self/clear_refs``,
so the ingest and the read get separate peaks. The baseline is the resident set once
castore and the generator are loaded. (The child's ``ru_maxrss`` as the parent sees it
is no use here: Linux carries the parent's resident set, which holds the benchmark's
data sets, into a forked child's ``ru_maxrss``.) The child prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import time
from dataclasses import dataclass

from benchmarks.child import module_command, module_env

__all__ = ["RssResult", "measure_rss"]


@dataclass
class RssResult:
    """Peak resident memory, in bytes, of the child's phases."""

    size: int
    baseline: int
    ingest_peak: int
    read_peak: int
    ingest_s: float
    read_s: float
    phase_peaks: bool  # False when VmHWM could not be reset: both peaks are the overall one


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


async def _child(size: int, folder_uri: str) -> dict[str, object]:
    import castore
    from benchmarks.data import PIECE, unique_pieces

    svc = castore.from_addr("objectstore+" + folder_uri)
    baseline = _status_kib("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    writer = await svc.open_write()
    for piece in unique_pieces(size):
        await writer.write(piece)
    digest = await writer.close()
    ingest_s = time.perf_counter() - t0
    ingest_peak = _status_kib("VmHWM")
    reset = _reset_peak() and reset
    t0 = time.perf_counter()
    reader = await svc.open_read(digest)
    assert reader is not None
    got = 0
    async with reader:
        while block := await reader.read(PIECE):
            got += len(block)
    read_s = time.perf_counter() - t0
    read_peak = _status_kib("VmHWM")
    await svc.aclose()
    if got != size:
        raise RuntimeError(f"read back {got} bytes of {size}")
    return {
        "baseline": baseline * 1024,
        "ingest_peak": ingest_peak * 1024,
        "read_peak": read_peak * 1024,
        "ingest_s": ingest_s,
        "read_s": read_s,
        "phase_peaks": reset,
    }


def measure_rss(size: int, folder: str) -> RssResult:
    """Run the child on ``size`` bytes with its store in ``folder``; its peaks."""
    os.sync()
    proc = subprocess.Popen(
        module_command("benchmarks.rss", str(size), pathlib.Path(folder).resolve().as_uri()),
        stdout=subprocess.PIPE,
        env=module_env(),
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the memory child exited with {proc.returncode}")
    doc = json.loads(out.decode().strip().splitlines()[-1])
    return RssResult(
        size=size,
        baseline=int(doc["baseline"]),
        ingest_peak=int(doc["ingest_peak"]),
        read_peak=int(doc["read_peak"]),
        ingest_s=float(doc["ingest_s"]),
        read_s=float(doc["read_s"]),
        phase_peaks=bool(doc["phase_peaks"]),
    )


if __name__ == "__main__":
    result = asyncio.run(_child(int(sys.argv[1]), sys.argv[2]))
    print(json.dumps(result), flush=True)
