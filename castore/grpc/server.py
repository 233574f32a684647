"""A gRPC server for any :class:`~castore.BlobService`, wire-compatible with tvix and snix.

:class:`BlobServiceServicer` implements the generated ``BlobServiceBase`` (grpclib) and
answers on both ``/tvix.castore.v1.BlobService/…`` and ``/snix.castore.v1.BlobService/…``.
:func:`serve` runs it on a socket as an async context manager::

    async with castore.grpc.serve(service, "grpc+http://127.0.0.1:0") as server:
        client = castore.from_addr(server.url)

What the server promises, beyond the Rust one:

- ``Stat`` lists the chunks when ``send_chunks`` is set (Rust ignores it).
- ``Read`` streams in messages of ``read_message_size`` bytes (256 KiB; Rust sends 4 KiB)
  and waits for HTTP/2 flow control, so a slow client holds at most a window's worth of
  a blob in the server's memory; a missing blob is ``NOT_FOUND`` before any message.
- ``Put`` feeds each message to ``open_write`` as it arrives: the client's framing does
  not matter. A client stream that breaks (reset, cancelled, connection lost) aborts the
  writer, so nothing is stored.
- A message larger than ``max_message_size`` is refused with ``RESOURCE_EXHAUSTED`` from
  its length prefix, before its bytes are buffered.
- Leaving :func:`serve` stops accepting calls and lets the calls in flight finish (for up
  to ``grace`` seconds) before it closes the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import ssl
import stat
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import betterproto2
import grpclib.const
import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from castore._digest import B3Digest
from castore._proto.tvix.castore.v1 import (
    BlobChunk,
    BlobServiceBase,
    PutBlobResponse,
    ReadBlobRequest,
    StatBlobRequest,
    StatBlobResponse,
    StatBlobResponseChunkMeta,
)
from castore.blobservice import BlobService
from castore.errors import InvalidAddressError, InvalidDigestError, MalformedMessageError
from castore.grpc._address import Endpoint, parse_endpoint
from castore.grpc._errors import to_grpc_error
from castore.grpc._wire import StrictProtoCodec, decode

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_READ_MESSAGE_SIZE",
    "PACKAGES",
    "BlobServiceServicer",
    "RunningServer",
    "serve",
    "server_ssl_context",
]

log = logging.getLogger("castore.grpc")

#: The largest message the server accepts (gRPC's usual default, and tonic's).
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: The size of the ``BlobChunk`` messages ``Read`` sends.
DEFAULT_READ_MESSAGE_SIZE = 256 * 1024
#: Protobuf packages whose method paths the server answers on.
PACKAGES = ("tvix.castore.v1", "snix.castore.v1")

# Above this many chunks an index is encoded in a worker thread (~35 ms per 4096 chunks).
_THREAD_ENCODE_CHUNKS = 1024

_M = TypeVar("_M", bound=betterproto2.Message)
_Stream = grpclib.server.Stream[Any, Any]


def _digest(raw: bytes, call: str) -> B3Digest:
    try:
        return B3Digest(raw)
    except InvalidDigestError as e:
        raise GRPCError(Status.INVALID_ARGUMENT, f"{call}: {e}") from None


async def _recv(stream: _Stream, message_type: type[_M], limit: int) -> _M | None:
    """Receive one message, refusing one longer than ``limit`` from its length prefix.

    grpclib reads a whole message of any declared length into memory before decoding it
    and has no size limit, so this reads the 5-byte gRPC prefix itself.
    """
    h2_stream = getattr(stream, "_stream", None)
    recv_data = getattr(h2_stream, "recv_data", None)
    if recv_data is None:  # pragma: no cover - a grpclib without the attribute
        try:
            message: _M | None = await stream.recv_message()
        except MalformedMessageError as e:
            raise GRPCError(Status.INVALID_ARGUMENT, f"undecodable message: {e}") from None
        if message is not None and len(bytes(message)) > limit:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, f"message exceeds {limit} bytes")
        return message
    prefix: bytes = await recv_data(5)
    if not prefix:
        return None
    compressed, length = struct.unpack(">?I", prefix)
    if compressed:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
    if length > limit:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"a message of {length} bytes exceeds the server's limit of {limit} bytes",
        )
    body: bytes = await recv_data(length) if length else b""
    try:
        return decode(message_type, body)
    except MalformedMessageError as e:
        raise GRPCError(Status.INVALID_ARGUMENT, f"undecodable message: {e}") from None


class BlobServiceServicer(BlobServiceBase):
    """Serves ``service`` as ``tvix.castore.v1.BlobService`` (and the snix paths).

    ``max_message_size`` bounds every received message; ``read_message_size`` is the
    payload of each ``BlobChunk`` that ``Read`` sends; ``packages`` lists the protobuf
    packages whose method paths are registered.
    """

    def __init__(
        self,
        service: BlobService,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        read_message_size: int = DEFAULT_READ_MESSAGE_SIZE,
        packages: Sequence[str] = PACKAGES,
    ) -> None:
        if read_message_size < 1:
            raise ValueError(f"read_message_size must be positive, got {read_message_size}")
        if max_message_size < 64:
            raise ValueError(f"max_message_size is too small: {max_message_size}")
        self.service = service
        self.max_message_size = max_message_size
        self.read_message_size = read_message_size
        self.packages = tuple(packages)
        self._inflight = 0
        self._wake = asyncio.Event()
        self._draining = False
        self._gave_up = False

    # The three calls, on decoded messages (the generated base's signatures).

    async def stat(self, message: StatBlobRequest) -> StatBlobResponse:
        """Whether the blob exists (``NOT_FOUND`` if not), with its chunks if asked."""
        digest = _digest(message.digest, "Stat")
        what = f"Stat {digest}"
        try:
            if not message.send_chunks:
                if not await self.service.has(digest):
                    raise GRPCError(Status.NOT_FOUND, f"{what}: blob not found")
                return StatBlobResponse()
            chunks = await self.service.chunks(digest)
        except Exception as e:
            raise to_grpc_error(e, what) from e
        if chunks is None:
            raise GRPCError(Status.NOT_FOUND, f"{what}: blob not found")

        def build() -> StatBlobResponse:
            return StatBlobResponse(
                chunks=[
                    StatBlobResponseChunkMeta(digest=c.digest.digest, size=c.size) for c in chunks
                ]
            )

        if len(chunks) > _THREAD_ENCODE_CHUNKS:
            return await anyio.to_thread.run_sync(build)
        return build()

    async def read(self, message: ReadBlobRequest) -> AsyncGenerator[BlobChunk, None]:
        """The blob's bytes in ``read_message_size`` pieces; ``NOT_FOUND`` before any."""
        digest = _digest(message.digest, "Read")
        what = f"Read {digest}"
        try:
            reader = await self.service.open_read(digest)
        except Exception as e:
            raise to_grpc_error(e, what) from e
        if reader is None:
            raise GRPCError(Status.NOT_FOUND, f"{what}: blob not found")
        async with reader:
            while True:
                try:
                    data = await reader.read(self.read_message_size)
                except Exception as e:
                    raise to_grpc_error(e, what) from e
                if not data:
                    return
                yield BlobChunk(data=data)

    async def put(self, messages: AsyncIterator[BlobChunk]) -> PutBlobResponse:
        """Store the streamed bytes; anything but a clean end of stream stores nothing."""
        writer = await self.service.open_write()
        try:
            async for message in messages:
                if message.data:
                    await writer.write(message.data)
            digest = await writer.close()
        except BaseException as e:
            # A reset or vanished client cancels this task; an error surfaces here too.
            # Either way the writer must not store the partial blob.
            await writer.abort()
            if isinstance(e, Exception):
                raise to_grpc_error(e, "Put") from e
            raise
        return PutBlobResponse(digest=digest.digest)

    # Stream-level handlers: size limits, the in-flight count, and closing the reader.

    @contextlib.asynccontextmanager
    async def _call(self, stream: _Stream) -> AsyncIterator[None]:
        if self._draining:
            raise GRPCError(Status.UNAVAILABLE, "the server is shutting down")
        self._inflight += 1
        try:
            yield
        except asyncio.CancelledError:
            if self._draining:
                # Stopped after the grace period: grpclib would drop the call silently,
                # leaving the client waiting on an open connection. Tell it instead.
                with contextlib.suppress(Exception):
                    await stream.send_trailing_metadata(
                        status=Status.UNAVAILABLE,
                        status_message="the server stopped before the call finished",
                    )
            raise
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._wake.set()

    async def _rpc_stat(self, stream: _Stream) -> None:
        async with self._call(stream):
            request = await _recv(stream, StatBlobRequest, self.max_message_size)
            if request is None:
                raise GRPCError(Status.INVALID_ARGUMENT, "Stat: no request message")
            await stream.send_message(await self.stat(request))

    async def _rpc_read(self, stream: _Stream) -> None:
        async with self._call(stream):
            request = await _recv(stream, ReadBlobRequest, self.max_message_size)
            if request is None:
                raise GRPCError(Status.INVALID_ARGUMENT, "Read: no request message")
            async with contextlib.aclosing(self.read(request)) as chunks:
                async for chunk in chunks:
                    # Waits for the client's flow-control window: the backpressure.
                    await stream.send_message(chunk)

    async def _rpc_put(self, stream: _Stream) -> None:
        async with self._call(stream):
            limit = self.max_message_size

            async def messages() -> AsyncIterator[BlobChunk]:
                while (message := await _recv(stream, BlobChunk, limit)) is not None:
                    yield message

            await stream.send_message(await self.put(messages()))

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        card = grpclib.const.Cardinality
        methods: dict[str, tuple[Callable[[_Stream], Coroutine[Any, Any, None]], Any, Any, Any]]
        methods = {
            "Stat": (self._rpc_stat, card.UNARY_UNARY, StatBlobRequest, StatBlobResponse),
            "Read": (self._rpc_read, card.UNARY_STREAM, ReadBlobRequest, BlobChunk),
            "Put": (self._rpc_put, card.STREAM_UNARY, BlobChunk, PutBlobResponse),
        }
        return {
            f"/{package}.BlobService/{name}": grpclib.const.Handler(*spec)
            for package in self.packages
            for name, spec in methods.items()
        }

    # Graceful stop.

    @property
    def calls_in_flight(self) -> int:
        """How many calls are being handled right now."""
        return self._inflight

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


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS context for the server from PEM files (blocking: call it in a thread).

    TLS 1.2 or later, and ALPN ``h2``, which gRPC clients (grpcio, tonic) insist on.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["h2"])
    return ctx


