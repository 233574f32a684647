"""``castore serve``: expose a store over gRPC (tvix/snix ``BlobService``), and HTTP.

::

    castore serve --store objectstore+s3://bucket?endpoint=http://127.0.0.1:8333 \\
                  --listen grpc+http://127.0.0.1:8000

listens on loopback by default (``grpc+unix:///path/to.sock`` for a unix socket), serves
TLS with ``--tls-cert`` and ``--tls-key``, and on SIGINT or SIGTERM stops taking calls,
lets the calls in flight finish (up to ``--grace`` seconds; a second signal cuts that
short) and exits 0. It prints ``castore serve: listening on URL`` on stderr once ready,
with the real port when ``--listen`` asked for port 0. ``--config FILE`` serves the
``root`` instance of a composition file (:mod:`castore.config`) instead of ``--store``.
``--http HOST:PORT`` also serves the HTTP gateway (:mod:`castore.http`, on uvicorn) over
the same store, in the same event loop; ``--no-grpc`` serves only that. It prints
``castore serve: HTTP gateway on URL`` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from castore.cli._command import Parser, Subparsers
from castore.cli._store import open_store
from castore.errors import InvalidAddressError
from castore.grpc.server import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_READ_MESSAGE_SIZE,
    RunningServer,
    serve,
)

__all__ = ["DEFAULT_LISTEN", "register", "run"]

#: Where ``castore serve`` listens unless told otherwise: loopback only.
DEFAULT_LISTEN = "grpc+http://127.0.0.1:8000"

log = logging.getLogger("castore.serve")


def register(sub: Subparsers, common: Parser) -> None:
    """Add ``serve``."""
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="serve a store over gRPC (tvix/snix BlobService)",
        description="Serve a store over gRPC, wire-compatible with tvix and snix castore.",
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="URL",
        help=f"grpc+http://HOST:PORT or grpc+unix:///PATH (default: {DEFAULT_LISTEN})",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument(
        "--max-message-size",
        type=int,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help=f"refuse larger messages (default: {DEFAULT_MAX_MESSAGE_SIZE})",
    )
    p.add_argument(
        "--read-message-size",
        type=int,
        default=DEFAULT_READ_MESSAGE_SIZE,
        metavar="BYTES",
        help=f"payload of each message Read sends (default: {DEFAULT_READ_MESSAGE_SIZE})",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long calls in flight may finish (default: 30)",
    )
    p.add_argument(
        "--http",
        default=None,
        type=_http_address,
        metavar="HOST:PORT",
        help="also serve the HTTP gateway (castore.http) here",
    )
    p.add_argument("--no-grpc", action="store_true", help="serve only --http, no gRPC")
    p.add_argument(
        "--max-upload",
        type=int,
        default=None,
        metavar="BYTES",
        help="the HTTP gateway's limit on one upload (default: 1 GiB)",
    )
    p.set_defaults(handler=run)


def _http_address(text: str) -> str:
    """Check ``--http HOST:PORT`` while parsing, so a typo is a usage error."""
    from castore.http import parse_http_address

    try:
        parse_http_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="castore serve: %(message)s")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidAddressError("--tls-cert and --tls-key go together")
    http_address = args.http
    if args.no_grpc and http_address is None:
        raise InvalidAddressError(
            "--no-grpc needs --http HOST:PORT: there would be nothing to serve"
        )
    service = await open_store(args)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    running: RunningServer | None = None

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.info("second signal: cancelling the calls in flight")
            if running is not None:
                running.servicer.give_up()
            return
        in_flight = running.servicer.calls_in_flight if running is not None else 0
        log.info(
            "%s: finishing %d call(s) in flight, then stopping",
            signal.Signals(signum).name,
            in_flight,
        )
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(service)
            if not args.no_grpc:
                running = await stack.enter_async_context(
                    serve(
                        service,
                        args.listen,
                        tls_cert=args.tls_cert,
                        tls_key=args.tls_key,
                        max_message_size=args.max_message_size,
                        read_message_size=args.read_message_size,
                        grace=args.grace,
                    )
                )
                print(f"castore serve: listening on {running.url}", file=sys.stderr, flush=True)
            if http_address is not None:
                from castore.http import DEFAULT_MAX_UPLOAD, serve_http

                max_upload = args.max_upload
                if max_upload is None:
                    max_upload = DEFAULT_MAX_UPLOAD
                http_url = await stack.enter_async_context(
                    serve_http(service, http_address, max_upload=max_upload, grace=args.grace)
                )
                print(f"castore serve: HTTP gateway on {http_url}", file=sys.stderr, flush=True)
            await stop.wait()
    finally:
        # Removed only now, so that a second signal can cut the drain short.
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
