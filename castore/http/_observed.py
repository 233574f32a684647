"""The gateway's side of :mod:`castore.observe`: one :class:`~castore.observe.Request` per
HTTP request, its id sent back as the ``x-request-id`` header, its bytes counted and its
outcome read from the answer."""

from __future__ import annotations

from collections.abc import MutableMapping

from castore.http._asgi import Message, Receive, Scope, Send, header
from castore.observe import REQUEST_ID_HEADER, Request, request_id

__all__ = ["Tracked", "begin", "outcome_of_status"]

_ID_HEADER = REQUEST_ID_HEADER.encode("ascii")


def operation(method: str, path: str) -> str:
    """The ``method`` label of a request: the castore operation it asks for."""
    if path in ("/blobs", "/blobs/"):
        return "Put" if method in ("PUT", "POST") else "other"
    if path.startswith("/blobs/") and method in ("GET", "HEAD"):
        if path.endswith("/chunks"):
            return "Chunks"
        return "Read" if method == "GET" else "Stat"
    return "other"


def outcome_of_status(status: int) -> str:
    """The outcome (:data:`castore.observe.OUTCOMES`) an answer's status gives when no
    store failure lies behind it."""
    if status < 400:
        return "ok"
    if status == 404:
        return "not_found"
    if status < 500:
        return "invalid"
    return "error"


def begin(method: str, path: str, scope: Scope) -> Request:
    """A new record for the request: its operation, id (the client's if sane) and peer."""
    client = scope.get("client")
    peer = None
    if isinstance(client, list | tuple) and len(client) == 2:
        peer = f"{client[0]}:{client[1]}"
    incoming = header(scope, _ID_HEADER)
    return Request("http", operation(method, path), request_id(incoming), peer)


class Tracked:
    """The ASGI ``receive`` and ``send`` of one observed request: they add the
    ``x-request-id`` header to the answer, count the blob bytes of uploads and of
    ``GET`` answers, and see the status and whether the client left early."""

    __slots__ = ("_id", "_receive", "_req", "_send", "complete", "count_sent", "left", "status")

    def __init__(self, req: Request, receive: Receive, send: Send) -> None:
        self._req = req
        self._receive = receive
        self._send = send
        self._id = req.request_id.encode("ascii")
        #: The answer's status, once its start went out.
        self.status = 0
        #: Whether the answer's last body message went out.
        self.complete = False
        #: Whether the client disconnected before that.
        self.left = False
        self.count_sent = False

    async def receive(self) -> Message:
        message = await self._receive()
        kind = message.get("type")
        if kind == "http.request":
            body = message.get("body")
            if body and self._req.method == "Put" and isinstance(body, bytes | bytearray):
                self._req.bytes_received += len(body)
        elif kind == "http.disconnect" and not self.complete:
            self.left = True
        return message

    async def send(self, message: MutableMapping[str, object]) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            status = message.get("status")
            self.status = status if isinstance(status, int) else 0
            self.count_sent = self._req.method == "Read" and self.status in (200, 206)
            headers = message.get("headers")
            listed = list(headers) if isinstance(headers, list | tuple) else []
            message = {**message, "headers": [*listed, (_ID_HEADER, self._id)]}
        elif kind == "http.response.body":
            body = message.get("body")
            if self.count_sent and isinstance(body, bytes | bytearray):
                self._req.bytes_sent += len(body)
            if not message.get("more_body", False):
                self.complete = True
        await self._send(message)

    def settle(self) -> None:
        """Set the outcome of a request whose handler returned: a client that left
        first, or an answer that never started, is ``cancelled``."""
        req = self._req
        if self.status:
            req.status = str(self.status)
        if req.error is not None:
            return
        if self.left or not self.status:
            req.outcome = "cancelled"
        else:
            req.outcome = outcome_of_status(self.status)
