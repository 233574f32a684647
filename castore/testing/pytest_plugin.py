"""pytest fixtures for applications that use castore (registered as a ``pytest11`` plugin)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from castore.memory import MemoryBlobService


@pytest.fixture
def castore_memory() -> Iterator[MemoryBlobService]:
    """A fresh, empty :class:`~castore.MemoryBlobService`."""
    yield MemoryBlobService()
