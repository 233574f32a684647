"""``castore stat DIGEST…``: each blob's size and chunk count; ``--chunks`` the chunk table."""

from __future__ import annotations

import argparse
import json

from castore.cli._command import DIGEST_HELP, Parser, Subparsers
from castore.cli._describe import Description, describe
from castore.cli._errors import ExitCode, error
from castore.cli._store import open_store, parse_digest

__all__ = ["register"]


def register(sub: Subparsers, common: Parser) -> None:
    """Add ``stat``."""
    p = sub.add_parser(
        "stat",
        parents=[common],
        help="print blobs' sizes and chunk counts",
        description="Print each blob's digest, size and chunk count. --chunks adds the "
        "chunk table (offset, size, digest); --json prints one JSON object a line, chunks "
        "(with offsets) included. Exits 1 if a blob is not stored.",
    )
    p.add_argument("digests", nargs="+", metavar="DIGEST", help=DIGEST_HELP)
    p.add_argument(
        "--chunks", action="store_true", help="also print the chunk table, with a header"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object a line")
    p.set_defaults(handler=run)


def _json(d: Description) -> str:
    return json.dumps(
        {
            "digest": str(d.digest),
            "hex": d.digest.hex(),
            "size": d.size,
            "chunk_count": len(d.chunks),
            "stored_whole": d.whole,
            "chunks": [c.to_json() for c in d.chunks],
        }
    )


def _text(d: Description, *, table: bool) -> list[str]:
    lines = [
        f"digest  {d.digest}",
        f"hex     {d.digest.hex()}",
        f"size    {d.size}",
        f"chunks  {len(d.chunks)}" + (" (stored whole)" if d.whole and d.chunks else ""),
    ]
    if table and d.chunks:
        lines.append(f"  {'offset':>12}  {'size':>9}  digest")
        lines.extend(f"  {c.offset:>12}  {c.size:>9}  {c.digest}" for c in d.chunks)
    return lines


async def run(args: argparse.Namespace) -> int:
    """Describe each blob; a missing one is reported on stderr and makes the exit code 1."""
    digests = [parse_digest(text) for text in args.digests]
    code = ExitCode.OK
    printed = False
    async with await open_store(args) as service:
        for digest in digests:
            d = await describe(service, digest)
            if d is None:
                error(f"blob {digest} is not in the store")
                code = ExitCode.NOT_FOUND
                continue
            if args.json:
                print(_json(d), flush=True)
                continue
            if printed:
                print()
            print("\n".join(_text(d, table=args.chunks)), flush=True)
            printed = True
    return code
