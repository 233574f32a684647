"""``RetryBlobService``: retry transient store failures with capped, jittered backoff.

What is retried: ``has``, ``chunks``, ``open_read``, ``delete``, and the reads and seeks of
the readers it returns. A retried ``delete`` whose earlier attempt deleted the blob before
failing answers ``False``: the blob is gone either way. A reader that fails mid-read with a
transient error is closed, re-opened at the same position (``open_read`` then ``seek``) and
the read is repeated, so the caller sees the same bytes it would have seen without the
failure. The re-opened reader still verifies every chunk; only a single-chunk blob's
whole-blob check is lost when the re-open lands mid-blob, because hashing starts over at
offset 0.

What is not: a :class:`~castore.BlobWriter`'s ``write`` and ``close``. Once bytes went to
a writer, a failure poisons it (see :class:`~castore.BlobWriter`) and only the caller
still has the data to send again. :meth:`RetryBlobService.put` is the exception: it holds
the whole blob, so it retries the entire write with a fresh writer (content addressing
makes a repeated write harmless).

Transient means :class:`~castore.errors.StoreError` and its subclasses
:class:`~castore.errors.StoreUnavailableError` and
:class:`~castore.errors.StoreTimeoutError`. Never retried: absence and not-found
(:class:`~castore.errors.BlobNotFoundError`), corruption
(:class:`~castore.errors.DataCorruptionError`: retrying would mask it), invalid input
(:class:`~castore.errors.InvalidDigestError` and other ``ValueError``), refused
credentials (:class:`~castore.errors.StorePermissionError`) and cancellation.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from castore._digest import B3Digest, ChunkMeta, DigestLike
from castore.blobservice import BlobReader, BlobService
from castore.errors import BlobNotFoundError, StoreError, StorePermissionError, StoreTimeoutError
from castore.registry import integer, register_type, seconds
from castore.wrappers.base import WrapperBlobReader, WrapperBlobService

__all__ = ["RetryBlobService", "is_transient"]

T = TypeVar("T")

logger = logging.getLogger("castore.retry")


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: castore's ``StoreError`` family, except refusals."""
    return (
        isinstance(exc, StoreError)
        and not isinstance(exc, StorePermissionError)
        and not isinstance(exc, FileNotFoundError)
    )


