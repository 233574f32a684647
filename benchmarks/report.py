"""The tables and targets of the built-in sections, and the figures they share.

Every figure of a table comes from one run of the benchmark; ratios set figures of the
same run against each other, so that a busy machine moves both sides of a ratio.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from benchmarks.api import CATEGORIES, Run
from benchmarks.dedup import DedupResult
from benchmarks.latency import LatencyRun
from benchmarks.limits import STORES, Limits
from benchmarks.markdown import GIB, MIB, Table, Target
from benchmarks.peers import PeerRun, Tool
from benchmarks.rss import RssResult

if TYPE_CHECKING:
    from benchmarks.section import Context

__all__ = [
    "Results",
    "dedup_table",
    "dedup_targets",
    "ingest_table",
    "ingest_targets",
    "latency_table",
    "latency_targets",
    "limits_table",
    "peers_table",
    "peers_targets",
    "read_table",
    "read_targets",
    "rss_table",
    "rss_targets",
]


# What castore aims at; the targets table judges each run against these.
INGEST_TARGET = 0.9
READ_TARGET = 0.8
RSS_TARGET = 200 << 20
LATENCY_TARGET = 0.5
PEER_TARGET = 2.0


@dataclass
class Results:
    """What the built-in sections measured (absent parts were not run)."""

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
    tools: list[Tool] = field(default_factory=list)


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


def limits_table(ctx: Context) -> Table:
    res = ctx.res
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
                " / ".join(f"{lim.write_limit(ctx.cores, s):,.0f}" for s in STORES),
                f"{lim.get['memory']:.3f} / {lim.get['file']:.3f}",
                f"{lim.unzstd:.3f}",
                f"{lim.verify_b3:.3f}",
                " / ".join(f"{lim.read_limit(ctx.cores, s):,.0f}" for s in STORES),
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
        f" {ctx.repeat}; put and get into/from an obstore MemoryStore / LocalStore. A limit is"
        f" {ctx.cores} cores / the sum of a side's stages with that store's put or get"
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


@dataclass(frozen=True, slots=True)
class _Phase:
    """One run's figures for one side (ingest or read), and that side's limits."""

    mibps: float
    seconds: float
    cpu: float
    kernel: float
    faults: int
    threads: dict[str, float]
    limit: float
    cpu_limit: float


def _phases(ctx: Context, side: Literal["ingest", "read"]) -> Iterator[tuple[str, Run, _Phase]]:
    """Every data set's runs with their figures for ``side``."""
    for name, runs in ctx.res.runs.items():
        lim = ctx.res.limits[name]
        for run in runs:
            if side == "ingest":
                phase = _Phase(
                    run.ingest_mibps,
                    run.ingest_s,
                    run.ingest_cpu,
                    run.ingest_kernel,
                    run.ingest_faults,
                    run.ingest_threads,
                    lim.write_limit(ctx.cores, run.store),
                    lim.write_cpu(run.store),
                )
            else:
                phase = _Phase(
                    run.read_mibps,
                    run.read_s,
                    run.read_cpu,
                    run.read_kernel,
                    run.read_faults,
                    run.read_threads,
                    lim.read_limit(ctx.cores, run.store),
                    lim.read_cpu(run.store),
                )
            yield name, run, phase


#: The columns of the ingest and the read tables.
_PHASE_COLUMNS = [
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
]


def _phase_rows(ctx: Context, side: Literal["ingest", "read"]) -> list[list[str]]:
    rows = []
    for name, run, p in _phases(ctx, side):
        gib = run.size / GIB
        rows.append(
            [
                name,
                run.store,
                f"{p.mibps:,.0f}",
                f"{p.limit:,.0f}",
                _x(p.mibps / p.limit),
                f"{p.cpu / p.seconds:.2f}",
                f"{p.cpu / gib:.2f}",
                _x(p.cpu / gib / p.cpu_limit),
                _kernel(p.kernel, p.faults, gib),
                " / ".join(f"{p.threads.get(c, 0.0) / gib:.2f}" for c in CATEGORIES),
            ]
        )
    return rows


def _phase_targets(ctx: Context, side: Literal["ingest", "read"], target: float) -> list[Target]:
    """At least ``target`` of the limit, per data set and store."""
    if not ctx.res.runs:
        return [Target(f"{side} >= {target}x limit")]
    rows = []
    for name, run, p in _phases(ctx, side):
        r = p.mibps / p.limit
        rows.append(
            Target.judged(f"{side} >= {target}x limit, {name}, {run.store}", _x(r), r >= target)
        )
    return rows


