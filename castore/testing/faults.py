"""Fault injection for BlobServices: fail, delay, truncate or corrupt chosen calls.

:class:`FaultyBlobService` wraps any :class:`~castore.BlobService` and injects faults
by operation, either on the Nth call or at random with a seeded rate, so tests can prove
that the layers above never store a partial blob and never pass on wrong bytes::

    faulty = FaultyBlobService(inner, seed=1)
    faulty.plan("read", Fault.FLIP, nth=1)          # first reader returns a flipped byte
    faulty.plan("write", Fault.ERROR, rate=0.2)     # a fifth of writes fail

Operations: ``has``, ``open_read``, ``read`` (each ``BlobReader.read``), ``open_write``,
``write`` (each ``BlobWriter.write``), ``close``, ``chunks``.
"""

from __future__ import annotations

import enum
import io
import random
from dataclasses import dataclass

import anyio

from castore._digest import B3Digest, ChunkMeta
from castore.blobservice import BlobReader, BlobService, BlobWriter
from castore.errors import StoreTimeoutError, StoreUnavailableError

__all__ = ["Fault", "FaultyBlobService", "InjectedFault"]

OPS = ("has", "open_read", "read", "open_write", "write", "close", "chunks")


class InjectedFault(StoreUnavailableError):
    """The error a planned ``Fault.ERROR`` raises (a transient store error)."""


class Fault(enum.Enum):
    """What happens to a chosen call."""

    ERROR = "error"  #: raise InjectedFault
    TIMEOUT = "timeout"  #: raise StoreTimeoutError
    DELAY = "delay"  #: sleep ``delay`` seconds first, then proceed
    HANG = "hang"  #: never answer (until cancelled)
    TRUNCATE = "truncate"  #: reads only: return half the bytes asked for, then EOF
    FLIP = "flip"  #: reads only: flip one bit of the returned bytes


@dataclass
class _Plan:
    fault: Fault
    nth: int | None
    rate: float
    delay: float
    remaining: int | None


class FaultyBlobService(BlobService):
    """Wraps ``inner`` and injects the faults planned with :meth:`plan`."""

    def __init__(self, inner: BlobService, *, seed: int = 0) -> None:
        self.inner = inner
        self._rng = random.Random(seed)
        self._plans: dict[str, list[_Plan]] = {op: [] for op in OPS}
        self.calls: dict[str, int] = dict.fromkeys(OPS, 0)
        self.injected: dict[str, int] = dict.fromkeys(OPS, 0)

    def plan(
        self,
        op: str,
        fault: Fault,
        *,
        nth: int | None = None,
        rate: float = 0.0,
        delay: float = 0.05,
        times: int | None = None,
    ) -> None:
        """Inject ``fault`` into ``op``: on its ``nth`` call (1-based, counted from now
        on), or with probability ``rate`` per call, at most ``times`` times."""
        if op not in self._plans:
            raise ValueError(f"unknown operation {op!r}; one of {', '.join(OPS)}")
        if nth is None and rate <= 0:
            raise ValueError("give nth=… or a positive rate=…")
        target = None if nth is None else self.calls[op] + nth
        self._plans[op].append(_Plan(fault, target, rate, delay, times))

    def clear(self) -> None:
        """Remove every planned fault."""
        for plans in self._plans.values():
            plans.clear()

    async def _enter(self, op: str) -> Fault | None:
        self.calls[op] += 1
        n = self.calls[op]
        for p in self._plans[op]:
            if p.remaining == 0:
                continue
            hit = n == p.nth if p.nth is not None else self._rng.random() < p.rate
            if not hit:
                continue
            if p.remaining is not None:
                p.remaining -= 1
            self.injected[op] += 1
            if p.fault is Fault.ERROR:
                raise InjectedFault(f"injected fault in {op} (call {n})")
            if p.fault is Fault.TIMEOUT:
                raise StoreTimeoutError(f"injected timeout in {op} (call {n})")
            if p.fault is Fault.DELAY:
                await anyio.sleep(p.delay)
                return None
            if p.fault is Fault.HANG:
                await anyio.sleep_forever()
            return p.fault
        return None

    async def has(self, digest: B3Digest) -> bool:
        await self._enter("has")
        return await self.inner.has(digest)

    async def chunks(self, digest: B3Digest) -> list[ChunkMeta] | None:
        await self._enter("chunks")
        return await self.inner.chunks(digest)

    async def open_read(self, digest: B3Digest) -> BlobReader | None:
        await self._enter("open_read")
        reader = await self.inner.open_read(digest)
        return None if reader is None else _FaultyReader(self, reader)

    async def open_write(self) -> BlobWriter:
        await self._enter("open_write")
        return _FaultyWriter(self, await self.inner.open_write())

    async def aclose(self) -> None:
        await self.inner.aclose()


class _FaultyReader(BlobReader):
    def __init__(self, owner: FaultyBlobService, inner: BlobReader) -> None:
        self._owner = owner
        self._inner = inner
        self._eof = False

    async def read(self, n: int = -1) -> bytes:
        fault = await self._owner._enter("read")
        if self._eof:
            return b""
        data = await self._inner.read(n)
        if fault is Fault.TRUNCATE and data:
            self._eof = True
            return data[: len(data) // 2]
        if fault is Fault.FLIP and data:
            i = self._owner._rng.randrange(len(data))
            return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        return data

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._eof = False
        return await self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _FaultyWriter(BlobWriter):
    def __init__(self, owner: FaultyBlobService, inner: BlobWriter) -> None:
        self._owner = owner
        self._inner = inner

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        await self._owner._enter("write")
        await self._inner.write(data)

    async def _finish(self) -> B3Digest:
        await self._owner._enter("close")
        return await self._inner.close()

    async def _abort(self) -> None:
        await self._inner.abort()
