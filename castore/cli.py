"""The ``castore`` command: put, get, stat and has blobs; serve a store.

``castore put FILE|- …`` stores files (``-`` is stdin) and prints one ``<digest>  <name>``
line each; ``castore get DIGEST [-o FILE]`` streams a blob to stdout or a file;
``castore stat DIGEST`` prints its size and chunks; ``castore has DIGEST`` answers with
its exit code. The store is ``--store URL``, else ``$CASTORE_STORE``, else an embedded
local store under the user's data folder, so ``castore put FILE`` works with no setup.
``--config FILE`` instead builds the store from a composition file (the instance named
``root``; see :mod:`castore.config`), e.g. a local cache in front of a gRPC server.

Blobs are streamed in both directions, a few MiB at a time: neither ``put`` nor ``get``
holds a whole blob in memory. Failures print one line on stderr, never a traceback (set
``CASTORE_DEBUG=1`` to see one), and exit with a code that says what went wrong:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success (``has``: the blob is stored)
1     the blob is not stored (``has``, ``get``, ``stat``)
2     bad command line (usage)
3     not a digest
4     not a usable store URL
5     the store failed or cannot be reached
6     stored data is corrupt (a digest does not match)
7     a local file cannot be read or written
130   interrupted (Ctrl-C)
141   the output pipe was closed early (``castore get … | head``)
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TextIO

import anyio
import anyio.to_thread

from castore import __version__
from castore._digest import B3Digest
from castore.blobservice import BlobService
from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    DataCorruptionError,
    InvalidAddressError,
    InvalidDigestError,
    StoreError,
    StoreUnavailableError,
)
from castore.registry import from_addr

__all__ = [
    "STORE_ENV",
    "ExitCode",
    "build_parser",
    "default_store_path",
    "default_store_url",
    "main",
]

#: Environment variable naming the store when ``--store`` is not given.
STORE_ENV = "CASTORE_STORE"
#: Set to a non-empty value to get tracebacks instead of one-line errors.
DEBUG_ENV = "CASTORE_DEBUG"

#: Size of each read from an input file, and of each read from a blob.
PIECE = 4 * 1024 * 1024
#: Inputs at least this large get a progress bar (when stderr is a terminal).
PROGRESS_MIN = 16 * 1024 * 1024


class ExitCode:
    """The exit codes of the ``castore`` command (see the module docstring)."""

    OK = 0
    NOT_FOUND = 1
    USAGE = 2
    BAD_DIGEST = 3
    BAD_STORE_URL = 4
    STORE_FAILED = 5
    CORRUPT = 6
    LOCAL_IO = 7
    INTERRUPTED = 130
    BROKEN_PIPE = 141


class _Failure(Exception):
    """A failure already phrased for the user, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def default_store_path() -> Path:
    """The embedded local store's folder: ``store`` in the user's data folder for castore."""
    import platformdirs

    return Path(platformdirs.user_data_dir("castore")) / "store"


def default_store_url() -> str:
    """The embedded local store, as an ``objectstore+file://`` URL."""
    return "objectstore+" + default_store_path().as_uri()


def _store_url(args: argparse.Namespace) -> str:
    """``--store``, else ``$CASTORE_STORE``, else the embedded local store."""
    return str(args.global_store or os.environ.get(STORE_ENV) or default_store_url())


async def _open_config(path: str) -> BlobService:
    """The ``root`` instance of the composition file at ``path``."""
    from castore.config import parse

    try:
        text = await anyio.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _Failure(ExitCode.LOCAL_IO, f"cannot read the config file {path}: {e}") from e
    try:
        return parse(text, source=path).build()
    except InvalidAddressError as e:
        raise _Failure(ExitCode.BAD_STORE_URL, f"bad config: {e}") from e


async def _open_store(args: argparse.Namespace) -> BlobService:
    config = getattr(args, "global_config", None)
    if config is not None:
        return await _open_config(config)
    url = _store_url(args)
    if url == default_store_url():
        # The default works with no setup: its folder is created on first use.
        path = default_store_path()
        try:
            await anyio.Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _Failure(
                ExitCode.LOCAL_IO, f"cannot create the default store folder {path}: {e}"
            ) from e
    try:
        return from_addr(url)
    except InvalidAddressError as e:
        raise _Failure(ExitCode.BAD_STORE_URL, f"bad store URL: {e}") from e


def _parse_digest(text: str) -> B3Digest:
    try:
        return B3Digest.parse(text)
    except InvalidDigestError as e:
        raise _Failure(ExitCode.BAD_DIGEST, f"bad digest: {e}") from e


