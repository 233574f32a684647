"""An HTTP gateway to a :class:`~castore.BlobService`, as a plain ASGI application.

:func:`app` wraps a service in an ASGI app that any asyncio web server or framework can
run or mount (uvicorn, hypercorn, Starlette's ``Mount``, FastAPI's ``app.mount``). It needs
no web framework; ``castore[http]`` only adds uvicorn, for ``castore serve --http``.

==============================  =====================================================
``GET /blobs/{digest}``         the blob, streamed; ``Range`` gives ``206``/``416``
``HEAD /blobs/{digest}``        its headers: ``Content-Length``, ``ETag``, ...
``PUT /blobs``, ``POST /blobs``  stores the request body; ``201`` with JSON
                                ``{"digest", "hex", "size"}`` and a ``Location``
``GET /blobs/{digest}/chunks``  JSON: the blob's chunks, with sizes and offsets
==============================  =====================================================

``{digest}`` is 64 hex characters or ``blake3-<base64>`` (URL-encoded: its ``/`` and
``+`` are fine either way, as the digest is found by its position, not by splitting).

Why it is shaped this way:

- Content addressing makes every blob immutable, so the ``ETag`` is the digest itself
  (strong), ``If-None-Match`` needs only ``has()``, and responses are marked
  ``Cache-Control: immutable``.
- A ``Range`` is served by ``seek`` on the :class:`~castore.BlobReader`, so a range of a
  large chunked blob fetches only the chunks it covers. The body goes out in pieces of
  ``piece_size`` bytes, each sent only when the server has taken the previous one
  (ASGI's ``send`` waits while the socket is full), so a slow client holds back reads from
  the store instead of filling memory. Multi-range requests get the whole blob (``200``),
  which RFC 9110 allows.
- The first piece is read before the status line goes out, so a blob whose first chunk is
  corrupt or unreachable gets a clean ``502``/``503``. A failure after that can only cut
  the connection short: the client sees fewer bytes than ``Content-Length`` promised, never
  wrong bytes passed off as the blob.
- An upload is streamed into :meth:`~castore.BlobService.open_write`; going over
  ``max_upload``, a client that disconnects, or a failing store aborts the writer, so no
  partial blob is stored.

Errors are small JSON objects, ``{"error": "<code>", "detail": "<text>"}``: ``400``
malformed digest or header, ``404`` missing blob or unknown path, ``405`` wrong method (with
``Allow``), ``413`` upload over the limit, ``502`` the store returned corrupt data
(:class:`~castore.errors.DataCorruptionError`) or lost a chunk, ``503`` the store failed
(:class:`~castore.errors.StoreError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Final
from urllib.parse import quote

import anyio
import anyio.lowlevel

from castore._digest import B3Digest
from castore.blobservice import BlobReader, BlobService, BytesReader
from castore.errors import (
    BlobNotFoundError,
    DataCorruptionError,
    InvalidDigestError,
    StoreError,
)
from castore.reader import ChunkedReader

__all__ = [
    "DEFAULT_MAX_UPLOAD",
    "DEFAULT_PIECE_SIZE",
    "UNSATISFIABLE",
    "BlobGateway",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "app",
    "parse_http_address",
    "parse_range",
    "serve_http",
]

#: An ASGI connection scope, as servers pass it.
Scope = Mapping[str, object]
#: An ASGI event received from or sent to the server.
Message = Mapping[str, object]
#: The ASGI ``receive`` callable.
Receive = Callable[[], Awaitable[Message]]
#: The ASGI ``send`` callable.
Send = Callable[[MutableMapping[str, object]], Awaitable[None]]

#: Default limit on one upload's body: 1 GiB.
DEFAULT_MAX_UPLOAD: Final = 1 << 30
#: Default size of the pieces a response body is sent in.
DEFAULT_PIECE_SIZE: Final = 64 * 1024

# After deciding on 413, read and drop up to this much of the rest of the body before
# answering, so that a small over-limit upload gets its 413 instead of a reset connection
# (closing a socket with unread data makes the kernel send RST). Bigger bodies are cut off.
_DRAIN_LIMIT = 1 << 20

_log = logging.getLogger("castore.http")

_DIGITS = re.compile(r"[0-9]+")
# A number with more digits than this is beyond any blob's length; int() of a very long
# digit string is also refused by Python (and slow), so it is never parsed.
_MAX_DIGITS = 18
_HUGE = 10**_MAX_DIGITS

_BLOB_HEADERS: Final = (
    (b"content-type", b"application/octet-stream"),
    (b"accept-ranges", b"bytes"),
    (b"cache-control", b"public, max-age=31536000, immutable"),
    (b"x-content-type-options", b"nosniff"),
)


class _Unsatisfiable:
    """The result of :func:`parse_range` for a range that lies outside the blob."""

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE: Final = _Unsatisfiable()


def _number(text: str) -> int | None:
    text = text.strip()
    if not _DIGITS.fullmatch(text):
        return None
    return _HUGE if len(text) > _MAX_DIGITS else int(text)


def parse_range(header: str, length: int) -> tuple[int, int] | _Unsatisfiable | None:
    """Interpret a ``Range`` header for a blob of ``length`` bytes.

    Returns ``(start, end)`` (``end`` exclusive) for one satisfiable byte range,
    :data:`UNSATISFIABLE` for a single range that lies outside the blob (or whose last
    position is before its first), and ``None`` when the header is to be ignored and the
    whole blob sent: another unit, a syntax error, or several ranges.
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s for s in spec.split(",") if s.strip()]
    if len(specs) != 1:
        return None
    first_text, dash, last_text = specs[0].partition("-")
    if not dash:
        return None
    if not first_text.strip():
        suffix = _number(last_text)
        if suffix is None:
            return None
        if suffix == 0 or length == 0:
            return UNSATISFIABLE
        return (max(0, length - suffix), length)
    first = _number(first_text)
    last = _number(last_text) if last_text.strip() else None
    if first is None or (last_text.strip() and last is None):
        return None
    if last is not None and last < first:
        return UNSATISFIABLE
    if first >= length:
        return UNSATISFIABLE
    end = length if last is None else min(last + 1, length)
    return (first, end)


