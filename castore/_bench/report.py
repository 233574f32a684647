"""The benchmark's tables, its verdicts on the issue's targets, and the Markdown file.

Every figure of a table comes from one run of the benchmark; ratios set figures of the
same run against each other, so that a busy machine moves both sides of a ratio.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import pathlib
import platform
from dataclasses import dataclass, field

from castore._bench.api import CATEGORIES, Run
from castore._bench.dedup import DedupResult
from castore._bench.latency import LatencyRun
from castore._bench.limits import GIB, STORES, Limits
from castore._bench.peers import PeerRun
from castore._bench.rss import RssResult

__all__ = [
    "NOTES_MARKER",
    "Results",
    "Table",
    "build_tables",
    "environment_lines",
    "render",
    "write_markdown",
]

#: Everything below this line of the output file is hand-written and kept on rewrite.
NOTES_MARKER = (
    "<!-- notes: everything below this line is hand-written and kept by the benchmark -->"
)

MIB = float(1 << 20)

# The targets.
INGEST_TARGET = 0.9
READ_TARGET = 0.8
RSS_TARGET = 200 << 20
LATENCY_TARGET = 0.5
PEER_TARGET = 2.0


@dataclass
class Table:
    """One titled table, with notes printed below it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Results:
    """Everything one run of the benchmark measured (absent parts were not run)."""

    command: str
    cores: int
    size: int
    repeat: int
    limits: dict[str, Limits] = field(default_factory=dict)
    runs: dict[str, list[Run]] = field(default_factory=dict)
    rss: RssResult | None = None
    rss_skipped: str = ""
    latency: list[LatencyRun] = field(default_factory=list)
    latency_skipped: str = ""
    dedup: DedupResult | None = None
    peers: dict[str, list[PeerRun]] = field(default_factory=dict)
    peer_versions: list[PeerRun] = field(default_factory=list)
    peer_lines: list[str] = field(default_factory=list)
    peers_requested: bool = False
    load: list[tuple[float, float, float]] = field(default_factory=list)


def _mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def _x(r: float) -> str:
    return f"{r:.2f}x"


KERNEL_NOTE = (
    "Kernel = the part of that CPU spent in the kernel: file-system calls into a local-disk"
    " store, and first touches of fresh memory (minor page faults, counted beside it), which"
    " depend on how much freed memory the allocator keeps and vary from run to run."
)


def _kernel(seconds: float, faults: int, gib: float) -> str:
    return f"{seconds / gib:.2f} ({faults / gib / 1000:,.0f}k)"


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def _limits_table(res: Results) -> Table:
    rows = []
    for name, lim in res.limits.items():
        rows.append(
            [
                name,
                f"{lim.cdc:.3f}",
                f"{lim.chunk_b3:.3f}",
                f"{lim.zstd['memory']:.3f} / {lim.zstd['file']:.3f}",
                f"{lim.blob_b3:.3f}",
                f"{lim.put['memory']:.3f} / {lim.put['file']:.3f}",
                " / ".join(f"{lim.write_limit(res.cores, s):,.0f}" for s in STORES),
                f"{lim.get['memory']:.3f} / {lim.get['file']:.3f}",
                f"{lim.unzstd:.3f}",
                f"{lim.verify_b3:.3f}",
                " / ".join(f"{lim.read_limit(res.cores, s):,.0f}" for s in STORES),
            ]
        )
    notes = []
    for name, lim in res.limits.items():
        notes.append(
            f"{name}: {lim.chunks} chunks (avg {lim.size / max(1, lim.chunks) / 1024:.0f} KiB), "
            f"{lim.unique_chunks / max(1, lim.chunks):.1%} unique, compressed to "
            f"{lim.compressed / lim.size:.1%}."
        )
    notes.append(
        "CPU seconds per GiB of input, single-threaded, best of"
        f" {res.repeat}; put and get into/from an obstore MemoryStore / LocalStore. A limit is"
        f" {res.cores} cores / the sum of a side's stages with that store's put or get"
        " (BLAKE3 blob counts on both sides): perfect overlap, no overhead."
    )
    return Table(
        "1. Per-stage CPU limit (CPU s/GiB)",
        [
            "data",
            "FastCDC",
            "BLAKE3/chunk",
            "zstd-3 mem / file",
            "BLAKE3 blob",
            "put mem / file",
            "write limit MiB/s mem / file",
            "get mem / file",
            "unzstd",
            "verify",
            "read limit MiB/s mem / file",
        ],
        rows,
        notes,
    )