# -- progress -----------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class Progress:
    """A one-line progress bar on a terminal: plain ``\\r`` redraws, at most 10 a second.

    Shown only when ``stream`` is a terminal and the input is (or turns out to be) at
    least :data:`PROGRESS_MIN` bytes; otherwise every method is a no-op.
    """

    WIDTH = 24

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.label = label if len(label) <= 30 else "…" + label[-29:]
        self.total = total
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False
        try:
            tty = self.stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.enabled = tty and (total is None or total >= PROGRESS_MIN)

    def update(self, n: int) -> None:
        """Count ``n`` more bytes done, and redraw if it is time to."""
        self.done += n
        if not self.enabled or self.done < PROGRESS_MIN:
            return
        now = time.monotonic()
        if now - self._last_draw >= 0.1:
            self._last_draw = now
            self._draw(now)

    def finish(self) -> None:
        """Erase the bar (the result line takes its place)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-6)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            filled = int(frac * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            text = (
                f"{self.label} [{bar}] {frac:4.0%} {_human(self.done)} / {_human(self.total)}"
                f"  {_human(rate)}/s"
            )
        else:
            text = f"{self.label} {_human(self.done)}  {_human(rate)}/s"
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._drawn = True


# -- commands -----------------------------------------------------------------------------


async def _put_one(service: BlobService, name: str) -> B3Digest:
    if name == "-":
        source: anyio.AsyncFile[bytes] = anyio.wrap_file(sys.stdin.buffer)
        total: int | None = None
        owned = False
    else:
        try:
            source = await anyio.open_file(name, "rb")
            stat = await anyio.Path(name).stat()
        except OSError as e:
            raise _Failure(ExitCode.LOCAL_IO, f"cannot read {name}: {e.strerror or e}") from e
        total = stat.st_size if stat.st_size > 0 else None
        owned = True
    progress = Progress(name, total)
    try:
        writer = await service.open_write()
        async with writer:
            while True:
                try:
                    piece = await source.read(PIECE)
                except OSError as e:
                    raise _Failure(
                        ExitCode.LOCAL_IO, f"cannot read {name}: {e.strerror or e}"
                    ) from e
                if not piece:
                    break
                await writer.write(piece)
                progress.update(len(piece))
        return await writer.close()
    finally:
        progress.finish()
        if owned:
            await source.aclose()


async def cmd_put(args: argparse.Namespace) -> int:
    """Store each input and print ``<digest>  <name>``; carry on past a failing input."""
    if args.files.count("-") > 1:
        raise _Failure(ExitCode.USAGE, "'-' (stdin) can be given only once")
    first_error = ExitCode.OK
    async with await _open_store(args) as service:
        for name in args.files:
            try:
                digest = await _put_one(service, name)
            except _Failure as e:
                if e.code != ExitCode.LOCAL_IO:
                    raise
                _error(str(e))
                first_error = first_error or e.code
                continue
            print(f"{digest}  {name}", flush=True)
    return first_error


async def _open_output(path: str) -> tuple[BinaryIO, Callable[[bool], Awaitable[None]]]:
    """A binary stream for ``path`` (``-`` is stdout) and a finisher taking success.

    A file is written under a temporary name beside it and renamed on success, so a
    failed ``get`` never leaves a partial file under the name asked for.
    """
    if path == "-":
        out = sys.stdout.buffer

        async def finish_stdout(ok: bool) -> None:
            await anyio.to_thread.run_sync(out.flush)

        return out, finish_stdout
    target = Path(path)
    temp = target.with_name(f".{target.name}.castore-{secrets.token_hex(4)}.part")

    def create() -> BinaryIO:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        return os.fdopen(fd, "wb")

    try:
        handle = await anyio.to_thread.run_sync(create)
    except OSError as e:
        raise _Failure(ExitCode.LOCAL_IO, f"cannot write {path}: {e.strerror or e}") from e

    async def finish_file(ok: bool) -> None:
        def done() -> None:
            handle.close()
            if ok:
                os.replace(temp, target)
            else:
                temp.unlink(missing_ok=True)

        try:
            await anyio.to_thread.run_sync(done)
        except OSError as e:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise _Failure(ExitCode.LOCAL_IO, f"cannot write {path}: {e.strerror or e}") from e

    return handle, finish_file


async def cmd_get(args: argparse.Namespace) -> int:
    """Stream one blob to stdout or to ``-o FILE``."""
    digest = _parse_digest(args.digest)
    async with await _open_store(args) as service:
        reader = await service.open_read(digest)
        if reader is None:
            raise _Failure(ExitCode.NOT_FOUND, f"blob {digest} is not in the store")
        total: int | None = None
        if args.output != "-":
            metas = await service.chunks(digest)
            total = sum(m.size for m in metas) if metas else None
        progress = Progress(args.output if args.output != "-" else str(digest), total)
        async with reader:
            out, finish = await _open_output(args.output)
            ok = False
            try:
                while block := await reader.read(PIECE):
                    try:
                        await anyio.to_thread.run_sync(out.write, block)
                    except BrokenPipeError:
                        raise
                    except OSError as e:
                        raise _Failure(
                            ExitCode.LOCAL_IO, f"cannot write {args.output}: {e.strerror or e}"
                        ) from e
                    progress.update(len(block))
                ok = True
            finally:
                progress.finish()
                await finish(ok)
    return ExitCode.OK


async def cmd_stat(args: argparse.Namespace) -> int:
    """Print a blob's size and chunk list (``--json`` for a machine-readable form)."""
    digest = _parse_digest(args.digest)
    async with await _open_store(args) as service:
        metas = await service.chunks(digest)
        if metas is None:
            raise _Failure(ExitCode.NOT_FOUND, f"blob {digest} is not in the store")
        if metas:
            size = sum(m.size for m in metas)
        else:
            # Stored as one piece (one chunk, or a backend that does not chunk): the
            # length is where a reader's end is.
            reader = await service.open_read(digest)
            if reader is None:
                raise _Failure(ExitCode.NOT_FOUND, f"blob {digest} is not in the store")
            async with reader:
                size = await reader.seek(0, io.SEEK_END)
    if args.json:
        doc = {
            "digest": str(digest),
            "hex": digest.hex(),
            "size": size,
            "chunks": [{"digest": str(m.digest), "size": m.size} for m in metas],
        }
        print(json.dumps(doc, indent=2))
        return ExitCode.OK
    print(f"digest  {digest}")
    print(f"hex     {digest.hex()}")
    print(f"size    {size}")
    print(f"chunks  {len(metas) or 1}" + ("" if metas else " (stored whole)"))
    offset = 0
    for meta in metas:
        print(f"  {offset:>12}  {meta.size:>9}  {meta.digest}")
        offset += meta.size
    return ExitCode.OK


