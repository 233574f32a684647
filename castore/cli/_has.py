"""``castore has DIGEST``: answer with the exit code whether a blob is stored."""

from __future__ import annotations

import argparse

from castore.cli._command import DIGEST_HELP, Parser, Subparsers
from castore.cli._errors import ExitCode
from castore.cli._store import open_store, parse_digest

__all__ = ["register"]


def register(sub: Subparsers, common: Parser) -> None:
    """Add ``has``."""
    p = sub.add_parser("has", parents=[common], help="exit 0 if a blob is stored, 1 if not")
    p.add_argument("digest", metavar="DIGEST", help=DIGEST_HELP)
    p.add_argument("-v", "--verbose", action="store_true", help="also print the answer")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    """Exit 0 if the blob is stored, 1 if not; print nothing unless ``--verbose``."""
    digest = parse_digest(args.digest)
    async with await open_store(args) as service:
        present = await service.has(digest)
    if args.verbose:
        print(f"{digest}  {'present' if present else 'absent'}")
    return ExitCode.OK if present else ExitCode.NOT_FOUND
