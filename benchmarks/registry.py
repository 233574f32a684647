"""The sections of the benchmark, in the order they run and report.

A new section is a module with a :class:`benchmarks.section.Section` subclass and one line
here. ``--only`` takes the sections' names; those with ``default = False`` run only when
named.
"""

from __future__ import annotations

from benchmarks import builtin, grpc_pairs
from benchmarks.check import CheckBench
from benchmarks.collect import GcBench
from benchmarks.gateway import GatewayBench
from benchmarks.section import Section
from benchmarks.serve import ServeBench

__all__ = ["SECTIONS"]

SECTIONS: tuple[type[Section], ...] = (
    builtin.Limits,
    builtin.Ingest,
    builtin.Read,
    builtin.Rss,
    builtin.Latency,
    builtin.Dedup,
    builtin.Peers,
    CheckBench,
    GatewayBench,
    GcBench,
    grpc_pairs.Grpc,
    ServeBench,
)
