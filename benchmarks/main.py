"""``python -m benchmarks``: castore's speed, memory and dedup, as same-run ratios.

Run from a clone of the repository, also as ``nox -s bench``; the benchmark is not part of
the installed package. The sections (:data:`benchmarks.registry.SECTIONS`) measure:

1. ``limits``: the per-stage CPU limit of each data set (FastCDC, BLAKE3 per chunk, zstd 3,
   whole-blob BLAKE3, store put; get, decompress, verify) and the throughput the usable
   cores would give with the stages perfectly overlapped;
2. ``ingest``: ingest through the public API into ``objectstore+memory:///`` and
   ``objectstore+file://`` for random and text-like data, against (1);
3. ``read``: sequential read of the same blobs against the read-side limit;
4. ``rss``: peak memory while writing and reading back a 2 GiB blob (child process);
5. ``latency``: ingest into SeaweedFS S3 with 20 ms added per request, against none;
6. ``dedup``: ten edited versions of a 64 MiB file, bytes stored against bytes written;
7. ``peers`` (with ``--peers``): restic, borgbackup and casync on the same data.

It prints Markdown tables and writes them to ``docs/benchmarks.md`` (``--out``) with the
command that made them, keeping the hand-written notes at the end of that file. Each
table says how it was measured. Figures of one machine are only comparable within a run:
the targets are all ratios of one run.

Examples::

    python -m benchmarks                      # everything but peers, 512 MiB data sets
    python -m benchmarks --peers              # with restic, borg, casync
    python -m benchmarks --quick --out -      # tiny sizes, print only
    python -m benchmarks --only limits,ingest --size 256M
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence

from benchmarks.markdown import render, targets_table, write_markdown
from benchmarks.registry import SECTIONS
from benchmarks.section import Context, Section

__all__ = ["build_parser", "command_line", "main", "parse_size", "run"]

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``64MiB``, ``1048576`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 512M, 2G, 65536)")
    n = int(m.group(1)) * _UNITS[m.group(2)]
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return n


def _names() -> list[str]:
    return [s.name for s in SECTIONS]


def _sections(text: str) -> set[str]:
    chosen = {s.strip() for s in text.split(",") if s.strip()}
    unknown = chosen - set(_names())
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(_names())}"
        )
    return chosen


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="size of the random and the text data set (default 512M; --quick: 8M)",
    )
    p.add_argument(
        "--rss-size",
        type=parse_size,
        default=None,
        help="size of the blob of the memory section (default 2G; --quick: 32M)",
    )
    p.add_argument(
        "--versions-size",
        type=parse_size,
        default=None,
        help="size of the file of the dedup section (default 64M; --quick: 2M)",
    )
    p.add_argument(
        "--versions",
        type=int,
        default=None,
        help="versions in the dedup section (default 10; --quick: 3)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs of each measurement, the best kept (default 3; --quick: 1; peers at most 2)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, one run each (smoke test)")
    p.add_argument(
        "--only",
        type=_sections,
        default=None,
        metavar="SECTIONS",
        help=f"comma-separated sections to run: {','.join(_names())} (default: all but peers)",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="also run restic, borg and casync where installed (apt-get install restic "
        "borgbackup casync)",
    )
    p.add_argument(
        "--peer-tools",
        default=None,
        metavar="NAMES",
        help="with --peers: only these tools, comma-separated (castore,borg,restic,casync)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the report here, '-' for nowhere (default docs/benchmarks.md; with "
        "--quick: nowhere)",
    )
    p.add_argument(
        "--tmp",
        default=None,
        metavar="DIR",
        help="folder for temporary stores and files (default: the system's; it should be on "
        "a real disk, as peers and the file store write there)",
    )
    p.add_argument(
        "--delay",
        type=float,
        default=0.020,
        metavar="SECONDS",
        help="delay added per request in the latency section (default 0.020)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m benchmarks``."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure castore against the hardware limit and its peers; print tables "
        "and write docs/benchmarks.md.",
        epilog="sections, in the order they run:\n"
        + "\n".join(f"  {s.name:<10} {s.help}" for s in SECTIONS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    return p


def _fmt_size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def command_line(args: argparse.Namespace) -> str:
    """The ``python -m benchmarks …`` command equivalent to ``args``."""
    argv: list[str] = []
    if args.quick:
        argv.append("--quick")
    for flag, value in (
        ("--size", args.size),
        ("--rss-size", args.rss_size),
        ("--versions-size", args.versions_size),
    ):
        if value is not None:
            argv += [flag, _fmt_size(value)]
    if args.versions is not None:
        argv += ["--versions", str(args.versions)]
    if args.repeat is not None:
        argv += ["--repeat", str(args.repeat)]
    if args.only:
        argv += ["--only", ",".join(s for s in _names() if s in args.only)]
    if args.peers:
        argv.append("--peers")
    if args.peer_tools:
        argv += ["--peer-tools", args.peer_tools]
    if args.delay != 0.020:
        argv += ["--delay", str(args.delay)]
    if args.out is not None:
        argv += ["--out", args.out]
    return "python -m benchmarks" + "".join(" " + shlex.quote(a) for a in argv)


def _context(args: argparse.Namespace, work: pathlib.Path) -> Context:
    quick = bool(args.quick)
    selected = set(args.only) if args.only else {s.name for s in SECTIONS if s.default}
    if args.peers:
        selected.add("peers")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    peer_tools = args.peer_tools
    return Context(
        command=command_line(args),
        cores=cores or 1,
        selected=frozenset(selected),
        size=args.size or ((8 << 20) if quick else (512 << 20)),
        rss_size=args.rss_size or ((32 << 20) if quick else (2 << 30)),
        versions_size=args.versions_size or ((2 << 20) if quick else (64 << 20)),
        versions_count=max(2, args.versions or (3 if quick else 10)),
        repeat=max(1, args.repeat or (1 if quick else 3)),
        delay=args.delay,
        peer_tools=frozenset(t.strip() for t in peer_tools.split(",")) if peer_tools else None,
        work=work,
    )


def run(args: argparse.Namespace) -> int:
    """Run the sections ``args`` select; print the report and write it; the exit code."""
    out = args.out if args.out is not None else ("-" if args.quick else "docs/benchmarks.md")
    work = pathlib.Path(tempfile.mkdtemp(prefix="castore-bench-", dir=args.tmp))
    ctx = _context(args, work)
    sections: list[Section] = [cls() for cls in SECTIONS]
    ctx.load.append(os.getloadavg())
    try:
        for section in sections:
            if section.name in ctx.selected:
                section.measure(ctx)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ctx.load.append(os.getloadavg())

    tables = [t for s in sections for t in s.tables(ctx)]
    tables.append(targets_table([t for s in sections for t in s.targets(ctx)]))
    body = render(ctx, tables)
    print(body, flush=True)
    if out != "-":
        write_markdown(pathlib.Path(out), body)
        ctx.progress(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks``."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return run(args)
