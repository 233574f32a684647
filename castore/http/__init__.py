"""An HTTP gateway to a :class:`~castore.BlobService`, as a plain ASGI application.

:func:`app` wraps a service in an ASGI app that any asyncio web server or framework can
run or mount (uvicorn, hypercorn, Starlette's ``Mount``, FastAPI's ``app.mount``). It needs
no web framework; :func:`serve_http` runs it on uvicorn (``castore serve --http``).

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
  large chunked blob fetches only the chunks it covers. The body is read 4 MiB at a time
  into one reused buffer and goes out in pieces of ``piece_size`` bytes, each sent only
  when the server has taken the previous one
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

The modules, one job each: ``_app`` routes requests, ``_reads`` answers blob and chunk
reads, ``_uploads`` stores uploads, ``_range`` reads ``Range`` headers and numbers,
``_asgi`` holds the ASGI plumbing and the error answers, ``_observed`` reports each
request to an observer (:mod:`castore.observe`) and sends its id back as the
``x-request-id`` header, ``_server`` runs uvicorn.
"""

from castore.http._app import DEFAULT_MAX_UPLOAD, DEFAULT_PIECE_SIZE, BlobGateway, app
from castore.http._asgi import Message, Receive, Scope, Send
from castore.http._range import UNSATISFIABLE, parse_range
from castore.http._server import ASGIApp, parse_http_address, serve_asgi, serve_http

__all__ = [
    "DEFAULT_MAX_UPLOAD",
    "DEFAULT_PIECE_SIZE",
    "UNSATISFIABLE",
    "ASGIApp",
    "BlobGateway",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "app",
    "parse_http_address",
    "parse_range",
    "serve_asgi",
    "serve_http",
]