class _HTTPError(Exception):
    """An error answer decided before the response started."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def _store_failure(exc: BaseException, what: str) -> _HTTPError:
    """Map a failure of the service to the answer a gateway gives for it."""
    if isinstance(exc, DataCorruptionError):
        return _HTTPError(502, "data_corruption", f"{what}: {exc}")
    if isinstance(exc, BlobNotFoundError):
        # The blob was found, but a chunk it lists is gone: the store is inconsistent.
        return _HTTPError(502, "missing_chunk", f"{what}: {exc}")
    if isinstance(exc, StoreError):
        return _HTTPError(503, "store_unavailable", f"{what}: {exc}")
    return _HTTPError(500, "internal_error", f"{what}: {type(exc).__name__}: {exc}")


def _header(scope: Scope, name: bytes) -> str | None:
    """The value of request header ``name`` (lowercase), repeated ones joined by commas."""
    values: list[str] = []
    headers = scope.get("headers")
    if isinstance(headers, list | tuple):
        for item in headers:
            key, value = item
            if bytes(key).lower() == name:
                values.append(bytes(value).decode("latin-1"))
    return ", ".join(values) if values else None


def _route_path(scope: Scope) -> str:
    """The request path below the app's mount point (ASGI ``root_path``)."""
    path = scope.get("path")
    path = path if isinstance(path, str) else "/"
    root = scope.get("root_path")
    if isinstance(root, str) and root and path.startswith(root):
        rest = path[len(root) :]
        if not rest or rest.startswith("/"):
            return rest or "/"
    return path


def _etag(digest: B3Digest) -> bytes:
    return b'"' + digest.hex().encode("ascii") + b'"'


