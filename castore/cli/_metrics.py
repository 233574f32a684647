"""``castore serve``'s Prometheus metrics: what its front ends report, counted.

:class:`ServeMetrics` holds the metrics of one server in a registry of its own (not
prometheus-client's global one), so that several servers in one process count apart.
It is the :class:`~castore.observe.RequestObserver` that ``castore serve`` gives both the
gRPC servicer and the HTTP gateway; :func:`metrics_app` serves the registry at
``/metrics`` as an ASGI application, alone (``--metrics``) or in front of the gateway
(``--http``). The names and labels are listed in ``docs/cli.md`` (metrics and logs),
which operators' dashboards and alerts are written against: change neither lightly.

Each request costs a few dictionary look-ups and lock-protected additions: the labelled
children of every (protocol, method) are made once and kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.asgi import make_asgi_app

from castore.http import ASGIApp, Receive, Scope, Send
from castore.http._asgi import route_path
from castore.observe import OUTCOMES, Request

__all__ = ["BUCKETS", "METHODS", "ServeMetrics", "metrics_app"]

#: The buckets of the duration histogram, in seconds: 1 ms to 60 s.
BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: The ``method`` labels of each protocol, whose series exist from the start (at 0).
METHODS: Final = {
    "grpc": ("Stat", "Read", "Put"),
    "http": ("Stat", "Read", "Put", "Chunks", "other"),
}


class _Series:
    """The labelled children of one (protocol, method)."""

    __slots__ = ("duration", "in_flight", "outcomes", "received", "sent")

    def __init__(self, metrics: ServeMetrics, protocol: str, method: str) -> None:
        self.in_flight = metrics.in_flight.labels(protocol, method)
        self.duration = metrics.duration.labels(protocol, method)
        self.received = metrics.bytes_received.labels(protocol, method)
        self.sent = metrics.bytes_sent.labels(protocol, method)
        self.outcomes = {o: metrics.requests.labels(protocol, method, o) for o in OUTCOMES}


class ServeMetrics:
    """The metrics of one server, in :attr:`registry`; a
    :class:`~castore.observe.RequestObserver`.

    ``on_finished`` (if given) is called with each finished request after it is counted:
    ``castore serve`` logs it there.
    """

    def __init__(self, on_finished: Callable[[Request], None] | None = None) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._on_finished = on_finished
        self.requests = Counter(
            "castore_requests",
            "Requests answered, by protocol, method and outcome.",
            ("protocol", "method", "outcome"),
            registry=r,
        )
        self.duration = Histogram(
            "castore_request_duration_seconds",
            "Seconds from a request's start to the end of its answer.",
            ("protocol", "method"),
            buckets=BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "castore_requests_in_flight",
            "Requests being answered now.",
            ("protocol", "method"),
            registry=r,
        )
        self.bytes_received = Counter(
            "castore_bytes_received",
            "Blob bytes received in uploads (Put).",
            ("protocol", "method"),
            registry=r,
        )
        self.bytes_sent = Counter(
            "castore_bytes_sent",
            "Blob bytes sent in answers to reads (Read).",
            ("protocol", "method"),
            registry=r,
        )
        self.store_errors = Counter(
            "castore_store_errors",
            "Requests ended by a failure of the store, by the error's class.",
            ("kind",),
            registry=r,
        )
        self.chunks = Counter(
            "castore_chunks",
            "Chunks of the blobs Put stored: written, or deduplicated (stored already).",
            ("outcome",),
            registry=r,
        )
        self._written = self.chunks.labels("written")
        self._deduplicated = self.chunks.labels("deduplicated")
        self._series: dict[tuple[str, str], _Series] = {}
        for protocol, methods in METHODS.items():
            for method in methods:
                self._of(protocol, method)

    def _of(self, protocol: str, method: str) -> _Series:
        series = self._series.get((protocol, method))
        if series is None:
            series = self._series[(protocol, method)] = _Series(self, protocol, method)
        return series

    def started(self, request: Request) -> None:
        self._of(request.protocol, request.method).in_flight.inc()

    def finished(self, request: Request) -> None:
        series = self._of(request.protocol, request.method)
        series.in_flight.dec()
        series.duration.observe(request.duration)
        outcome = series.outcomes.get(request.outcome)
        if outcome is None:  # not one of OUTCOMES: a front end's bug, still counted
            outcome = self.requests.labels(request.protocol, request.method, request.outcome)
        outcome.inc()
        if request.bytes_received:
            series.received.inc(request.bytes_received)
        if request.bytes_sent:
            series.sent.inc(request.bytes_sent)
        if request.store_error is not None:
            self.store_errors.labels(request.store_error).inc()
        stats = request.write_stats
        if stats is not None:
            if stats.new_chunks:
                self._written.inc(stats.new_chunks)
            if stats.deduplicated_chunks:
                self._deduplicated.inc(stats.deduplicated_chunks)
        if self._on_finished is not None:
            self._on_finished(request)


def metrics_app(registry: CollectorRegistry, fallback: ASGIApp | None = None) -> ASGIApp:
    """An ASGI application that serves ``registry`` at ``/metrics`` (Prometheus' text
    format, or OpenMetrics when the scraper asks for it) and passes every other request
    to ``fallback``: 404 without one."""
    exposition = make_asgi_app(registry)

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http" and route_path(scope) == "/metrics":
            await exposition(scope, receive, send)
        elif fallback is not None:
            await fallback(scope, receive, send)
        elif scope.get("type") == "http":
            await _not_found(send)

    return application


async def _not_found(send: Send) -> None:
    body = b"only /metrics is served here\n"
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
