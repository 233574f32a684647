"""``castore put FILE|- …``: store files (``-`` is stdin) and print their digests."""

from __future__ import annotations

import argparse
import sys

import anyio

from castore._digest import B3Digest
from castore.blobservice import BlobService
from castore.cli._command import Parser, Subparsers
from castore.cli._errors import ExitCode, Failure, error
from castore.cli._progress import Progress
from castore.cli._store import PIECE, open_store

__all__ = ["register"]


def register(sub: Subparsers, common: Parser) -> None:
    """Add ``put``."""
    p = sub.add_parser(
        "put", parents=[common], help="store files (or stdin as -) and print their digests"
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="a file to store, or - for stdin")
    p.set_defaults(handler=run)


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
            raise Failure(ExitCode.LOCAL_IO, f"cannot read {name}: {e.strerror or e}") from e
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
                    raise Failure(
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


async def run(args: argparse.Namespace) -> int:
    """Store each input and print ``<digest>  <name>``; carry on past a failing input."""
    if args.files.count("-") > 1:
        raise Failure(ExitCode.USAGE, "'-' (stdin) can be given only once")
    first_error = ExitCode.OK
    async with await open_store(args) as service:
        for name in args.files:
            try:
                digest = await _put_one(service, name)
            except Failure as e:
                if e.code != ExitCode.LOCAL_IO:
                    raise
                error(str(e))
                first_error = first_error or e.code
                continue
            print(f"{digest}  {name}", flush=True)
    return first_error
