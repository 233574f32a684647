"""glibc allocator settings for castore's own processes (the ``castore`` command).

glibc's malloc serves every block of 128 KiB or more from fresh ``mmap`` pages and hands
them back on ``free``, and it trims freed memory at the top of the heap once 128 KiB pile
up. castore's chunk, frame and gRPC message buffers are of that size, so each one lands
on new pages and every first touch of a page is a page fault: about 600 per MiB moved
over gRPC. Two settings keep those buffers in the heap, to be reused:

- ``M_MMAP_THRESHOLD`` = 32 MiB: blocks below it come from the heap;
- ``M_TRIM_THRESHOLD`` = 256 MiB: up to that much free memory stays with the process.

They are set together or not at all: setting either one alone switches off glibc's
adaptive threshold, and that alone is slower than the defaults.

:func:`tune_allocator` is called by the ``castore`` command at start (so also by ``castore
serve``), never by ``import castore``: a library must not change its host's allocator.
``CASTORE_NO_MALLOC_TUNING=1`` in the environment leaves the allocator as it is. It does
nothing on a C library other than glibc.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

__all__ = ["MMAP_THRESHOLD", "OPT_OUT_ENV", "TRIM_THRESHOLD", "tune_allocator"]

#: Set to ``1`` (or any value but ``0`` and the empty string) to keep glibc's defaults.
OPT_OUT_ENV = "CASTORE_NO_MALLOC_TUNING"
#: Blocks smaller than this come from the heap (glibc's upper bound on 64-bit systems).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap kept before it is returned to the kernel.
TRIM_THRESHOLD = 256 << 20

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _opted_out(environ: Mapping[str, str]) -> bool:
    return environ.get(OPT_OUT_ENV, "") not in ("", "0")


def _is_glibc() -> bool:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # not a name this system knows
        return False
    return version is not None and version.startswith("glibc ")


def tune_allocator(environ: Mapping[str, str] | None = None) -> bool:
    """Set both thresholds in this process; ``True`` if they were set.

    ``False`` when ``environ`` (``os.environ`` by default) opts out, when the C library is
    not glibc, or when glibc refused a value (the trim threshold is set only once the mmap
    threshold was accepted, so a refusal leaves the defaults in place).
    """
    if _opted_out(os.environ if environ is None else environ) or not _is_glibc():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
