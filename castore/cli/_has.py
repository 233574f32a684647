"""``castore has DIGEST…``: answer with the exit code whether blobs are stored."""

from __future__ import annotations

import argparse

from castore.cli._command import DIGEST_HELP, Parser, Subparsers
from castore.cli._errors import ExitCode
from castore.cli._store import open_store, parse_digest

__all__ = ["register"]


def register(sub: Subparsers, common: Parser) -> None:
    """Add ``has``."""
    p = sub.add_parser(
        "has",
        parents=[common],
        help="exit 0 if every blob given is stored, 1 if not",
        description="Exit 0 if every blob given is stored, 1 if any is not.",
    )
    p.add_argument("digests", nargs="+", metavar="DIGEST", help=DIGEST_HELP)
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also print each answer (present/absent)"
    )
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    """Exit 0 if all the blobs are stored, 1 if not; print nothing unless ``--verbose``."""
    digests = [parse_digest(text) for text in args.digests]
    all_present = True
    async with await open_store(args) as service:
        for digest in digests:
            present = await service.has(digest)
            all_present = all_present and present
            if args.verbose:
                print(f"{digest}  {'present' if present else 'absent'}", flush=True)
            elif not present:
                break  # the answer is known
    return ExitCode.OK if all_present else ExitCode.NOT_FOUND
