"""The ASGI side of the gateway: types, request headers and paths, JSON answers, errors.

Errors decided before a response starts are :class:`HTTPError`; :func:`store_failure`
maps a failure of the service (castore's error tree) to the status a gateway gives it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping

import anyio

from castore._digest import B3Digest
from castore.errors import BlobNotFoundError, DataCorruptionError, InvalidDigestError, StoreError

__all__ = [
    "HTTPError",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "cancel_on_disconnect",
    "drain",
    "header",
    "method_not_allowed",
    "not_found",
    "parse_digest",
    "root_path",
    "route_path",
    "send_error",
    "send_json",
    "store_failure",
    "too_large",
]

#: An ASGI connection scope, as servers pass it.
Scope = Mapping[str, object]
#: An ASGI event received from or sent to the server.
Message = Mapping[str, object]
#: The ASGI ``receive`` callable.
Receive = Callable[[], Awaitable[Message]]
#: The ASGI ``send`` callable.
Send = Callable[[MutableMapping[str, object]], Awaitable[None]]


class HTTPError(Exception):
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


def store_failure(exc: BaseException, what: str) -> HTTPError:
    """Map a failure of the service to the answer a gateway gives for it."""
    if isinstance(exc, DataCorruptionError):
        return HTTPError(502, "data_corruption", f"{what}: {exc}")
    if isinstance(exc, BlobNotFoundError):
        # The blob was found, but a chunk it lists is gone: the store is inconsistent.
        return HTTPError(502, "missing_chunk", f"{what}: {exc}")
    if isinstance(exc, StoreError):
        return HTTPError(503, "store_unavailable", f"{what}: {exc}")
    return HTTPError(500, "internal_error", f"{what}: {type(exc).__name__}: {exc}")


def parse_digest(text: str) -> B3Digest:
    """The digest in a path, or a ``400`` saying what is wrong with it."""
    try:
        return B3Digest.parse(text)
    except InvalidDigestError as e:
        raise HTTPError(400, "invalid_digest", str(e)) from e


def not_found(digest: B3Digest) -> HTTPError:
    """``404`` for a blob that is not stored."""
    return HTTPError(404, "not_found", f"blob {digest.hex()} is not stored")


def too_large(limit: int) -> HTTPError:
    """``413`` for an upload over ``limit`` bytes."""
    return HTTPError(413, "too_large", f"the upload is larger than the limit of {limit} bytes")


def method_not_allowed(method: str, allow: bytes) -> HTTPError:
    """``405`` with the ``Allow`` header."""
    return HTTPError(
        405, "method_not_allowed", f"{method} is not allowed here", ((b"allow", allow),)
    )


def header(scope: Scope, name: bytes) -> str | None:
    """The value of request header ``name`` (lowercase), repeated ones joined by commas."""
    values: list[str] = []
    headers = scope.get("headers")
    if isinstance(headers, list | tuple):
        for item in headers:
            key, value = item
            if bytes(key).lower() == name:
                values.append(bytes(value).decode("latin-1"))
    return ", ".join(values) if values else None


def root_path(scope: Scope) -> str:
    """Where the app is mounted (ASGI ``root_path``), ``""`` at the root."""
    root = scope.get("root_path")
    return root if isinstance(root, str) else ""


def route_path(scope: Scope) -> str:
    """The request path below the app's mount point (ASGI ``root_path``)."""
    path = scope.get("path")
    path = path if isinstance(path, str) else "/"
    root = root_path(scope)
    if root and path.startswith(root):
        rest = path[len(root) :]
        if not rest or rest.startswith("/"):
            return rest or "/"
    return path


async def cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` when the client disconnects."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            scope.cancel()
            return


async def drain(receive: Receive, limit: int) -> None:
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


async def send_json(
    send: Send,
    status: int,
    payload: Mapping[str, object],
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """A complete JSON answer."""
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


async def send_error(send: Send, error: HTTPError) -> None:
    """``error`` as ``{"error": code, "detail": text}``."""
    await send_json(
        send, error.status, {"error": error.code, "detail": error.detail}, error.headers
    )