def _ingest_table(res: Results) -> Table:
    rows = []
    for name, runs in res.runs.items():
        lim = res.limits[name]
        for run in runs:
            gib = run.size / GIB
            rows.append(
                [
                    name,
                    run.store,
                    f"{run.ingest_mibps:,.0f}",
                    f"{lim.write_limit(res.cores, run.store):,.0f}",
                    _x(run.ingest_mibps / lim.write_limit(res.cores, run.store)),
                    f"{run.ingest_cpu / run.ingest_s:.2f}",
                    f"{run.ingest_cpu / gib:.2f}",
                    _x(run.ingest_cpu / gib / lim.write_cpu(run.store)),
                    _kernel(run.ingest_kernel, run.ingest_faults, gib),
                    " / ".join(f"{run.ingest_threads.get(c, 0.0) / gib:.2f}" for c in CATEGORIES),
                ]
            )
    return Table(
        "2. Ingest through the public API (open_write, 4 MiB writes, close)",
        [
            "data",
            "store",
            "MiB/s",
            "limit MiB/s",
            "ratio",
            "cores busy",
            "CPU s/GiB",
            "CPU vs limit",
            "of it kernel s/GiB (page faults/GiB)",
            "CPU s/GiB: " + " / ".join(CATEGORIES),
        ],
        rows,
        [
            f"Best of {res.repeat}, a fresh store each run; ratio = MiB/s / the write limit"
            f" with that store's put (target >= {INGEST_TARGET}x). CPU vs limit = the"
            " process's CPU per GiB over the sum of the stages: above 1x is castore's"
            " overhead (copies, page faults, Python, the loop). Cores busy = CPU seconds per"
            f" wall second; below {res.cores} means castore waited, or other processes had the"
            f" cores. {KERNEL_NOTE} The last column splits that"
            " CPU by thread (from /proc/self/task/*/schedstat); 'other native' is"
            " obstore's runtime and any thread not started from Python.",
        ],
    )


def _read_table(res: Results) -> Table:
    rows = []
    for name, runs in res.runs.items():
        lim = res.limits[name]
        for run in runs:
            gib = run.size / GIB
            rows.append(
                [
                    name,
                    run.store,
                    f"{run.read_mibps:,.0f}",
                    f"{lim.read_limit(res.cores, run.store):,.0f}",
                    _x(run.read_mibps / lim.read_limit(res.cores, run.store)),
                    f"{run.read_cpu / run.read_s:.2f}",
                    f"{run.read_cpu / gib:.2f}",
                    _x(run.read_cpu / gib / lim.read_cpu(run.store)),
                    _kernel(run.read_kernel, run.read_faults, gib),
                    " / ".join(f"{run.read_threads.get(c, 0.0) / gib:.2f}" for c in CATEGORIES),
                ]
            )
    return Table(
        "3. Sequential read through open_read (4 MiB reads)",
        [
            "data",
            "store",
            "MiB/s",
            "limit MiB/s",
            "ratio",
            "cores busy",
            "CPU s/GiB",
            "CPU vs limit",
            "of it kernel s/GiB (page faults/GiB)",
            "CPU s/GiB: " + " / ".join(CATEGORIES),
        ],
        rows,
        [
            f"Best of {res.repeat}. The limit is get (from that store) + zstd decompress +"
            " BLAKE3 of each chunk + BLAKE3 of the whole blob, which a reader checks when it"
            f" reads a whole blob in order (target >= {READ_TARGET}x). Not in the limit: the"
            f" copy that joins chunks into each 4 MiB read. {KERNEL_NOTE}",
        ],
    )


def _rss_table(res: Results) -> Table:
    if res.rss is None:
        return Table("4. Peak memory", ["result"], [[res.rss_skipped or "not run"]])
    r = res.rss
    rows = [
        ["baseline (castore imported)", _mib(r.baseline), ""],
        ["ingest", _mib(r.ingest_peak), f"{r.size / r.ingest_s / MIB:,.0f} MiB/s"],
        ["read back", _mib(r.read_peak), f"{r.size / r.read_s / MIB:,.0f} MiB/s"],
    ]
    notes = [
        f"A {r.size / GIB:.2f} GiB blob written into objectstore+file:// and read back in a"
        " child process, data generated on the fly; peak RSS (VmHWM, reset between phases)."
    ]
    if not r.phase_peaks:
        notes.append("VmHWM could not be reset: both phase peaks are the overall peak.")
    return Table("4. Peak memory (RSS, MiB)", ["phase", "peak RSS MiB", "speed"], rows, notes)


