"""``GRPCBlobService``: a :class:`~castore.BlobService` that talks to a remote gRPC server.

It speaks ``tvix.castore.v1.BlobService`` (or the snix paths) to any server of that
protocol: castore's own, tvix's or snix's. Unlike Rust's client it never holds a whole
blob in memory:

- ``open_read`` asks ``Stat`` for the chunk list. A blob of two or more chunks is read
  through :class:`~castore.ChunkedReader`, one ``Read`` per chunk (each verified, a few
  fetched ahead). Otherwise the blob is read from one ``Read`` stream: up to
  ``small_blob_size`` bytes are collected and verified before the reader is returned; a
  larger stream is hashed as it goes and its last bytes are held back until the end of
  the stream proves the BLAKE3 digest, so wrong data raises
  :class:`~castore.errors.DigestMismatchError` instead of completing silently.
- ``open_write`` streams ``Put`` as it is written, waiting on HTTP/2 flow control
  (backpressure), and checks the digest the server answers against its own.

Connections are made lazily at the first call (``wait_connect`` / ``?wait-connect=1``
starts connecting at once, and ``await service.connect()`` reports a failure).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import ssl
from typing import Any
from urllib.parse import SplitResult

import anyio.lowlevel
import anyio.to_thread
import blake3
from grpclib.client import Channel, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from castore._digest import B3Digest, ChunkMeta, DigestLike
from castore._proto.tvix.castore.v1 import (
    BlobChunk,
    PutBlobResponse,
    ReadBlobRequest,
    StatBlobRequest,
    StatBlobResponse,
)
from castore.blobservice import BlobReader, BlobService, BlobWriter, BytesReader, seek_target
from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    DigestMismatchError,
    InvalidAddressError,
    InvalidDigestError,
    MalformedIndexError,
    StoreError,
)
from castore.grpc._address import Endpoint, parse_endpoint, parse_flag
from castore.grpc._errors import from_grpc_error
from castore.grpc._wire import StrictProtoCodec
from castore.reader import DEFAULT_PREFETCH, ChunkedReader
from castore.registry import register_scheme

__all__ = [
    "DEFAULT_PUT_MESSAGE_SIZE",
    "DEFAULT_SMALL_BLOB_SIZE",
    "DEFAULT_TIMEOUT",
    "GRPCBlobService",
]

log = logging.getLogger("castore.grpc")

#: Payload of each ``BlobChunk`` that ``Put`` sends (small writes are gathered).
DEFAULT_PUT_MESSAGE_SIZE = 256 * 1024
#: Blobs read from one stream up to this size are verified before any byte is returned.
DEFAULT_SMALL_BLOB_SIZE = 1024 * 1024
#: Seconds a ``Stat`` or a chunk fetch may take, and a streamed ``Read`` may wait for
#: its next message, unless told otherwise.
DEFAULT_TIMEOUT = 60.0

PACKAGE_ALIASES = {"tvix": "tvix.castore.v1", "snix": "snix.castore.v1"}

# Hash pieces at least this large in a worker thread instead of on the event loop.
_THREAD_HASH_MIN = 4 * 1024 * 1024

_AnyStream = Stream[Any, Any]


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A TLS context for connecting (blocking: it reads certificate files).

    Verifies the server against ``ca_file`` (PEM), or the system's trust store.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    return ctx


class GRPCBlobService(BlobService):
    """A :class:`~castore.BlobService` served by a remote ``BlobService`` over gRPC.

    Give a TCP ``host`` and ``port`` or a unix socket ``path``; ``tls`` (or an
    ``ssl_context``) for TLS, checked against ``ca_file`` and, when the certificate names
    another host, ``server_name``. ``package`` picks the method paths (``tvix.castore.v1``
    or ``snix.castore.v1``). ``timeout`` (60 s unless told otherwise, ``None`` for no
    bound) is the deadline of each ``Stat`` and each chunk fetch and, for a blob streamed
    whole, how long the reader waits for the next message; a server that stops answering
    raises :class:`~castore.errors.StoreTimeoutError` rather than hanging a reader.
    ``prefetch`` is how many chunks the chunked reader fetches ahead.

    From a URL: ``grpc+http://host:port``, ``grpc+https://host:port``,
    ``grpc+unix:///path``, with options ``wait-connect=1``, ``ca-file=PATH``,
    ``server-name=NAME``, ``package=tvix|snix``, ``timeout=SECONDS``.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        path: str | None = None,
        tls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | None = None,
        server_name: str | None = None,
        wait_connect: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        package: str = "tvix.castore.v1",
        prefetch: int = DEFAULT_PREFETCH,
        put_message_size: int = DEFAULT_PUT_MESSAGE_SIZE,
        small_blob_size: int = DEFAULT_SMALL_BLOB_SIZE,
    ) -> None:
        if (path is None) == (host is None or port is None):
            raise InvalidAddressError("give either a host and a port, or a unix socket path")
        if put_message_size < 1:
            raise ValueError(f"put_message_size must be positive, got {put_message_size}")
        tls = tls or ssl_context is not None
        self.endpoint = Endpoint(host=host, port=port, path=path, tls=tls)
        self._ssl_context = ssl_context
        self._ca_file = ca_file
        self._server_name = server_name
        self._wait_connect = wait_connect
        self._timeout = timeout
        self.package = PACKAGE_ALIASES.get(package, package)
        self._prefetch = prefetch
        self._put_message_size = put_message_size
        self._small_blob_size = small_blob_size
        self._channel: Channel | None = None
        self._channel_loop: asyncio.AbstractEventLoop | None = None
        self._eager: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str | SplitResult) -> GRPCBlobService:
        """Build from ``grpc+http://host:port?…``, ``grpc+https://…`` or ``grpc+unix:///…``."""
        endpoint, options = parse_endpoint(url)
        wait_connect = parse_flag(options, "wait-connect")
        ca_file = options.pop("ca-file", None)
        server_name = options.pop("server-name", None)
        package = options.pop("package", "tvix")
        timeout: float | None = DEFAULT_TIMEOUT
        if "timeout" in options:
            text = options.pop("timeout")
            try:
                timeout = float(text)
            except ValueError:
                raise InvalidAddressError(f"timeout={text!r} is not a number of seconds") from None
        if options:
            raise InvalidAddressError(
                f"unknown option(s) {sorted(options)} for a gRPC address; accepted: "
                "wait-connect, ca-file, server-name, package, timeout"
            )
        if package not in PACKAGE_ALIASES and package not in PACKAGE_ALIASES.values():
            raise InvalidAddressError(f"package={package!r}: expected tvix or snix")
        if (ca_file or server_name) and not endpoint.tls:
            raise InvalidAddressError("ca-file and server-name need grpc+https://")
        return cls(
            endpoint.host,
            endpoint.port,
            path=endpoint.path,
            tls=endpoint.tls,
            ca_file=ca_file,
            server_name=server_name,
            wait_connect=wait_connect,
            timeout=timeout,
            package=package,
        )

    @property
    def url(self) -> str:
        """Where this client connects, as a URL."""
        return self.endpoint.url

    def __repr__(self) -> str:
        return f"GRPCBlobService({self.url!r}, package={self.package!r})"

    # Connection.

    async def _get_channel(self) -> Channel:
        loop = asyncio.get_running_loop()
        if self._channel is not None and self._channel_loop is loop:
            return self._channel
        context = None
        if self.endpoint.tls:
            if self._ssl_context is None:
                self._ssl_context = await anyio.to_thread.run_sync(
                    client_ssl_context, self._ca_file
                )
            context = self._ssl_context
        if self._channel is not None and self._channel_loop is loop:
            return self._channel  # another task made it while we were loading certificates
        self._drop_channel()
        config = Configuration(ssl_target_name_override=self._server_name)
        if self.endpoint.path is not None:
            channel = Channel(
                path=self.endpoint.path, ssl=context, config=config, codec=StrictProtoCodec()
            )
        else:
            channel = Channel(
                self.endpoint.host,
                self.endpoint.port,
                ssl=context,
                config=config,
                codec=StrictProtoCodec(),
            )
        self._channel, self._channel_loop = channel, loop
        return channel

    def _drop_channel(self) -> None:
        channel, self._channel, self._channel_loop = self._channel, None, None
        if channel is not None:
            with contextlib.suppress(Exception):  # its loop may be closed already
                channel.close()

    def start_connecting(self) -> None:
        """Begin connecting in the background now (``wait-connect=1``); no-op without a
        running event loop. A failure is reported by :meth:`connect` or the first call."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._eager is None or self._eager.done():
            self._eager = asyncio.ensure_future(self._connect_quietly())

    async def _connect_quietly(self) -> None:
        try:
            await self.connect()
        except CastoreError as e:
            log.debug("early connect to %s failed: %s", self.url, e)

    async def connect(self) -> None:
        """Connect now rather than at the first call.

        Raises :class:`~castore.errors.StoreUnavailableError` if the server cannot be
        reached (or the TLS handshake fails).
        """
        try:
            channel = await self._get_channel()
            await channel.__connect__()
        except Exception as e:
            raise from_grpc_error(e, f"connecting to {self.url}") from e

    @property
    def connected(self) -> bool:
        """Whether a connection to the server is open right now."""
        channel = self._channel
        return channel is not None and channel._connected

    async def __aenter__(self) -> GRPCBlobService:
        if self._wait_connect:
            await self.connect()
        return self

    async def aclose(self) -> None:
        """Close the connection; a later call reconnects."""
        if self._eager is not None and not self._eager.done():
            self._eager.cancel()
            with contextlib.suppress(BaseException):
                await self._eager
        self._eager = None
        self._drop_channel()

    def _path(self, method: str) -> str:
        return f"/{self.package}.BlobService/{method}"

    def _what(self, call: str, digest: B3Digest | None = None) -> str:
        target = f" {digest}" if digest is not None else ""
        return f"{call}{target} on {self.url}"

    # The BlobService calls.

    async def _stat(self, digest: B3Digest, send_chunks: bool) -> StatBlobResponse | None:
        what = self._what("Stat", digest)
        try:
            channel = await self._get_channel()
            async with channel.request(
                self._path("Stat"),
                Cardinality.UNARY_UNARY,
                StatBlobRequest,
                StatBlobResponse,
                timeout=self._timeout,
            ) as stream:
                request = StatBlobRequest(digest=digest.digest, send_chunks=send_chunks)
                await stream.send_message(request, end=True)
                response: StatBlobResponse | None = await stream.recv_message()
        except GRPCError as e:
            if e.status is Status.NOT_FOUND:
                return None
            raise from_grpc_error(e, what) from e
        except Exception as e:
            raise from_grpc_error(e, what) from e
        if response is None:
            raise StoreError(f"{what}: the server sent no response")
        return response

    async def has(self, digest: DigestLike) -> bool:
        digest = B3Digest.coerce(digest)
        return await self._stat(digest, send_chunks=False) is not None

    async def chunks(self, digest: DigestLike) -> list[ChunkMeta] | None:
        digest = B3Digest.coerce(digest)
        response = await self._stat(digest, send_chunks=True)
        if response is None:
            return None
        try:
            return [ChunkMeta(B3Digest(c.digest), c.size) for c in response.chunks]
        except (InvalidDigestError, ValueError) as e:
            raise MalformedIndexError(f"{self._what('Stat', digest)}: bad chunk list: {e}") from e

    async def open_read(self, digest: DigestLike) -> BlobReader | None:
        digest = B3Digest.coerce(digest)
        chunks = await self.chunks(digest)
        if chunks is None:
            return None
        if len(chunks) >= 2:
            return ChunkedReader(
                chunks, self._fetch_chunk, prefetch=self._prefetch, blob_digest=digest
            )
        size = chunks[0].size if chunks else None
        reader = _StreamReader(self, digest, size)
        try:
            if not await reader.prime(self._small_blob_size):
                return None  # deleted between Stat and Read
            if reader.complete:
                return BytesReader(reader.take_all())
        except BaseException:
            await reader.aclose()
            raise
        return reader

    async def _fetch_chunk(self, meta: ChunkMeta) -> bytes:
        """One chunk's bytes, read whole (a chunk is at most 1 MiB); verified by the caller."""
        what = self._what("Read", meta.digest)
        call = await _ReadCall.start(self, meta.digest, self._timeout)
        if call is None:
            raise BlobNotFoundError(f"{what}: chunk not found")
        parts: list[bytes] = []
        total = 0
        try:
            while (data := await call.next()) is not None:
                total += len(data)
                if total > meta.size:
                    raise DigestMismatchError(
                        f"{what}: the server sent more than the chunk's {meta.size} bytes"
                    )
                parts.append(data)
        except BaseException as e:
            await call.cancel()
            if isinstance(e, Exception):
                raise from_grpc_error(e, what) from e
            raise
        return b"".join(parts)

    async def open_write(self) -> BlobWriter:
        return _PutWriter(self)


