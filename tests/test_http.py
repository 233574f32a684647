"""The HTTP gateway (``castore.http``) over real sockets: uvicorn in-process, httpx, curl.

Every test that talks HTTP starts uvicorn on a free loopback port with the gateway in front
of a real service: memory, ``objectstore+file://`` and SeaweedFS S3 (the plugin's
``castore_memory``, ``castore_local`` and ``castore_s3`` fixtures). Ranges are checked
against the bytes that were uploaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

import anyio
import anyio.abc
import httpx
import pytest
import uvicorn
from serving import castore_serve

from castore import B3Digest, BlobService, ChunkMeta, MemoryBlobService, from_addr
from castore.blobservice import BlobReader, BlobWriter
from castore.http import UNSATISFIABLE, app, parse_http_address, parse_range, serve_http
from castore.testing.conformance import pseudo_random_bytes
from castore.testing.faults import Fault, FaultyBlobService

# --- helpers -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(asgi: object, **config: object) -> AsyncIterator[str]:
    """Run ``asgi`` on uvicorn at 127.0.0.1 on a free port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(asgi, log_level="warning", access_log=False, **config)  # type: ignore[arg-type]
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                await anyio.sleep(0.005)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
    sock.close()


class _CountingReader(BlobReader):
    def __init__(self, inner: BlobReader, owner: Watched) -> None:
        self._inner = inner
        self._owner = owner

    async def read(self, n: int = -1) -> bytes:
        data = await self._inner.read(n)
        self._owner.bytes_read += len(data)
        return data

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return await self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    async def aclose(self) -> None:
        self._owner.open_readers -= 1
        await self._inner.aclose()


class _TrackedWriter(BlobWriter):
    def __init__(self, inner: BlobWriter, owner: Watched) -> None:
        self._inner = inner
        self._owner = owner

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.write(data)

    async def _finish(self) -> B3Digest:
        digest = await self._inner.close()
        self._owner.writers_closed += 1
        return digest

    async def _abort(self) -> None:
        await self._inner.abort()
        self._owner.writers_aborted += 1


class Watched(BlobService):
    """Passes everything to ``inner`` and counts what the gateway asks of it."""

    def __init__(self, inner: BlobService) -> None:
        self.inner = inner
        self.bytes_read = 0
        self.open_readers = 0
        self.writers_closed = 0
        self.writers_aborted = 0

    async def has(self, digest: B3Digest) -> bool:
        return await self.inner.has(digest)

    async def open_read(self, digest: B3Digest) -> BlobReader | None:
        reader = await self.inner.open_read(digest)
        if reader is None:
            return None
        self.open_readers += 1
        return _CountingReader(reader, self)

    async def open_write(self) -> BlobWriter:
        return _TrackedWriter(await self.inner.open_write(), self)

    async def chunks(self, digest: B3Digest) -> list[ChunkMeta] | None:
        return await self.inner.chunks(digest)


