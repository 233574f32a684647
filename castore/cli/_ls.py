"""``castore ls [--long] [--json]``: list the stored blobs."""

from __future__ import annotations

import argparse
import json

from castore.blobservice import BlobInfo
from castore.cli._command import Parser, Subparsers
from castore.cli._errors import ExitCode
from castore.cli._store import open_store

__all__ = ["register"]


def register(sub: Subparsers, common: Parser) -> None:
    """Add ``ls``."""
    p = sub.add_parser(
        "ls",
        parents=[common],
        help="list the stored blobs",
        description="List every stored blob, one digest a line, in the store's order. "
        "--long adds each blob's size and chunk count, which costs a read of each blob's "
        "index ('-' where it cannot be read: castore check says why).",
    )
    p.add_argument(
        "-l", "--long", action="store_true", help="also print each blob's size and chunk count"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object a line")
    p.set_defaults(handler=run)


def _field(value: int | None) -> str:
    return "-" if value is None else str(value)


def _line(info: BlobInfo, *, long: bool, as_json: bool) -> str:
    if as_json:
        doc: dict[str, object] = {"digest": str(info.digest), "hex": info.digest.hex()}
        if long:
            doc["size"] = info.size
            doc["chunks"] = info.chunk_count
        return json.dumps(doc)
    if long:
        return f"{_field(info.size):>14}  {_field(info.chunk_count):>7}  {info.digest}"
    return str(info.digest)


async def run(args: argparse.Namespace) -> int:
    """Print each blob as the store lists it, a line at a time."""
    async with await open_store(args) as service:
        async for info in service.list_blobs(details=args.long):
            print(_line(info, long=args.long, as_json=args.json), flush=False)
    return ExitCode.OK
