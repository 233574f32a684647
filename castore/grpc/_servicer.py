"""``BlobServiceServicer``: the handlers of ``Stat``, ``Read`` and ``Put`` for grpc.aio.

Its :attr:`~BlobServiceServicer.generic_handler` answers on the method paths of every
package it is given (``tvix.castore.v1`` and ``snix.castore.v1`` unless told otherwise), so
it mounts in any grpc.aio server beside other services::

    server.add_generic_rpc_handlers([BlobServiceServicer(service).generic_handler])

What it promises, beyond the Rust server:

- ``Stat`` lists the chunks when ``send_chunks`` is set (Rust ignores it).
- ``Read`` streams in messages of ``read_message_size`` bytes (256 KiB; Rust sends 4 KiB),
  each sent once HTTP/2 flow control lets it go, so a slow client holds at most a window's
  worth of a blob in the server's memory; a missing blob is ``NOT_FOUND`` before any
  message. A client that goes away ends the call quietly.
- ``Put`` feeds each message to ``open_write`` as it arrives: the client's framing does
  not matter. A client stream that breaks (reset, cancelled, connection lost) aborts the
  writer, so nothing is stored.
- Every request is decoded strictly (:mod:`castore.grpc._wire`): one that does not decode
  is ``INVALID_ARGUMENT``, and a ``Put`` that carried one stores nothing.
- It counts the calls in flight, and once :meth:`BlobServiceServicer.drain` began it turns
  new calls away with ``UNAVAILABLE``.
- Given a :class:`~castore.observe.RequestObserver`, it reports every call to it and
  sends the call's id back as trailing metadata ``x-request-id`` (see
  :mod:`castore.observe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import anyio
import grpc
import grpc.aio

from castore._digest import B3Digest
from castore._proto.tvix.castore.v1 import (
    BlobChunk,
    PutBlobResponse,
    ReadBlobRequest,
    StatBlobRequest,
    StatBlobResponse,
    StatBlobResponseChunkMeta,
)
from castore._threads import THRESHOLDS, run_sized
from castore.blobservice import BlobService, WriteStats
from castore.errors import InvalidDigestError, MalformedMessageError
from castore.grpc._errors import GRPCStatusError, to_grpc_error
from castore.grpc._wire import blob_chunk_payload, deserializer, encode, encode_blob_chunk
from castore.observe import REQUEST_ID_HEADER, Request, RequestObserver, request_id

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_READ_MESSAGE_SIZE",
    "PACKAGES",
    "BlobServiceServicer",
]

#: The largest message the server accepts (gRPC's usual default, and tonic's).
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: The size of the ``BlobChunk`` messages ``Read`` sends.
DEFAULT_READ_MESSAGE_SIZE = 256 * 1024
#: Protobuf packages whose method paths the server answers on.
PACKAGES = ("tvix.castore.v1", "snix.castore.v1")

log = logging.getLogger("castore.grpc")

_M = TypeVar("_M")
_Context = grpc.aio.ServicerContext[Any, Any]

# A call's outcome (castore.observe.OUTCOMES) by the status it ended with, when no store
# failure lies behind it; any other status is an ``error``.
_OUTCOMES = {
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid",
    grpc.StatusCode.OUT_OF_RANGE: "invalid",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "invalid",
    grpc.StatusCode.CANCELLED: "cancelled",
}


def _digest(raw: bytes, call: str) -> B3Digest:
    try:
        return B3Digest(raw)
    except InvalidDigestError as e:
        raise GRPCStatusError(grpc.StatusCode.INVALID_ARGUMENT, f"{call}: {e}") from None


def _request(received: _M | MalformedMessageError) -> _M:
    """The decoded request, or ``INVALID_ARGUMENT`` for one that does not decode."""
    if isinstance(received, MalformedMessageError):
        raise GRPCStatusError(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable message: {received}")
    return received


class _GenericHandler(grpc.GenericRpcHandler):
    """Method handlers by path, as grpc looks them up."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self._handlers = handlers

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._handlers.get(handler_call_details.method)


