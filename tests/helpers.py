"""Helpers that several test modules share, written once.

Fixtures built on them (``short_tmp``) live in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import obstore
import obstore.exceptions

import castore
from castore import B3Digest, BlobService

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = [
    "get_after_restart",
    "index_keys",
    "is_late_grpc_completion",
    "memory_objectstore",
    "short_dir",
    "write_in_pieces",
]


@contextlib.contextmanager
def short_dir(prefix: str = "castore-") -> Iterator[str]:
    """A new folder with a short path, removed afterwards: unix socket paths are limited
    to about 108 bytes, and pytest's ``tmp_path`` can be longer."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def index_keys(store: ObjectStore) -> list[str]:
    """The keys of every blob index in ``store`` (the ``blobs/`` prefix)."""
    return [m["path"] for page in obstore.list(store, prefix="blobs/") for m in page]


async def write_in_pieces(svc: BlobService, data: bytes, piece: int) -> B3Digest:
    """Write ``data`` to a new writer of ``svc`` in writes of ``piece`` bytes; the digest."""
    async with await svc.open_write() as writer:
        for i in range(0, len(data), piece):
            await writer.write(data[i : i + piece])
        return await writer.close()


def memory_objectstore() -> BlobService:
    """An object-store service over an in-memory store."""
    return castore.from_addr("objectstore+memory:///")


def get_after_restart(store: ObjectStore, key: str) -> bytes | None:
    """GET ``key`` (blocking); ``None`` if absent.

    Right after a restart (a SIGKILL above all) SeaweedFS answers 500 for existing
    objects until its volumes have loaded, for several seconds on a loaded machine; the
    data is not lost. Those answers are retried for up to 30 s. From async code, call it
    in a worker thread.
    """
    deadline = time.monotonic() + 30
    while True:
        try:
            return bytes(obstore.get(store, key).bytes())
        except FileNotFoundError:
            return None
        except obstore.exceptions.GenericError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def is_late_grpc_completion(context: dict[str, Any]) -> bool:
    """grpc.aio's poller thread hands each completion to the event loop of the object it
    belongs to; one that arrives after that loop closed (a channel of an earlier test's
    loop, released when it was collected) raises 'Event loop is closed' in whatever loop
    runs now. It concerns no object of the running test."""
    exc = context.get("exception")
    return (
        isinstance(exc, RuntimeError)
        and str(exc) == "Event loop is closed"
        and "PollerCompletionQueue" in repr(context.get("handle"))
    )
