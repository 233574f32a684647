"""``castore put FILE|- …``: store files (``-`` is stdin) and print their digests.

One line a file: ``<digest>  <name>``; with ``--quiet`` the digest alone (so that
``d=$(castore put --quiet FILE)`` needs no ``cut``); with ``--json`` one JSON object
(name, digest, size, chunk count and the bytes this put added to the store).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

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
    form = p.add_mutually_exclusive_group()
    form.add_argument(
        "-q", "--quiet", action="store_true", help="print only each digest, one a line"
    )
    form.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object a file: name, digest, size, chunks, new_bytes "
        "(bytes this put added to the store; null if the store cannot tell)",
    )
    p.set_defaults(handler=run)


@dataclass(frozen=True, slots=True)
class _Stored:
    digest: B3Digest
    size: int
    new_bytes: int | None


async def _put_one(service: BlobService, name: str) -> _Stored:
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
    size = 0
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
                size += len(piece)
                progress.update(len(piece))
        digest = await writer.close()
        return _Stored(digest, size, writer.new_bytes)
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
                stored = await _put_one(service, name)
            except Failure as e:
                if e.code != ExitCode.LOCAL_IO:
                    raise
                error(str(e))
                first_error = first_error or e.code
                continue
            if args.json:
                print(await _json(service, name, stored), flush=True)
            elif args.quiet:
                print(stored.digest, flush=True)
            else:
                print(f"{stored.digest}  {name}", flush=True)
    return first_error


async def _json(service: BlobService, name: str, stored: _Stored) -> str:
    """The ``--json`` line: the chunk count is the one ``stat`` gives (a blob stored as
    one piece has one chunk, the empty blob none)."""
    metas = await service.chunks(stored.digest)
    chunks = len(metas) if metas else (1 if stored.size else 0)
    doc = {
        "name": name,
        "digest": str(stored.digest),
        "size": stored.size,
        "chunks": chunks,
        "new_bytes": stored.new_bytes,
    }
    return json.dumps(doc)
