"""Helpers that several test modules share, written once.

Fixtures built on them (``short_tmp``) live in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import tempfile
import threading
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
    "StallWatcher",
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


class StallWatcher(logging.Handler):
    """Collects the loop steps that ran longer than ``limit`` seconds because they kept
    the CPU, not because the machine was busy.

    asyncio's debug mode reports every step that took ``limit`` seconds of wall-clock
    time. On a loaded machine a short step can take that long while other processes
    hold the cores. So each watched loop also runs a heartbeat that notes its thread's
    CPU clock every ``beat`` seconds: when a slow step is reported, the CPU time the
    loop's thread used since the last heartbeat bounds what the step used. A step is a
    stall when that is at least half the limit, or when its wall-clock time is
    ``wall_factor`` times the limit whatever the CPU did (a step that waits in a
    blocking call uses no CPU either).
    """

    _TOOK = re.compile(r" took (\d+(?:\.\d+)?) seconds")

    def __init__(self, limit: float, *, wall_factor: float = 5.0, beat: float = 0.05) -> None:
        super().__init__(logging.WARNING)
        self.limit = limit
        self.wall_factor = wall_factor
        self.beat = beat
        self.stalls: list[str] = []
        self._marks: dict[int, float] = {}

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make ``loop`` report its slow steps here (debug mode) and start its heartbeat."""
        loop.slow_callback_duration = self.limit
        loop.set_debug(True)

        def heartbeat() -> None:
            self._marks[threading.get_ident()] = time.thread_time()
            loop.call_later(self.beat, heartbeat)

        loop.call_soon(heartbeat)

    def is_stall(self, wall: float, cpu: float | None) -> bool:
        if wall >= self.limit * self.wall_factor:
            return True
        return wall >= self.limit and (cpu is None or cpu >= self.limit / 2)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        took = self._TOOK.search(msg)
        if not msg.startswith("Executing") or took is None:
            return
        # asyncio logs this from the loop's own thread, right after the step.
        mark = self._marks.get(threading.get_ident())
        cpu = None if mark is None else time.thread_time() - mark
        if self.is_stall(float(took.group(1)), cpu):
            used = "unknown" if cpu is None else f"{cpu:.3f} s"
            self.stalls.append(f"{msg} (CPU of the loop's thread: {used})")
