"""The ASGI application: routing of the gateway's paths to reads and uploads."""

from __future__ import annotations

import logging
from typing import Final

import anyio

from castore.blobservice import BlobService
from castore.http._asgi import (
    HTTPError,
    Receive,
    Scope,
    Send,
    method_not_allowed,
    parse_digest,
    route_path,
    send_error,
)
from castore.http._observed import Tracked, begin, outcome_of_status
from castore.http._reads import serve_blob, serve_chunks
from castore.http._uploads import receive_upload
from castore.observe import Request, RequestObserver

__all__ = ["DEFAULT_MAX_UPLOAD", "DEFAULT_PIECE_SIZE", "BlobGateway", "app"]

#: Default limit on one upload's body: 1 GiB.
DEFAULT_MAX_UPLOAD: Final = 1 << 30
#: Default size of the pieces a response body is sent in.
DEFAULT_PIECE_SIZE: Final = 64 * 1024

_log = logging.getLogger("castore.http")


class BlobGateway:
    """The ASGI application :func:`app` returns; see :mod:`castore.http` for the API.

    ``service`` is not closed by the gateway: its owner closes it. ``observer`` is told
    about every request (:mod:`castore.observe`).
    """

    def __init__(
        self,
        service: BlobService,
        *,
        max_upload: int | None = DEFAULT_MAX_UPLOAD,
        piece_size: int = DEFAULT_PIECE_SIZE,
        observer: RequestObserver | None = None,
    ) -> None:
        if max_upload is not None and max_upload < 0:
            raise ValueError(f"max_upload must be >= 0 or None, got {max_upload}")
        if piece_size <= 0:
            raise ValueError(f"piece_size must be positive, got {piece_size}")
        self.service = service
        self.max_upload = max_upload
        self.piece_size = piece_size
        self.observer = observer

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
        path = route_path(scope)
        if self.observer is not None:
            await self._observed(self.observer, method, path, scope, receive, send)
        else:
            await self._answer(method, path, scope, receive, send, None)

    async def _observed(
        self,
        observer: RequestObserver,
        method: str,
        path: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        req = begin(method, path, scope)
        observer.started(req)
        tracked = Tracked(req, receive, send)
        try:
            await self._answer(method, path, scope, tracked.receive, tracked.send, req)
        except BaseException as e:
            # Failed after the status line went out (the connection is cut), or cancelled.
            cancelled = isinstance(e, anyio.get_cancelled_exc_class())
            req.fail(e, "cancelled" if cancelled else "error")
            raise
        finally:
            tracked.settle()
            req.finish()
            try:
                observer.finished(req)
            except Exception:  # a failing observer must not change the answer
                _log.exception("the request observer failed")

    async def _answer(
        self,
        method: str,
        path: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        req: Request | None,
    ) -> None:
        try:
            await self._route(method, path, scope, receive, send, req)
        except HTTPError as e:
            if req is not None:
                req.fail(e, outcome_of_status(e.status))
            if e.status >= 500:
                # A 500 is a bug somewhere below: keep its traceback for the log.
                cause = e.__cause__ if e.status == 500 else None
                _log.warning("%s %s -> %d: %s", method, path, e.status, e.detail, exc_info=cause)
            await send_error(send, e)

    async def _route(
        self,
        method: str,
        path: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        req: Request | None,
    ) -> None:
        if path in ("/blobs", "/blobs/"):
            if method not in ("PUT", "POST"):
                raise method_not_allowed(method, b"PUT, POST")
            stored = await receive_upload(self.service, self.max_upload, scope, receive, send)
            if req is not None and stored is not None:
                req.digest, req.write_stats = stored[0].digest, stored[1]
            return
        if not path.startswith("/blobs/"):
            raise HTTPError(404, "not_found", f"no such path: {path}")
        if method not in ("GET", "HEAD"):
            raise method_not_allowed(method, b"GET, HEAD")
        rest = path[len("/blobs/") :]
        # Found by position, so that a blake3-<base64> digest may contain '/'.
        if rest.endswith("/chunks"):
            digest = parse_digest(rest[: -len("/chunks")])
            if req is not None:
                req.digest = digest.digest
            await serve_chunks(self.service, send, digest)
            return
        digest = parse_digest(rest)
        if req is not None:
            req.digest = digest.digest
        await serve_blob(
            self.service, self.piece_size, scope, receive, send, digest, method == "HEAD"
        )


def app(
    service: BlobService,
    *,
    max_upload: int | None = DEFAULT_MAX_UPLOAD,
    piece_size: int = DEFAULT_PIECE_SIZE,
    observer: RequestObserver | None = None,
) -> BlobGateway:
    """An ASGI application serving ``service`` over HTTP (see :mod:`castore.http`).

    ``max_upload`` bounds one upload's body in bytes (``None``: no limit; over it the
    answer is ``413`` and nothing is stored). ``piece_size`` is the size of the pieces a
    response body is read and sent in; at most about one piece per response is held in
    memory besides what the server buffers. ``observer`` is told about every request,
    each of which gets an id, sent back as the ``x-request-id`` header
    (:mod:`castore.observe`).
    """
    return BlobGateway(service, max_upload=max_upload, piece_size=piece_size, observer=observer)