async def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``condition()`` until it is true (the server's tasks change what it reads)."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


@pytest.fixture(params=["memory", "local", "s3"])
def service(request: pytest.FixtureRequest) -> BlobService:
    """A fresh service on each backend, from the castore pytest plugin's fixtures."""
    svc: BlobService = request.getfixturevalue(f"castore_{request.param}")
    return svc


@pytest.fixture
async def client(service: BlobService) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of the gateway in front of ``service``, served by uvicorn."""
    async with serving(app(service)) as base, httpx.AsyncClient(base_url=base) as client:
        yield client


# Large enough to span many 256 KiB-average chunks on the objectstore backend.
DATA = pseudo_random_bytes(3 * 1024 * 1024 + 12345, seed=70)
DATA_DIGEST = B3Digest.of(DATA)


# --- parse_range (no sockets) --------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "length", "expected"),
    [
        ("bytes=0-0", 10, (0, 1)),
        ("bytes=2-5", 10, (2, 6)),
        ("bytes=2-", 10, (2, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=5-100", 10, (5, 10)),
        ("BYTES = 1-2", 10, (1, 3)),
        ("bytes=9-9", 10, (9, 10)),
        ("bytes=10-", 10, UNSATISFIABLE),
        ("bytes=10-20", 10, UNSATISFIABLE),
        ("bytes=5-2", 10, UNSATISFIABLE),
        ("bytes=-0", 10, UNSATISFIABLE),
        ("bytes=0-", 0, UNSATISFIABLE),
        ("bytes=-5", 0, UNSATISFIABLE),
        ("bytes=99999999999999999999999999-", 10, UNSATISFIABLE),
        ("bytes=0-99999999999999999999999999", 10, (0, 10)),
        ("bytes=0-1,4-5", 10, None),  # several ranges: the whole blob
        ("items=0-1", 10, None),
        ("bytes=a-b", 10, None),
        ("bytes=1", 10, None),
        ("bytes=", 10, None),
        ("bytes=-", 10, None),
        ("bytes=+1-2", 10, None),
        ("bytes=\u0661-2", 10, None),  # an Arabic-Indic digit is not a digit here
        ("0-5", 10, None),
    ],
)
def test_parse_range(header: str, length: int, expected: object) -> None:
    assert parse_range(header, length) == expected


def test_app_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        app(MemoryBlobService(), max_upload=-1)
    with pytest.raises(ValueError):
        app(MemoryBlobService(), piece_size=0)


# --- over sockets, on every backend --------------------------------------------------


async def test_upload_then_download(client: httpx.AsyncClient) -> None:
    r = await client.put("/blobs", content=DATA)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body == {"digest": str(DATA_DIGEST), "hex": DATA_DIGEST.hex(), "size": len(DATA)}
    assert r.headers["location"] == f"/blobs/{DATA_DIGEST.hex()}"

    r = await client.get(r.headers["location"])
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["content-length"] == str(len(DATA))
    assert r.headers["etag"] == f'"{DATA_DIGEST.hex()}"'
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-type"] == "application/octet-stream"
    assert "immutable" in r.headers["cache-control"]

    # The blake3-<base64> form, URL-encoded, names the same blob.
    r = await client.head(f"/blobs/{quote(str(DATA_DIGEST), safe='')}")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(DATA))
    assert r.content == b""

    # POST works too; a streamed body with no Content-Length (chunked encoding) as well.
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, 200_000, 7_000):
            yield DATA[i : min(i + 7_000, 200_000)]

    r = await client.post("/blobs", content=pieces())
    assert r.status_code == 201
    assert r.json()["hex"] == B3Digest.of(DATA[:200_000]).hex()
    r = await client.get(f"/blobs/{B3Digest.of(DATA[:200_000])}")
    assert r.content == DATA[:200_000]


async def test_ranges(client: httpx.AsyncClient) -> None:
    assert (await client.put("/blobs", content=DATA)).status_code == 201
    url = f"/blobs/{DATA_DIGEST.hex()}"
    n = len(DATA)
    cases = {
        "bytes=0-0": (0, 1),
        "bytes=100-199": (100, 200),
        # Across several chunk boundaries of the objectstore backend.
        "bytes=200000-1500000": (200000, 1500001),
        f"bytes={n - 1}-": (n - 1, n),
        "bytes=3000000-": (3000000, n),
        "bytes=-5000": (n - 5000, n),
        f"bytes=-{n + 10}": (0, n),
        f"bytes=1000-{n + 1000}": (1000, n),
    }
    for header, (start, end) in cases.items():
        r = await client.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{n}", header
        assert r.headers["content-length"] == str(end - start)
        assert r.content == DATA[start:end], header

    for header in (f"bytes={n}-", f"bytes={n + 5}-{n + 9}", "bytes=-0", "bytes=9-3"):
        r = await client.get(url, headers={"Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{n}"
        assert r.json()["error"] == "range_not_satisfiable"

    # Several ranges, another unit, a malformed header: the whole blob.
    for header in ("bytes=0-1,5-9", "lines=1-2", "bytes=x-y"):
        r = await client.get(url, headers={"Range": header})
        assert r.status_code == 200, header
        assert r.content == DATA

    # If-Range with the blob's ETag keeps the range; with anything else, the whole blob.
    etag = f'"{DATA_DIGEST.hex()}"'
    r = await client.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert (r.status_code, r.content) == (206, DATA[10:20])
    r = await client.get(url, headers={"Range": "bytes=10-19", "If-Range": '"other"'})
    assert (r.status_code, r.content) == (200, DATA)

    # HEAD ignores Range (RFC 9110 defines it for GET only).
    r = await client.head(url, headers={"Range": "bytes=10-19"})
    assert (r.status_code, r.headers["content-length"]) == (200, str(n))

    # Conditional GET: the ETag never changes, so a cached copy is always fresh.
    for inm in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        r = await client.get(url, headers={"If-None-Match": inm, "Range": "bytes=0-5"})
        assert r.status_code == 304, inm
        assert r.content == b""
        assert r.headers["etag"] == etag
    r = await client.get(url, headers={"If-None-Match": '"nope"'})
    assert (r.status_code, len(r.content)) == (200, n)
    missing = B3Digest.of(b"never stored")
    r = await client.get(f"/blobs/{missing.hex()}", headers={"If-None-Match": "*"})
    assert r.status_code == 404


async def test_small_and_empty_blobs(client: httpx.AsyncClient) -> None:
    r = await client.put("/blobs", content=b"Hello World!")
    assert r.json()["hex"] == "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"
    r = await client.get(r.headers["location"], headers={"Range": "bytes=-6"})
    assert (r.status_code, r.content) == (206, b"World!")

    empty = B3Digest.of(b"")
    assert (await client.get(f"/blobs/{empty.hex()}")).status_code == 404
    r = await client.put("/blobs", content=b"")
    assert (r.status_code, r.json()["size"]) == (201, 0)
    r = await client.get(f"/blobs/{empty.hex()}")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")
    r = await client.get(f"/blobs/{empty.hex()}", headers={"Range": "bytes=0-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */0"


async def test_chunk_list(client: httpx.AsyncClient, service: BlobService) -> None:
    await client.put("/blobs", content=DATA)
    r = await client.get(f"/blobs/{DATA_DIGEST.hex()}/chunks")
    assert r.status_code == 200
    body = r.json()
    assert body["hex"] == DATA_DIGEST.hex()
    chunks = body["chunks"]
    expected = await service.chunks(DATA_DIGEST)
    assert expected is not None
    assert [(c["hex"], c["size"]) for c in chunks] == [(c.digest.hex(), c.size) for c in expected]
    if isinstance(service, MemoryBlobService):
        assert chunks == []
    else:
        assert len(chunks) > 4
        assert body["size"] == len(DATA)
        for c in chunks:
            piece = DATA[c["offset"] : c["offset"] + c["size"]]
            assert B3Digest.of(piece).hex() == c["hex"]
            assert B3Digest.parse(c["digest"]).hex() == c["hex"]
            # Each chunk is itself a blob the gateway serves.
            r = await client.get(f"/blobs/{c['hex']}")
            assert r.content == piece
    r = await client.get(f"/blobs/{B3Digest.of(b'absent').hex()}/chunks")
    assert r.status_code == 404


async def test_client_errors(client: httpx.AsyncClient) -> None:
    for bad in ("xyz", "0" * 63, "g" * 64, "blake3-AAAA", quote("b3:%%%", safe="")):
        r = await client.get(f"/blobs/{bad}")
        assert r.status_code == 400, bad
        assert r.json()["error"] == "invalid_digest"
    r = await client.get(f"/blobs/{B3Digest.of(b'absent').hex()}")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    assert (await client.get("/elsewhere")).status_code == 404
    r = await client.delete(f"/blobs/{DATA_DIGEST.hex()}")
    assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")
    r = await client.get("/blobs")
    assert (r.status_code, r.headers["allow"]) == (405, "PUT, POST")
    r = await client.post(f"/blobs/{DATA_DIGEST.hex()}/chunks")
    assert r.status_code == 405


async def test_client_disconnect_mid_upload_stores_nothing(service: BlobService) -> None:
    watched = Watched(service)
    data = pseudo_random_bytes(2_000_000, seed=71)
    async with serving(app(watched)) as base:
        port = urlsplit(base).port
        assert port is not None
        stream = await anyio.connect_tcp("127.0.0.1", port)
        head = f"PUT /blobs HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
        await stream.send(head.encode() + data[:1_200_000])
        await anyio.sleep(0.2)
        await stream.aclose()
        await wait_for(lambda: watched.writers_aborted == 1)
    assert watched.writers_closed == 0
    assert not await service.has(B3Digest.of(data))
    assert not await service.has(B3Digest.of(data[:1_200_000]))
    if isinstance(service, MemoryBlobService):
        assert len(service) == 0


# --- memory only: limits, backpressure, streaming ----------------------------------


async def test_upload_limit() -> None:
    svc = Watched(MemoryBlobService())
    async with (
        serving(app(svc, max_upload=100_000)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        # Declared too large: refused before the writer is even opened.
        r = await client.put("/blobs", content=DATA[:150_000])
        assert (r.status_code, r.json()["error"]) == (413, "too_large")

        # Streamed with no length: refused once the limit is crossed, writer aborted.
        async def pieces() -> AsyncIterator[bytes]:
            for i in range(0, 300_000, 10_000):
                yield DATA[i : i + 10_000]

        r = await client.post("/blobs", content=pieces())
        assert r.status_code == 413
        assert svc.writers_aborted == 1
        # Exactly at the limit is fine.
        r = await client.put("/blobs", content=DATA[:100_000])
        assert r.status_code == 201
    assert len(svc.inner) == 1  # type: ignore[arg-type]


async def test_range_reads_only_the_range() -> None:
    svc = Watched(MemoryBlobService())
    await svc.inner.put(DATA)
    async with serving(app(svc)) as base, httpx.AsyncClient(base_url=base) as client:
        r = await client.get(
            f"/blobs/{DATA_DIGEST.hex()}", headers={"Range": "bytes=2000000-2000099"}
        )
        assert r.content == DATA[2_000_000:2_000_100]
        assert svc.bytes_read == 100
        assert svc.open_readers == 0


@pytest.mark.parametrize("piece_size", [64 * 1024, 100_000, 5 << 20])
async def test_bodies_longer_than_a_read_block(piece_size: int) -> None:
    """The body is read into one buffer in blocks of 4 MiB (or ``piece_size`` when
    larger) and sent in pieces: bytes across blocks and pieces arrive whole and in order,
    from a chunked store whose reader decodes chunks straight into that buffer."""
    big = pseudo_random_bytes(9 * 1024 * 1024 + 4321, seed=73)
    n = len(big)
    svc = from_addr("objectstore+memory:///")
    digest = await svc.put(big)
    url = f"/blobs/{digest.hex()}"
    async with (
        serving(app(svc, piece_size=piece_size)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        r = await client.get(url)
        assert (r.status_code, len(r.content)) == (200, n)
        assert r.content == big
        for start, end in ((1, n), (4 << 20, (8 << 20) + 7), ((4 << 20) - 3, (4 << 20) + 3)):
            r = await client.get(url, headers={"Range": f"bytes={start}-{end - 1}"})
            assert r.status_code == 206
            assert r.content == big[start:end], (start, end)
    await svc.aclose()


async def test_slow_client_backpressure_and_disconnect() -> None:
    """A client that stops reading holds the server back; one that leaves stops it.

    A raw socket with a small receive buffer stands in for a slow client, so that only the
    server's socket buffer (at most ``net.ipv4.tcp_wmem``'s 4 MiB here) can hide unread
    bytes; httpx's socket would let the kernel autotune its buffer up to tens of MiB.
    """
    big = pseudo_random_bytes(1 << 20, seed=72) * 48  # 48 MiB, cheap to build
    size = len(big)
    svc = Watched(MemoryBlobService())
    digest = await svc.inner.put(big)
    loop = asyncio.get_running_loop()
    async with serving(app(svc)) as base:
        port = urlsplit(base).port
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            request = f"GET /blobs/{digest.hex()} HTTP/1.1\r\nHost: x\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            got = b""
            while len(got) < 256 * 1024:
                part = await loop.sock_recv(sock, 65536)
                assert part
                got += part
            assert got.startswith(b"HTTP/1.1 200 ")
            _, _, body = got.partition(b"\r\n\r\n")
            assert big.startswith(body)
            await anyio.sleep(0.5)
            assert svc.bytes_read < 12 * 1024 * 1024, svc.bytes_read
            assert svc.open_readers == 1
        finally:
            sock.close()
        # The client left mid-body: the server stops reading and closes the reader.
        await wait_for(lambda: svc.open_readers == 0)
        stopped_at = svc.bytes_read
        await anyio.sleep(0.2)
        assert svc.bytes_read == stopped_at < size


async def test_mounted_under_a_prefix() -> None:
    """Under Starlette's ``Mount`` the routes and ``Location`` include the mount path."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    svc = MemoryBlobService()
    outer = Starlette(routes=[Mount("/cas", app=app(svc))])
    async with serving(outer) as base, httpx.AsyncClient(base_url=base) as client:
        r = await client.put("/cas/blobs", content=b"mounted")
        assert r.status_code == 201
        assert r.headers["location"] == f"/cas/blobs/{B3Digest.of(b'mounted').hex()}"
        r = await client.get(r.headers["location"], headers={"Range": "bytes=1-3"})
        assert (r.status_code, r.content) == (206, b"oun")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_range(tmp_path: Path) -> None:
    svc = MemoryBlobService()
    await svc.put(DATA)
    async with serving(app(svc)) as base:
        url = f"{base}/blobs/{quote(str(DATA_DIGEST), safe='')}"
        out = tmp_path / "part"
        result = await anyio.run_process(
            ["curl", "-sS", "-r", "123456-654320", "-o", str(out), "-w", "%{http_code}", url]
        )
        assert result.stdout == b"206"
        assert await anyio.Path(out).read_bytes() == DATA[123456:654321]
        result = await anyio.run_process(
            ["curl", "-sS", "-D", "-", "-o", "/dev/null", "-r", "-10", url]
        )
        headers = result.stdout.decode().lower()
        assert f"content-range: bytes {len(DATA) - 10}-{len(DATA) - 1}/{len(DATA)}" in headers
        result = await anyio.run_process(
            ["curl", "-sS", "-X", "PUT", "--data-binary", "@-", f"{base}/blobs"], input=b"from curl"
        )
        assert json.loads(result.stdout)["hex"] == B3Digest.of(b"from curl").hex()


