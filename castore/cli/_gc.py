"""``castore gc``: one garbage-collection run on an object store.

A run sweeps the generation of unreferenced chunks condemned at least a grace ago and
condemns the next one, so a chunk goes at the second run after it became garbage: run
it on a schedule (``docs/lifecycle.md``). Exit 0 when the run finished, 11 when another
collector holds the lease (try later), and the usual codes when it could not run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from castore.cli._command import Parser, Subparsers
from castore.cli._errors import ExitCode, Failure
from castore.cli._progress import Status, mib
from castore.cli._store import object_store_of, open_store
from castore.errors import GcLeaseError
from castore.objectstore import GcReport
from castore.objectstore._gc import DEFAULT_GRACE
from castore.objectstore._gc_state import MIN_GRACE

__all__ = ["parse_duration", "register"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``24h``, ``7d``, ``2w`` or ``1h30m``."""
    s = text.strip().lower()
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION.match(s, pos)
        if m is None or m.end() == pos:
            raise argparse.ArgumentTypeError(
                f"not a duration: {text!r} (write e.g. 90s, 30m, 24h, 7d or 1h30m)"
            )
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise argparse.ArgumentTypeError("an empty duration")
    return total


def register(sub: Subparsers, common: Parser) -> None:
    """Add ``gc``."""
    p = sub.add_parser(
        "gc",
        parents=[common],
        help="delete chunks no blob names any more (garbage collection)",
        description="One garbage-collection run: sweep chunks condemned at least a grace "
        "ago that are still unnamed and were not rewritten since, then condemn the chunks "
        "no blob index names now. Safe beside castore writers; do not run it while Rust "
        "tvix/snix nodes write to the same bucket. Exit 0 when the run finished, 11 when "
        "another collector holds the lease, 5 when the store failed.",
    )
    p.add_argument(
        "--grace",
        metavar="DURATION",
        type=parse_duration,
        default=DEFAULT_GRACE,
        help=f"time between condemning a chunk and deleting it, e.g. 24h, 30m (default "
        f"24h, at least {MIN_GRACE:g}s): longer than any castore write takes",
    )
    p.add_argument(
        "--min-age",
        metavar="DURATION",
        type=parse_duration,
        default=None,
        help="condemn only chunks older than this (default: the grace)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="write and delete nothing; report what a run would do",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(handler=run)


def _span(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def report_lines(r: GcReport) -> list[str]:
    """The report in words, one fact a line."""
    would = "would be " if r.dry_run else ""
    lines = [f"read {r.indexes} blob indexes; {r.kept} chunks kept ({mib(r.kept_bytes)})"]
    if r.swept:
        gens = ", ".join(str(g) for g in r.swept)
        lines.append(
            f"swept generation {gens}: {r.deleted} chunks {would}deleted "
            f"({mib(r.deleted_bytes)}), {r.rescued} rescued ({mib(r.rescued_bytes)})"
        )
    if r.generation is not None or (r.dry_run and r.condemned):
        which = "" if r.generation is None else f" generation {r.generation}"
        verb = "would condemn" if r.dry_run else "condemned"
        lines.append(
            f"{verb}{which}: {r.condemned} chunks ({mib(r.condemned_bytes)}); a run "
            f"{_span(r.grace)} from now deletes those still unnamed"
        )
    if r.pending is not None and r.pending != r.generation and r.due_in is not None:
        lines.append(f"generation {r.pending} is due for its sweep in {_span(r.due_in)}")
    if not r.swept and not r.condemned:
        lines.append("nothing to sweep or condemn")
    lines.append(f"took {r.seconds:.1f} s" + (" (dry run: nothing changed)" if r.dry_run else ""))
    return lines


async def run(args: argparse.Namespace) -> int:
    """One collector run; print its report (``--json``: one object)."""
    if args.grace < MIN_GRACE:
        raise Failure(ExitCode.USAGE, f"--grace must be at least {MIN_GRACE:g}s")
    status = Status("gc", sys.stderr)
    async with await open_store(args) as service:
        store = object_store_of(service, "gc", "collect garbage in")
        try:
            report = await store.collect_garbage(
                grace=args.grace, min_age=args.min_age, dry_run=args.dry_run, progress=status
            )
        except GcLeaseError as e:
            raise Failure(ExitCode.BUSY, f"not collected: {e}") from e
        finally:
            status.clear()
    if args.json:
        print(json.dumps(report.as_dict()), flush=True)
    else:
        for line in report_lines(report):
            print(line, flush=True)
    return ExitCode.OK
