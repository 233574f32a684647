"""One client, several ``castore serve`` processes over one store: grpc's round-robin
balancing spreads the calls, a node that dies is left out, and a ``Put`` it cut off fails
cleanly and succeeds when written again."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from serving import Served, castore_serve

from castore import B3Digest, BlobService, GRPCBlobService, from_addr
from castore.errors import InvalidAddressError, StoreError
from castore.testing.conformance import pseudo_random_bytes

pytestmark = pytest.mark.anyio

KiB = 1024
WRITERS = 6


@contextlib.asynccontextmanager
async def nodes(store: str, count: int = 3) -> AsyncIterator[list[Served]]:
    """``count`` serve processes over ``store``, each on a port of its own."""
    async with contextlib.AsyncExitStack() as stack:
        served = [
            await stack.enter_async_context(
                castore_serve("--store", store, "--listen", "grpc+http://127.0.0.1:0")
            )
            for _ in range(count)
        ]
        for node in served:
            await node.url()
        yield served


async def multi_url(served: list[Served], options: str = "?timeout=20") -> str:
    ports = [(await node.url()).rsplit(":", 1)[1] for node in served]
    return "grpc+http://" + ",".join(f"127.0.0.1:{port}" for port in ports) + options


async def warm_up(client: BlobService) -> None:
    """Let the balancer connect to every node before calls are counted on them."""
    assert isinstance(client, GRPCBlobService)
    await client.connect()
    missing = B3Digest.of(b"warm-up")
    for _ in range(12):
        assert not await client.has(missing)
    await anyio.sleep(1)
    for _ in range(12):
        assert not await client.has(missing)


def shared_store(tmp_path: Path) -> str:
    return f"objectstore+file://{tmp_path / 'store'}"


async def test_calls_are_spread_over_the_nodes(tmp_path: Path) -> None:
    blobs = [pseudo_random_bytes(400 * KiB, seed=i) for i in range(WRITERS)]
    async with nodes(shared_store(tmp_path)) as served:
        async with from_addr(await multi_url(served)) as client:
            await warm_up(client)
            writers = [await client.open_write() for _ in blobs]
            for writer, data in zip(writers, blobs, strict=True):
                await writer.write(data[: 300 * KiB])  # one message sent: the call is open
            for _ in range(3 * WRITERS):  # behind each Put's headers on every connection
                await client.has(B3Digest.of(b"warm-up"))
            await anyio.sleep(0.5)  # a node counts a Stat until its handler returns
            # Each node says how many calls it is finishing: the Puts were spread.
            counts = []
            for node in served:
                node.process.send_signal(signal.SIGTERM)
                line = await node.wait_for("castore serve: SIGTERM: finishing ")
                counts.append(int(line.split()[0]))
            assert sum(counts) == WRITERS, counts
            assert sum(1 for n in counts if n > 0) >= 2, counts
            for writer, data in zip(writers, blobs, strict=True):
                await writer.write(data[300 * KiB :])
                assert await writer.close() == B3Digest.of(data)
        for node in served:
            with anyio.fail_after(20):
                await node.process.wait()
            assert node.process.returncode == 0, node.lines
    # Every Put reached the one store, whichever node took it.
    async with from_addr(shared_store(tmp_path)) as store:
        for data in blobs:
            assert await store.get(B3Digest.of(data)) == data


async def test_a_dying_node_cuts_its_puts_and_is_left_out(tmp_path: Path) -> None:
    before = [pseudo_random_bytes(size, seed=100 + size) for size in (10, 70 * KiB, 3000 * KiB)]
    blobs = [pseudo_random_bytes(400 * KiB, seed=i) for i in range(WRITERS)]
    async with nodes(shared_store(tmp_path)) as served:
        url = await multi_url(served)
        async with from_addr(url) as client:
            stored = [await client.put(data) for data in before]
            await warm_up(client)
            writers = [await client.open_write() for _ in blobs]
            for writer, data in zip(writers, blobs, strict=True):
                await writer.write(data[: 300 * KiB])
            served[0].process.send_signal(signal.SIGKILL)
            with anyio.fail_after(20):
                await served[0].process.wait()
            failed: list[bytes] = []
            for writer, data in zip(writers, blobs, strict=True):
                try:
                    await writer.write(data[300 * KiB :])
                    assert await writer.close() == B3Digest.of(data)
                except StoreError:
                    failed.append(data)
            # The killed node had its share of the Puts; the others finished theirs.
            assert 0 < len(failed) < WRITERS, len(failed)
            for data in failed:
                digest = B3Digest.of(data)
                assert not await client.has(digest)  # nothing stored under its digest
                assert await client.put(data) == digest  # written again, elsewhere
            # Every blob reads back through the client, with one node gone, then two.
            every = [*before, *blobs]
            for data in every:
                assert await client.get(B3Digest.of(data)) == data
            assert stored == [B3Digest.of(data) for data in before]
            served[1].process.send_signal(signal.SIGKILL)
            with anyio.fail_after(20):
                await served[1].process.wait()
            for data in every:
                assert await client.get(B3Digest.of(data)) == data
        # The command line takes the same address.
        result = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "castore", "--store", url, "has", str(stored[1])],
                capture_output=True,
                timeout=60,
            )
        )
        assert result.returncode == 0, result.stderr


async def test_tls_nodes_share_one_certificate(short_tmp: str, tmp_path: Path) -> None:
    cert, key = f"{short_tmp}/cert.pem", f"{short_tmp}/key.pem"
    await anyio.run_process(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=blobs", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", key, "-out", cert,
        ],
        check=True,
    )  # fmt: skip
    store = shared_store(tmp_path)
    tls = ("--tls-cert", cert, "--tls-key", key)
    async with contextlib.AsyncExitStack() as stack:
        served = [
            await stack.enter_async_context(
                castore_serve("--store", store, "--listen", "grpc+http://127.0.0.1:0", *tls)
            )
            for _ in range(2)
        ]
        urls = [await node.url() for node in served]
        assert all(url.startswith("grpc+https://127.0.0.1:") for url in urls)
        url = "grpc+https://" + ",".join(u.split("://")[1] for u in urls) + f"?ca-file={cert}"
        async with from_addr(url) as client:
            digests = [await client.put(b"over TLS %d" % i) for i in range(4)]
            served[1].process.send_signal(signal.SIGKILL)
            with anyio.fail_after(20):
                await served[1].process.wait()
            for i, digest in enumerate(digests):
                assert await client.get(digest) == b"over TLS %d" % i


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("grpc+http://127.0.0.1:1,", "endpoint 2 of"),
        ("grpc+http://127.0.0.1:1,,127.0.0.1:2", "is empty"),
        ("grpc+http://127.0.0.1:1,127.0.0.1", "needs a host and a port"),
        ("grpc+http://127.0.0.1:1,:2", "needs a host and a port"),
        ("grpc+http://127.0.0.1:1,grpc+https://127.0.0.1:2", "only one scheme"),
        ("grpc+http://127.0.0.1:1,grpc+http://127.0.0.1:2", "scheme once"),
        ("grpc+http://127.0.0.1:1,localhost:2", "must be IP addresses"),
        ("grpc+http://127.0.0.1:1,[::1]:2", "mix IPv4 and IPv6"),
        ("grpc+http://127.0.0.1:1,127.0.0.1:x", "bad port"),
        ("grpc+http://127.0.0.1:1,127.0.0.1:2/path", "no path"),
    ],
)
def test_bad_lists_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(InvalidAddressError, match=says):
        from_addr(url)


def test_list_forms() -> None:
    client = from_addr("grpc+https://[::1]:1,[::1]:2?server-name=blobs")
    assert isinstance(client, GRPCBlobService)
    assert client.url == "grpc+https://[::1]:1,[::1]:2"
    assert len(client.endpoints) == 2
    one = from_addr("grpc+http://127.0.0.1:7")
    assert isinstance(one, GRPCBlobService)
    assert one.url == "grpc+http://127.0.0.1:7"
    # A unix socket path keeps its commas: it is one path.
    sock = from_addr("grpc+unix:///tmp/a,b.sock")
    assert isinstance(sock, GRPCBlobService)
    assert sock.url == "grpc+unix:///tmp/a,b.sock"