# --- a failing store: FaultyBlobService ---------------------------------------------


async def test_store_failures_before_the_answer_are_503() -> None:
    faulty = FaultyBlobService(MemoryBlobService())
    digest = await faulty.inner.put(DATA)
    url = f"/blobs/{digest.hex()}"
    async with serving(app(faulty)) as base, httpx.AsyncClient(base_url=base) as client:
        for op, request in [
            ("open_read", client.build_request("GET", url)),
            ("read", client.build_request("GET", url, headers={"Range": "bytes=5-"})),
            ("has", client.build_request("GET", url, headers={"If-None-Match": "*"})),
            ("chunks", client.build_request("GET", url + "/chunks")),
            ("open_write", client.build_request("PUT", "/blobs", content=b"abc")),
            ("write", client.build_request("PUT", "/blobs", content=b"abc")),
            ("close", client.build_request("PUT", "/blobs", content=b"abc")),
        ]:
            faulty.clear()
            faulty.plan(op, Fault.ERROR, nth=1)
            r = await client.send(request)
            assert (r.status_code, r.json()["error"]) == (503, "store_unavailable"), op
        faulty.clear()
        faulty.plan("read", Fault.TIMEOUT, nth=1)
        assert (await client.get(url)).status_code == 503
        faulty.clear()
        assert not await faulty.inner.has(B3Digest.of(b"abc"))
        assert (await client.get(url)).content == DATA


