"""``castore rm DIGEST…``: delete blobs (as roots; their chunks go at garbage collection)."""

from __future__ import annotations

import argparse
import sys

from castore.cli._command import DIGEST_HELP, Parser, Subparsers
from castore.cli._errors import ExitCode
from castore.cli._store import open_store, parse_digest

__all__ = ["NOTE", "register"]

#: What ``rm`` says on stderr after deleting: what a delete does and does not do.
NOTE = (
    "note: only the blobs' indexes are gone; their chunks stay until garbage collection "
    "(castore gc) reclaims them. A blob stored as one chunk stays readable by its digest "
    "until then. No other blob is affected."
)


def register(sub: Subparsers, common: Parser) -> None:
    """Add ``rm``."""
    p = sub.add_parser(
        "rm",
        parents=[common],
        help="delete blobs (their chunks go at garbage collection)",
        description="Delete blobs as roots. On an object store each blob's index goes at "
        "once; chunks that no blob names any more go at garbage collection. A blob stored "
        "as one chunk stays readable by its digest until then, and deleting a blob never "
        "affects another. Exit 0 when every blob was deleted, 1 when one was not stored.",
    )
    p.add_argument("digests", metavar="DIGEST", nargs="+", help=DIGEST_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing, only exit")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    """Delete each blob; print ``deleted`` or ``not stored`` with its digest."""
    digests = [parse_digest(text) for text in args.digests]
    missing = deleted = 0
    async with await open_store(args) as service:
        for digest in digests:
            found = await service.delete(digest)
            deleted += found
            missing += not found
            if not args.quiet:
                print(f"{'deleted' if found else 'not stored'}  {digest}", flush=True)
    if deleted and not args.quiet:
        print(f"castore: {NOTE}", file=sys.stderr)
    return ExitCode.NOT_FOUND if missing else ExitCode.OK