async def cmd_has(args: argparse.Namespace) -> int:
    """Exit 0 if the blob is stored, 1 if not; print nothing unless ``--verbose``."""
    digest = _parse_digest(args.digest)
    async with await _open_store(args) as service:
        present = await service.has(digest)
    if args.verbose:
        print(f"{digest}  {'present' if present else 'absent'}")
    return ExitCode.OK if present else ExitCode.NOT_FOUND


# -- parser and dispatch ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``castore`` argument parser (``serve`` included when castore.serve exists)."""
    parser = _Parser(
        prog="castore",
        description="Content-addressed blob store: BLAKE3 addresses, FastCDC chunks, "
        "zstd objects, tvix/snix compatible.",
        epilog=f"The store is --store, else ${STORE_ENV}, else {default_store_url()}. "
        "Exit codes: 0 ok, 1 not found, 2 usage, 3 bad digest, 4 bad store URL, "
        "5 store failed, 6 corrupt data, 7 local file error.",
    )
    parser.add_argument("--version", action="version", version=f"castore {__version__}")
    parser.add_argument(
        "--store",
        dest="global_store",
        metavar="URL",
        help=f"the store, e.g. objectstore+s3://bucket/prefix (default: ${STORE_ENV}, "
        "else the local store under your data folder)",
    )
    # --store is also accepted after the command; SUPPRESS keeps a subcommand that lacks it
    # from resetting the value given before the command.
    common = _Parser(add_help=False)
    common.add_argument(
        "--store", dest="global_store", metavar="URL", default=argparse.SUPPRESS, help="the store"
    )
    for p in (parser, common):
        p.add_argument(
            "--config",
            dest="global_config",
            metavar="FILE",
            default=None if p is parser else argparse.SUPPRESS,
            help="build the store from a composition file (its [blobservices.root]) "
            "instead of --store",
        )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "put", parents=[common], help="store files (or stdin as -) and print their digests"
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="a file to store, or - for stdin")
    p.set_defaults(handler=cmd_put)

    p = sub.add_parser("get", parents=[common], help="write a blob to stdout or a file")
    p.add_argument("digest", metavar="DIGEST", help="blake3-…, b3:… or 64 hex characters")
    p.add_argument("-o", "--output", default="-", metavar="FILE", help="write here, not stdout")
    p.set_defaults(handler=cmd_get)

    p = sub.add_parser("stat", parents=[common], help="print a blob's size and chunks")
    p.add_argument("digest", metavar="DIGEST", help="blake3-…, b3:… or 64 hex characters")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_stat)

    p = sub.add_parser("has", parents=[common], help="exit 0 if a blob is stored, 1 if not")
    p.add_argument("digest", metavar="DIGEST", help="blake3-…, b3:… or 64 hex characters")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the answer")
    p.set_defaults(handler=cmd_has)

    _add_serve(sub)
    return parser