@dataclass
class RunningServer:
    """What :func:`serve` yields: where the server listens, and its servicer."""

    endpoint: Endpoint
    servicer: BlobServiceServicer
    server: grpclib.server.Server = field(repr=False)

    @property
    def url(self) -> str:
        """The bound address as a ``grpc+http://``, ``grpc+https://`` or ``grpc+unix://``
        URL (with the real port when asked for port 0)."""
        return self.endpoint.url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.asynccontextmanager
async def serve(
    service: BlobService,
    listen: str = "grpc+http://127.0.0.1:0",
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    read_message_size: int = DEFAULT_READ_MESSAGE_SIZE,
    grace: float = 30.0,
) -> AsyncIterator[RunningServer]:
    """Serve ``service`` on ``listen`` for the duration of the ``async with`` block.

    ``listen`` is ``grpc+http://host:port`` (port 0 picks a free one) or
    ``grpc+unix:///path``; ``grpc+https://host:port`` or ``tls_cert``/``tls_key`` (PEM
    files) or ``ssl_context`` turn TLS on. On leaving the block the server refuses new
    calls, waits up to ``grace`` seconds for the calls in flight, then closes.
    """
    endpoint, options = parse_endpoint(listen)
    if options:
        raise InvalidAddressError(f"a listen address takes no options, got {sorted(options)}")
    if (tls_cert is None) != (tls_key is None):
        raise InvalidAddressError("TLS needs both a certificate and a key file")
    if ssl_context is None and tls_cert is not None and tls_key is not None:
        ssl_context = await anyio.to_thread.run_sync(server_ssl_context, tls_cert, tls_key)
    if endpoint.tls and ssl_context is None:
        raise InvalidAddressError(f"{listen!r} asks for TLS: give a certificate and a key")
    tls = ssl_context is not None
    if endpoint.host is not None and not tls and not _is_loopback(endpoint.host):
        log.warning("serving without TLS on %s, which is not a loopback address", endpoint.host)

    servicer = BlobServiceServicer(
        service, max_message_size=max_message_size, read_message_size=read_message_size
    )
    server = grpclib.server.Server([servicer], codec=StrictProtoCodec())
    if endpoint.path is not None:
        sock = await anyio.to_thread.run_sync(_bind_unix, endpoint.path)
        try:
            await server.start(sock=sock, ssl=ssl_context)
        except BaseException:
            sock.close()
            raise
        bound = Endpoint(path=endpoint.path)
    else:
        await server.start(endpoint.host, endpoint.port, ssl=ssl_context)
        bound = Endpoint(host=endpoint.host, port=_bound_port(server, endpoint), tls=tls)
    running = RunningServer(bound, servicer, server)
    log.debug("castore gRPC server listening on %s", bound.url)
    try:
        yield running
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(running, grace)


