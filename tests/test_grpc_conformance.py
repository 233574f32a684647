"""The gRPC client against the conformance suite, through castore's own server.

Each service is a :class:`~castore.GRPCBlobService` built by ``from_addr`` and talking
over a real socket (TCP on 127.0.0.1, or a unix socket) to :func:`castore.grpc.serve`,
which runs in the same event loop in front of a memory or an object-store backend. The
``OnUvloop`` classes run the same tests on uvloop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from castore import BlobService, MemoryBlobService, from_addr
from castore.grpc import GRPCBlobService, serve
from castore.testing.conformance import BlobServiceConformance


class TestGRPCOverTCP(BlobServiceConformance):
    can_delete = can_list = False  # the tvix gRPC protocol has neither

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with (
            MemoryBlobService() as backend,
            serve(backend, "grpc+http://127.0.0.1:0") as running,
            from_addr(running.url) as client,
        ):
            assert isinstance(client, GRPCBlobService)
            yield client


class TestGRPCOverUnixSocket(BlobServiceConformance):
    can_delete = can_list = False  # the tvix gRPC protocol has neither

    @pytest.fixture
    async def service(self, short_tmp: str) -> AsyncIterator[BlobService]:
        async with (
            MemoryBlobService() as backend,
            serve(backend, f"grpc+unix://{short_tmp}/castore.sock") as running,
            from_addr(running.url) as client,
        ):
            assert running.url == f"grpc+unix://{short_tmp}/castore.sock"
            yield client


class TestGRPCOverTCPToObjectStore(BlobServiceConformance):
    """The chunked path: Stat lists chunks, the client reads them one Read each."""

    can_delete = can_list = False  # the tvix gRPC protocol has neither

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        async with (
            from_addr("objectstore+memory:///") as backend,
            serve(backend, "grpc+http://127.0.0.1:0") as running,
            from_addr(running.url) as client,
        ):
            yield client


class _OnUvloop:
    """Runs a class's tests on uvloop's event loop, client and server alike."""

    @pytest.fixture
    def anyio_backend(self) -> tuple[str, dict[str, bool]]:
        return ("asyncio", {"use_uvloop": True})


class TestGRPCOverTCPOnUvloop(_OnUvloop, TestGRPCOverTCP):
    pass


class TestGRPCOverUnixSocketOnUvloop(_OnUvloop, TestGRPCOverUnixSocket):
    pass


class TestGRPCOverTCPToObjectStoreOnUvloop(_OnUvloop, TestGRPCOverTCPToObjectStore):
    pass
