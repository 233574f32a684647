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

Both front ends report every request to one :class:`~castore.cli._metrics.ServeMetrics`:
Prometheus metrics, served at ``/metrics`` on the ``--http`` port and, with
``--metrics HOST:PORT``, on a port of their own (``castore serve: metrics on URL``); and
one log line per request (:mod:`castore.cli._logs`, ``--log-format text|json``,
``--log-level``).

Nothing says it is listening before every server is: both addresses are bound first, and
a failure to bind (an address in use, a port it may not take) exits 9 naming the address,
with nothing printed as listening. A missing dependency of the gateway exits 10 before
anything starts; a listen address that is not one (``--listen http://…``) is a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator

import anyio
import prometheus_client

from castore.blobservice import BlobService
from castore.cli._command import Parser, Subparsers
from castore.cli._errors import ExitCode, Failure
from castore.cli._logs import FORMATS, LEVELS, log_request, start_logging
from castore.cli._metrics import ServeMetrics, metrics_app
from castore.cli._store import open_store
from castore.errors import CastoreError, InvalidAddressError
from castore.grpc._address import parse_endpoint
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
        type=_listen_address,
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
        "--metrics",
        default=None,
        type=_http_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at /metrics here (with --http they are also "
        "served on its port)",
    )
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="stderr log lines as text or as one JSON object each (default: text)",
    )
    p.add_argument(
        "--log-level",
        choices=LEVELS,
        default="info",
        help="the least level logged: info logs a line per request, warning only the "
        "requests that failed on the store or a bug (default: info)",
    )
    p.add_argument(
        "--max-upload",
        type=int,
        default=None,
        metavar="BYTES",
        help="the HTTP gateway's limit on one upload (default: 1 GiB)",
    )
    p.set_defaults(handler=run)


def _listen_address(text: str) -> str:
    """Check ``--listen URL`` while parsing, so a wrong address is a usage error that
    says what a listen address looks like."""
    try:
        _, options = parse_endpoint(text)
    except InvalidAddressError as e:
        raise argparse.ArgumentTypeError(f"not a listen address: {e}") from e
    if options:
        raise argparse.ArgumentTypeError(
            f"a listen address takes no options, got {sorted(options)} in {text!r}"
        )
    return text


def _http_address(text: str) -> str:
    """Check ``--http HOST:PORT`` while parsing, so a typo is a usage error."""
    from castore.http import parse_http_address

    try:
        parse_http_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


async def _check_arguments(args: argparse.Namespace) -> None:
    """What the command line asks that cannot work, said before anything starts."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise Failure(ExitCode.USAGE, "--tls-cert and --tls-key go together")
    if args.no_grpc and args.http is None:
        raise Failure(
            ExitCode.USAGE, "--no-grpc needs --http HOST:PORT: there would be nothing to serve"
        )
    for what, path in (("certificate", args.tls_cert), ("key", args.tls_key)):
        if path is not None:
            try:
                await anyio.Path(path).read_bytes()
            except OSError as e:
                raise Failure(
                    ExitCode.LOCAL_IO, f"cannot read the TLS {what} {path}: {e.strerror or e}"
                ) from e
    if args.http is not None or args.metrics is not None:
        try:
            import uvicorn  # noqa: F401
        except ImportError as e:
            what = "the HTTP gateway (--http)" if args.http is not None else "--metrics"
            raise Failure(
                ExitCode.MISSING_DEPENDENCY,
                f"{what} needs uvicorn, which is not installed here: "
                f"pip install uvicorn (or castore[http]) ({e})",
            ) from e


@contextlib.asynccontextmanager
async def _listening(address: str) -> AsyncIterator[None]:
    """Turn a failure to bind ``address`` into the listening exit code, naming it."""
    try:
        yield
    except InvalidAddressError as e:
        raise Failure(ExitCode.USAGE, f"cannot serve on {address}: {e}") from e
    except CastoreError:
        raise
    except ssl.SSLError as e:
        raise Failure(ExitCode.LOCAL_IO, f"cannot use the TLS certificate and key: {e}") from e
    except OSError as e:
        # asyncio's message repeats the address in its own words: the errno says it all.
        why = os.strerror(e.errno) if e.errno else str(e)
        raise Failure(ExitCode.LISTEN, f"cannot listen on {address}: {why}") from e


async def _start(
    args: argparse.Namespace,
    service: BlobService,
    metrics: ServeMetrics,
    stack: contextlib.AsyncExitStack,
) -> tuple[RunningServer | None, str | None, str | None]:
    """Bind and start every server asked for; their URLs are printed by the caller only
    once all of them are up."""
    from castore.http import DEFAULT_MAX_UPLOAD, app, serve_asgi

    # The metrics' own port first, so that it closes last: /metrics answers while the
    # other servers drain their calls.
    metrics_url = None
    if args.metrics is not None:
        async with _listening("http://" + args.metrics):
            metrics_url = await stack.enter_async_context(
                serve_asgi(
                    metrics_app(metrics.registry),
                    args.metrics,
                    grace=min(args.grace, 5.0),
                    access_log=False,
                )
            )
    running = None
    if not args.no_grpc:
        async with _listening(args.listen):
            running = await stack.enter_async_context(
                serve(
                    service,
                    args.listen,
                    tls_cert=args.tls_cert,
                    tls_key=args.tls_key,
                    max_message_size=args.max_message_size,
                    read_message_size=args.read_message_size,
                    grace=args.grace,
                    observer=metrics,
                )
            )
    http_url = None
    if args.http is not None:
        max_upload = DEFAULT_MAX_UPLOAD if args.max_upload is None else args.max_upload
        gateway = app(service, max_upload=max_upload, observer=metrics)
        async with _listening("http://" + args.http):
            http_url = await stack.enter_async_context(
                serve_asgi(
                    metrics_app(metrics.registry, gateway),
                    args.http,
                    grace=args.grace,
                    # Every request is logged by the observer, with its id.
                    access_log=False,
                )
            )
    return running, http_url, metrics_url


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; the exit code."""
    await _check_arguments(args)
    # Not the *_created series of every counter: they double a scrape and say nothing
    # here. Process-wide, which this command owns (the library never changes it).
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    stop_logging = start_logging(args.log_format, args.log_level)
    try:
        return await _serve(args)
    finally:
        if stop_logging is not None:
            stop_logging()


async def _serve(args: argparse.Namespace) -> int:
    service = await open_store(args)
    metrics = ServeMetrics(on_finished=log_request)

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
            running, http_url, metrics_url = await _start(args, service, metrics, stack)
            if running is not None:
                print(f"castore serve: listening on {running.url}", file=sys.stderr, flush=True)
            if http_url is not None:
                print(f"castore serve: HTTP gateway on {http_url}", file=sys.stderr, flush=True)
            if metrics_url is not None:
                print(
                    f"castore serve: metrics on {metrics_url}/metrics", file=sys.stderr, flush=True
                )
            await stop.wait()
    finally:
        # Removed only now, so that a second signal can cut the drain short.
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
