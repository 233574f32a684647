"""A small Starlette service that keeps uploaded files in castore and serves them back.

Run it::

    python examples/upload_service.py --store objectstore+file:///tmp/cas --port 8000

and use it::

    curl -T report.pdf http://127.0.0.1:8000/files/report.pdf      # upload (PUT)
    curl http://127.0.0.1:8000/files                               # list names
    curl -r 0-99 http://127.0.0.1:8000/files/report.pdf            # a range of it
    curl http://127.0.0.1:8000/cas/blobs/<hex>                     # by digest

It shows the two ways an application embeds castore:

- **the BlobService directly**: ``PUT /files/{name}`` streams the request body into
  ``open_write()`` and records ``name -> digest`` (a dict here; an application would use
  its database). If the client goes away mid-upload, Starlette raises ``ClientDisconnect``
  out of ``request.stream()``, the writer's ``async with`` aborts, and nothing is stored;
- **the ASGI gateway**: :func:`castore.http.app` is mounted at ``/cas`` for reads by digest,
  and ``GET /files/{name}`` hands the request to the same gateway with the path rewritten to
  the file's digest, so downloads by name get its ``Range``, ``ETag`` and ``304`` handling
  without the application writing any of it.

With ``--port 0`` the system picks a free port; the first line printed is the service's URL.
"""

from __future__ import annotations

import argparse
import socket
import sys

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

import castore
import castore.http


class _TooLarge(Exception):
    pass


class FileCatalog:
    """Names of uploaded files and the blobs that hold them."""

    def __init__(self, service: castore.BlobService, max_upload: int) -> None:
        self.service = service
        self.max_upload = max_upload
        self.names: dict[str, tuple[castore.B3Digest, int]] = {}
        self.gateway = castore.http.app(service, max_upload=max_upload)

    async def upload(self, request: Request) -> Response:
        name = request.path_params["name"]
        size = 0
        try:
            # An exception inside the block aborts the writer: no partial blob is stored.
            async with await self.service.open_write() as writer:
                async for piece in request.stream():
                    size += len(piece)
                    if size > self.max_upload:
                        raise _TooLarge
                    await writer.write(piece)
        except _TooLarge:
            return JSONResponse({"error": "too_large"}, status_code=413)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening any more
        digest = await writer.close()
        self.names[name] = (digest, size)
        return JSONResponse(
            {
                "name": name,
                "digest": str(digest),
                "size": size,
                "blob": f"/cas/blobs/{digest.hex()}",
            },
            status_code=201,
        )

    async def listing(self, request: Request) -> Response:
        return JSONResponse(
            {name: {"digest": str(d), "size": n} for name, (d, n) in sorted(self.names.items())}
        )

    async def download(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a file by name through the gateway (ranges, ETag, HEAD included)."""
        name = scope["path_params"]["name"]
        entry = self.names.get(name)
        if entry is None:
            await JSONResponse({"error": "no such file", "name": name}, status_code=404)(
                scope, receive, send
            )
            return
        digest, _ = entry
        inner = dict(scope, path=f"/blobs/{digest.hex()}", root_path="")
        await self.gateway(inner, receive, send)


class _Download:
    """An ASGI endpoint (Starlette calls classes with ``scope, receive, send``)."""

    def __init__(self, catalog: FileCatalog) -> None:
        self.catalog = catalog

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.catalog.download(scope, receive, send)


def build_app(service: castore.BlobService, *, max_upload: int = 1 << 30) -> Starlette:
    """The service's Starlette application over ``service``."""
    catalog = FileCatalog(service, max_upload)
    return Starlette(
        routes=[
            Route("/files", catalog.listing, methods=["GET"]),
            Route("/files/{name:path}", catalog.upload, methods=["PUT", "POST"]),
            Route("/files/{name:path}", _Download(catalog), methods=["GET", "HEAD"]),
            Mount("/cas", app=catalog.gateway),
        ]
    )


async def serve(store: str, host: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    async with castore.from_addr(store) as service:
        server = uvicorn.Server(
            uvicorn.Config(build_app(service), log_level="warning", lifespan="off")
        )
        print(f"http://{host}:{bound}", flush=True)
        await server.serve(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="castore upload service (Starlette)")
    parser.add_argument("--store", default="memory://", help="castore URL (default memory://)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)
    anyio.run(serve, args.store, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
