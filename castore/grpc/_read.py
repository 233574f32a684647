"""Reading a blob over ``Read``: one call held open, and a reader that verifies the stream.

:class:`ReadCall` wraps one ``Read`` call: it starts the call and waits for its first
message (a missing blob ends the call with ``NOT_FOUND`` before any), then hands out
the messages' payloads, each wait bounded by an idle timeout. :class:`StreamReader` is a
:class:`~castore.BlobReader` over such calls that hashes every byte it receives and holds
back a stream's last bytes until the stream's end has arrived and the BLAKE3 digest
matched, so that wrong data raises instead of completing silently.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import cast

import blake3
import grpc
import grpc.aio

from castore._digest import B3Digest
from castore._proto.tvix.castore.v1 import BlobChunk, ReadBlobRequest
from castore.blobservice import BlobReader, seek_target
from castore.errors import BlobNotFoundError, DigestMismatchError, MalformedMessageError
from castore.grpc._channel import Calls
from castore.grpc._errors import call_status, from_grpc_error
from castore.grpc._pieces import Pieces
from castore.grpc._wire import checked

__all__ = ["ReadCall", "StreamReader"]

_Call = grpc.aio.UnaryStreamCall[ReadBlobRequest, BlobChunk | MalformedMessageError]


class ReadCall:
    """One ``Read`` call, held open across the reader's calls.

    ``deadline`` bounds the whole call (a chunk fetch); ``idle`` bounds each wait for the
    next message (a blob streamed whole, which may take long but must keep moving).
    """

    def __init__(self, call: _Call, idle: float | None) -> None:
        self._call = call
        self._idle = idle
        self._first: bytes | None = None
        self._ended = False
        # The idle watchdog: one timer per call, not a cancel scope per message (which
        # cost 9-28 µs a message, 0.04-0.1 ms of CPU a MiB). Each wait moves _due; the
        # timer, when it fires, re-arms itself for _due if messages came meanwhile, and
        # cancels the call if the current wait has passed it.
        self._due = 0.0
        self._waiting = False
        self._timer: asyncio.TimerHandle | None = None
        self._idled = False

    @classmethod
    async def start(
        cls, calls: Calls, digest: B3Digest, *, deadline: float | None, idle: float | None
    ) -> ReadCall | None:
        """Send the request and wait for the first message; ``None`` on ``NOT_FOUND``.

        Raises what the call raised (:func:`castore.grpc._errors.from_grpc_error` turns
        it into castore's tree).
        """
        self = cls(calls.read(ReadBlobRequest(digest=digest.digest), timeout=deadline), idle)
        try:
            self._first = await self._receive()
        except grpc.aio.AioRpcError as e:
            if call_status(e) is grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return self

    async def _receive(self) -> bytes | None:
        if self._ended:
            return None
        try:
            if self._idle is None:
                message = await self._call.read()
            else:
                message = await self._watched_read(self._idle)
            if message is grpc.aio.EOF:
                self._ended = True  # a clean end: an error status would have raised
                return None
            received = cast("BlobChunk | MalformedMessageError", message)
            return checked(received).data
        except BaseException:
            self.cancel()
            raise

    async def _watched_read(self, idle: float) -> object:
        """The call's next message, or :class:`TimeoutError` after ``idle`` seconds."""
        loop = asyncio.get_running_loop()
        self._due = loop.time() + idle
        if self._timer is None:
            self._timer = loop.call_at(self._due, self._watch)
        self._waiting = True
        try:
            return await self._call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._idled and (task is None or not task.cancelling()):
                # The watchdog cancelled the call, not someone this task: a timeout.
                raise TimeoutError(f"no message for {idle} s") from None
            raise
        finally:
            self._waiting = False

    def _watch(self) -> None:
        self._timer = None
        if not self._waiting or self._ended:
            return  # the next wait arms a new timer
        loop = asyncio.get_running_loop()
        if loop.time() < self._due:
            self._timer = loop.call_at(self._due, self._watch)
            return
        self._idled = True
        self._call.cancel()

    async def next(self) -> bytes | None:
        """The next message's payload; ``None`` at a clean end."""
        first, self._first = self._first, None
        if first is not None:
            return first
        return await self._receive()

    def cancel(self) -> None:
        """Abandon the call (the server sees a reset stream). Never raises."""
        self._ended = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._call.cancel()


#: Starts a fresh ``Read`` of the blob: the call, or ``None`` when the blob is absent.
StartRead = Callable[[], Awaitable[ReadCall | None]]


class StreamReader(BlobReader):
    """A blob read from ``Read`` streams, BLAKE3-verified over each whole stream.

    Forward seeks skip through the stream (the skipped bytes are still hashed); a seek
    backwards, or a read after an error, starts a new stream. The last bytes of a stream
    are not returned until its end has been seen and the digest checked. ``size`` is the
    blob's length when known (a single listed chunk), else it is learnt at the end.
    """

    def __init__(self, start: StartRead, digest: B3Digest, size: int | None, what: str) -> None:
        self._start = start
        self._digest = digest
        self._expected = size
        self._length = size
        self._pos = 0
        self._call: ReadCall | None = None
        self._buf = Pieces()  # received, not yet returned; starts at stream offset _buf_start
        self._buf_start = 0
        self._received = 0
        self._hasher = blake3.blake3(max_threads=1)
        self._eof = False  # the current stream ended and verified
        self._closed = False
        self._what = what

    @property
    def complete(self) -> bool:
        """The whole blob is buffered and verified."""
        return self._eof and self._buf_start == 0

    def take_all(self) -> bytes:
        return self._buf.take(len(self._buf))

    async def prime(self, limit: int) -> bool:
        """Start the stream and buffer up to ``limit`` bytes; False if the blob is absent."""
        if not await self._restart():
            return False
        while not self._eof and len(self._buf) < limit:
            await self._fill()
        return True

    async def _restart(self) -> bool:
        self._drop_call()
        self._buf.clear()
        self._buf_start = 0
        self._received = 0
        self._hasher = blake3.blake3(max_threads=1)
        self._eof = False
        try:
            call = await self._start()
        except Exception as e:
            raise from_grpc_error(e, self._what) from e
        if call is None:
            return False
        self._call = call
        return True

    def _drop_call(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def _fill(self) -> None:
        """Receive one message into the buffer, or reach and verify the end."""
        call = self._call
        assert call is not None
        try:
            data = await call.next()
            if data is None:
                self._call = None
                self._check_end()
                self._eof = True
                self._length = self._received
                return
            self._received += len(data)
            if self._expected is not None and self._received > self._expected:
                raise DigestMismatchError(
                    f"{self._what}: the server sent more than the blob's {self._expected} bytes"
                )
            # One message is at most a few hundred KiB: hashed on the loop in tens of
            # microseconds, less than a hop to a worker thread would cost.
            self._hasher.update(data)
            self._buf.append(data)
        except BaseException as e:
            # Forget this pass: nothing unverified stays buffered, the next read restarts.
            self._drop_call()
            self._buf.clear()
            self._buf_start = 0
            self._eof = False
            if isinstance(e, Exception):
                raise from_grpc_error(e, self._what) from e
            raise

    def _check_end(self) -> None:
        if self._expected is not None and self._received != self._expected:
            raise DigestMismatchError(
                f"{self._what}: got {self._received} bytes, expected {self._expected}"
            )
        actual = self._hasher.digest()
        if actual != self._digest.digest:
            raise DigestMismatchError(f"{self._what}: the bytes received hash to {actual.hex()}")

    async def _ensure_call(self) -> None:
        if self._call is None and not self._eof and not await self._restart():
            raise BlobNotFoundError(f"{self._what}: the blob disappeared")

    async def read(self, n: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read() on a closed reader")
        target = self._pos
        if n == 0 or (self._length is not None and target >= self._length):
            return b""
        if target < self._buf_start:
            self._eof = False
            self._drop_call()
        await self._ensure_call()
        # Skip forward to the target.
        while target - self._buf_start > len(self._buf):
            self._buf_start += len(self._buf)
            self._buf.clear()
            if self._eof:
                return b""  # past the end
            await self._fill()
        self._buf.skip(target - self._buf_start)
        self._buf_start = target
        # Gather n bytes and one more (or the end), so the blob's last bytes go out only
        # once the stream's digest has been checked.
        while not self._eof and (n < 0 or len(self._buf) <= n):
            await self._fill()
        take = len(self._buf) if n < 0 else min(n, len(self._buf))
        out = self._buf.take(take)
        self._buf_start += take
        self._pos += take
        return out

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END and self._length is None:
            await self._drain()
        target = seek_target(offset, whence, self._pos, self._length or 0)
        self._pos = target  # past the end is allowed and reads b""
        return target

    async def _drain(self) -> None:
        """Read to the end of the stream, to learn the blob's length."""
        await self._ensure_call()
        while not self._eof:
            self._buf_start += len(self._buf)
            self._buf.clear()
            await self._fill()

    def tell(self) -> int:
        return self._pos

    async def aclose(self) -> None:
        self._closed = True
        self._buf.clear()
        self._drop_call()
