"""Hostile input never reaches a key, the server listens on loopback unless told
otherwise, and TLS works end to end.

Keys: every store call an :class:`~castore.ObjectStoreBlobService` makes is recorded by
:class:`~castore.testing.faults.FaultyStore`; whatever the HTTP gateway and the gRPC
server are sent (paths with ``../``, percent-escapes, NUL bytes, digests whose bytes spell
``../``), every key touched is ``blobs/b3/<4 hex>/<64 hex>``, ``chunks/b3/…`` or the fixed
``gc/gen`` prefix that every commit lists, and no request makes the gateway fail with a
500.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from obstore.store import MemoryStore

import castore.http
from castore import B3Digest, GRPCBlobService, ObjectStoreBlobService, from_addr
from castore.cli import DEFAULT_LISTEN
from castore.errors import StoreUnavailableError
from castore.grpc import serve
from castore.testing.conformance import pseudo_random_bytes
from castore.testing.faults import FaultyStore

STRESS = max(1, int(os.environ.get("CASTORE_STRESS", "1")))
# A blob's or chunk's key, or the collector's state that every commit lists (a fixed
# prefix, named by no request).
KEY = re.compile(r"(blobs|chunks)/b3/[0-9a-f]{4}/[0-9a-f]{64}|gc/gen")
STORED = b"a blob that is there"


async def _asgi(gateway: castore.http.BlobGateway, method: str, raw_path: bytes) -> int:
    """Call the ASGI app directly with an unnormalized path; the response status."""
    path = raw_path.decode("latin-1")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"castore")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    status: list[int] = []
    body = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, object]:
        if body:
            return body.pop()
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            status.append(int(message["status"]))  # type: ignore[call-overload]

    with anyio.fail_after(10):
        await gateway(scope, receive, send)  # type: ignore[arg-type]
    return status[0]


_segment = st.sampled_from(
    ["..", ".", "%2e%2e", "%2E%2e", "..%2f", "%2f", "/", "\\", "\x00", "%00", "blobs", "b3"]
)
_hostile = st.lists(
    st.one_of(_segment, st.text(max_size=12), st.sampled_from(["a" * 64, "0" * 64])),
    max_size=8,
).map("".join)


@settings(max_examples=300 * STRESS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["GET", "HEAD"]), _hostile, st.booleans())
def test_http_paths_never_reach_a_key(method: str, tail: str, chunks: bool) -> None:
    async def go() -> None:
        faulty = FaultyStore(MemoryStore())
        async with ObjectStoreBlobService(faulty) as svc:
            stored = await svc.put(STORED)
            gateway = castore.http.app(svc)
            path = "/blobs/" + tail + ("/chunks" if chunks else "")
            status = await _asgi(gateway, method, path.encode("utf-8", "surrogatepass"))
            assert status in (200, 206, 400, 404, 405), f"{path!r}: {status}"
            assert await _asgi(gateway, "GET", f"/blobs/{stored.hex()}".encode()) == 200
            bad = [key for _, key in faulty.keys if not KEY.fullmatch(key)]
            assert not bad, f"{path!r} reached keys {bad}"

    anyio.run(go)


async def test_grpc_digests_never_reach_a_key_but_as_hex() -> None:
    faulty = FaultyStore(MemoryStore())
    hostile = [b"../" * 10 + b"..", b"/etc/passwd".ljust(32, b"\x00"), b"\xff" * 32, bytes(32)]
    async with (
        ObjectStoreBlobService(faulty) as backend,
        serve(backend) as running,
        from_addr(running.url) as client,
    ):
        for raw in hostile:
            digest = B3Digest(raw)
            assert not await client.has(digest)
            assert await client.chunks(digest) is None
            assert await client.open_read(digest) is None
        stored = await client.put(pseudo_random_bytes(600_000, seed=3))
        assert await client.get(stored) is not None
    assert faulty.keys
    assert all(KEY.fullmatch(key) for _, key in faulty.keys), faulty.keys


# --- listening on loopback -----------------------------------------------------------------


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) with a listening socket on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                address, hex_port = fields[1].rsplit(":", 1)
                if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    found.add(address)
    return found


def test_serve_listens_on_loopback_by_default() -> None:
    from castore.cli import build_parser

    assert DEFAULT_LISTEN.startswith("grpc+http://127.0.0.1:")
    args = build_parser().parse_args(["serve", "--store", "memory://"])
    assert args.listen == DEFAULT_LISTEN
    assert args.http is None  # the HTTP gateway only when asked for
    port = int(DEFAULT_LISTEN.rsplit(":", 1)[1])
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc/net/tcp")
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            pytest.skip(f"port {port} is taken on this machine")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASTORE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "castore", "serve", "--store", "memory://"],
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert "listening on grpc+http://127.0.0.1:" in line, line
        # 127.0.0.1 only, no 0.0.0.0 or [::]. grpc listens on an IPv6 socket bound to
        # 127.0.0.1's IPv4-mapped address (::ffff:127.0.0.1), which is the same address.
        assert _listening(port) <= {"0100007F", "0000000000000000FFFF00000100007F"}
        assert _listening(port)
    finally:
        proc.terminate()
        proc.wait(30)


async def test_serving_beyond_loopback_without_tls_warns(caplog: pytest.LogCaptureFixture) -> None:
    backend = ObjectStoreBlobService(MemoryStore())
    with caplog.at_level(logging.WARNING, logger="castore.grpc"):
        async with serve(backend, "grpc+http://127.0.0.1:0"):
            pass
        assert not caplog.records
        async with serve(backend, "grpc+http://0.0.0.0:0"):
            pass
    assert any("not a loopback address" in r.getMessage() for r in caplog.records)


# --- TLS end to end ------------------------------------------------------------------------


def _self_signed(folder: Path, name: str) -> tuple[str, str]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", f"/CN={name}",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


async def test_tls_end_to_end_over_an_object_store(tmp_path: Path) -> None:
    """A multi-chunk blob put and read back (chunk fetches, seeks) over TLS, against an
    object store; a client that trusts another certificate, or expects another name, or
    speaks plaintext, gets nothing."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = await anyio.to_thread.run_sync(_self_signed, tmp_path, "castore-tls")
    other, _ = await anyio.to_thread.run_sync(_self_signed, tmp_path, "someone-else")
    data = pseudo_random_bytes(3 << 20, seed=7)
    async with (
        ObjectStoreBlobService(MemoryStore()) as backend,
        serve(backend, tls_cert=cert, tls_key=key) as running,
    ):
        assert running.url.startswith("grpc+https://127.0.0.1:")
        async with from_addr(f"{running.url}?ca-file={cert}") as client:
            assert isinstance(client, GRPCBlobService)
            digest = await client.put(data)
            chunks = await client.chunks(digest)
            assert chunks is not None and len(chunks) > 4
            reader = await client.open_read(digest)
            assert reader is not None
            async with reader:
                await reader.seek(2_000_000)
                assert await reader.read(300_000) == data[2_000_000:2_300_000]
            assert await client.get(digest) == data
        # The refused handshakes reach the loop's exception handler (the test loops run in
        # debug mode): they are the point here.
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
            if not isinstance(context.get("exception"), ssl.SSLError | ConnectionResetError):
                (previous or asyncio.AbstractEventLoop.default_exception_handler)(loop, context)

        loop.set_exception_handler(handler)
        for url in (
            f"{running.url}?ca-file={other}",
            f"{running.url}?ca-file={cert}&server-name=castore.example",
            f"grpc+http://127.0.0.1:{running.endpoint.port}?timeout=5",
        ):
            async with from_addr(url) as stranger:
                with pytest.raises((StoreUnavailableError, OSError)):
                    await stranger.has(digest)
        loop.set_exception_handler(previous)
