"""``GET``/``HEAD /blobs/{digest}`` and ``GET /blobs/{digest}/chunks``.

A ``Range`` is served by ``seek`` on the reader; the body goes out in pieces, each sent
only once the server has taken the previous one; the first piece is read before the
status line, so an early failure is a clean 5xx (see :mod:`castore.http`).
"""

from __future__ import annotations

import io
import logging
from typing import Final

import anyio
import anyio.lowlevel

from castore._digest import B3Digest
from castore.blobservice import BlobReader, BlobService, BytesReader
from castore.errors import DataCorruptionError
from castore.http._asgi import (
    HTTPError,
    Receive,
    Scope,
    Send,
    cancel_on_disconnect,
    header,
    not_found,
    send_json,
    store_failure,
)
from castore.http._range import Unsatisfiable, parse_range
from castore.reader import ChunkedReader

__all__ = ["etag", "serve_blob", "serve_chunks"]

_log = logging.getLogger("castore.http")

#: Bytes read from the blob at once (at least ``piece_size``). A read into the response's
#: one buffer costs the event loop the same whatever its size, and chunks that lie wholly
#: in it are decoded straight into it (:meth:`ChunkedReader.readinto`): with 64 KiB reads
#: the loop spent more CPU per byte than decompressing and verifying them.
_READ_BLOCK: Final = 4 << 20

_BLOB_HEADERS: Final = (
    (b"content-type", b"application/octet-stream"),
    (b"accept-ranges", b"bytes"),
    (b"cache-control", b"public, max-age=31536000, immutable"),
    (b"x-content-type-options", b"nosniff"),
)


def etag(digest: B3Digest) -> bytes:
    """A blob's strong ``ETag``: its digest in hex, quoted."""
    return b'"' + digest.hex().encode("ascii") + b'"'


def _etag_listed(value: str, tag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): ``If-None-Match`` matches ``W/"x"`` too."""
    for item in value.split(","):
        item = item.strip()
        if item == "*":
            return True
        if item.startswith("W/"):
            item = item[2:]
        if item == tag:
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


async def serve_blob(
    service: BlobService,
    piece_size: int,
    scope: Scope,
    receive: Receive,
    send: Send,
    digest: B3Digest,
    head: bool,
) -> None:
    """Answer ``GET``/``HEAD`` of one blob (``304`` when ``If-None-Match`` names it)."""
    tag = etag(digest)
    if_none_match = header(scope, b"if-none-match")
    if if_none_match is not None and _etag_listed(if_none_match, tag.decode("ascii")):
        try:
            present = await service.has(digest)
        except Exception as e:
            raise store_failure(e, f"has({digest.hex()})") from e
        if not present:
            raise not_found(digest)
        await send(
            {
                "type": "http.response.start",
                "status": 304,
                "headers": [(b"etag", tag), *_BLOB_HEADERS[1:3]],
            }
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return

    try:
        reader = await service.open_read(digest)
    except Exception as e:
        raise store_failure(e, f"open_read({digest.hex()})") from e
    if reader is None:
        raise not_found(digest)
    try:
        await _send_blob(service, piece_size, scope, receive, send, digest, reader, head)
    finally:
        await _aclose_quietly(reader)


def _range_applies(scope: Scope, tag: bytes) -> bool:
    """False when ``If-Range`` names something else: the client's copy is stale."""
    if_range = header(scope, b"if-range")
    # A strong comparison; a date cannot be checked against a blob, so it fails.
    return if_range is None or if_range.strip() == tag.decode("ascii")


async def _send_blob(
    service: BlobService,
    piece_size: int,
    scope: Scope,
    receive: Receive,
    send: Send,
    digest: B3Digest,
    reader: BlobReader,
    head: bool,
) -> None:
    try:
        length = await _blob_length(service, digest, reader)
    except Exception as e:
        raise store_failure(e, f"length of {digest.hex()}") from e

    status = 200
    start, end = 0, length
    tag = etag(digest)
    headers: list[tuple[bytes, bytes]] = [(b"etag", tag), *_BLOB_HEADERS]
    range_header = header(scope, b"range")
    if range_header is not None and not head and _range_applies(scope, tag):
        wanted = parse_range(range_header, length)
        if isinstance(wanted, Unsatisfiable):
            raise HTTPError(
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

    buf = memoryview(b"")
    filled = 0
    if not head and end > start:
        # One buffer for the whole response, read a block at a time (see _READ_BLOCK).
        buf = memoryview(bytearray(min(max(piece_size, _READ_BLOCK), end - start)))
        # Read the first piece before answering, so that an early failure is a 5xx; only
        # a piece, so that the status line is not held back by a whole block.
        try:
            if start:
                await reader.seek(start)
            filled = await reader.readinto(buf[: min(piece_size, len(buf))])
        except Exception as e:
            raise store_failure(e, f"reading {digest.hex()}") from e
        if not filled:
            raise HTTPError(502, "short_blob", f"blob {digest.hex()} ended before {length} bytes")

    await send({"type": "http.response.start", "status": status, "headers": headers})
    if head or end == start:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    await _stream(piece_size, receive, send, reader, buf, filled, start + filled, end, digest)


async def _stream(
    piece_size: int,
    receive: Receive,
    send: Send,
    reader: BlobReader,
    buf: memoryview,
    filled: int,
    pos: int,
    end: int,
    digest: B3Digest,
) -> None:
    """Send ``buf[:filled]`` then the bytes from ``pos`` up to ``end``, read into ``buf``
    again and again; stop early if the client leaves.

    Each piece is copied out of ``buf`` into its own ``bytes`` (ASGI wants ``bytes``, and
    a server may keep what it is given after ``send`` returns), so ``buf`` can be reused.
    uvicorn (and ASGI servers in general) drop what is sent after a disconnect without
    telling the sender, so a second task watches ``receive`` for ``http.disconnect``.
    """
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_on_disconnect, receive, tg.cancel_scope)
        try:
            while True:
                for at in range(0, filled, piece_size):
                    stop = min(at + piece_size, filled)
                    more = stop < filled or pos < end
                    body = bytes(buf[at:stop])
                    await send({"type": "http.response.body", "body": body, "more_body": more})
                    if not more:
                        break
                    # send() returns at once after a disconnect and a reader over memory
                    # never suspends: yield, so the watcher (and other requests) can run.
                    await anyio.lowlevel.checkpoint()
                if pos >= end:
                    break
                filled = await reader.readinto(buf[: min(len(buf), end - pos)])
                if not filled:
                    raise DataCorruptionError(
                        f"blob {digest.hex()} ended at {pos}, before {end} bytes"
                    )
                pos += filled
        except Exception as e:
            failure = e
        tg.cancel_scope.cancel()
    if failure is not None:
        # The status line is out: the only honest signal left is to cut the connection,
        # which the server does when the app raises.
        _log.warning("blob %s: failed mid-response at byte %d: %s", digest.hex(), pos, failure)
        raise failure


async def serve_chunks(service: BlobService, send: Send, digest: B3Digest) -> None:
    """Answer ``GET /blobs/{digest}/chunks``: the chunks with sizes and offsets, as JSON."""
    try:
        chunks = await service.chunks(digest)
    except Exception as e:
        raise store_failure(e, f"chunks({digest.hex()})") from e
    if chunks is None:
        raise not_found(digest)
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
    await send_json(send, 200, body, ((b"etag", etag(digest)),))