def _bind_unix(path: str) -> socket.socket:
    """A listening unix socket at ``path``, replacing a stale socket file left by a
    server that died, but never a live server's socket nor a file that is not a socket."""
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise InvalidAddressError(f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # nobody listens: stale
            else:
                raise OSError(errno.EADDRINUSE, f"a server is listening on {path} already")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(100)
    except BaseException:
        sock.close()
        raise
    return sock


def _listener(server: grpclib.server.Server) -> asyncio.AbstractServer | None:
    # grpclib keeps its asyncio server in a private attribute and exposes no accessor
    # for the bound sockets, which port 0 needs, nor a way to stop listening while
    # calls in flight finish.
    listener = getattr(server, "_server", None)
    return listener if isinstance(listener, asyncio.AbstractServer) else None


def _bound_port(server: grpclib.server.Server, endpoint: Endpoint) -> int:
    assert endpoint.port is not None
    listener = _listener(server)
    sockets = getattr(listener, "sockets", None) if listener is not None else None
    if sockets:
        port: int = sockets[0].getsockname()[1]
        return port
    return endpoint.port


async def _stop(running: RunningServer, grace: float) -> None:
    listener = _listener(running.server)
    if listener is not None:
        listener.close()
    if not await running.servicer.drain(grace):
        log.warning(
            "%d calls still running after %.1f s; cancelling them",
            running.servicer.calls_in_flight,
            grace,
        )
    running.server.close()
    await running.server.wait_closed()
    if running.endpoint.path is not None:
        await anyio.Path(running.endpoint.path).unlink(missing_ok=True)