def _etag_listed(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): ``If-None-Match`` matches ``W/"x"`` too."""
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


async def _blob_length(service: BlobService, digest: B3Digest, reader: BlobReader) -> int:
    """The blob's length, without reading it.

    A chunked blob's length is the sum of its chunk sizes (the reader knows it already, or
    ``chunks()`` lists them); anything else is measured by seeking to the end and back.
    """
    if isinstance(reader, ChunkedReader):
        return reader.length
    if not isinstance(reader, BytesReader):
        chunks = await service.chunks(digest)
        if chunks:
            return sum(c.size for c in chunks)
    end = await reader.seek(0, io.SEEK_END)
    await reader.seek(0)
    return end


async def _aclose_quietly(reader: BlobReader) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await reader.aclose()
        except Exception:  # a reader that fails to close must not hide the answer
            _log.debug("closing a blob reader failed", exc_info=True)


class BlobGateway:
    """The ASGI application :func:`app` returns; see the module docstring for the API.

    ``service`` is not closed by the gateway: its owner closes it.
    """

    def __init__(
        self,
        service: BlobService,
        *,
        max_upload: int | None = DEFAULT_MAX_UPLOAD,
        piece_size: int = DEFAULT_PIECE_SIZE,
    ) -> None:
        if max_upload is not None and max_upload < 0:
            raise ValueError(f"max_upload must be >= 0 or None, got {max_upload}")
        if piece_size <= 0:
            raise ValueError(f"piece_size must be positive, got {piece_size}")
        self.service = service
        self.max_upload = max_upload
        self.piece_size = piece_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # Refuse the handshake; the server answers 403.
            await send({"type": "websocket.close", "code": 1008})
        else:
            raise ValueError(f"castore.http: unsupported ASGI scope type {kind!r}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Nothing to set up or tear down: the service belongs to the caller.
        while True:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message.get("type") == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        method = method.upper() if isinstance(method, str) else ""
        path = _route_path(scope)
        try:
            if path in ("/blobs", "/blobs/"):
                if method not in ("PUT", "POST"):
                    raise _method_not_allowed(method, b"PUT, POST")
                await self._upload(scope, receive, send)
                return
            if not path.startswith("/blobs/"):
                raise _HTTPError(404, "not_found", f"no such path: {path}")
            rest = path[len("/blobs/") :]
            # Found by position, so that a blake3-<base64> digest may contain '/'.
            if rest.endswith("/chunks"):
                if method not in ("GET", "HEAD"):
                    raise _method_not_allowed(method, b"GET, HEAD")
                await self._chunks(scope, send, _parse_digest(rest[: -len("/chunks")]))
                return
            if method not in ("GET", "HEAD"):
                raise _method_not_allowed(method, b"GET, HEAD")
            await self._blob(scope, receive, send, _parse_digest(rest), method == "HEAD")
        except _HTTPError as e:
            if e.status >= 500:
                # A 500 is a bug somewhere below: keep its traceback for the log.
                cause = e.__cause__ if e.status == 500 else None
                _log.warning("%s %s -> %d: %s", method, path, e.status, e.detail, exc_info=cause)
            await _send_error(send, e)

    # --- reads -------------------------------------------------------------------------

    async def _blob(
        self, scope: Scope, receive: Receive, send: Send, digest: B3Digest, head: bool
    ) -> None:
        etag = _etag(digest)
        if_none_match = _header(scope, b"if-none-match")
        if if_none_match is not None and _etag_listed(if_none_match, etag.decode("ascii")):
            try:
                present = await self.service.has(digest)
            except Exception as e:
                raise _store_failure(e, f"has({digest.hex()})") from e
            if not present:
                raise _not_found(digest)
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": [(b"etag", etag), *_BLOB_HEADERS[1:3]],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        try:
            reader = await self.service.open_read(digest)
        except Exception as e:
            raise _store_failure(e, f"open_read({digest.hex()})") from e
        if reader is None:
            raise _not_found(digest)
        try:
            await self._send_blob(scope, receive, send, digest, reader, etag, head)
        finally:
            await _aclose_quietly(reader)

    async def _send_blob(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        digest: B3Digest,
        reader: BlobReader,
        etag: bytes,
        head: bool,
    ) -> None:
        try:
            length = await _blob_length(self.service, digest, reader)
        except Exception as e:
            raise _store_failure(e, f"length of {digest.hex()}") from e

        status = 200
        start, end = 0, length
        headers: list[tuple[bytes, bytes]] = [(b"etag", etag), *_BLOB_HEADERS]
        range_header = _header(scope, b"range")
        if range_header is not None and not head and self._range_applies(scope, etag):
            wanted = parse_range(range_header, length)
            if isinstance(wanted, _Unsatisfiable):
                raise _HTTPError(
                    416,
                    "range_not_satisfiable",
                    f"range {range_header!r} lies outside the blob ({length} bytes)",
                    ((b"content-range", f"bytes */{length}".encode("ascii")),),
                )
            if wanted is not None:
                start, end = wanted
                status = 206
                headers.append((b"content-range", f"bytes {start}-{end - 1}/{length}".encode()))
        headers.append((b"content-length", str(end - start).encode("ascii")))

        first = b""
        if not head and end > start:
            # Read the first piece before answering, so that an early failure is a 5xx.
            try:
                if start:
                    await reader.seek(start)
                first = await reader.read(min(self.piece_size, end - start))
            except Exception as e:
                raise _store_failure(e, f"reading {digest.hex()}") from e
            if not first:
                raise _HTTPError(
                    502, "short_blob", f"blob {digest.hex()} ended before {length} bytes"
                )

        await send({"type": "http.response.start", "status": status, "headers": headers})
        if head or end == start:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self._stream(receive, send, reader, first, start + len(first), end, digest)

    def _range_applies(self, scope: Scope, etag: bytes) -> bool:
        """False when ``If-Range`` names something else: the client's copy is stale."""
        if_range = _header(scope, b"if-range")
        # A strong comparison; a date cannot be checked against a blob, so it fails.
        return if_range is None or if_range.strip() == etag.decode("ascii")

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        reader: BlobReader,
        first: bytes,
        pos: int,
        end: int,
        digest: B3Digest,
    ) -> None:
        """Send ``first`` then the bytes up to ``end``; stop early if the client leaves.

        uvicorn (and ASGI servers in general) drop what is sent after a disconnect without
        telling the sender, so a second task watches ``receive`` for ``http.disconnect``.
        """
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
            try:
                piece = first
                while True:
                    last = pos >= end
                    await send({"type": "http.response.body", "body": piece, "more_body": not last})
                    if last:
                        break
                    # send() returns at once after a disconnect and a reader over memory
                    # never suspends: yield, so the watcher (and other requests) can run.
                    await anyio.lowlevel.checkpoint()
                    piece = await reader.read(min(self.piece_size, end - pos))
                    if not piece:
                        raise DataCorruptionError(
                            f"blob {digest.hex()} ended at {pos}, before {end} bytes"
                        )
                    pos += len(piece)
            except Exception as e:
                failure = e
            tg.cancel_scope.cancel()
        if failure is not None:
            # The status line is out: the only honest signal left is to cut the connection,
            # which the server does when the app raises.
            _log.warning("blob %s: failed mid-response at byte %d: %s", digest.hex(), pos, failure)
            raise failure

    async def _chunks(self, scope: Scope, send: Send, digest: B3Digest) -> None:
        try:
            chunks = await self.service.chunks(digest)
        except Exception as e:
            raise _store_failure(e, f"chunks({digest.hex()})") from e
        if chunks is None:
            raise _not_found(digest)
        listed = []
        offset = 0
        for c in chunks:
            listed.append(
                {"digest": str(c.digest), "hex": c.digest.hex(), "offset": offset, "size": c.size}
            )
            offset += c.size
        body: dict[str, object] = {"digest": str(digest), "hex": digest.hex(), "chunks": listed}
        if chunks:
            body["size"] = offset
        await _send_json(send, 200, body, ((b"etag", _etag(digest)),))

    # --- uploads -----------------------------------------------------------------------

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_upload
        declared_text = _header(scope, b"content-length")
        declared: int | None = None
        if declared_text is not None:
            declared = _number(declared_text)
            if declared is None:
                raise _HTTPError(400, "bad_request", f"bad Content-Length: {declared_text!r}")
        if limit is not None and declared is not None and declared > limit:
            # Refused before reading; a body small enough to drop is read first (see
            # _DRAIN_LIMIT), a larger one is cut off when the server closes the connection.
            if declared <= _DRAIN_LIMIT:
                await _drain(receive, _DRAIN_LIMIT)
            raise _too_large(limit)

        try:
            writer = await self.service.open_write()
        except Exception as e:  # the trait says it cannot fail; a wrapper still might
            raise _store_failure(e, "open_write()") from e
        size = 0
        try:
            while True:
                message = await receive()
                if message.get("type") == "http.disconnect":
                    # The client left mid-body: store nothing, answer no one.
                    await writer.abort()
                    return
                body = message.get("body", b"")
                if not isinstance(body, bytes | bytearray | memoryview):
                    raise TypeError(f"ASGI body must be bytes, got {type(body).__name__}")
                size += len(body)
                more = bool(message.get("more_body", False))
                if limit is not None and size > limit:
                    await writer.abort()
                    if more:
                        await _drain(receive, _DRAIN_LIMIT)
                    raise _too_large(limit)
                if body:
                    await writer.write(body)
                if not more:
                    break
            digest = await writer.close()
        except _HTTPError:
            raise
        except Exception as e:
            await writer.abort()
            raise _store_failure(e, "storing an upload") from e
        except BaseException:
            # Cancelled (server shutdown) or worse: no partial blob either way.
            with anyio.CancelScope(shield=True):
                await writer.abort()
            raise
        location = quote(_root_path(scope)) + "/blobs/" + digest.hex()
        await _send_json(
            send,
            201,
            {"digest": str(digest), "hex": digest.hex(), "size": size},
            ((b"location", location.encode("ascii")), (b"etag", _etag(digest))),
        )