def ingest_table(ctx: Context) -> Table:
    return Table(
        "2. Ingest through the public API (open_write, 4 MiB writes, close)",
        _PHASE_COLUMNS,
        _phase_rows(ctx, "ingest"),
        [
            f"Best of {ctx.repeat}, a fresh store each run; ratio = MiB/s / the write limit"
            f" with that store's put (target >= {INGEST_TARGET}x). CPU vs limit = the"
            " process's CPU per GiB over the sum of the stages: above 1x is castore's"
            " overhead (copies, page faults, Python, the loop). Cores busy = CPU seconds per"
            f" wall second; below {ctx.cores} means castore waited, or other processes had the"
            f" cores. {KERNEL_NOTE} The last column splits that"
            " CPU by thread (from /proc/self/task/*/schedstat); 'other native' is"
            " obstore's runtime and any thread not started from Python.",
        ],
    )


def read_table(ctx: Context) -> Table:
    return Table(
        "3. Sequential read through open_read (readinto a 4 MiB buffer)",
        _PHASE_COLUMNS,
        _phase_rows(ctx, "read"),
        [
            f"Best of {ctx.repeat}. The limit is get (from that store) + zstd decompress +"
            " BLAKE3 of each chunk + BLAKE3 of the whole blob, which a reader checks when it"
            f" reads a whole blob in order (target >= {READ_TARGET}x). Not in the limit: the"
            " copy of chunks into the reader's buffer, where the reader does not decode"
            f" straight into it. {KERNEL_NOTE}",
        ],
    )


def rss_table(ctx: Context) -> Table:
    res = ctx.res
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


def latency_table(ctx: Context) -> Table:
    res = ctx.res
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
            f" {ctx.repeat}. The delay is added by a TCP proxy in its own process: the first"
            " bytes of each request wait 20 ms. SeaweedFS runs on the same 2 cores.",
        ],
    )


def dedup_table(ctx: Context) -> Table:
    res = ctx.res
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


def peers_table(ctx: Context) -> Table:
    res = ctx.res
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
        why = "not run (add --peers)" if "peers" not in ctx.selected else "no peer ran"
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


def ingest_targets(ctx: Context) -> list[Target]:
    """Ingest at least :data:`INGEST_TARGET` of the write limit, per data set and store."""
    return _phase_targets(ctx, "ingest", INGEST_TARGET)


def read_targets(ctx: Context) -> list[Target]:
    """Read at least :data:`READ_TARGET` of the read limit, per data set and store."""
    return _phase_targets(ctx, "read", READ_TARGET)


def rss_targets(ctx: Context) -> list[Target]:
    """Peak RSS under :data:`RSS_TARGET` for a 2 GiB blob in and out."""
    rss = ctx.res.rss
    if rss is None:
        return [Target("peak RSS < 200 MiB, 2 GiB blob")]
    peak = max(rss.ingest_peak, rss.read_peak)
    label = f"peak RSS < 200 MiB, {rss.size / GIB:.2f} GiB blob in and out"
    verdict = "MET" if peak < RSS_TARGET else "MISSED"
    if rss.size < 2 << 30:
        verdict += " (below 2 GiB: not the target's size)"
    return [Target(label, f"{_mib(peak)} MiB", verdict)]


def latency_targets(ctx: Context) -> list[Target]:
    """A 20 ms delay keeps at least :data:`LATENCY_TARGET` of the throughput."""
    label = f"20 ms delay keeps >= {LATENCY_TARGET} of throughput"
    latency = ctx.res.latency
    delayed = next((r for r in latency if r.delay > 0), None)
    base = next((r for r in latency if r.name == "proxy 0 ms"), None)
    if delayed is None or base is None:
        return [Target(label)]
    r = delayed.mibps / base.mibps
    return [Target.judged(label, _x(r), r >= LATENCY_TARGET)]


def peers_targets(ctx: Context) -> list[Target]:
    """castore at least :data:`PEER_TARGET` times the fastest peer, per data set."""
    rows = []
    for name in ("random", "text"):
        peer_runs = ctx.res.peers.get(name, [])
        ours = next((p for p in peer_runs if p.tool == "castore"), None)
        others = [p for p in peer_runs if p.tool != "castore"]
        label = f">= {PEER_TARGET:.0f}x the fastest peer, {name}"
        if ours is None or not others:
            rows.append(Target(label))
            continue
        fastest = max(others, key=lambda p: p.mibps)
        r = ours.mibps / fastest.mibps
        rows.append(Target.judged(label + f" ({fastest.tool})", _x(r), r >= PEER_TARGET))
    return rows


def dedup_targets(ctx: Context) -> list[Target]:
    """castore's dedup at least casync's (needs the peers section too)."""
    label = "dedup >= casync's (written/stored)"
    dedup = ctx.res.dedup
    casync = next((p for p in ctx.res.peer_versions if p.tool == "casync"), None)
    if dedup is None or casync is None:
        return [Target(label)]
    measured = f"{_x(dedup.ratio)} vs {_x(casync.ratio)}"
    return [Target.judged(label, measured, dedup.ratio >= casync.ratio)]
