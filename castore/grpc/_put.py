"""Writing a blob over ``Put``: a :class:`~castore.BlobWriter` that streams as it is written.

Writes are hashed as they come and sent in messages of ``message_size`` bytes (small
writes are gathered); each send waits on HTTP/2 flow control, so a slow server slows the
writer instead of filling memory. ``close`` ends the stream and checks the digest the
server answers against the one computed here. Aborting cancels the call: the server sees
a reset stream and stores nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio.lowlevel
import blake3
import grpc
import grpc.aio

from castore._digest import B3Digest
from castore._proto.tvix.castore.v1 import PutBlobResponse
from castore.blobservice import BlobWriter
from castore.errors import (
    DigestMismatchError,
    InvalidDigestError,
    MalformedMessageError,
    StoreError,
    StoreUnavailableError,
)
from castore.grpc._channel import Calls, Payload
from castore.grpc._errors import GRPCStatusError, call_status, from_grpc_error
from castore.grpc._wire import checked

__all__ = ["PutWriter"]

_Call = grpc.aio.StreamUnaryCall[Payload, PutBlobResponse | MalformedMessageError]

# Let the event loop run after this many writes in a row that only gathered bytes.
_QUIET_WRITES = 64
# Writes from this size on are hashed in a worker thread; smaller ones on the loop,
# where hashing a message's worth (tens of microseconds) costs less than the hop.
_THREAD_HASH_MIN = 4 << 20


class PutWriter(BlobWriter):
    """Streams ``Put`` as it is written; gathers small writes into larger messages."""

    def __init__(self, calls: Callable[[], Awaitable[Calls]], message_size: int, what: str) -> None:
        self._calls = calls
        self._call: _Call | None = None
        self._pending = bytearray()
        self._hasher = blake3.blake3(max_threads=1)
        self._size = message_size
        self._what = what
        self._quiet = 0

    async def _open(self) -> _Call:
        if self._call is None:
            calls = await self._calls()
            self._call = calls.put()
        return self._call

    async def _fail(self, exc: Exception) -> BaseException:
        """Cancel the call; the error to raise in castore's tree (the server's status when
        the call has ended with one: a send after the end fails without saying it).

        A call whose send broke in gRPC core ends as ``INTERNAL`` on this side, whatever
        ended it: that says no more than the broken send already did, so it does not
        replace the error."""
        call, self._call = self._call, None
        if call is not None:
            if call.done() and call_status(exc) is None:
                code = await call.code()
                ignored = (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL)
                if code not in ignored:
                    exc = GRPCStatusError(code, await call.details())
            call.cancel()
        return from_grpc_error(exc, self._what)

    async def _send(self, call: _Call, data: Payload) -> None:
        """Send one message. grpc.aio reports a send that fails in gRPC core (the stream or
        the connection broke under it) as ``INTERNAL`` and drops the call's real status:
        for castore that is a connection lost, :class:`~castore.errors.StoreUnavailableError`.
        """
        ended = call.done()  # then grpc.aio raises the status the call ended with
        try:
            await call.write(data)
        except grpc.aio.AioRpcError as e:
            if ended or e.code() is not grpc.StatusCode.INTERNAL:
                raise
            raise StoreUnavailableError(
                f"{self._what}: the stream broke while sending: {e.details()}"
            ) from e

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if len(view) >= _THREAD_HASH_MIN:
            await anyio.to_thread.run_sync(self._hasher.update, view)
        else:
            self._hasher.update(view)
        try:
            call = await self._open()
            size = self._size
            start = 0
            if self._pending:
                start = min(len(view), size - len(self._pending))
                self._pending += view[:start]
                if len(self._pending) < size:
                    await self._gathered()
                    return
                await self._send(call, self._pending)  # encoded (copied) before the await
                self._pending.clear()
            while len(view) - start >= size:
                await self._send(call, view[start : start + size])
                start += size
            self._pending += view[start:]
        except Exception as e:
            raise await self._fail(e) from e
        self._quiet = 0

    async def _gathered(self) -> None:
        # Many small writes only gather bytes and never wait on the network; let the event
        # loop run now and then so that a loop of tiny writes does not stall it.
        self._quiet += 1
        if self._quiet >= _QUIET_WRITES:
            self._quiet = 0
            await anyio.lowlevel.checkpoint()

    async def _finish(self) -> B3Digest:
        try:
            call = await self._open()
            if self._pending:
                await self._send(call, self._pending)
                self._pending.clear()
            await call.done_writing()
            response = checked(await call)
            self._call = None
        except Exception as e:
            raise await self._fail(e) from e
        try:
            digest = B3Digest(response.digest)
        except InvalidDigestError as e:
            raise StoreError(f"{self._what}: the server answered a bad digest: {e}") from e
        ours = self._hasher.digest()
        if digest.digest != ours:
            raise DigestMismatchError(
                f"{self._what}: the server stored {digest.hex()}, the bytes sent hash to "
                f"{ours.hex()}"
            )
        return digest

    async def _abort(self) -> None:
        self._pending = bytearray()
        call, self._call = self._call, None
        if call is not None:
            # Cancelling resets the HTTP/2 stream: the server sees a broken upload and
            # stores nothing.
            call.cancel()
