"""``castore serve`` as a real process: gRPC over TCP, unix sockets and TLS, and a graceful
stop on SIGTERM/SIGINT that finishes the calls in flight."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import anyio
import anyio.abc
import pytest
from serving import castore_serve

from castore import B3Digest, GRPCBlobService, from_addr
from castore.errors import StoreUnavailableError
from castore.testing.conformance import pseudo_random_bytes


async def test_sigterm_finishes_the_call_in_flight() -> None:
    data = pseudo_random_bytes(3 * 1024 * 1024, seed=31)
    async with castore_serve("--store", "memory://", "--listen", "grpc+http://127.0.0.1:0") as s:
        url = await s.url()
        assert url.startswith("grpc+http://127.0.0.1:")
        async with from_addr(url) as client:
            stored = await client.put(b"before")
            assert await client.get(stored) == b"before"
            writer = await client.open_write()
            await writer.write(data[:1_000_000])
            await client.has(stored)  # after the Put's headers, on one connection
            s.process.send_signal(signal.SIGTERM)
            await s.wait_for("castore serve: SIGTERM: finishing 1 call(s) in flight")
            # No new connections now; the Put in flight goes on to the end.
            async with from_addr(url) as late:
                with pytest.raises(StoreUnavailableError):
                    await late.has(stored)
            await writer.write(data[1_000_000:])
            assert await writer.close() == B3Digest.of(data)
        with anyio.fail_after(20):
            await s.process.wait()
    assert s.process.returncode == 0, s.lines
    assert not any("Traceback" in line for line in s.lines), s.lines


async def test_second_signal_cuts_the_grace_period_short() -> None:
    async with (
        castore_serve(
            "--store", "memory://", "--listen", "grpc+http://127.0.0.1:0", "--grace", "60"
        ) as s,
        from_addr(await s.url()) as client,
    ):
        # A Read of a blob far larger than HTTP/2's flow-control window, of which the
        # client takes one byte: the server's handler has started (the first bytes came)
        # and stays in flight, waiting for the window to open.
        digest = await client.put(b"x" * (64 << 20))
        reader = await client.open_read(digest)
        assert reader is not None
        assert await reader.read(1) == b"x"
        s.process.send_signal(signal.SIGINT)
        await s.wait_for("castore serve: SIGINT: finishing 1 call(s)")
        started = time.monotonic()
        s.process.send_signal(signal.SIGINT)
        with anyio.fail_after(20):
            await s.process.wait()
        assert time.monotonic() - started < 10
        with pytest.raises(StoreUnavailableError):
            while await reader.read(1 << 20):
                pass
    assert s.process.returncode == 0, s.lines


async def test_unix_socket(short_tmp: str) -> None:
    sock = f"{short_tmp}/castore.sock"
    async with castore_serve("--store", "memory://", "--listen", f"grpc+unix://{sock}") as s:
        assert await s.url() == f"grpc+unix://{sock}"
        async with from_addr(f"grpc+unix://{sock}") as client:
            digest = await client.put(b"over a unix socket")
            assert await client.get(digest) == b"over a unix socket"
        s.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            await s.process.wait()
    assert s.process.returncode == 0, s.lines
    assert not await anyio.Path(sock).exists()


async def test_tls(short_tmp: str) -> None:
    cert, key = f"{short_tmp}/cert.pem", f"{short_tmp}/key.pem"
    await anyio.run_process(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", key, "-out", cert,
        ],
        check=True,
    )  # fmt: skip
    async with castore_serve(
        "--store", "memory://", "--listen", "grpc+http://127.0.0.1:0",
        "--tls-cert", cert, "--tls-key", key,
    ) as s:  # fmt: skip
        url = await s.url()
        assert url.startswith("grpc+https://127.0.0.1:")
        async with from_addr(f"{url}?ca-file={cert}") as client:
            assert isinstance(client, GRPCBlobService)
            digest = await client.put(b"over TLS")
            assert await client.get(digest) == b"over TLS"


def test_bad_arguments_exit_with_usage_or_address_errors() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "castore", "serve", "--store", "memory://", *args],
            capture_output=True,
            timeout=60,
            check=False,
        )

    # A listen address that is not one is a usage error, not a bad store URL.
    result = run("--listen", "grpc+http://127.0.0.1")
    assert result.returncode == 2, result.stderr
    assert b"needs a host and a port" in result.stderr
    result = run("--listen", "http://127.0.0.1:1")
    assert result.returncode == 2, result.stderr
    assert b"bad store URL" not in result.stderr
    result = run("--tls-cert", "/nonexistent.pem")
    assert result.returncode == 2, result.stderr
    assert b"go together" in result.stderr
