"""``PUT``/``POST /blobs``: a request body streamed into the service's writer.

Going over the upload limit, a client that disconnects, or a failing store aborts the
writer, so no partial blob is stored.
"""

from __future__ import annotations

from urllib.parse import quote

import anyio

from castore._digest import B3Digest
from castore.blobservice import BlobService, WriteStats
from castore.http._asgi import (
    HTTPError,
    Receive,
    Scope,
    Send,
    drain,
    header,
    root_path,
    send_json,
    store_failure,
    too_large,
)
from castore.http._range import number
from castore.http._reads import etag

__all__ = ["receive_upload"]

# After deciding on 413, read and drop up to this much of the rest of the body before
# answering, so that a small over-limit upload gets its 413 instead of a reset connection
# (closing a socket with unread data makes the kernel send RST). Bigger bodies are cut off.
_DRAIN_LIMIT = 1 << 20


async def receive_upload(
    service: BlobService, limit: int | None, scope: Scope, receive: Receive, send: Send
) -> tuple[B3Digest, WriteStats | None] | None:
    """Store the request body; answer ``201`` with its digest, hex and size.

    Returns the digest and what the writer says it stored, or ``None`` when the client
    left before the end of the body (nothing stored, nothing answered).
    """
    declared_text = header(scope, b"content-length")
    declared: int | None = None
    if declared_text is not None:
        declared = number(declared_text)
        if declared is None:
            raise HTTPError(400, "bad_request", f"bad Content-Length: {declared_text!r}")
    if limit is not None and declared is not None and declared > limit:
        # Refused before reading; a body small enough to drop is read first (see
        # _DRAIN_LIMIT), a larger one is cut off when the server closes the connection.
        if declared <= _DRAIN_LIMIT:
            await drain(receive, _DRAIN_LIMIT)
        raise too_large(limit)

    try:
        writer = await service.open_write()
    except Exception as e:  # the trait says it cannot fail; a wrapper still might
        raise store_failure(e, "open_write()") from e
    size = 0
    try:
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                # The client left mid-body: store nothing, answer no one.
                await writer.abort()
                return None
            body = message.get("body", b"")
            if not isinstance(body, bytes | bytearray | memoryview):
                raise TypeError(f"ASGI body must be bytes, got {type(body).__name__}")
            size += len(body)
            more = bool(message.get("more_body", False))
            if limit is not None and size > limit:
                await writer.abort()
                if more:
                    await drain(receive, _DRAIN_LIMIT)
                raise too_large(limit)
            if body:
                await writer.write(body)
            if not more:
                break
        digest = await writer.close()
    except HTTPError:
        raise
    except Exception as e:
        await writer.abort()
        raise store_failure(e, "storing an upload") from e
    except BaseException:
        # Cancelled (server shutdown) or worse: no partial blob either way.
        with anyio.CancelScope(shield=True):
            await writer.abort()
        raise
    location = quote(root_path(scope)) + "/blobs/" + digest.hex()
    await send_json(
        send,
        201,
        {"digest": str(digest), "hex": digest.hex(), "size": size},
        ((b"location", location.encode("ascii")), (b"etag", etag(digest))),
    )
    return digest, writer.write_stats
