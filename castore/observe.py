"""Watching the requests a server answers: the hook that its front ends call.

The gRPC servicer (:class:`castore.grpc.BlobServiceServicer`, :func:`castore.grpc.serve`)
and the HTTP gateway (:func:`castore.http.app`) take an optional
:class:`RequestObserver`. For each call or request they make a :class:`Request`, hand it
to :meth:`RequestObserver.started`, fill it in while they answer (bytes, digest, what a
``Put`` stored, the outcome), and hand it to :meth:`RequestObserver.finished` once the
answer is complete, whatever it was. They also give each request an id (a sane
``x-request-id`` from the client, else a new one) and send it back: as the
``x-request-id`` response header over HTTP, as trailing metadata of the same name over
gRPC.

Without an observer the front ends do none of this. ``castore serve`` passes one that
counts requests in Prometheus metrics and logs one line per request
(``docs/cli.md``, metrics and logs); the library itself depends on no metrics package.

Outcomes (:data:`OUTCOMES`), the same for both protocols:

===============  ==============================================================
``ok``           answered as asked (also an HTTP ``304``)
``not_found``    the blob is not stored
``invalid``      the request was refused: a malformed digest or message, a wrong
                 method or path, an upload over the limit, a range outside the blob
``store_error``  the store failed or returned bad data; :attr:`Request.store_error`
                 names the error's class
``cancelled``    the client went away or cancelled, or the server cancelled the call
                 when stopping; nothing was stored
``refused``      turned away because the server is shutting down
``error``        anything else: a bug, logged with its traceback where it happened
===============  ==============================================================
"""

from __future__ import annotations

import os
import re
import time
from typing import Final, Protocol

from castore.blobservice import WriteStats
from castore.errors import BlobNotFoundError, DataCorruptionError, StoreError

__all__ = [
    "OUTCOMES",
    "REQUEST_ID_HEADER",
    "Request",
    "RequestObserver",
    "request_id",
    "store_failure",
]

#: Every value :attr:`Request.outcome` takes.
OUTCOMES: Final = (
    "ok",
    "not_found",
    "invalid",
    "store_error",
    "cancelled",
    "refused",
    "error",
)

#: The header (HTTP) and metadata key (gRPC) that carries a request's id both ways.
REQUEST_ID_HEADER: Final = "x-request-id"

# What a client's id may look like to be kept: short, and nothing that could break a log
# line or a header. Anything else is replaced by a new id.
_SANE_ID = re.compile(r"[A-Za-z0-9._~:/+=@-]{1,128}")

# Errors that say the store failed, as opposed to the request or the server.
_STORE_SIDE = (StoreError, DataCorruptionError, BlobNotFoundError)


def request_id(incoming: str | None) -> str:
    """``incoming`` if it is a sane request id (1 to 128 letters, digits and
    ``._~:/+=@-``), else a new random one (32 hex digits)."""
    if incoming is not None and _SANE_ID.fullmatch(incoming):
        return incoming
    return os.urandom(16).hex()


def store_failure(exc: BaseException | None) -> BaseException | None:
    """The store's own error behind ``exc``: ``exc`` itself or an exception in its chain
    of causes that is a :class:`~castore.errors.StoreError`, a
    :class:`~castore.errors.DataCorruptionError` or a
    :class:`~castore.errors.BlobNotFoundError` (a chunk gone from under a blob);
    ``None`` if there is none."""
    for _ in range(8):  # causes are short chains; a cycle must not hang
        if exc is None or isinstance(exc, _STORE_SIDE):
            return exc
        exc = exc.__cause__
    return None


class Request:
    """One call or request, as a front end reports it to a :class:`RequestObserver`.

    ``protocol`` is ``"grpc"`` or ``"http"``; ``method`` the operation: ``Stat``,
    ``Read``, ``Put`` for both, ``Chunks`` (``GET /blobs/{digest}/chunks``) and
    ``other`` (an unknown path or method) for HTTP only; ``HEAD`` of a blob is a
    ``Stat``. The rest is filled in while the request is answered.
    """

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "digest",
        "duration",
        "error",
        "method",
        "outcome",
        "peer",
        "protocol",
        "request_id",
        "started",
        "status",
        "store_error",
        "write_stats",
    )

    def __init__(self, protocol: str, method: str, request_id: str, peer: str | None) -> None:
        self.protocol = protocol
        self.method = method
        #: The id sent back to the client and logged.
        self.request_id = request_id
        #: The client's address as the server sees it, if known.
        self.peer = peer
        #: :func:`time.perf_counter` when the request began.
        self.started = time.perf_counter()
        #: Seconds from start to the end of the answer (set by :meth:`finish`).
        self.duration = 0.0
        #: The blob's digest (32 bytes) once known: asked for, or stored by a ``Put``.
        self.digest: bytes | None = None
        #: Blob bytes received (uploads) and sent (reads).
        self.bytes_received = 0
        self.bytes_sent = 0
        #: What a ``Put`` stored, where the store can tell.
        self.write_stats: WriteStats | None = None
        #: One of :data:`OUTCOMES`.
        self.outcome = "ok"
        #: The protocol's own answer: a gRPC status name or an HTTP status code.
        self.status = ""
        #: The exception that ended the request, if one did.
        self.error: BaseException | None = None
        #: The class name of the store's error behind a ``store_error`` outcome.
        self.store_error: str | None = None

    def fail(self, exc: BaseException, outcome: str) -> None:
        """Record ``exc`` as the end of the request, with the ``outcome`` the front end
        gives it; a store failure behind it makes the outcome ``store_error``."""
        self.error = exc
        store = store_failure(exc)
        if store is not None:
            self.outcome = "store_error"
            self.store_error = type(store).__name__
        else:
            self.outcome = outcome

    def finish(self) -> None:
        """Stop the clock (the front ends call it just before
        :meth:`RequestObserver.finished`)."""
        self.duration = time.perf_counter() - self.started


class RequestObserver(Protocol):
    """What a front end tells about each request (see the module's documentation).

    Both methods are called on the event loop and must not block it.
    """

    def started(self, request: Request) -> None:
        """A request began: its protocol, method, id and peer are set."""
        ...

    def finished(self, request: Request) -> None:
        """The request's answer is complete (or it was cut off): every field is set."""
        ...
