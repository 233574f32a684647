"""``castore serve``'s logs: one line per request, and the format of every line.

Each finished request is one record on the ``castore.serve.requests`` logger
(:func:`log_request`): INFO, or WARNING for the outcomes ``store_error`` and ``error``.
Its fields (``docs/cli.md``, metrics and logs) are in the record's ``castore_request``
attribute, for any formatter or filter of the caller's; ``--log-format json`` writes every
record as one JSON object a line, ``text`` (the default) as ``castore serve: message``
with the request's fields as ``key=value``.

When ``castore serve`` sets up logging (:func:`start_logging`, only if the program has
set up none), the records go through a queue to a thread that formats and writes them,
so that a slow log reader never holds up the event loop.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Final, TextIO

from castore.observe import Request

__all__ = [
    "FORMATS",
    "LEVELS",
    "QUEUE_LIMIT",
    "REQUEST_LOGGER",
    "WRITE_INTERVAL",
    "JsonFormatter",
    "log_request",
    "request_fields",
    "start_logging",
]

#: The logger of the request lines.
REQUEST_LOGGER: Final = "castore.serve.requests"
#: The values of ``--log-format``.
FORMATS: Final = ("text", "json")
#: The values of ``--log-level``.
LEVELS: Final = ("debug", "info", "warning", "error")

_log = logging.getLogger(REQUEST_LOGGER)
_TROUBLE: Final = frozenset(("store_error", "error"))
# Outcomes whose exception says nothing the other fields do not.
_QUIET: Final = frozenset(("ok", "not_found"))


class _Fields(dict[str, object]):
    """A request's fields; as text (``%s``), ``key=value`` pairs of the ones set."""

    def __str__(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.items() if value is not None)


def request_fields(req: Request) -> dict[str, object]:
    """The fields of a request's log line, in their order."""
    stats = req.write_stats
    return _Fields(
        request_id=req.request_id,
        protocol=req.protocol,
        method=req.method,
        outcome=req.outcome,
        status=req.status,
        duration=round(req.duration, 6),
        bytes_received=req.bytes_received,
        bytes_sent=req.bytes_sent,
        digest=req.digest.hex() if req.digest is not None else None,
        chunks_written=stats.new_chunks if stats is not None else None,
        chunks_deduplicated=stats.deduplicated_chunks if stats is not None else None,
        store_error=req.store_error,
        error=_describe(req.error) if req.outcome not in _QUIET and req.error else None,
        peer=req.peer,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def log_request(req: Request) -> None:
    """Log one finished request (see the module's documentation)."""
    level = logging.WARNING if req.outcome in _TROUBLE else logging.INFO
    if _log.isEnabledFor(level):
        fields = request_fields(req)
        # makeRecord and handle rather than log(): the same record and filters, without
        # the search of the call stack for the caller's line, a tenth of the cost.
        record = _log.makeRecord(
            REQUEST_LOGGER, level, __file__, 0, "request %s", (fields,), None,
            extra={"castore_request": fields},
        )  # fmt: skip
        _log.handle(record)


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, a request's fields when it is one, and ``exception`` when there is
    one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "castore_request", None)
        if isinstance(fields, dict):
            doc["message"] = "request"
            doc.update(fields)
        else:
            doc["message"] = record.getMessage()
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def _iso_time(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


#: Records waiting for the writing thread; past that, new ones are dropped (and counted).
QUEUE_LIMIT: Final = 4096
#: Seconds between the writing thread's rounds.
WRITE_INTERVAL: Final = 0.05


class _Writer(logging.Handler):
    """Queues records for a thread that formats and writes them, a batch at a time.

    The thread wakes every :data:`WRITE_INTERVAL` seconds and writes what came meanwhile
    in one call, so that logging a record costs the event loop a queue put and no thread
    switch. Bounded: a log reader that stops reading blocks only that thread, and once
    :data:`QUEUE_LIMIT` records wait, new ones are dropped; the thread says how many when
    it catches up. Neither the event loop nor memory waits on the reader.
    """

    def __init__(self, formatter: logging.Formatter, stream: TextIO) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._stream = stream
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._dropped = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="castore-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if self._queue.qsize() >= QUEUE_LIMIT:
            self._dropped += 1
        else:
            self._queue.put(record)

    def _run(self) -> None:
        while True:
            stopping = self._stopping.wait(WRITE_INTERVAL)
            self._write_batch()
            if stopping:
                return

    def _write_batch(self) -> None:
        lines = []
        dropped, self._dropped = self._dropped, 0
        if dropped:
            lines.append(
                self.format(
                    logging.LogRecord(
                        "castore.serve", logging.WARNING, __file__, 0,
                        "%d log records dropped: nothing was reading the log fast enough",
                        (dropped,), None,
                    )
                )
            )  # fmt: skip
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                break
            try:
                lines.append(self.format(record))
            except Exception:
                self.handleError(record)
        if lines:
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing to tell it
                pass

    def stop(self, timeout: float) -> None:
        """Write what is queued (waiting up to ``timeout`` seconds for that), then stop."""
        self._stopping.set()
        self._thread.join(timeout)


def start_logging(fmt: str, level: str = "info") -> Callable[[], None] | None:
    """Send every record at ``level`` (one of :data:`LEVELS`) or above to stderr in format
    ``fmt`` (``text`` or ``json``), through a writing thread; returns the function that
    flushes and stops it.

    Does nothing (and returns ``None``) when the program has set up logging itself:
    ``castore.cli.main`` called from a host program keeps the host's configuration.
    """
    root = logging.getLogger()
    if root.handlers:
        return None
    formatter = (
        JsonFormatter() if fmt == "json" else logging.Formatter("castore serve: %(message)s")
    )
    writer = _Writer(formatter, sys.stderr)
    root.addHandler(writer)
    root.setLevel(level.upper())

    def stop() -> None:
        root.removeHandler(writer)
        writer.stop(timeout=5.0)

    return stop