async def test_store_failure_mid_body_cuts_the_connection() -> None:
    """Once the status line is out, a failure must not pass for a complete body.

    The gateway reads the first piece, then blocks of 4 MiB: the third read is a block
    of a blob this long, well after the status line.
    """
    data = pseudo_random_bytes(9 * 1024 * 1024, seed=74)
    faulty = FaultyBlobService(MemoryBlobService())
    digest = await faulty.inner.put(data)
    async with serving(app(faulty, piece_size=65536)) as base:
        for fault in (Fault.ERROR, Fault.TRUNCATE):
            faulty.clear()
            faulty.plan("read", fault, nth=3)
            async with httpx.AsyncClient(base_url=base) as client:
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.get(f"/blobs/{digest.hex()}")
        if shutil.which("curl"):
            # curl reports the cut as a partial transfer (exit code 18).
            faulty.clear()
            faulty.plan("read", Fault.ERROR, nth=3)
            result = await anyio.run_process(
                ["curl", "-sS", "-o", "/dev/null", f"{base}/blobs/{digest.hex()}"], check=False
            )
            assert result.returncode == 18, result.stderr
        faulty.clear()
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get(f"/blobs/{digest.hex()}")).content == data


async def test_corrupt_chunk_on_disk(castore_local_url: str) -> None:
    """A chunk object damaged on disk: 502 when it is the first, a cut body when later."""
    service = from_addr(castore_local_url)
    root = Path(urlsplit(castore_local_url).path)
    digest = await service.put(DATA)
    chunks = await service.chunks(digest)
    assert chunks is not None and len(chunks) > 3

    def damage(index: int) -> None:
        hexd = chunks[index].digest.hex()
        path = root / "chunks" / "b3" / hexd[:4] / hexd
        path.write_bytes(b"\x28\xb5\x2f\xfd not really zstd")

    async with serving(app(service)) as base, httpx.AsyncClient(base_url=base) as client:
        await anyio.to_thread.run_sync(damage, 2)
        # Ranges that avoid the damaged chunk are still served.
        r = await client.get(f"/blobs/{digest.hex()}", headers={"Range": "bytes=10-99"})
        assert (r.status_code, r.content) == (206, DATA[10:100])
        r = await client.get(f"/blobs/{digest.hex()}", headers={"Range": "bytes=-1000"})
        assert (r.status_code, r.content) == (206, DATA[-1000:])
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"/blobs/{digest.hex()}")
        await anyio.to_thread.run_sync(damage, 0)
        r = await client.get(f"/blobs/{digest.hex()}")
        assert (r.status_code, r.json()["error"]) == (502, "data_corruption")