class _ReadCall:
    """One ``Read`` call, held open across the reader's calls."""

    def __init__(self, stream: _AnyStream, idle: float | None) -> None:
        self._stream = stream
        self._open = True
        # Without a deadline (a blob streamed whole), each message must come this soon.
        self._idle = idle

    @classmethod
    async def start(
        cls, service: GRPCBlobService, digest: B3Digest, deadline_s: float | None
    ) -> _ReadCall | None:
        """Send the request and wait for the response headers; ``None`` on NOT_FOUND."""
        what = service._what("Read", digest)
        try:
            channel = await service._get_channel()
            stream = channel.request(
                service._path("Read"),
                Cardinality.UNARY_STREAM,
                ReadBlobRequest,
                BlobChunk,
                timeout=deadline_s,
            )
            await stream.__aenter__()
            call = cls(stream, service._timeout if deadline_s is None else None)
            try:
                with anyio.fail_after(call._idle):
                    await stream.send_message(ReadBlobRequest(digest=digest.digest), end=True)
                    # A missing blob is a trailers-only response: it raises here.
                    await stream.recv_initial_metadata()
            except BaseException as e:
                await call._exit(e)
                raise
        except GRPCError as e:
            if e.status is Status.NOT_FOUND:
                return None
            raise from_grpc_error(e, what) from e
        except Exception as e:
            raise from_grpc_error(e, what) from e
        return call

    async def _exit(self, exc: BaseException | None) -> None:
        """Leave the grpclib stream's context; raises the call's error status, if any."""
        if not self._open:
            return
        self._open = False
        if exc is None:
            await self._stream.__aexit__(None, None, None)
        else:
            await self._stream.__aexit__(type(exc), exc, exc.__traceback__)

    async def next(self) -> bytes | None:
        """The next message's bytes; ``None`` at a clean end. Raises grpclib's errors."""
        try:
            with anyio.fail_after(self._idle):
                message: BlobChunk | None = await self._stream.recv_message()
            if message is None:
                await self._exit(None)  # reads the trailers: raises a non-OK status
                return None
        except BaseException as e:
            await self._exit(e)
            raise
        return message.data

    async def cancel(self) -> None:
        """Abandon the call (the server sees a reset stream). Never raises."""
        with contextlib.suppress(Exception):
            await self._exit(asyncio.CancelledError())