def _latency_table(res: Results) -> Table:
    if not res.latency:
        return Table("5. Latency hiding (SeaweedFS S3)", ["result"], [[res.latency_skipped]])
    rows = [
        [r.name, f"{r.mibps:,.1f}", str(r.requests) if r.name != "direct" else ""]
        for r in res.latency
    ]
    size = res.latency[0].size
    return Table(
        "5. Latency hiding: ingest into SeaweedFS S3 with 20 ms added per request",
        ["path", "MiB/s", "requests"],
        rows,
        [
            f"{size / MIB:,.0f} MiB of random data per run into a fresh prefix, best of"
            f" {res.repeat}. The delay is added by a TCP proxy in its own process: the first"
            " bytes of each request wait 20 ms. SeaweedFS runs on the same 2 cores.",
        ],
    )


def _dedup_table(res: Results) -> Table:
    rows = []
    d = res.dedup
    if d is not None:
        rows.append(
            [
                "castore (API)",
                _mib(d.written),
                _mib(d.stored),
                _x(d.ratio),
                f"{_mib(d.unique_chunk_bytes)} ({_x(d.unique_ratio)})",
                f"{d.written / d.seconds / MIB:,.0f}",
            ]
        )
    for p in res.peer_versions:
        rows.append(
            [
                p.tool + (" (CLI)" if p.tool == "castore" else ""),
                _mib(p.size),
                _mib(p.repo_bytes),
                _x(p.ratio),
                "",
                f"{p.mibps:,.0f}",
            ]
        )
    notes = []
    if d is not None:
        notes.append(
            f"{d.versions} versions of a {d.written / d.versions / MIB:,.0f} MiB file of random"
            " bytes, each with 20 small edits (insert/delete/overwrite 1-8 bytes) on the"
            f" previous one. castore stored {d.unique_chunks} distinct chunks of {d.chunks}"
            " listed. Stored = every object (compressed chunks, indexes); for peers, the whole"
            " repository folder."
        )
    return Table(
        "6. Dedup: versions of one file",
        ["tool", "written MiB", "stored MiB", "written/stored", "unique chunks MiB", "MiB/s"],
        rows or [["not run", "", "", "", "", ""]],
        notes,
    )


def _peers_table(res: Results) -> Table:
    rows = []
    for name, runs in res.peers.items():
        for p in runs:
            rows.append(
                [
                    name,
                    p.tool,
                    f"{p.seconds:.2f}",
                    f"{p.mibps:,.0f}",
                    f"{p.cpu:.2f}",
                    f"{p.cpu / (p.size / GIB):.2f}",
                    _mib(p.peak_rss),
                    _mib(p.repo_bytes),
                    f"{p.repo_bytes / p.size:.1%}",
                ]
            )
    if not rows:
        why = "not run (add --peers)" if not res.peers_requested else "no peer ran"
        rows.append([why, "", "", "", "", "", "", "", ""])
    return Table(
        "7. Peers on the same data (one file, fresh local repository)",
        [
            "data",
            "tool",
            "seconds",
            "MiB/s",
            "CPU s",
            "CPU s/GiB",
            "peak RSS MiB",
            "repo MiB",
            "repo/input",
        ],
        rows,
        [*res.peer_lines],
    )


def _targets(res: Results) -> Table:
    rows: list[list[str]] = []
    if not res.runs:
        rows.append([f"ingest >= {INGEST_TARGET}x limit", "", "NOT RUN"])
        rows.append([f"read >= {READ_TARGET}x limit", "", "NOT RUN"])
    for name, runs in res.runs.items():
        lim = res.limits[name]
        for run in runs:
            r = run.ingest_mibps / lim.write_limit(res.cores, run.store)
            rows.append(
                [
                    f"ingest >= {INGEST_TARGET}x limit, {name}, {run.store}",
                    _x(r),
                    _verdict(r >= INGEST_TARGET),
                ]
            )
    for name, runs in res.runs.items():
        lim = res.limits[name]
        for run in runs:
            r = run.read_mibps / lim.read_limit(res.cores, run.store)
            rows.append(
                [
                    f"read >= {READ_TARGET}x limit, {name}, {run.store}",
                    _x(r),
                    _verdict(r >= READ_TARGET),
                ]
            )
    if res.rss is not None:
        peak = max(res.rss.ingest_peak, res.rss.read_peak)
        label = f"peak RSS < 200 MiB, {res.rss.size / GIB:.2f} GiB blob in and out"
        verdict = _verdict(peak < RSS_TARGET)
        if res.rss.size < 2 << 30:
            verdict += " (below 2 GiB: not the target's size)"
        rows.append([label, f"{_mib(peak)} MiB", verdict])
    else:
        rows.append(["peak RSS < 200 MiB, 2 GiB blob", "", "NOT RUN"])
    by_name = {r.name: r for r in res.latency}
    delayed = next((r for r in res.latency if r.delay > 0), None)
    base = by_name.get("proxy 0 ms")
    if delayed is not None and base is not None:
        r = delayed.mibps / base.mibps
        rows.append(
            [
                f"20 ms delay keeps >= {LATENCY_TARGET} of throughput",
                _x(r),
                _verdict(r >= LATENCY_TARGET),
            ]
        )
    else:
        rows.append([f"20 ms delay keeps >= {LATENCY_TARGET} of throughput", "", "NOT RUN"])
    for name in ("random", "text"):
        peer_runs = res.peers.get(name, [])
        ours = next((p for p in peer_runs if p.tool == "castore"), None)
        others = [p for p in peer_runs if p.tool != "castore"]
        label = f">= {PEER_TARGET:.0f}x the fastest peer, {name}"
        if ours is None or not others:
            rows.append([label, "", "NOT RUN"])
            continue
        fastest = max(others, key=lambda p: p.mibps)
        r = ours.mibps / fastest.mibps
        rows.append([label + f" ({fastest.tool})", _x(r), _verdict(r >= PEER_TARGET)])
    casync = next((p for p in res.peer_versions if p.tool == "casync"), None)
    if res.dedup is not None and casync is not None:
        rows.append(
            [
                "dedup >= casync's (written/stored)",
                f"{_x(res.dedup.ratio)} vs {_x(casync.ratio)}",
                _verdict(res.dedup.ratio >= casync.ratio),
            ]
        )
    else:
        rows.append(["dedup >= casync's (written/stored)", "", "NOT RUN"])
    return Table("Targets (issue 8)", ["target", "measured", "verdict"], rows)


