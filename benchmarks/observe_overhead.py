"""``python -m benchmarks.observe_overhead``: what ``castore serve``'s metrics and request
logs cost its gRPC server.

Two servers of ``memory://`` run side by side, each in its own process:

- ``castore serve`` as users start it: every call counted in Prometheus metrics and logged
  as one line (text, to a pipe this process drains);
- the same command with no observer given to its gRPC server (nothing counted, nothing
  logged, no request ids), run by this module's ``bare-server`` role: ``castore serve``'s
  own code with :func:`castore.grpc.serve` called without ``observer``.

Rounds alternate between them, the order flipped each round: a ``Put`` and a ``Read`` of
``--size`` bytes by the gRPC section's client (:mod:`benchmarks.grpc_child`), then
``--calls`` ``Stat`` calls one after the other, where a call's fixed costs weigh most.
Each figure is the server process's CPU (user + system, from ``/proc``) per MiB or per
call, the median of ``--rounds``; the ratio is the median of each round's observed over
bare. Not a section of the
benchmark: run it when the observer changes.

::

    python -m benchmarks.observe_overhead --size 128M --calls 2000 --rounds 5
    python -m benchmarks.observe_overhead --serve-args '--log-level warning'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from benchmarks.child import module_command
from benchmarks.grpc_child import MESSAGE
from benchmarks.grpc_pairs import PairRun, _env, _stop, _transfer
from benchmarks.main import parse_size
from benchmarks.markdown import MIB

__all__ = ["main"]

_PREFIX = b"castore serve: listening on "


@contextmanager
def _server(observed: bool, extra: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    if observed:
        command = module_command("castore", "serve", "--store", "memory://")
        command += ["--listen", "grpc+http://127.0.0.1:0", "--grace", "1", *extra]
    else:
        command = module_command("benchmarks.observe_overhead", "bare-server")
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and not line.startswith(_PREFIX):
            line = proc.stderr.readline()
        if not line:
            raise RuntimeError("the server did not start")
        # The log lines must flow, as they would to a terminal or a log collector.
        stderr = proc.stderr
        threading.Thread(target=lambda: stderr.read(), daemon=True).start()
        yield proc, line[len(_PREFIX) :].decode().strip()
    finally:
        _stop(proc)


def _stats(url: str, server_pid: int, calls: int) -> PairRun:
    cmd = module_command("benchmarks.observe_overhead", "stat-client", url, str(calls))
    return _transfer("stat", "stat", cmd, server_pid)


def measure(
    size: int, calls: int, rounds: int, extra: list[str]
) -> dict[str, dict[str, list[float]]]:
    """Server CPU per MiB (put, read) and per call (stat), by server, for each round."""
    figures: dict[str, dict[str, list[float]]] = {
        name: {"put": [], "read": [], "stat": []} for name in ("observed", "bare")
    }
    with _server(True, extra) as observed, _server(False, []) as bare:
        servers = {"observed": observed, "bare": bare}
        for i in range(rounds):
            order = ("observed", "bare") if i % 2 == 0 else ("bare", "observed")
            for name in order:
                proc, url = servers[name]
                print(f"round {i + 1}/{rounds}: {name}", file=sys.stderr, flush=True)
                for op in ("put", "read"):
                    cmd = module_command("benchmarks.grpc_child", "castore-client", url)
                    run = _transfer(name, op, [*cmd, op, str(size)], proc.pid)
                    figures[name][op].append(run.ms_per_mib(run.server_cpu))
                run = _stats(url, proc.pid, calls)
                figures[name]["stat"].append(run.server_cpu * 1e6 / calls)
    return figures


def _bare_server() -> int:
    """``castore serve`` whose gRPC server is given no observer."""
    from contextlib import AbstractAsyncContextManager
    from typing import Any

    from castore.cli import _serve, main
    from castore.cli._allocator import tune_allocator
    from castore.grpc.server import RunningServer, serve

    def without_observer(*args: Any, **kwargs: Any) -> AbstractAsyncContextManager[RunningServer]:
        kwargs.pop("observer", None)
        return serve(*args, **kwargs)

    vars(_serve)["serve"] = without_observer  # what _serve._start calls
    # main(argv) leaves the allocator alone; the castore command tunes it: do the same.
    tune_allocator()
    return main(["serve", "--store", "memory://", "--listen", "grpc+http://127.0.0.1:0",
                 "--grace", "1"])  # fmt: skip


async def _stat_client(url: str, calls: int) -> None:
    import castore
    from benchmarks.grpc_child import _cpu, _go_signal, _report

    async with castore.from_addr(url) as service:
        digest = await service.put(b"x" * MESSAGE)
        for _ in range(20):
            await service.has(digest)
        await _go_signal()
        t0, c0 = time.perf_counter(), _cpu()
        for _ in range(calls):
            await service.has(digest)
        _report(time.perf_counter() - t0, _cpu() - c0, calls)


def main(argv: list[str]) -> None:
    if argv[:1] == ["bare-server"]:
        raise SystemExit(_bare_server())
    if argv[:1] == ["stat-client"]:
        from castore.cli._allocator import tune_allocator

        tune_allocator()  # as castore serve and the section's clients do
        asyncio.run(_stat_client(argv[1], int(argv[2])))
        return
    p = argparse.ArgumentParser(prog="python -m benchmarks.observe_overhead")
    p.add_argument("--size", type=parse_size, default=parse_size("128M"))
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--serve-args",
        default="",
        metavar="ARGS",
        help="more arguments for the observed castore serve (say '--log-level warning')",
    )
    args = p.parse_args(argv)
    figures = measure(args.size, args.calls, args.rounds, args.serve_args.split())
    rows = []
    for op, unit in (("put", "ms/MiB"), ("read", "ms/MiB"), ("stat", "µs/call")):
        observed, bare = figures["observed"][op], figures["bare"][op]
        # The ratio of each round (the two servers measured back to back), then their
        # median: a change in the machine's load between rounds cancels out.
        ratio = statistics.median(o / b for o, b in zip(observed, bare, strict=True))
        obs, base = statistics.median(observed), statistics.median(bare)
        rows.append({"op": op, "unit": unit, "observed": obs, "bare": base, "ratio": ratio})
    size = args.size / MIB
    print(f"server CPU, median of {args.rounds} rounds ({size:,.0f} MiB, {args.calls} Stats):")
    for r in rows:
        print(
            f"  {r['op']:5} observed {r['observed']:8.2f} {r['unit']:7}  bare "
            f"{r['bare']:8.2f}  ratio {r['ratio']:.3f}"
        )
    print(json.dumps({"rows": rows, "figures": figures}))


if __name__ == "__main__":
    main(sys.argv[1:])