class _StreamReader(BlobReader):
    """A blob read from ``Read`` streams, BLAKE3-verified over each whole stream.

    Forward seeks skip through the stream (the skipped bytes are still hashed); a seek
    backwards, or a read after an error, starts a new stream. The last bytes of a stream
    are not returned until its end has been seen and the digest checked.
    """

    def __init__(self, service: GRPCBlobService, digest: B3Digest, size: int | None) -> None:
        self._service = service
        self._digest = digest
        self._expected = size
        self._length = size
        self._pos = 0
        self._call: _ReadCall | None = None
        self._buf = _Pieces()  # received, not yet returned; starts at stream offset _buf_start
        self._buf_start = 0
        self._received = 0
        self._hasher = blake3.blake3(max_threads=1)
        self._eof = False  # the current stream ended and verified
        self._closed = False
        self._what = service._what("Read", digest)

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
        await self._drop_call()
        self._buf.clear()
        self._buf_start = 0
        self._received = 0
        self._hasher = blake3.blake3(max_threads=1)
        self._eof = False
        call = await _ReadCall.start(self._service, self._digest, None)
        if call is None:
            return False
        self._call = call
        return True

    async def _drop_call(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            await call.cancel()

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
            if len(data) >= _THREAD_HASH_MIN:
                await anyio.to_thread.run_sync(self._hasher.update, data)
            else:
                self._hasher.update(data)
            self._buf.append(data)
        except BaseException as e:
            # Forget this pass: nothing unverified stays buffered, the next read restarts.
            await self._drop_call()
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
            await self._drop_call()
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
        await self._drop_call()


class _Pieces:
    """Bytes received and not yet returned, kept as the messages' own ``bytes`` so that a
    read costs one copy at most (none when it takes exactly one message)."""

    def __init__(self) -> None:
        self._parts: collections.deque[bytes] = collections.deque()
        self._head = 0  # bytes of _parts[0] already consumed
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        if data:
            self._parts.append(data)
            self._size += len(data)

    def clear(self) -> None:
        self._parts.clear()
        self._head = 0
        self._size = 0

    def skip(self, n: int) -> None:
        """Drop the first ``n`` bytes (at most ``len(self)``)."""
        self._size -= n
        while n:
            first = self._parts[0]
            left = len(first) - self._head
            if n < left:
                self._head += n
                return
            n -= left
            self._parts.popleft()
            self._head = 0

    def take(self, n: int) -> bytes:
        """Remove and return the first ``n`` bytes (at most ``len(self)``)."""
        if n == 0:
            return b""
        first = self._parts[0]
        if self._head == 0 and len(first) == n:
            self._parts.popleft()
            self._size -= n
            return first
        if len(first) - self._head >= n:
            out = first[self._head : self._head + n]
            self.skip(n)
            return out
        pieces: list[memoryview] = []
        want, head = n, self._head
        for part in self._parts:
            view = memoryview(part)[head : head + want]
            pieces.append(view)
            want -= len(view)
            head = 0
            if not want:
                break
        out = b"".join(pieces)
        self.skip(n)
        return out


class _PutWriter(BlobWriter):
    """Streams ``Put`` as it is written; gathers small writes into larger messages."""

    def __init__(self, service: GRPCBlobService) -> None:
        self._service = service
        self._stream: _AnyStream | None = None
        self._pending = bytearray()
        self._hasher = blake3.blake3(max_threads=1)
        self._size = service._put_message_size
        self._what = service._what("Put")
        self._quiet = 0

    async def _open(self) -> _AnyStream:
        if self._stream is None:
            channel = await self._service._get_channel()
            stream = channel.request(
                self._service._path("Put"),
                Cardinality.STREAM_UNARY,
                BlobChunk,
                PutBlobResponse,
            )
            await stream.__aenter__()
            self._stream = stream
            await stream.send_request()
        return self._stream

    async def _fail(self, exc: Exception) -> BaseException:
        """Tear the call down and find the error to raise (the server's status if any)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                await stream.__aexit__(type(exc), exc, exc.__traceback__)
            except Exception as status:  # the server's reason, from its trailers
                exc = status
        return from_grpc_error(exc, self._what)

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if len(view) >= _THREAD_HASH_MIN:
            await anyio.to_thread.run_sync(self._hasher.update, view)
        else:
            self._hasher.update(view)
        try:
            stream = await self._open()
            size = self._size
            start = 0
            if self._pending:
                start = min(len(view), size - len(self._pending))
                self._pending += view[:start]
                if len(self._pending) < size:
                    await self._gathered()
                    return
                await stream.send_message(BlobChunk(data=bytes(self._pending)))
                self._pending.clear()
            while len(view) - start >= size:
                await stream.send_message(BlobChunk(data=bytes(view[start : start + size])))
                start += size
            self._pending += view[start:]
        except Exception as e:
            raise await self._fail(e) from e
        self._quiet = 0

    async def _gathered(self) -> None:
        # Many small writes only gather bytes and never wait on the network; let the event
        # loop run now and then so that a loop of tiny writes does not stall it.
        self._quiet += 1
        if self._quiet >= 64:
            self._quiet = 0
            await anyio.lowlevel.checkpoint()

    async def _finish(self) -> B3Digest:
        try:
            stream = await self._open()
            if self._pending:
                await stream.send_message(BlobChunk(data=bytes(self._pending)), end=True)
                self._pending.clear()
            else:
                await stream.end()
            response: PutBlobResponse | None = await stream.recv_message()
            self._stream = None
            await stream.__aexit__(None, None, None)  # reads the trailers
        except Exception as e:
            raise await self._fail(e) from e
        if response is None:
            raise StoreError(f"{self._what}: the server sent no digest")
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
        stream, self._stream = self._stream, None
        if stream is not None:
            # Leaving the context with an error resets the HTTP/2 stream: the server sees
            # a broken upload and stores nothing.
            with contextlib.suppress(Exception):
                exc = asyncio.CancelledError()
                await stream.__aexit__(type(exc), exc, None)


def _from_url(parts: SplitResult) -> BlobService:
    service = GRPCBlobService.from_url(parts)
    if service._wait_connect:
        service.start_connecting()
    return service


for _scheme in ("grpc+http", "grpc+https", "grpc+unix"):
    register_scheme(_scheme, _from_url)