def build_tables(res: Results) -> list[Table]:
    """All tables of the parts that ran, the targets last."""
    tables = []
    if res.limits:
        tables.append(_limits_table(res))
    if res.runs:
        tables.append(_ingest_table(res))
        tables.append(_read_table(res))
    if res.rss is not None or res.rss_skipped:
        tables.append(_rss_table(res))
    if res.latency or res.latency_skipped:
        tables.append(_latency_table(res))
    if res.dedup is not None or res.peer_versions:
        tables.append(_dedup_table(res))
    if res.peers or res.peers_requested:
        tables.append(_peers_table(res))
    tables.append(_targets(res))
    return tables


def _render_table(t: Table) -> str:
    widths = [len(c) for c in t.columns]
    for row in t.rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [f"### {t.title}", "", line(t.columns)]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.extend(line(r) for r in t.rows)
    if t.notes:
        out.append("")
        out.extend(t.notes)
    return "\n".join(out)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment_lines(res: Results, tool_versions: list[str]) -> list[str]:
    """Where and how the figures were taken."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    libs = ", ".join(
        f"{d} {_version(d)}"
        for d in ("castore", "blake3", "zstandard", "pyfastcdc", "obstore", "anyio")
    )
    lines = [
        f"- Command: `{res.command}`",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {_cpu_model()}, {res.cores} cores usable, {mem / GIB:.0f} GiB RAM,"
        f" {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; {libs}",
        f"- Data set size {res.size / MIB:,.0f} MiB; best of {res.repeat} runs where repeated",
    ]
    if tool_versions:
        lines.append("- Peers: " + "; ".join(tool_versions))
    if res.load:
        first, last = res.load[0], res.load[-1]
        lines.append(
            f"- Load average (1/5/15 min) at start {first[0]:.2f}/{first[1]:.2f}/{first[2]:.2f},"
            f" at end {last[0]:.2f}/{last[1]:.2f}/{last[2]:.2f}: other work on the machine"
            " slows wall-clock figures, which is why targets are same-run ratios."
        )
    return lines


def render(res: Results, tool_versions: list[str]) -> str:
    """The whole generated report (environment, tables, targets) as Markdown."""
    parts = ["\n".join(environment_lines(res, tool_versions))]
    parts.extend(_render_table(t) for t in build_tables(res))
    return "\n\n".join(parts) + "\n"


_DEFAULT_NOTES = """

## Notes

(Hand-written: what the figures mean and what limits them. The benchmark keeps this part.)
"""


def write_markdown(path: pathlib.Path, body: str) -> None:
    """Write ``body`` under a title to ``path``, keeping the notes below :data:`NOTES_MARKER`."""
    notes = _DEFAULT_NOTES
    if path.exists():
        old = path.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    head = (
        "# Benchmarks\n\n"
        "Generated by `python -m castore.bench` (also `nox -s bench` and `castore bench`);"
        " the command that produced this page is the first line below. Rerun it to refresh"
        " everything above the notes.\n\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + body + "\n" + NOTES_MARKER + notes)
