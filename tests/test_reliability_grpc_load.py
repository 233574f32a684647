"""``castore serve`` under bounded load, with malformed requests thrown in.

The server runs as a real process (``python -m castore serve``, an object store in
memory) on loopback. 16 clients, each with its own connection, put and read blobs from a
fixed pool for a fixed time (10 s; ``CASTORE_STRESS=N`` makes it 10 x N s, or set
``CASTORE_LOAD_SECONDS``): every digest and every byte read is checked, and any error
fails the test. Meanwhile another task keeps sending malformed requests, on raw HTTP/2
and raw TCP (:mod:`h2raw`): digests of the wrong length, undecodable messages, a message
flagged compressed with no encoding named, a message larger than the limit, an unknown
method, garbage instead of HTTP/2, garbage frames, and clients that vanish in the middle
of a Put and of a Read. Each must get its status code
(or a closed connection) while the clients see nothing of it. The server's resident
memory is sampled all along from ``/proc``; after the warm-up (every pool blob stored,
the first third of the run) it must stay within a bound.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import h2.events
import pytest
from h2raw import H2, call, closed_by_server, frame

from castore import B3Digest, GRPCBlobService, from_addr
from castore._proto.tvix.castore.v1 import BlobChunk, ReadBlobRequest, StatBlobRequest
from castore.testing.conformance import pseudo_random_bytes

STRESS = max(1, int(os.environ.get("CASTORE_STRESS", "1")))
DURATION = float(os.environ.get("CASTORE_LOAD_SECONDS", str(10 * STRESS)))
CLIENTS = 16
MiB = 1 << 20
#: Growth of the server's RSS allowed after the warm-up.
RSS_BOUND = 48 * MiB

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/status"), reason="samples the server's RSS in /proc"
)


def _pool() -> list[bytes]:
    rng = random.Random(81)
    sizes = [rng.choice([1, 10_000, 100_000, 300_000, 1 * MiB, 3 * MiB]) for _ in range(32)]
    return [pseudo_random_bytes(n, seed=800 + i) for i, n in enumerate(sizes)]


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def _castore_serve() -> AsyncIterator[tuple[anyio.abc.Process, str]]:
    command = [sys.executable, "-m", "castore", "serve", "--store", "objectstore+memory:///"]
    command += ["--listen", "grpc+http://127.0.0.1:0", "--grace", "5"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASTORE_")}
    async with await anyio.open_process(command, env=env) as process:
        assert process.stderr is not None
        seen = b""
        with anyio.fail_after(30):
            while b"listening on " not in seen or not seen.endswith(b"\n"):
                seen += await process.stderr.receive()
        url = seen.split(b"listening on ", 1)[1].split()[0].decode()
        async with anyio.create_task_group() as tg:
            # The server logs a line per call: keep its stderr flowing.
            tg.start_soon(_drain, process.stderr)
            try:
                yield process, url
            finally:
                process.terminate()
                with anyio.fail_after(20):
                    await process.wait()


async def _drain(stream: anyio.abc.ByteReceiveStream) -> None:
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
        while True:
            await stream.receive()


# --- raw HTTP/2 ----------------------------------------------------------------------------


async def _vanish_mid_put(port: int) -> None:
    h = await H2.connect(port)
    sid = await h.start("Put")
    piece = bytes(BlobChunk(data=pseudo_random_bytes(20_000, seed=90)))
    # Two whole messages and half a third: within HTTP/2's initial 64 KiB window.
    await h.send(sid, (frame(piece) * 3)[:50_000], end=False)
    await h.aclose()  # the TCP connection goes away in the middle of the stream


async def _vanish_mid_read(port: int, digest: B3Digest) -> None:
    h = await H2.connect(port)
    sid = await h.start("Read")
    await h.send(sid, frame(bytes(ReadBlobRequest(digest=digest.digest))), end=True)
    with anyio.fail_after(10):
        while not any(
            isinstance(e, h2.events.DataReceived)
            for e in h.conn.receive_data(await h.sock.receive())
        ):
            pass
    await h.aclose()


MALFORMED = {
    "Stat, digest of 31 bytes": ("Stat", frame(bytes(StatBlobRequest(digest=b"\1" * 31))), "3"),
    "Stat, digest of 0 bytes": ("Stat", frame(bytes(StatBlobRequest())), "3"),
    "Read, digest of 33 bytes": ("Read", frame(bytes(ReadBlobRequest(digest=b"\1" * 33))), "3"),
    "Stat, undecodable message": ("Stat", frame(b"\xff\xff\xff\xff"), "3"),
    # Compressed without a grpc-encoding header: a protocol error, INTERNAL by gRPC's rules.
    "Stat, compressed message": ("Stat", frame(b"", compressed=True), "13"),
    "Put, message over the limit": ("Put", frame(b"x" * 1000, length=5 * MiB), "8"),
    "an unknown method": ("Nope", frame(b""), "12"),
}


async def _malformed_forever(port: int, big: B3Digest, tally: dict[str, int]) -> None:
    """Cycle through the malformed requests until cancelled, checking each answer."""
    while True:
        for name, (method, body, want) in MALFORMED.items():
            got = await call(port, method, body, end=name != "Put, message over the limit")
            assert got == want, f"{name}: grpc-status {got}, expected {want}"
            tally[name] = tally.get(name, 0) + 1
        assert await closed_by_server(port, b"GET / HTTP/1.1\r\n\r\n" * 4, preface=False)
        assert await closed_by_server(
            port, b"\x00\x00\x04\x09\x00\x00\x00\x00\x07junk", preface=True
        )
        tally["garbage instead of HTTP/2"] = tally.get("garbage instead of HTTP/2", 0) + 1
        tally["garbage HTTP/2 frames"] = tally.get("garbage HTTP/2 frames", 0) + 1
        await _vanish_mid_put(port)
        await _vanish_mid_read(port, big)
        tally["vanished mid-Put"] = tally.get("vanished mid-Put", 0) + 1
        tally["vanished mid-Read"] = tally.get("vanished mid-Read", 0) + 1
        await anyio.sleep(0.2)


# --- the test ----------------------------------------------------------------------------


async def test_grpc_server_under_load() -> None:
    pool = _pool()
    digests = [B3Digest.of(d) for d in pool]
    big = digests[max(range(len(pool)), key=lambda i: len(pool[i]))]
    figures = {"puts": 0, "reads": 0, "stats": 0, "bytes_put": 0, "bytes_verified": 0}
    errors: list[str] = []
    samples: list[tuple[float, int]] = []
    tally: dict[str, int] = {}

    async with _castore_serve() as (process, url):
        port = int(url.rsplit(":", 1)[1])

        async def sample() -> None:
            while True:
                samples.append((time.monotonic(), _rss(process.pid)))
                await anyio.sleep(0.2)

        async def warm_up(svc: GRPCBlobService, c: int) -> None:
            for i in range(c, len(pool), CLIENTS):
                assert await svc.put(pool[i]) == digests[i]

        async def client(svc: GRPCBlobService, c: int, deadline: float) -> None:
            rng = random.Random(c)
            while time.monotonic() < deadline:
                i = rng.randrange(len(pool))
                data, digest = pool[i], digests[i]
                try:
                    op = rng.random()
                    if op < 0.3:
                        assert await svc.put(data) == digest
                        figures["puts"] += 1
                        figures["bytes_put"] += len(data)
                    elif op < 0.8:
                        assert await svc.get(digest) == data
                        figures["reads"] += 1
                        figures["bytes_verified"] += len(data)
                    elif op < 0.9:
                        reader = await svc.open_read(digest)
                        assert reader is not None
                        async with reader:
                            pos = rng.randrange(len(data))
                            await reader.seek(pos)
                            got = await reader.read(200_000)
                        assert got == data[pos : pos + 200_000]
                        figures["reads"] += 1
                        figures["bytes_verified"] += len(got)
                    else:
                        assert await svc.has(digest)
                        chunks = await svc.chunks(digest)
                        assert chunks is not None
                        assert sum(m.size for m in chunks) in (0, len(data))
                        figures["stats"] += 2
                except Exception as e:
                    errors.append(f"client {c}: {type(e).__name__}: {e}")

        async with contextlib.AsyncExitStack() as stack:
            svcs = [GRPCBlobService("127.0.0.1", port) for _ in range(CLIENTS)]
            for svc in svcs:
                await stack.enter_async_context(svc)
            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                # Warm-up: the clients store the pool between them.
                async with anyio.create_task_group() as clients:
                    for c, svc in enumerate(svcs):
                        clients.start_soon(warm_up, svc, c)
                tg.start_soon(_malformed_forever, port, big, tally)
                deadline = time.monotonic() + DURATION
                async with anyio.create_task_group() as clients:
                    for c, svc in enumerate(svcs):
                        clients.start_soon(client, svc, c, deadline)
                tg.cancel_scope.cancel()
            elapsed = time.monotonic() - started
        # The server still serves a new client after all of it.
        async with from_addr(url) as svc:
            assert await svc.get(big) == pool[digests.index(big)]

    warm = started + (elapsed / 3)
    warm_rss = max(r for t, r in samples if t <= warm)
    late = [r for t, r in samples if t > warm]
    growth = max(late) - warm_rss
    ops = figures["puts"] + figures["reads"] + figures["stats"]
    print(
        f"\ngRPC load: {CLIENTS} clients x {elapsed:.1f} s, {ops} calls {figures}, "
        f"errors: {len(errors)}; malformed requests answered: {sum(tally.values())} {tally}; "
        f"server RSS {warm_rss / MiB:.0f} MiB after warm-up, at most {max(late) / MiB:.0f} "
        f"MiB after ({growth / MiB:+.1f} MiB), {len(samples)} samples"
    )
    assert not errors, errors[:5]
    assert ops >= CLIENTS, "the load did not run"
    assert set(tally) >= {*MALFORMED, "vanished mid-Put", "vanished mid-Read"}
    assert growth <= RSS_BOUND, f"the server's RSS grew by {growth / MiB:.0f} MiB under load"
