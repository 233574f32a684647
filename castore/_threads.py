"""Off-loop CPU work in one place: when work leaves the event loop, and on how many threads.

castore keeps CPU work (FastCDC, BLAKE3, zstd, joins, protobuf) off the event loop, but a
hop between the loop and a worker thread is not free: it costs 40-100 µs with the GIL
held. Work smaller than a hop's worth is cheaper done on the loop, larger work is cheaper
in a thread (BLAKE3, zstd and ``bytes.join`` release the GIL for large inputs, so the loop
goes on meanwhile). :data:`THRESHOLDS` is the one table of where that line lies for each
kind of work; :func:`run_sized` applies it. See ``docs/architecture.md`` for where
castore's threads are and why.

Pools: a service that needs threads of its own owns its pool (and shuts it down in its
``aclose``); :func:`cpu_pool` sizes it from the CPUs this process may run on, not from
the machine's count, so a container limited to two CPUs gets two workers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, Unpack

import anyio.to_thread
import blake3

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "THRESHOLDS",
    "BatchHasher",
    "Thresholds",
    "cpu_pool",
    "hash_update",
    "run_sized",
    "usable_cpus",
]

_R = TypeVar("_R")
_Ts = TypeVarTuple("_Ts")


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The sizes from which each kind of work runs in a worker thread, not on the loop."""

    #: Bytes of BLAKE3 input. BLAKE3 runs at about 5.5 GB/s a core: 256 KiB take 40 to
    #: 50 µs, about one hop's cost.
    hash: int = 256 << 10
    #: Bytes joined or copied into one buffer (``bytes.join`` releases the GIL for large
    #: inputs); below 1 MiB a copy costs less than the hop and the wakeup after it.
    join: int = 1 << 20
    #: Bytes of a blob index to decode (Python code, about 3 µs a chunk entry of 40
    #: bytes: 64 KiB, some 1,600 entries, take about 5 ms).
    decode_index: int = 64 << 10
    #: Chunk entries of a blob index to encode (about 1 µs each with castore's own
    #: encoder, several times that through the generated protobuf classes).
    encode_index: int = 1024


#: The one table of off-loop thresholds castore uses.
THRESHOLDS = Thresholds()


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux, or the call is refused
        return max(1, os.cpu_count() or 1)


def cpu_pool(name: str, *, per_cpu: int = 1) -> ThreadPoolExecutor:
    """A new pool of ``per_cpu`` threads for each usable CPU, named ``name-N``.

    The caller owns it and shuts it down. One thread a CPU suits CPU-bound jobs (more
    only contend for the GIL-free stretches); jobs that mostly wait for the file system
    take more (``per_cpu``).
    """
    return ThreadPoolExecutor(max_workers=usable_cpus() * per_cpu, thread_name_prefix=name)


async def run_sized(
    size: int,
    threshold: int,
    fn: Callable[[Unpack[_Ts]], _R],
    *args: *_Ts,
) -> _R:
    """``fn(*args)``: in a worker thread when ``size >= threshold``, else on the loop.

    ``size`` measures the work in the unit of ``threshold`` (a field of
    :data:`THRESHOLDS`). On the loop the call does not yield: callers that must be a
    checkpoint on every call add one.
    """
    if size >= threshold:
        return await anyio.to_thread.run_sync(fn, *args)
    return fn(*args)


async def hash_update(hasher: blake3.blake3, data: Buffer) -> None:
    """``hasher.update(data)``, in a worker thread for inputs of ``THRESHOLDS.hash`` or more."""
    await run_sized(len(memoryview(data)), THRESHOLDS.hash, hasher.update, data)


def _update_all(
    hasher: blake3.blake3, pieces: list[bytes | memoryview], own: bool
) -> list[bytes | memoryview]:
    """Hash ``pieces`` in order; with ``own``, views are copied into bytes of their own."""
    if not own:
        for piece in pieces:
            hasher.update(piece)
        return pieces
    out: list[bytes | memoryview] = []
    for piece in pieces:
        hasher.update(piece)
        out.append(piece if type(piece) is bytes else bytes(piece))
    return out


class BatchHasher:
    """The BLAKE3 of pieces added in order, hashed in a worker thread ``batch`` bytes a hop.

    For streams of many pieces (a gRPC stream's 256 KiB messages): a hop per piece costs
    as much as hashing it, so pieces are gathered and each full batch is handed to
    asyncio's default executor in one hop, to be hashed while the next batch gathers. At
    most one batch is hashed at a time, which keeps the order: :meth:`add` waits for the
    batch before when the next one is full. Pieces must not change once added (``bytes``,
    or read-only views of ``bytes``). A cancelled wait leaves the batch being hashed in
    place, so a later :meth:`add` or :meth:`digest` still waits for it.

    With ``own=True`` the worker also copies each view into ``bytes`` of its own (``bytes``
    are kept as they are), and :attr:`pieces` holds them in order once :meth:`digest`
    returned: a store that keeps what it receives then touches its fresh memory in the
    worker's CPU time, not the event-loop thread's (first touch costs about 0.6 ms of CPU
    per MiB on the project's VMs), and a received gRPC message's bytes are freed for reuse
    once copied. The copy holds the GIL (CPython copies into new ``bytes`` with it held),
    one piece at a time.
    """

    __slots__ = ("_batch", "_gathered", "_hasher", "_hashing", "_own", "_size", "pieces")

    def __init__(self, batch: int = 4 << 20, *, own: bool = False) -> None:
        self._hasher = blake3.blake3(max_threads=1)
        self._batch = batch
        self._own = own
        self._gathered: list[bytes | memoryview] = []
        self._size = 0
        self._hashing: asyncio.Future[list[bytes | memoryview]] | None = None
        #: With ``own``: the pieces hashed so far, as kept (all of them after :meth:`digest`).
        self.pieces: list[bytes | memoryview] = []

    async def add(self, piece: bytes | memoryview) -> None:
        """Add ``piece``; once a batch is full, wait for the previous batch (if it is
        still being hashed) and start hashing this one."""
        self._gathered.append(piece)
        self._size += len(piece)
        if self._size >= self._batch:
            await self._wait()
            batch, self._gathered, self._size = self._gathered, [], 0
            loop = asyncio.get_running_loop()
            self._hashing = loop.run_in_executor(None, _update_all, self._hasher, batch, self._own)

    async def _wait(self) -> None:
        if self._hashing is not None:
            done = await asyncio.shield(self._hashing)
            self._hashing = None
            if self._own:
                self.pieces += done

    async def digest(self) -> bytes:
        """The digest of everything added (hashing what is left, off the loop if large)."""
        await self._wait()
        rest, self._gathered = self._gathered, []
        size, self._size = self._size, 0
        done = await run_sized(size, THRESHOLDS.hash, _update_all, self._hasher, rest, self._own)
        if self._own:
            self.pieces += done
        return self._hasher.digest()
