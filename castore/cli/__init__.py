"""The ``castore`` command: put, get, stat, has, list and delete blobs; serve a store.

``castore put FILE|- …`` stores files (``-`` is stdin) and prints one ``<digest>  <name>``
line each (``--quiet``: the digest alone; ``--json``: an object); ``castore get DIGEST
[-o FILE]`` streams a blob to a pipe or a file; ``castore stat DIGEST…`` prints sizes and
chunk counts (``--chunks`` the table); ``castore has DIGEST…`` answers with its exit
code; ``castore ls`` lists the stored blobs and ``castore rm DIGEST…`` deletes them;
``castore check`` verifies an object store and repairs it; ``castore gc`` reclaims chunks
no blob names any more; ``castore serve`` serves a store over gRPC and HTTP. The store is
``--store URL``, else ``$CASTORE_STORE``, else an embedded local store under the user's
data folder (see :mod:`castore.cli._store`).

Each command is a module of this package (``_put``, ``_get``, …) with a ``register``
function (see :mod:`castore.cli._command`), listed once in :data:`COMMANDS`; this module
builds the parser from them and runs the chosen command.

Blobs are streamed in both directions, a few MiB at a time: neither ``put`` nor ``get``
holds a whole blob in memory. Failures print one line on stderr, never a traceback (set
``CASTORE_DEBUG=1`` to see one), and exit with a code that says what went wrong:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success (``has``: the blob is stored)
1     the blob is not stored (``has``, ``get``, ``stat``, ``rm``); ``check``: problems left
2     bad command line (usage)
3     not a digest
4     not a usable store URL
5     the store failed or cannot be reached
6     stored data is corrupt (a digest does not match)
7     a local file cannot be read or written
8     the store refused access (permissions, a read-only file system, credentials)
9     ``serve`` cannot listen on an address (in use, or not its to take)
10    an optional dependency the command needs is not installed
11    another garbage collector holds the lease (``gc``)
130   interrupted (Ctrl-C)
141   the output pipe was closed early (``castore get … | head``)
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence

from castore import __version__
from castore.cli import _check, _gc, _get, _has, _ls, _put, _rm, _serve, _stat
from castore.cli._allocator import tune_allocator
from castore.cli._command import Handler, Parser, Register
from castore.cli._errors import ExitCode, classify, error, unwrap
from castore.cli._progress import PROGRESS_MIN
from castore.cli._serve import DEFAULT_LISTEN
from castore.cli._store import (
    PIECE,
    STORE_ENV,
    add_store_options,
    default_store_path,
    default_store_url,
)

__all__ = [
    "COMMANDS",
    "DEBUG_ENV",
    "DEFAULT_LISTEN",
    "PIECE",
    "PROGRESS_MIN",
    "STORE_ENV",
    "ExitCode",
    "build_parser",
    "default_store_path",
    "default_store_url",
    "main",
]

#: The commands, in the order ``castore --help`` lists them. A new command is a module
#: with a ``register`` function and one line here.
COMMANDS: tuple[Register, ...] = (
    _put.register,
    _get.register,
    _stat.register,
    _has.register,
    _ls.register,
    _rm.register,
    _check.register,
    _gc.register,
    _serve.register,
)

#: Set to a non-empty value to get tracebacks instead of one-line errors.
DEBUG_ENV = "CASTORE_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    """The ``castore`` argument parser, with every command of :data:`COMMANDS`."""
    parser = Parser(
        prog="castore",
        description="Content-addressed blob store: BLAKE3 addresses, FastCDC chunks, "
        "zstd objects, tvix/snix compatible.",
        epilog=f"The store is --store, else ${STORE_ENV}, else {default_store_url()}. "
        "Exit codes: 0 ok, 1 not found, 2 usage, 3 bad digest, 4 bad store URL, "
        "5 store failed, 6 corrupt data, 7 local file error, 8 permission denied by the "
        "store, 9 cannot listen (serve), 10 missing dependency, 11 another garbage "
        "collector is running, 130 interrupted (Ctrl-C), "
        "141 output pipe closed early.",
    )
    parser.add_argument("--version", action="version", version=f"castore {__version__}")
    add_store_options(parser, after_command=False)
    common = Parser(add_help=False)
    add_store_options(common, after_command=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for register in COMMANDS:
        register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``castore`` command with ``argv``; returns the exit code.

    Called with no ``argv`` (the ``castore`` script, ``python -m castore``) it is the whole
    program: it flushes stdout and stderr and ends the process with :func:`os._exit`,
    skipping interpreter shutdown. The object-store client's runtime threads can still be
    inside a Python call when the interpreter finalizes, and CPython 3.11-3.13 then ends
    such a thread with a forced unwind through Rust frames, which aborts the process
    (seen in most runs of ``castore has`` on an unreachable S3 store). Nothing is left to
    clean up by then.

    As the whole program it first tunes glibc's allocator for castore's large buffers
    (:func:`castore.cli._allocator.tune_allocator`; ``CASTORE_NO_MALLOC_TUNING=1`` opts
    out). Called with ``argv``, from a host program, it leaves the allocator alone.
    """
    if argv is not None:
        return _main(argv)
    tune_allocator()
    code = _main(None)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else ExitCode.USAGE
    if args.global_config is not None and args.global_store is not None:
        parser.print_usage(sys.stderr)
        error("give --store or --config, not both")
        return ExitCode.USAGE
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except KeyboardInterrupt:
        error("interrupted")
        return ExitCode.INTERRUPTED
    except BaseException as raw:
        exc = unwrap(raw)
        if isinstance(exc, SystemExit):
            return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
        if isinstance(exc, KeyboardInterrupt):
            error("interrupted")
            return ExitCode.INTERRUPTED
        if isinstance(exc, BrokenPipeError):
            _silence_stdout()
            return ExitCode.BROKEN_PIPE
        if os.environ.get(DEBUG_ENV) or not isinstance(exc, Exception):
            raise
        code, message = classify(exc)
        error(message)
        return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
