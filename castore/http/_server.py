"""Running the gateway on uvicorn inside the caller's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anyio

from castore.blobservice import BlobService
from castore.http._app import DEFAULT_MAX_UPLOAD, app
from castore.http._asgi import Receive, Scope, Send
from castore.http._range import number
from castore.observe import RequestObserver

__all__ = ["ASGIApp", "parse_http_address", "serve_asgi", "serve_http"]

#: An ASGI application, as :func:`serve_asgi` runs it.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("castore.http")


def parse_http_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6; port 0 picks a free one).

    Raises :class:`ValueError` naming the expected form.
    """
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = number(port_text) if sep else None
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
    observer: RequestObserver | None = None,
) -> AsyncIterator[str]:
    """Serve :func:`app` for ``service`` on uvicorn at ``address``, in this asyncio loop.

    Yields the URL it listens on (with the real port when ``address`` asked for port 0).
    Leaving the block stops taking connections and gives the requests in flight up to
    ``grace`` seconds to finish. uvicorn (a dependency of castore) is driven
    programmatically: it installs no signal handlers and leaves logging configuration to
    the caller, so it can run beside a gRPC server in one process (``castore serve``).
    ``observer`` is told about every request (:mod:`castore.observe`).
    """
    gateway = app(service, max_upload=max_upload, observer=observer)
    async with serve_asgi(gateway, address, grace=grace, access_log=access_log) as url:
        yield url


@contextlib.asynccontextmanager
async def serve_asgi(
    application: ASGIApp,
    address: str = "127.0.0.1:8080",
    *,
    grace: float = 30.0,
    access_log: bool = True,
) -> AsyncIterator[str]:
    """Serve any ASGI ``application`` as :func:`serve_http` serves the gateway (a gateway
    composed with other routes, say); yields the URL it listens on."""
    try:
        import uvicorn
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the HTTP gateway's server needs uvicorn, which is not installed: pip install uvicorn"
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
            application,
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