def _add_serve(sub: Any) -> None:
    """Let castore.serve add its ``serve`` subcommand, if that module is present."""
    if importlib.util.find_spec("castore.serve") is None:
        return
    try:
        serve = importlib.import_module("castore.serve")
    except ImportError as e:
        reason = f"castore serve is unavailable: {e}"
        p = sub.add_parser("serve", help="serve a store (unavailable: missing dependency)")
        p.set_defaults(handler=_unavailable(reason))
        return
    serve.add_parser(sub)


def _unavailable(reason: str) -> Callable[[argparse.Namespace], Awaitable[int]]:
    async def handler(args: argparse.Namespace) -> int:
        raise _Failure(ExitCode.USAGE, reason)

    return handler


def _error(message: str) -> None:
    """Print ``castore: <message>`` on stderr, cut to its first line.

    Store errors from obstore carry a many-line "Debug source" dump after the first line;
    ``CASTORE_DEBUG=1`` shows it, with the traceback.
    """
    first = next((line for line in message.splitlines() if line.strip()), message)
    print(f"castore: {first.strip()}", file=sys.stderr, flush=True)


def _classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for an exception that ended a command."""
    if isinstance(exc, _Failure):
        return exc.code, str(exc)
    if isinstance(exc, InvalidDigestError):
        return ExitCode.BAD_DIGEST, str(exc)
    if isinstance(exc, InvalidAddressError):
        return ExitCode.BAD_STORE_URL, f"bad store URL: {exc}"
    if isinstance(exc, BlobNotFoundError):
        return ExitCode.NOT_FOUND, f"not found: {exc}"
    if isinstance(exc, DataCorruptionError):
        return ExitCode.CORRUPT, f"corrupt data in the store: {exc}"
    if isinstance(exc, StoreUnavailableError):
        return ExitCode.STORE_FAILED, f"cannot reach the store: {exc}"
    if isinstance(exc, StoreError):
        return ExitCode.STORE_FAILED, f"the store failed: {exc}"
    if isinstance(exc, CastoreError):
        return ExitCode.STORE_FAILED, f"{type(exc).__name__}: {exc}"
    if type(exc).__module__.startswith("obstore"):
        return ExitCode.STORE_FAILED, f"the store failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        return ExitCode.LOCAL_IO, f"{exc}"
    return ExitCode.STORE_FAILED, f"unexpected {type(exc).__name__}: {exc}"


def _unwrap(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (task groups wrap what went wrong)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _run(handler: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    result = handler(args)
    if inspect.isawaitable(result):

        async def wait() -> Any:
            return await result

        result = asyncio.run(wait())
    return ExitCode.OK if result is None else int(result)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``castore`` command with ``argv``; returns the exit code.

    Called with no ``argv`` (the ``castore`` script, ``python -m castore``) it is the whole
    program: it flushes stdout and stderr and ends the process with :func:`os._exit`,
    skipping interpreter shutdown. obstore's runtime threads can still be inside a Python
    call when the interpreter finalizes, and CPython 3.11-3.13 then ends such a thread with
    a forced unwind through Rust frames, which aborts the process (seen in most runs of
    ``castore has`` on an unreachable S3 store). Nothing is left to clean up by then.
    """
    if argv is not None:
        return _main(argv)
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
    # A subcommand that declares its own --config (serve) gets the global one as default.
    if hasattr(args, "config") and args.config is None:
        args.config = args.global_config
    config = getattr(args, "config", None) or args.global_config
    if config is not None and (args.global_store or getattr(args, "store", None)):
        parser.print_usage(sys.stderr)
        _error("give --store or --config, not both")
        return ExitCode.USAGE
    # A subcommand that declares its own --store (serve) gets the global one as default.
    if getattr(args, "store", None) is None and config is None:
        args.store = _store_url(args)
    handler = getattr(args, "handler", None) or getattr(args, "func", None)
    if handler is None:  # pragma: no cover - argparse requires a command
        parser.print_usage(sys.stderr)
        return ExitCode.USAGE
    debug = bool(os.environ.get(DEBUG_ENV))
    try:
        return _run(handler, args)
    except KeyboardInterrupt:
        _error("interrupted")
        return ExitCode.INTERRUPTED
    except BaseException as raw:
        exc = _unwrap(raw)
        if isinstance(exc, SystemExit):
            return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
        if isinstance(exc, KeyboardInterrupt):
            _error("interrupted")
            return ExitCode.INTERRUPTED
        if isinstance(exc, BrokenPipeError):
            _silence_stdout()
            return ExitCode.BROKEN_PIPE
        if debug or not isinstance(exc, Exception):
            raise
        code, message = _classify(exc)
        _error(message)
        return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
