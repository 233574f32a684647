"""``GRPCBlobService``: a :class:`~castore.BlobService` that talks to a remote gRPC server.

It speaks ``tvix.castore.v1.BlobService`` (or the snix paths) to any server of that
protocol: castore's own, tvix's or snix's, over grpc.aio. Unlike Rust's client it never
holds a whole blob in memory:

- ``open_read`` asks ``Stat`` for the chunk list. A blob of two or more chunks is read
  through :class:`~castore.ChunkedReader`, one ``Read`` per chunk (each verified, a few
  fetched ahead). Otherwise the blob is read from one ``Read`` stream
  (:mod:`castore.grpc._read`): up to ``small_blob_size`` bytes are collected and verified
  before the reader is returned; a larger stream is hashed as it goes and its last bytes
  are held back until the end of the stream proves the BLAKE3 digest.
- ``open_write`` streams ``Put`` as it is written (:mod:`castore.grpc._put`).

The channel (:mod:`castore.grpc._channel`) is made at the first call, in the running
event loop (a grpc.aio channel belongs to one loop); ``wait_connect`` /
``?wait-connect=1`` starts connecting at once, and ``await service.connect()`` reports a
failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import SplitResult

import anyio
import grpc
import grpc.aio

from castore._digest import B3Digest, ChunkMeta, DigestLike
from castore._proto.tvix.castore.v1 import StatBlobRequest, StatBlobResponse
from castore.blobservice import BlobReader, BlobService, BlobWriter, BytesReader
from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    DigestMismatchError,
    InvalidAddressError,
    InvalidDigestError,
    MalformedIndexError,
    StoreUnavailableError,
)
from castore.grpc._address import Endpoint, check_balanced, parse_endpoints, parse_flag
from castore.grpc._channel import Calls, ChannelConfig, open_channel
from castore.grpc._errors import call_status, from_grpc_error
from castore.grpc._put import PutWriter
from castore.grpc._read import ReadCall, StreamReader
from castore.grpc._wire import checked
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

_READY = grpc.ChannelConnectivity.READY
_FAILED = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


class GRPCBlobService(BlobService):
    """A :class:`~castore.BlobService` served by a remote ``BlobService`` over gRPC.

    Give a TCP ``host`` and ``port`` or a unix socket ``path``; ``tls`` for TLS, checked
    against ``ca_file`` (PEM; grpc's bundled root certificates otherwise) and, when the
    certificate names another host, ``server_name``; or ready-made grpc ``credentials``.
    ``package`` picks the method paths (``tvix.castore.v1`` or ``snix.castore.v1``).
    ``timeout`` (60 s unless told otherwise, ``None`` for no bound) is the deadline of each
    ``Stat`` and each chunk fetch and, for a blob streamed whole, how long the reader
    waits for the next message; a server that stops answering raises
    :class:`~castore.errors.StoreTimeoutError` rather than hanging a reader. ``prefetch``
    is how many chunks the chunked reader fetches ahead.

    ``endpoints``, a list of ``(host, port)`` pairs (IP addresses of one family), takes
    the place of ``host`` and ``port`` for several servers of one store: grpc's
    round-robin balancing spreads the calls over them and leaves out any it cannot
    reach, and a ``Stat`` or ``Read`` that met a server going down is tried again on
    another. A ``Put`` cut off that way fails; writing the blob again succeeds elsewhere.

    From a URL: ``grpc+http://host:port``, ``grpc+https://host:port``,
    ``grpc+http://ip1:port1,ip2:port2,…``, ``grpc+unix:///path``, with options
    ``wait-connect=1``, ``ca-file=PATH``, ``server-name=NAME``, ``package=tvix|snix``,
    ``timeout=SECONDS``.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        path: str | None = None,
        endpoints: Sequence[tuple[str, int]] | None = None,
        tls: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        ca_file: str | None = None,
        server_name: str | None = None,
        wait_connect: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        package: str = "tvix.castore.v1",
        prefetch: int = DEFAULT_PREFETCH,
        put_message_size: int = DEFAULT_PUT_MESSAGE_SIZE,
        small_blob_size: int = DEFAULT_SMALL_BLOB_SIZE,
        ssl_context: Any = None,
    ) -> None:
        if endpoints is not None:
            if host is not None or port is not None or path is not None or not endpoints:
                raise InvalidAddressError("give endpoints alone, and at least one")
            host, port = endpoints[0]
        if (path is None) == (host is None or port is None):
            raise InvalidAddressError("give either a host and a port, or a unix socket path")
        if put_message_size < 1:
            raise ValueError(f"put_message_size must be positive, got {put_message_size}")
        if ssl_context is not None:
            raise TypeError(
                "ssl_context is not supported: castore's gRPC client runs on grpcio, which "
                "takes certificates, not an ssl.SSLContext; give ca_file= (and server_name=) "
                "or credentials=grpc.ssl_channel_credentials(...)"
            )
        tls = tls or credentials is not None
        self.endpoint = Endpoint(host=host, port=port, path=path, tls=tls)
        self.endpoints: tuple[Endpoint, ...] = (self.endpoint,)
        if endpoints is not None and len(endpoints) > 1:
            self.endpoints = tuple(Endpoint(host=h, port=p, tls=tls) for h, p in endpoints)
            check_balanced(self.endpoints, self.url)
        self._config = ChannelConfig(self.endpoints, ca_file, server_name, credentials)
        self._wait_connect = wait_connect
        self._timeout = timeout
        self.package = PACKAGE_ALIASES.get(package, package)
        self._prefetch = prefetch
        self._put_message_size = put_message_size
        self._small_blob_size = small_blob_size
        self._calls: Calls | None = None
        self._calls_loop: asyncio.AbstractEventLoop | None = None
        self._eager: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str | SplitResult) -> GRPCBlobService:
        """Build from ``grpc+http://host:port?…``, ``grpc+https://…`` or ``grpc+unix:///…``;
        ``grpc+http://ip1:port1,ip2:port2?…`` for several servers."""
        endpoints, options = parse_endpoints(url)
        endpoint = endpoints[0]
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
        if len(endpoints) > 1:
            return cls(
                endpoints=[(e.host or "", e.port or 0) for e in endpoints],
                tls=endpoint.tls,
                ca_file=ca_file,
                server_name=server_name,
                wait_connect=wait_connect,
                timeout=timeout,
                package=package,
            )
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
        """Where this client connects, as a URL (``grpc+http://ip1:port1,ip2:port2`` for
        several servers)."""
        if len(self.endpoints) == 1:
            return self.endpoint.url
        scheme = "grpc+https" if self.endpoint.tls else "grpc+http"
        return f"{scheme}://" + ",".join(e.hostport for e in self.endpoints)

    def __repr__(self) -> str:
        return f"GRPCBlobService({self.url!r}, package={self.package!r})"

    # Connection.

    async def _get_calls(self) -> Calls:
        """The calls on this loop's channel, opening the channel on first use."""
        loop = asyncio.get_running_loop()
        if self._calls is not None and self._calls_loop is loop:
            return self._calls
        channel = await open_channel(self._config)
        if self._calls is not None and self._calls_loop is loop:
            await channel.close()  # another task made one while we read certificates
            return self._calls
        await self._drop_channel()
        self._calls, self._calls_loop = Calls(channel, self.package), loop
        return self._calls

    async def _drop_channel(self) -> None:
        calls, loop = self._calls, self._calls_loop
        self._calls = self._calls_loop = None
        if calls is None:
            return
        try:
            same_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            same_loop = False
        if not same_loop:
            # A channel of another (finished) event loop cannot be closed from this one;
            # grpc releases it when it is collected.
            return
        with contextlib.suppress(Exception):
            await calls.channel.close()

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
        reached (or the TLS handshake fails), and
        :class:`~castore.errors.StoreTimeoutError` if connecting takes longer than the
        timeout.
        """
        what = f"connecting to {self.url}"
        try:
            channel = (await self._get_calls()).channel
            with anyio.fail_after(self._timeout):
                state = channel.get_state(try_to_connect=True)
                while state is not _READY:
                    # A failed attempt leaves the channel in TRANSIENT_FAILURE until one
                    # succeeds (grpc retries in the background, within a second or two).
                    if state in _FAILED:
                        raise StoreUnavailableError(f"{what}: the connection failed")
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except Exception as e:
            raise from_grpc_error(e, what) from e

    @property
    def connected(self) -> bool:
        """Whether a connection to the server is open right now."""
        calls = self._calls
        return calls is not None and calls.channel.get_state() is _READY

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
        await self._drop_channel()

    def _what(self, call: str, digest: B3Digest | None = None) -> str:
        target = f" {digest}" if digest is not None else ""
        return f"{call}{target} on {self.url}"

    # The BlobService calls.

    async def _stat(self, digest: B3Digest, send_chunks: bool) -> StatBlobResponse | None:
        what = self._what("Stat", digest)
        request = StatBlobRequest(digest=digest.digest, send_chunks=send_chunks)
        try:
            calls = await self._get_calls()
            return checked(await calls.stat(request, timeout=self._timeout))
        except Exception as e:
            if call_status(e) is grpc.StatusCode.NOT_FOUND:
                return None
            raise from_grpc_error(e, what) from e

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

        async def start() -> ReadCall | None:
            calls = await self._get_calls()
            return await ReadCall.start(calls, digest, deadline=None, idle=self._timeout)

        reader = StreamReader(start, digest, size, self._what("Read", digest))
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
        try:
            calls = await self._get_calls()
            call = await ReadCall.start(calls, meta.digest, deadline=self._timeout, idle=None)
            if call is None:
                raise BlobNotFoundError(f"{what}: chunk not found")
            parts: list[bytes] = []
            total = 0
            while (data := await call.next()) is not None:
                total += len(data)
                if total > meta.size:
                    call.cancel()
                    raise DigestMismatchError(
                        f"{what}: the server sent more than the chunk's {meta.size} bytes"
                    )
                parts.append(data)
        except Exception as e:
            raise from_grpc_error(e, what) from e
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def open_write(self) -> BlobWriter:
        return PutWriter(self._get_calls, self._put_message_size, self._what("Put"))


def _from_url(parts: SplitResult) -> BlobService:
    service = GRPCBlobService.from_url(parts)
    if service._wait_connect:
        service.start_connecting()
    return service


for _scheme in ("grpc+http", "grpc+https", "grpc+unix"):
    register_scheme(_scheme, _from_url)