# --- castore serve --http -----------------------------------------------------------


async def test_castore_serve_http_beside_grpc(tmp_path: Path) -> None:
    """One process, one store, two protocols: what goes in over one comes out of the other."""
    store = "objectstore+file://" + quote(str(tmp_path / "store"))
    async with castore_serve(
        "--store", store, "--listen", "grpc+http://127.0.0.1:0", "--http", "127.0.0.1:0"
    ) as served:
        grpc_url = await served.wait_for("castore serve: listening on ")
        http_url = await served.wait_for("castore serve: HTTP gateway on ")
        async with httpx.AsyncClient(base_url=http_url) as client, from_addr(grpc_url) as grpc:
            r = await client.put("/blobs", content=DATA)
            assert r.status_code == 201
            assert await grpc.get(DATA_DIGEST) == DATA
            other = pseudo_random_bytes(700_000, seed=73)
            digest = await grpc.put(other)
            r = await client.get(f"/blobs/{digest.hex()}", headers={"Range": "bytes=-70000"})
            assert (r.status_code, r.content) == (206, other[-70_000:])
    assert served.process.returncode == 0, served.lines
    assert not any("Traceback" in line for line in served.lines), served.lines


async def test_castore_serve_http_only() -> None:
    async with castore_serve(
        "--store", "memory://", "--http", "127.0.0.1:0", "--no-grpc", "--max-upload", "1000"
    ) as served:
        http_url = await served.wait_for("castore serve: HTTP gateway on ")
        async with httpx.AsyncClient(base_url=http_url) as client:
            r = await client.put("/blobs", content=b"x" * 1000)
            assert r.status_code == 201
            r = await client.put("/blobs", content=b"x" * 1001)
            assert r.status_code == 413
    assert served.process.returncode == 0, served.lines
    assert not any(line.startswith("castore serve: listening on") for line in served.lines)

    # Usage errors: nothing to serve, or an address that is not HOST:PORT.
    for bad in (["--no-grpc"], ["--http", "localhost"], ["--http", "127.0.0.1:99999"]):
        result = await anyio.run_process(
            [sys.executable, "-m", "castore", "serve", "--store", "memory://", *bad], check=False
        )
        assert result.returncode != 0, bad
        assert b"HOST:PORT" in result.stderr, result.stderr


async def test_serve_http_in_process() -> None:
    """``serve_http`` in the caller's loop: the caller's exceptions pass through as they are."""
    svc = MemoryBlobService()
    with pytest.raises(KeyError):
        async with serve_http(svc, "127.0.0.1:0", access_log=False) as base:
            async with httpx.AsyncClient(base_url=base) as client:
                r = await client.put("/blobs", content=b"in process")
                assert r.status_code == 201
            raise KeyError("the caller's own error")
    assert await svc.get(B3Digest.of(b"in process")) == b"in process"
    # The port is free again: the server closed its socket.
    port = int(base.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_parse_http_address() -> None:
    assert parse_http_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_http_address("[::1]:0") == ("::1", 0)
    assert parse_http_address("localhost:80") == ("localhost", 80)
    for bad in ("8080", ":8080", "host:", "host:http", "host:70000", ""):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_http_address(bad)