class BlobServiceServicer:
    """Serves ``service`` as ``tvix.castore.v1.BlobService`` (and the snix paths).

    ``max_message_size`` is the limit :func:`castore.grpc.serve` sets on every received
    message (a server of your own sets its own, with the
    ``grpc.max_receive_message_length`` option); ``read_message_size`` is the payload of
    each ``BlobChunk`` that ``Read`` sends; ``packages`` lists the protobuf packages whose
    method paths are answered; ``observer`` is told about every call
    (:mod:`castore.observe`).
    """

    def __init__(
        self,
        service: BlobService,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        read_message_size: int = DEFAULT_READ_MESSAGE_SIZE,
        packages: Sequence[str] = PACKAGES,
        observer: RequestObserver | None = None,
    ) -> None:
        if read_message_size < 1:
            raise ValueError(f"read_message_size must be positive, got {read_message_size}")
        if max_message_size < 64:
            raise ValueError(f"max_message_size is too small: {max_message_size}")
        self.service = service
        self.max_message_size = max_message_size
        self.read_message_size = read_message_size
        self.packages = tuple(packages)
        self.observer = observer
        self._inflight = 0
        self._handlers: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._draining = False
        self._gave_up = False
        #: The ``grpc.GenericRpcHandler`` to add to a grpc.aio server.
        self.generic_handler: grpc.GenericRpcHandler = _GenericHandler(self._method_handlers())

    # The three calls, on decoded messages.

    async def stat(self, message: StatBlobRequest) -> StatBlobResponse:
        """Whether the blob exists (``NOT_FOUND`` if not), with its chunks if asked."""
        digest = _digest(message.digest, "Stat")
        what = f"Stat {digest}"
        try:
            if not message.send_chunks:
                if not await self.service.has(digest):
                    raise GRPCStatusError(grpc.StatusCode.NOT_FOUND, f"{what}: blob not found")
                return StatBlobResponse()
            chunks = await self.service.chunks(digest)
        except Exception as e:
            raise to_grpc_error(e, what) from e
        if chunks is None:
            raise GRPCStatusError(grpc.StatusCode.NOT_FOUND, f"{what}: blob not found")

        def build() -> StatBlobResponse:
            return StatBlobResponse(
                chunks=[
                    StatBlobResponseChunkMeta(digest=c.digest.digest, size=c.size) for c in chunks
                ]
            )

        return await run_sized(len(chunks), THRESHOLDS.encode_index, build)

    async def read(self, message: ReadBlobRequest) -> AsyncGenerator[bytes, None]:
        """The blob's bytes in ``read_message_size`` pieces; ``NOT_FOUND`` before any."""
        digest = _digest(message.digest, "Read")
        what = f"Read {digest}"
        try:
            reader = await self.service.open_read(digest)
        except Exception as e:
            raise to_grpc_error(e, what) from e
        if reader is None:
            raise GRPCStatusError(grpc.StatusCode.NOT_FOUND, f"{what}: blob not found")
        async with reader:
            while True:
                try:
                    data = await reader.read(self.read_message_size)
                except Exception as e:
                    raise to_grpc_error(e, what) from e
                if not data:
                    return
                yield data

    async def put(self, messages: AsyncIterator[BlobChunk]) -> PutBlobResponse:
        """Store the streamed bytes; anything but a clean end of stream stores nothing."""

        async def payloads() -> AsyncIterator[bytes]:
            async for message in messages:
                yield message.data

        digest, _ = await self._store(payloads())
        return PutBlobResponse(digest=digest.digest)

    async def _store(
        self, payloads: AsyncIterator[bytes | memoryview]
    ) -> tuple[B3Digest, WriteStats | None]:
        """:meth:`put` on the messages' payloads, with what the writer says it stored.
        Each payload goes to the writer as it came: on the wire, a view of the received
        message (no copy of its own)."""
        writer = await self.service.open_write()
        try:
            async for payload in payloads:
                if payload:
                    await writer.write(payload)
            digest = await writer.close()
        except BaseException as e:
            # A reset or vanished client cancels this task; an error surfaces here too.
            # Either way the writer must not store the partial blob.
            await writer.abort()
            if isinstance(e, Exception):
                raise to_grpc_error(e, "Put") from e
            raise
        return digest, writer.write_stats

    # The grpc.aio handlers: decoding, statuses, the in-flight count.

    @contextlib.asynccontextmanager
    async def _call(self, context: _Context, method: str) -> AsyncIterator[Request | None]:
        """Around each call: the in-flight count, statuses, and the observer's record
        (``None`` without an observer)."""
        req = None if self.observer is None else self._begin(context, method)
        if self._draining:
            if req is not None:
                req.outcome, req.status = "refused", grpc.StatusCode.UNAVAILABLE.name
                self._end(req)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        self._inflight += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            yield req
        except GRPCStatusError as e:
            if req is not None:
                req.status = e.status.name
                req.fail(e, _OUTCOMES.get(e.status, "error"))
            await context.abort(e.status, e.message)
        except BaseException as e:
            if req is not None:
                cancelled = isinstance(e, asyncio.CancelledError)
                req.status = "CANCELLED" if cancelled else "UNKNOWN"
                req.fail(e, "cancelled" if cancelled else "error")
            raise
        finally:
            self._handlers.discard(task)
            self._inflight -= 1
            if self._inflight == 0:
                self._wake.set()
            if req is not None:
                self._end(req)

    def _begin(self, context: _Context, method: str) -> Request:
        incoming = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_HEADER and isinstance(value, str):
                incoming = value
                break
        req = Request("grpc", method, request_id(incoming), context.peer())
        context.set_trailing_metadata(((REQUEST_ID_HEADER, req.request_id),))
        assert self.observer is not None
        self.observer.started(req)
        return req

    def _end(self, req: Request) -> None:
        if not req.status:
            req.status = grpc.StatusCode.OK.name
        req.finish()
        assert self.observer is not None
        try:
            self.observer.finished(req)
        except Exception:  # a failing observer must not change the call's answer
            log.exception("the request observer failed")

    async def _rpc_stat(
        self, request: StatBlobRequest | MalformedMessageError, context: _Context
    ) -> StatBlobResponse:
        async with self._call(context, "Stat") as req:
            message = _request(request)
            if req is not None and len(message.digest) == 32:
                req.digest = message.digest
            response = await self.stat(message)
        return response

    async def _rpc_read(
        self, request: ReadBlobRequest | MalformedMessageError, context: _Context
    ) -> None:
        async with self._call(context, "Read") as req:
            message = _request(request)
            if req is not None and len(message.digest) == 32:
                req.digest = message.digest
            async with contextlib.aclosing(self.read(message)) as pieces:
                async for piece in pieces:
                    try:
                        # Waits until flow control lets the message go: the backpressure.
                        await context.write(piece)
                    except Exception as e:  # the client went away: nobody to answer
                        log.debug("Read: the stream broke: %s", e)
                        if req is not None:
                            req.outcome, req.status = "cancelled", "CANCELLED"
                        return
                    if req is not None:
                        req.bytes_sent += len(piece)

    async def _rpc_put(
        self, requests: AsyncIterator[memoryview | MalformedMessageError], context: _Context
    ) -> PutBlobResponse:
        async def payloads(req: Request | None) -> AsyncIterator[memoryview]:
            async for received in requests:
                payload = _request(received)
                if req is not None:
                    req.bytes_received += len(payload)
                yield payload
            # The request stream ended. grpc.aio ends it alike when the client half-closed
            # and when the stream broke (reset, connection lost, a message over the size
            # limit): sending the response headers tells them apart, as it fails on a
            # broken stream. The blob is stored only after a clean end.
            try:
                await context.send_initial_metadata(())
            except Exception as e:
                raise GRPCStatusError(
                    grpc.StatusCode.CANCELLED, "Put: the stream broke before its end"
                ) from e

        async with self._call(context, "Put") as req:
            digest, stats = await self._store(payloads(req))
            if req is not None:
                req.digest, req.write_stats = digest.digest, stats
        return PutBlobResponse(digest=digest.digest)

    def _method_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        methods: dict[str, Callable[[], grpc.RpcMethodHandler[Any, Any]]] = {
            "Stat": lambda: grpc.unary_unary_rpc_method_handler(
                self._rpc_stat,
                request_deserializer=deserializer(StatBlobRequest),
                response_serializer=encode,
            ),
            "Read": lambda: grpc.unary_stream_rpc_method_handler(
                self._rpc_read,
                request_deserializer=deserializer(ReadBlobRequest),
                response_serializer=encode_blob_chunk,
            ),
            "Put": lambda: grpc.stream_unary_rpc_method_handler(
                self._rpc_put,
                request_deserializer=blob_chunk_payload,
                response_serializer=encode,
            ),
        }
        return {
            f"/{package}.BlobService/{name}": make()
            for package in self.packages
            for name, make in methods.items()
        }

    # Graceful stop.

    @property
    def calls_in_flight(self) -> int:
        """How many calls are being handled right now."""
        return self._inflight

    @property
    def draining(self) -> bool:
        """Whether new calls are turned away."""
        return self._draining

    async def drain(self, grace: float) -> bool:
        """Refuse new calls (``UNAVAILABLE``) and wait up to ``grace`` seconds for the
        calls in flight; True if they all finished."""
        self._draining = True
        with anyio.move_on_after(grace):
            while self._inflight and not self._gave_up:
                self._wake.clear()
                await self._wake.wait()
        return self._inflight == 0

    def give_up(self) -> None:
        """Stop a :meth:`drain` from waiting any longer (a second SIGINT)."""
        self._gave_up = True
        self._wake.set()

    @property
    def gave_up(self) -> bool:
        """Whether :meth:`give_up` was called."""
        return self._gave_up

    def cancel_calls(self) -> None:
        """Cancel the handlers of the calls in flight: each ends as a broken call does (a
        ``Put`` stores nothing) and grpc answers its client ``CANCELLED``."""
        for task in list(self._handlers):
            task.cancel()
