"""``castore stat DIGEST``: a blob's size and chunks."""

from __future__ import annotations

import argparse
import io
import json

from castore.cli._command import DIGEST_HELP, Parser, Subparsers
from castore.cli._errors import ExitCode, Failure
from castore.cli._store import open_store, parse_digest

__all__ = ["register"]


def register(sub: Subparsers, common: Parser) -> None:
    """Add ``stat``."""
    p = sub.add_parser("stat", parents=[common], help="print a blob's size and chunks")
    p.add_argument("digest", metavar="DIGEST", help=DIGEST_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    """Print a blob's size and chunk list (``--json`` for a machine-readable form)."""
    digest = parse_digest(args.digest)
    async with await open_store(args) as service:
        metas = await service.chunks(digest)
        if metas is None:
            raise Failure(ExitCode.NOT_FOUND, f"blob {digest} is not in the store")
        if metas:
            size = sum(m.size for m in metas)
        else:
            # Stored as one piece (one chunk, or a backend that does not chunk): the
            # length is where a reader's end is.
            reader = await service.open_read(digest)
            if reader is None:
                raise Failure(ExitCode.NOT_FOUND, f"blob {digest} is not in the store")
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
