"""Serving a :class:`~castore.BlobService` over gRPC: :func:`serve`, on grpc.aio.

:func:`serve` runs a :class:`~castore.grpc.BlobServiceServicer` (wire-compatible with tvix
and snix) on a socket as an async context manager::

    async with castore.grpc.serve(service, "grpc+http://127.0.0.1:0") as server:
        client = castore.from_addr(server.url)

- TCP (``grpc+http://host:port``, port 0 picks a free one), unix sockets
  (``grpc+unix:///path``: a stale socket file is replaced, a live server's never) and TLS
  (``grpc+https://`` or a certificate and key).
- A message larger than ``max_message_size`` is refused with ``RESOURCE_EXHAUSTED`` from
  its length prefix, before its bytes are buffered (grpc's own receive limit).
- Leaving :func:`serve` stops listening, sends every connection HTTP/2's ``GOAWAY`` so that
  clients take new calls elsewhere, lets the calls in flight finish for up to ``grace``
  seconds, then cancels the rest; a ``Put`` cut off this way stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import ssl
import stat
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import grpc
import grpc.aio

from castore.blobservice import BlobService
from castore.errors import InvalidAddressError
from castore.grpc._address import Endpoint, parse_endpoint
from castore.grpc._channel import target
from castore.grpc._runtime import hold_engine
from castore.grpc._servicer import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_READ_MESSAGE_SIZE,
    PACKAGES,
    BlobServiceServicer,
)
from castore.observe import RequestObserver

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_READ_MESSAGE_SIZE",
    "PACKAGES",
    "BlobServiceServicer",
    "RunningServer",
    "serve",
    "server_credentials",
    "server_ssl_context",
]

log = logging.getLogger("castore.grpc")


def server_credentials(cert_file: str, key_file: str) -> grpc.ServerCredentials:
    """TLS credentials for the server from PEM files (blocking: call it in a thread).

    grpc offers TLS 1.2 or later and ALPN ``h2``, which gRPC clients (grpcio, tonic)
    insist on.
    """
    with open(cert_file, "rb") as f:
        cert = f.read()
    with open(key_file, "rb") as f:
        key = f.read()
    return grpc.ssl_server_credentials([(key, cert)])


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """Deprecated: an :class:`ssl.SSLContext` from PEM files, which :func:`serve` no longer
    takes (grpc reads the files itself); give ``tls_cert=``/``tls_key=`` or
    :func:`server_credentials` instead. Removed in the next release."""
    warnings.warn(
        "castore.grpc.server.server_ssl_context is deprecated: serve() runs on grpcio, which "
        "takes no ssl.SSLContext; pass tls_cert=/tls_key= or server_credentials(...)",
        DeprecationWarning,
        stacklevel=2,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["h2"])
    return ctx


@dataclass
class RunningServer:
    """What :func:`serve` yields: where the server listens, and its servicer."""

    endpoint: Endpoint
    servicer: BlobServiceServicer
    server: grpc.aio.Server = field(repr=False)

    @property
    def url(self) -> str:
        """The bound address as a ``grpc+http://``, ``grpc+https://`` or ``grpc+unix://``
        URL (with the real port when asked for port 0)."""
        return self.endpoint.url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.asynccontextmanager
async def serve(
    service: BlobService,
    listen: str = "grpc+http://127.0.0.1:0",
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    credentials: grpc.ServerCredentials | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    read_message_size: int = DEFAULT_READ_MESSAGE_SIZE,
    grace: float = 30.0,
    ssl_context: Any = None,
    observer: RequestObserver | None = None,
) -> AsyncIterator[RunningServer]:
    """Serve ``service`` on ``listen`` for the duration of the ``async with`` block.

    ``listen`` is ``grpc+http://host:port`` (port 0 picks a free one) or
    ``grpc+unix:///path``; ``grpc+https://host:port`` or ``tls_cert``/``tls_key`` (PEM
    files) or ready-made grpc ``credentials`` turn TLS on. On leaving the block the server
    stops listening, refuses new calls, waits up to ``grace`` seconds for the calls in
    flight, then closes. ``observer`` is told about every call (:mod:`castore.observe`).
    """
    endpoint, options = parse_endpoint(listen)
    if options:
        raise InvalidAddressError(f"a listen address takes no options, got {sorted(options)}")
    if ssl_context is not None:
        raise TypeError(
            "ssl_context is not supported: castore's gRPC server runs on grpcio, which takes "
            "certificates, not an ssl.SSLContext; give tls_cert= and tls_key= (PEM files) "
            "or credentials=grpc.ssl_server_credentials(...)"
        )
    if (tls_cert is None) != (tls_key is None):
        raise InvalidAddressError("TLS needs both a certificate and a key file")
    if credentials is None and tls_cert is not None and tls_key is not None:
        credentials = await anyio.to_thread.run_sync(server_credentials, tls_cert, tls_key)
    if endpoint.tls and credentials is None:
        raise InvalidAddressError(f"{listen!r} asks for TLS: give a certificate and a key")
    tls = credentials is not None
    if endpoint.host is not None and not tls and not _is_loopback(endpoint.host):
        log.warning("serving without TLS on %s, which is not a loopback address", endpoint.host)

    servicer = BlobServiceServicer(
        service,
        max_message_size=max_message_size,
        read_message_size=read_message_size,
        observer=observer,
    )
    hold_engine()
    server = grpc.aio.server(
        handlers=[servicer.generic_handler],
        options=[
            ("grpc.max_receive_message_length", max_message_size),
            ("grpc.max_send_message_length", -1),
            # grpc shares ports between processes by default: a second server on a port
            # in use would start without an error. Refuse that.
            ("grpc.so_reuseport", 0),
        ],
    )
    if endpoint.path is not None:
        await anyio.to_thread.run_sync(_clear_unix_path, endpoint.path)
    port = _bind(server, endpoint, credentials)
    bound = endpoint if endpoint.path is not None else Endpoint(endpoint.host, port, tls=tls)
    await server.start()
    running = RunningServer(bound, servicer, server)
    log.debug("castore gRPC server listening on %s", bound.url)
    try:
        yield running
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(running, grace)


def _bind(server: grpc.aio.Server, endpoint: Endpoint, creds: grpc.ServerCredentials | None) -> int:
    address = target(endpoint)
    try:
        if creds is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, creds)
    except RuntimeError as e:  # grpc says only that it failed to bind
        code = _why_not_bound(endpoint) or errno.EADDRNOTAVAIL
        raise OSError(code, f"cannot listen on {endpoint.url}: {os.strerror(code)}") from e


def _why_not_bound(endpoint: Endpoint) -> int | None:
    """The errno of binding ``endpoint`` ourselves (grpc does not say why it could not):
    ``EADDRINUSE`` for a port in use, ``EACCES`` for a privileged port; ``None`` when the
    probe binds."""
    if endpoint.path is not None:
        return None  # a unix socket's path was checked before (_clear_unix_path)
    assert endpoint.host is not None
    try:
        # Numeric hosts only: a name would need a lookup, which may block the loop.
        infos = socket.getaddrinfo(
            endpoint.host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    except OSError:
        return None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(address)
            except OSError as e:
                return e.errno
    return None


def _clear_unix_path(path: str) -> None:
    """Make way for a unix socket at ``path``: remove a stale socket file left by a server
    that died, but never a live server's socket nor a file that is not a socket (grpc
    itself would unlink any socket file there)."""
    if not os.path.lexists(path):
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise InvalidAddressError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: stale
        else:
            raise OSError(errno.EADDRINUSE, f"a server is listening on {path} already")


async def _stop(running: RunningServer, grace: float) -> None:
    servicer, server = running.servicer, running.server
    # grpc's stop closes the listeners, sends GOAWAY and cancels what is left after the
    # grace period; the servicer turns away calls that arrive meanwhile and counts the
    # calls in flight, so that a second signal (give_up) can cut the wait short. When the
    # grace runs out, grpc's own stop cancels the calls: a second stop at that moment,
    # racing the first one's grace timer, crashed the process (SIGSEGV in grpc's
    # shutdown, twice in four runs of the tests), so only a second signal, long before
    # the timer, stops grpc's server at once.
    stopping = asyncio.ensure_future(server.stop(grace))
    try:
        if not await servicer.drain(grace):
            log.warning(
                "%d calls still running after %.1f s; cancelling them",
                servicer.calls_in_flight,
                grace,
            )
            servicer.cancel_calls()
            if servicer.gave_up:
                await server.stop(None)
    finally:
        await stopping
    if running.endpoint.path is not None:
        await anyio.Path(running.endpoint.path).unlink(missing_ok=True)
