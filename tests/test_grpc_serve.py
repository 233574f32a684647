"""``castore serve`` as a real process: gRPC over TCP, unix sockets and TLS, and a graceful
stop on SIGTERM/SIGINT that finishes the calls in flight."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from castore import B3Digest, GRPCBlobService, from_addr
from castore.errors import StoreUnavailableError
from castore.testing.conformance import pseudo_random_bytes

LISTENING = "castore serve: listening on "


class Served:
    """A ``python -m castore serve …`` process and the stderr lines it printed so far."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.changed = anyio.Event()

    async def collect(self) -> None:
        assert self.process.stderr is not None
        buffered = BufferedByteReceiveStream(self.process.stderr)
        while True:
            try:
                line = await buffered.receive_until(b"\n", 1 << 16)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                break
            self.lines.append(line.decode())
            self.changed.set()
            self.changed = anyio.Event()
        self.changed.set()

    async def wait_for(self, prefix: str) -> str:
        """The rest of the first stderr line starting with ``prefix``."""
        with anyio.fail_after(30):
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line[len(prefix) :].strip()
                if self.process.returncode is not None:
                    raise AssertionError("castore serve exited:\n" + "\n".join(self.lines))
                await self.changed.wait()

    async def url(self) -> str:
        return await self.wait_for(LISTENING)


@contextlib.asynccontextmanager
async def castore_serve(*args: str) -> AsyncIterator[Served]:
    command = [sys.executable, "-m", "castore", "serve", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASTORE_")}
    async with await anyio.open_process(command, env=env) as process:
        served = Served(process)
        async with anyio.create_task_group() as tg:
            tg.start_soon(served.collect)
            try:
                yield served
            finally:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    await process.wait()


@pytest.fixture
def short_tmp() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="castore-serve-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
        writer = await client.open_write()
        await writer.write(b"never closed" * 30_000)
        await client.has(B3Digest.of(b""))  # after the Put's headers, on one connection
        s.process.send_signal(signal.SIGINT)
        await s.wait_for("castore serve: SIGINT: finishing 1 call(s)")
        started = time.monotonic()
        s.process.send_signal(signal.SIGINT)
        with anyio.fail_after(20):
            await s.process.wait()
        assert time.monotonic() - started < 10
        with pytest.raises(StoreUnavailableError):
            await writer.close()
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

    result = run("--listen", "grpc+http://127.0.0.1")
    assert result.returncode == 4, result.stderr
    assert b"needs a host and a port" in result.stderr
    result = run("--listen", "http://127.0.0.1:1")
    assert result.returncode == 4, result.stderr
    result = run("--tls-cert", "/nonexistent.pem")
    assert result.returncode == 4, result.stderr
    assert b"go together" in result.stderr
