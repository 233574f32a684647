"""``castore check``: verify an object store, and repair it from another store.

Exit 0 when no problem is left (none found, or every one repaired), 1 when problems are
left, and the usual codes when the check cannot run (5: the store failed, or it is not
an object store; 8: the store refused permission; 4: a bad store URL; 2: a bad command line).
"""

from __future__ import annotations

import argparse
import json
import sys

from castore.blobservice import BlobService
from castore.cli._command import Parser, Subparsers
from castore.cli._errors import ExitCode, Failure
from castore.cli._progress import Status, mib
from castore.cli._store import object_store_of, open_store
from castore.errors import InvalidAddressError
from castore.objectstore import CheckProblem, CheckSummary, Subset
from castore.registry import from_addr

__all__ = ["register"]


def register(sub: Subparsers, common: Parser) -> None:
    """Add ``check``."""
    p = sub.add_parser(
        "check",
        parents=[common],
        help="verify an object store (and repair it)",
        description="Check that every chunk a blob index names exists and count orphan "
        "chunks; with --read-data also fetch every chunk and verify its BLAKE3 and size. "
        "Exit 0 when no problem is left, 1 when problems are left, 5 when the check "
        "could not run.",
    )
    p.add_argument("--read-data", action="store_true", help="fetch and verify every chunk's bytes")
    p.add_argument(
        "--read-data-subset",
        metavar="N/T|P%",
        type=_subset,
        help="fetch and verify only slice N of T (by digest) or a random P%% of the chunks "
        "(implies --read-data)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object a line")
    p.add_argument(
        "--repair-from",
        metavar="URL",
        help="replace missing and corrupt chunks with verified copies from this store "
        "(any castore store URL: a replica, grpc+http://…)",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="delete corrupt chunks that no source replaced, so that putting their blob "
        "again stores them anew",
    )
    p.set_defaults(handler=run)


def _subset(text: str) -> Subset:
    try:
        return Subset.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _problem_line(p: CheckProblem) -> str:
    blob = "" if p.blob is None or p.blob == p.digest else f" (blob {p.blob})"
    repair = "" if p.repair is None else f"  [{'repaired: ' if p.repaired else ''}{p.repair}]"
    return f"{p.kind}  {p.key}{blob}: {p.detail}{repair}"


def _summary_lines(s: CheckSummary) -> list[str]:
    lines = [
        f"checked {s.blobs} blobs and {s.chunks} chunks ({mib(s.chunk_bytes)}); "
        f"{s.orphans} orphan chunks ({mib(s.orphan_bytes)})"
    ]
    if s.read_data:
        subset = "" if s.subset is None else f" (subset {s.subset})"
        lines.append(f"read and verified {s.chunks_read} chunks ({mib(s.bytes_read)}){subset}")
    if not s.problems:
        lines.append("no problems found")
        return lines
    kinds = [
        (s.missing_chunks, "missing chunks"),
        (s.corrupt_chunks, "corrupt chunks"),
        (s.malformed_indexes, "malformed indexes"),
        (s.wrong_sizes, "indexes with a wrong chunk size"),
    ]
    found = ", ".join(f"{n} {what}" for n, what in kinds if n)
    lines.append(f"{s.problems} problems ({found}); {s.repaired} repaired, {s.unrepaired} left")
    return lines


async def run(args: argparse.Namespace) -> int:
    """Run the check; print problems as found, then the summary."""
    subset: Subset | None = args.read_data_subset
    read_data = bool(args.read_data or subset is not None)
    status = Status("check", sys.stderr)
    async with await open_store(args) as service:
        store = object_store_of(service, "check", "check")
        source: BlobService | None = None
        if args.repair_from is not None:
            try:
                source = from_addr(args.repair_from)
            except InvalidAddressError as e:
                raise Failure(ExitCode.BAD_STORE_URL, f"bad --repair-from URL: {e}") from e
        try:
            check = store.check(
                read_data=read_data,
                subset=subset,
                repair_from=source,
                repair=args.repair,
                progress=status,
            )
            async for problem in check:
                status.clear()
                if args.json:
                    print(json.dumps(problem.as_dict()), flush=True)
                else:
                    print(_problem_line(problem), flush=True)
        finally:
            status.clear()
            if source is not None:
                await source.aclose()
    summary = check.summary
    if args.json:
        print(json.dumps({"summary": summary.as_dict()}))
    else:
        print("\n".join(_summary_lines(summary)))
    return ExitCode.OK if summary.clean else ExitCode.PROBLEMS
