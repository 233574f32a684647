"""The ``castore`` command tunes glibc's allocator at start; ``import castore`` never does.

Whether a block came from ``mmap`` is read from glibc's own counters (``mallinfo2``'s
``hblks``) in a fresh interpreter: with glibc's defaults a 1 MiB ``malloc`` is mapped, with
castore's settings (mmap threshold 32 MiB) it comes from the heap.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from castore.cli._allocator import OPT_OUT_ENV

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="the allocator settings are glibc's",
)

PROBE = """
import ctypes, os, sys

class _Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _Info
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = (ctypes.c_size_t,)
_libc.free.argtypes = (ctypes.c_void_p,)

def mapped(size):
    before = _libc.mallinfo2().hblks
    block = _libc.malloc(size)
    after = _libc.mallinfo2().hblks
    _libc.free(block)
    return "mapped" if after > before else "heap"
"""


def _run(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "CASTORE_"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE + code],
        capture_output=True,
        text=True,
        env={**environ, **env},
        timeout=120,
    )
    assert out.returncode in (0, 1), out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_importing_castore_leaves_the_allocator_alone() -> None:
    code = "import castore, castore.cli, castore.grpc, castore.http\nprint(mapped(1 << 20))"
    assert _run(code) == "mapped"


def test_tuning_keeps_large_blocks_in_the_heap() -> None:
    """The negative control of the test above: the probe does see the settings."""
    code = "from castore.cli._allocator import tune_allocator\n"
    code += "assert tune_allocator()\nprint(mapped(1 << 20), mapped(16 << 20))"
    assert _run(code) == "heap heap"


# The command ends with os._exit: the probe runs in its place, after the command ran.
_COMMAND = """
import castore.cli
_real_exit = os._exit
def _exit(code):
    print(mapped(1 << 20), flush=True)
    _real_exit(code)
os._exit = _exit
sys.argv = ["castore", "--store", "memory://", "has", "00" * 32]
castore.cli.main()
"""


def test_the_castore_command_tunes_the_allocator() -> None:
    assert _run(_COMMAND) == "heap"


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_castore_command_opts_out(value: str) -> None:
    assert _run(_COMMAND, **{OPT_OUT_ENV: value}) == "mapped"


def test_a_command_called_from_a_host_program_leaves_the_allocator_alone() -> None:
    code = "import castore.cli\n"
    code += 'castore.cli.main(["--store", "memory://", "has", "00" * 32])\nprint(mapped(1 << 20))'
    assert _run(code) == "mapped"
