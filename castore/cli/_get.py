"""``castore get DIGEST [-o FILE]``: stream a blob to stdout or a file.

Like curl, it will not write a blob to a terminal (binary data scrambles it) unless told
to with ``-o -``; a pipe or ``-o FILE`` is written as asked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, TextIO

import anyio
import anyio.to_thread

from castore.blobservice import BlobReader
from castore.cli._command import DIGEST_HELP, Parser, Subparsers
from castore.cli._errors import ExitCode, Failure
from castore.cli._progress import Progress
from castore.cli._store import PIECE, open_store, parse_digest

__all__ = ["register"]


def register(sub: Subparsers, common: Parser) -> None:
    """Add ``get``."""
    p = sub.add_parser("get", parents=[common], help="write a blob to stdout or a file")
    p.add_argument("digest", metavar="DIGEST", help=DIGEST_HELP)
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help="write here, not stdout (- is stdout, also when it is a terminal)",
    )
    p.set_defaults(handler=run)


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
        # The error is about the temporary file, not about ``path`` (which may exist).
        raise Failure(
            ExitCode.LOCAL_IO,
            f"cannot write {path}: cannot create the temporary file {temp.name} in "
            f"{temp.parent}: {e.strerror or e}",
        ) from e

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
            raise Failure(ExitCode.LOCAL_IO, f"cannot write {path}: {e.strerror or e}") from e

    return handle, finish_file


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False


async def _copy_out(reader: BlobReader, out: BinaryIO, name: str, progress: Progress) -> None:
    """Read the blob into one of two reused buffers while the other is written out.

    ``readinto`` decodes whole chunks straight into a buffer; the write of the previous
    buffer runs meanwhile in a worker thread, so reading and writing overlap and no fresh
    memory is taken per piece.
    """
    loop = asyncio.get_running_loop()
    buffers = (memoryview(bytearray(PIECE)), memoryview(bytearray(PIECE)))
    writing: asyncio.Future[int] | None = None
    size = 0  # of the write under way
    try:
        for k in itertools.count():
            n = await reader.readinto(buffers[k & 1])
            if writing is not None:
                await _written(writing, name)
                writing = None
                progress.update(size)
            if not n:
                return
            writing = loop.run_in_executor(None, out.write, buffers[k & 1][:n])
            size = n
    finally:
        if writing is not None:
            # The thread writes from a buffer of ours into a file that the caller closes
            # next: let it end first (a failed read's error is the one reported).
            with anyio.CancelScope(shield=True):
                await asyncio.wait([writing])
            if not writing.cancelled():
                writing.exception()


async def _written(job: asyncio.Future[int], name: str) -> None:
    """Wait for a write to the output; local errors become a :class:`Failure`.

    Shielded: a cancel cannot stop the thread, so it leaves ``job`` to the caller.
    """
    try:
        await asyncio.shield(job)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise Failure(ExitCode.LOCAL_IO, f"cannot write {name}: {e.strerror or e}") from e


async def run(args: argparse.Namespace) -> int:
    """Stream one blob to stdout or to ``-o FILE``."""
    digest = parse_digest(args.digest)
    if args.output is None:
        if _is_terminal(sys.stdout):
            raise Failure(
                ExitCode.USAGE,
                "not writing a blob to the terminal; give -o FILE, pipe it, or -o - to "
                "write it here anyway",
            )
        args.output = "-"
    async with await open_store(args) as service:
        reader = await service.open_read(digest)
        if reader is None:
            raise Failure(ExitCode.NOT_FOUND, f"blob {digest} is not in the store")
        total: int | None = None
        if args.output != "-":
            metas = await service.chunks(digest)
            total = sum(m.size for m in metas) if metas else None
        progress = Progress(args.output if args.output != "-" else str(digest), total)
        async with reader:
            out, finish = await _open_output(args.output)
            ok = False
            try:
                await _copy_out(reader, out, args.output, progress)
                ok = True
            finally:
                progress.finish()
                await finish(ok)
    return ExitCode.OK