class RetryBlobService(WrapperBlobService):
    """Retries transient failures of ``inner`` (see the module doc for what and why).

    Attempt ``k`` (from 1) that fails waits a random time in ``[0, min(max_delay,
    base_delay * 2**(k-1))]`` ("full jitter", which spreads the retries of many clients)
    before attempt ``k+1``. It gives up, re-raising the last error with a note, after
    ``max_attempts`` attempts or when the next wait would end more than ``deadline``
    seconds after the first attempt began. ``attempt_timeout``, when set, bounds each
    attempt; one that runs over counts as a :class:`~castore.errors.StoreTimeoutError`.
    ``retry_on`` decides what is transient (default :func:`is_transient`).
    """

    def __init__(
        self,
        inner: BlobService,
        *,
        max_attempts: int = 5,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        deadline: float | None = 30.0,
        attempt_timeout: float | None = None,
        retry_on: Callable[[BaseException], bool] = is_transient,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(inner)
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        for label, value in (
            ("base_delay", base_delay),
            ("max_delay", max_delay),
            ("deadline", deadline),
            ("attempt_timeout", attempt_timeout),
        ):
            if value is not None and value < 0:
                raise ValueError(f"{label} must not be negative, got {value}")
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self._retry_on = retry_on
        self._rng = rng or random.Random()
        #: Retries made so far (attempts beyond the first), for tests and operators.
        self.retries = 0

    async def call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` under this service's retry policy; ``op`` names it in logs."""
        started = time.monotonic()
        attempt = 1
        while True:
            try:
                if self.attempt_timeout is None:
                    return await fn()
                try:
                    with anyio.fail_after(self.attempt_timeout):
                        return await fn()
                except TimeoutError as e:
                    if isinstance(e, StoreTimeoutError):
                        raise
                    raise StoreTimeoutError(
                        f"{op}: no answer within {self.attempt_timeout} s"
                    ) from e
            except Exception as e:
                if not self._retry_on(e):
                    raise
                delay = self._rng.uniform(
                    0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                )
                elapsed = time.monotonic() - started
                if attempt >= self.max_attempts:
                    e.add_note(f"castore: gave up on {op} after {attempt} attempts")
                    raise
                if self.deadline is not None and elapsed + delay > self.deadline:
                    e.add_note(
                        f"castore: gave up on {op} after {attempt} attempts "
                        f"({elapsed:.2f} s; the deadline is {self.deadline} s)"
                    )
                    raise
                logger.info(
                    "retrying %s in %.3f s after attempt %d failed: %s: %s",
                    op,
                    delay,
                    attempt,
                    type(e).__name__,
                    e,
                    extra={"op": op, "attempt": attempt, "delay": delay, "error": repr(e)},
                )
            self.retries += 1
            attempt += 1
            await anyio.sleep(delay)

    async def has(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        return await self.call("has", lambda: self._inner.has(digest))

    async def chunks(self, digest: DigestLike) -> list[ChunkMeta] | None:
        digest = B3Digest.coerce(digest)
        return await self.call("chunks", lambda: self._inner.chunks(digest))

    async def delete(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        return await self.call("delete", lambda: self._inner.delete(digest))

    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        digest = B3Digest.coerce(digest)
        reader = await self.call("open_read", lambda: self._inner.open_read(digest))
        return None if reader is None else _RetryingReader(self, digest, reader)

    async def put(self, data: bytes | bytearray | memoryview) -> B3Digest:
        """Write ``data`` as one blob, retrying the whole write on a transient failure."""
        return await self.call("put", lambda: self._inner.put(data))


class _RetryingReader(WrapperBlobReader):
    """Repeats a failed read or seek on a fresh reader opened at the same position."""

    def __init__(self, owner: RetryBlobService, digest: B3Digest, inner: BlobReader) -> None:
        super().__init__(inner)
        self._owner = owner
        self._digest = digest
        self._pos = inner.tell()
        # Set when the inner reader failed: its position and state are unknown.
        self._broken = False

    def tell(self) -> int:
        return self._pos

    async def _reopen(self) -> None:
        old, self._broken = self._inner, True
        try:
            await old.aclose()
        except Exception as e:
            logger.debug("closing a failed reader raised %r; ignored", e)
        reader = await self._owner.inner.open_read(self._digest)
        if reader is None:
            raise BlobNotFoundError(f"blob {self._digest.hex()} vanished during a retried read")
        try:
            await reader.seek(self._pos)
        except BaseException:
            await reader.aclose()
            raise
        self._inner = reader
        self._broken = False

    async def _attempt(self, fn: Callable[[BlobReader], Awaitable[T]]) -> T:
        if self._broken:
            await self._reopen()
        try:
            return await fn(self._inner)
        except Exception as e:
            if self._owner._retry_on(e):
                self._broken = True
            raise

    async def read(self, n: int = -1) -> bytes:
        async def once(r: BlobReader) -> bytes:
            return await r.read(n)

        data = await self._owner.call("read", lambda: self._attempt(once))
        self._pos += len(data)
        return data

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        async def once(r: BlobReader) -> int:
            return await r.seek(offset, whence)

        self._pos = await self._owner.call("seek", lambda: self._attempt(once))
        return self._pos

    async def aclose(self) -> None:
        await self._inner.aclose()


register_type(
    "retry",
    RetryBlobService,
    references=("inner",),
    options={
        "max_attempts": integer(minimum=1),
        "base_delay": seconds(false=0.0),
        "max_delay": seconds(false=0.0),
        "deadline": seconds(),
        "attempt_timeout": seconds(),
    },
)
