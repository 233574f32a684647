"""grpc.aio's engine, held for the life of the process.

grpc.aio starts a process-wide engine (gRPC core and a poller thread that wakes the event
loops) with its first channel or server, and shuts it down when the last of them is
released. The shutdown joins the poller thread on whatever thread lets go of that last
object, often the event loop's, and closes the socket the loops listen on while a wakeup
for it may still be queued: the loop then reads a closed file descriptor. A process that
opens and closes clients one after another would start and stop the engine each time.
castore takes one reference of its own to the engine, with grpc.aio's public
``init_grpc_aio``, the first time it opens a channel or a server, so the engine stays up
until the process exits.
"""

from __future__ import annotations

import threading

import grpc.aio

__all__ = ["hold_engine"]

_lock = threading.Lock()
_held = False


def hold_engine() -> None:
    """Take castore's reference to grpc.aio's engine, once per process (in a running loop)."""
    global _held
    if _held:
        return
    with _lock:
        if not _held:
            grpc.aio.init_grpc_aio()
            _held = True