def app(
    service: BlobService,
    *,
    max_upload: int | None = DEFAULT_MAX_UPLOAD,
    piece_size: int = DEFAULT_PIECE_SIZE,
) -> BlobGateway:
    """An ASGI application serving ``service`` over HTTP (see the module docstring).

    ``max_upload`` bounds one upload's body in bytes (``None``: no limit; over it the
    answer is ``413`` and nothing is stored). ``piece_size`` is the size of the pieces a
    response body is read and sent in; at most about one piece per response is held in
    memory besides what the server buffers.
    """
    return BlobGateway(service, max_upload=max_upload, piece_size=piece_size)


def parse_http_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6; port 0 picks a free one).

    Raises :class:`ValueError` naming the expected form.
    """
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = _number(port_text) if sep else None
    if not host or port is None or port > 65535:
        raise ValueError(f"not HOST:PORT: {address!r} (for example 127.0.0.1:8080)")
    return host, port


@contextlib.asynccontextmanager
async def serve_http(
    service: BlobService,
    address: str = "127.0.0.1:8080",
    *,
    max_upload: int | None = DEFAULT_MAX_UPLOAD,
    grace: float = 30.0,
    access_log: bool = True,
) -> AsyncIterator[str]:
    """Serve :func:`app` for ``service`` on uvicorn at ``address``, in this asyncio loop.

    Yields the URL it listens on (with the real port when ``address`` asked for port 0).
    Leaving the block stops taking connections and gives the requests in flight up to
    ``grace`` seconds to finish. uvicorn (``pip install 'castore[http]'``) is driven
    programmatically: it installs no signal handlers and leaves logging configuration to
    the caller, so it can run beside a gRPC server in one process (``castore serve``).
    """
    try:
        import uvicorn
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the HTTP gateway's server needs uvicorn: pip install 'castore[http]'"
        ) from e

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # Signals belong to the application that embeds the server.
            yield

    host, port = parse_http_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app(service, max_upload=max_upload),
            lifespan="off",
            log_config=None,
            access_log=access_log,
            timeout_graceful_shutdown=max(0, int(grace)),
        )
        server = _Server(config)
        # A plain task rather than a task group: an exception in the caller's block must
        # reach the caller as itself, not wrapped in an ExceptionGroup.
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    failure = None if task.cancelled() else task.exception()
                    raise OSError(f"the HTTP server did not start on {address}") from failure
                await anyio.sleep(0.01)  # uvicorn sets a flag, with no event to wait on
            yield (
                f"http://[{host}]:{port}" if family == socket.AF_INET6 else f"http://{host}:{port}"
            )
        finally:
            server.should_exit = True
            # uvicorn bounds the drain by timeout_graceful_shutdown; this bounds the rest.
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(grace + 5):
                    await asyncio.wait([task])
                if not task.done():
                    task.cancel()
                    await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                _log.error("the HTTP server failed", exc_info=task.exception())
    finally:
        sock.close()


# --- helpers ---------------------------------------------------------------------------


def _parse_digest(text: str) -> B3Digest:
    try:
        return B3Digest.parse(text)
    except InvalidDigestError as e:
        raise _HTTPError(400, "invalid_digest", str(e)) from e


def _not_found(digest: B3Digest) -> _HTTPError:
    return _HTTPError(404, "not_found", f"blob {digest.hex()} is not stored")


def _too_large(limit: int) -> _HTTPError:
    return _HTTPError(413, "too_large", f"the upload is larger than the limit of {limit} bytes")


def _method_not_allowed(method: str, allow: bytes) -> _HTTPError:
    return _HTTPError(
        405, "method_not_allowed", f"{method} is not allowed here", ((b"allow", allow),)
    )


def _root_path(scope: Scope) -> str:
    root = scope.get("root_path")
    return root if isinstance(root, str) else ""


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            scope.cancel()
            return


async def _drain(receive: Receive, limit: int) -> None:
    """Read and drop the rest of a request body, up to ``limit`` bytes."""
    dropped = 0
    while dropped <= limit:
        message = await receive()
        if message.get("type") != "http.request":
            return
        body = message.get("body", b"")
        dropped += len(body) if isinstance(body, bytes | bytearray) else 0
        if not message.get("more_body", False):
            return


async def _send_json(
    send: Send,
    status: int,
    payload: Mapping[str, object],
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8") + b"\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(send: Send, error: _HTTPError) -> None:
    await _send_json(
        send, error.status, {"error": error.code, "detail": error.detail}, error.headers
    )
