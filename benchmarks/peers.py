"""Peers: restic, borgbackup and casync on the same data and machine, beside castore's CLI.

Each tool backs up one file (the data set, written to a temporary folder first, so it is
in the page cache) into a fresh local repository in a temporary folder on the same disk.
castore takes part the same way, as a separate process: ``python -m castore --store
objectstore+file://REPO put FILE``. Every run is measured alike: wall time, CPU (user +
system, from ``wait4``), peak resident memory (the child's ``VmHWM``, sampled while it
runs), and the repository's size (all files in it) afterwards. Repository setup
(``init``) is not timed.

Settings, chosen for ~256 KiB average chunks and zstd level 3 where a tool offers them:

- castore: FastCDC 2020, 128/256/512 KiB, zstd 3, one object per chunk.
- borg: ``--chunker-params buzhash,17,19,17,4095`` (minimum 128 KiB, maximum 512 KiB,
  cut when 17 hash bits match: ~256 KiB average, ~240 KiB measured), ``--compression
  zstd,3``, no encryption, files cache disabled so that every run reads and chunks.
- casync: ``--chunk-size=131072:262144:524288`` (castore's bounds), ``--compression=zstd``
  (casync's own zstd level, not settable).
- restic: its chunker is fixed (512 KiB to 8 MiB, ~1 MiB average) and repositories are
  always encrypted; repository format 2 with ``--compression auto`` (zstd at its default
  speed, comparable to level 3); no local cache. restic runs on both cores.

The versions set: each tool backs up the ten versions one after another, as the same
file name rewritten between runs, into one repository; its size at the end is set
against the bytes of all versions.

A tool whose binary is not on ``PATH`` is skipped with a line saying so; the benchmark
installs nothing (``apt-get install restic borgbackup casync`` on Debian and Ubuntu).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["PeerRun", "Tool", "available_tools", "run_dataset", "run_versions"]


@dataclass
class PeerRun:
    """One tool on one data set (or on the whole versions set)."""

    tool: str
    dataset: str
    size: int
    seconds: float
    cpu: float
    peak_rss: int  # bytes
    repo_bytes: int

    @property
    def mibps(self) -> float:
        """Input MiB per second of wall time."""
        return self.size / self.seconds / (1 << 20)

    @property
    def ratio(self) -> float:
        """Input bytes per repository byte."""
        return self.size / self.repo_bytes


@dataclass
class _Usage:
    seconds: float
    cpu: float
    peak_rss: int


def _hwm(pid: int) -> int:
    """The peak resident set (``VmHWM``) of a running process, in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _run(cmd: Sequence[str], env: dict[str, str], cwd: pathlib.Path, log: pathlib.Path) -> _Usage:
    """Run ``cmd`` to completion; its wall time, CPU and peak RSS.

    CPU comes from ``wait4``. Peak memory does not: Linux carries the parent's resident
    set into a forked child's ``ru_maxrss`` across ``exec``, and this process holds the
    data sets. So the child's own high-water mark (``VmHWM``) is sampled every 5 ms while
    it runs; the last sample misses at most the final few milliseconds of its life.
    """
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
        peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _hwm(proc.pid))
            time.sleep(0.005)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-10:]
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n" + "\n".join(tail))
    return _Usage(seconds, usage.ru_utime + usage.ru_stime, peak)


def _du(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Tool:
    """How to set up a repository for one tool and back a file up into it."""

    def __init__(
        self,
        name: str,
        binary: str | None,
        settings: str,
        init: Callable[[pathlib.Path], list[list[str]]],
        backup: Callable[[pathlib.Path, pathlib.Path, int], list[str]],
        env: Callable[[pathlib.Path], dict[str, str]],
        version: Callable[[], str],
    ) -> None:
        self.name = name
        self.binary = binary
        self.settings = settings
        self.init = init
        self.backup = backup
        self.env = env
        self._version = version

    def version(self) -> str:
        """The tool's version line, or ``""``."""
        try:
            return self._version()
        except (OSError, subprocess.SubprocessError):
            return ""


def _first_line(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "BORG_"))}


def available_tools() -> tuple[list[Tool], list[str]]:
    """castore's CLI and the peers found on ``PATH``; and a line per peer that is missing."""
    tools: list[Tool] = []
    missing: list[str] = []
    py = sys.executable

    tools.append(
        Tool(
            "castore",
            py,
            "FastCDC 2020 128/256/512 KiB, zstd 3 (CLI, objectstore+file://)",
            init=lambda repo: [],
            backup=lambda repo, file, i: [
                py,
                "-m",
                "castore",
                "--store",
                "objectstore+" + (repo / "store").resolve().as_uri(),
                "put",
                str(file),
            ],
            env=lambda work: _base_env(),
            version=lambda: _first_line([py, "-m", "castore", "--version"]),
        )
    )

    borg = shutil.which("borg")
    if borg is None:
        missing.append("borg: not installed, skipped (apt-get install borgbackup)")
    else:
        tools.append(
            Tool(
                "borg",
                borg,
                "buzhash 17,19,17 (~256 KiB), zstd,3, no encryption",
                init=lambda repo: [[borg, "init", "--encryption=none", str(repo / "repo")]],
                backup=lambda repo, file, i: [
                    borg,
                    "create",
                    "--compression",
                    "zstd,3",
                    "--chunker-params",
                    "buzhash,17,19,17,4095",
                    "--files-cache=disabled",
                    f"{repo / 'repo'}::v{i}",
                    str(file),
                ],
                env=lambda work: {
                    **_base_env(),
                    "BORG_BASE_DIR": str(work / "borg-base"),
                    "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                    "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
                },
                version=lambda: _first_line([borg, "--version"]),
            )
        )

    restic = shutil.which("restic")
    if restic is None:
        missing.append("restic: not installed, skipped (apt-get install restic)")
    else:
        tools.append(
            Tool(
                "restic",
                restic,
                "fixed chunker ~1 MiB avg, zstd auto, encrypted, 2 cores",
                init=lambda repo: [
                    [restic, "init", "-r", str(repo / "repo"), "--repository-version", "2"]
                ],
                backup=lambda repo, file, i: [
                    restic,
                    "backup",
                    "-r",
                    str(repo / "repo"),
                    "--no-cache",
                    "--compression",
                    "auto",
                    "--host",
                    "castore-bench",
                    "-q",
                    str(file),
                ],
                env=lambda work: {**_base_env(), "RESTIC_PASSWORD": "castore-bench"},
                version=lambda: _first_line([restic, "version"]),
            )
        )

    casync = shutil.which("casync")
    if casync is None:
        missing.append("casync: not installed, skipped (apt-get install casync)")
    else:
        tools.append(
            Tool(
                "casync",
                casync,
                "buzhash 128/256/512 KiB, zstd (casync's level)",
                init=lambda repo: [],
                backup=lambda repo, file, i: [
                    casync,
                    "make",
                    f"--store={repo / 'store'}",
                    "--chunk-size=131072:262144:524288",
                    "--compression=zstd",
                    str(repo / f"v{i}.caibx"),
                    str(file),
                ],
                env=lambda work: _base_env(),
                version=lambda: "casync " + _first_line([casync, "--version"]),
            )
        )
    return tools, missing


def _fresh_repo(
    tool: Tool, work: pathlib.Path, log: pathlib.Path
) -> tuple[pathlib.Path, dict[str, str]]:
    repo = work / f"{tool.name}-repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(work / "borg-base", ignore_errors=True)
    repo.mkdir(parents=True)
    env = tool.env(work)
    for cmd in tool.init(repo):
        _run(cmd, env, work, log)
    os.sync()  # no writeback backlog from earlier runs (see benchmarks.api.StoreKind)
    return repo, env


def run_dataset(
    tools: Sequence[Tool],
    name: str,
    data: bytes,
    work: pathlib.Path,
    repeat: int,
    progress: Callable[[str], None] = lambda _msg: None,
) -> list[PeerRun]:
    """Each tool backs up ``data`` (as one file) into a fresh repository; best of ``repeat``."""
    file = work / f"{name}.bin"
    file.write_bytes(data)
    log = work / "peers.log"
    runs: list[PeerRun] = []
    for tool in tools:
        progress(f"peers, {name}: {tool.name}")
        best: PeerRun | None = None
        for _ in range(repeat):
            repo, env = _fresh_repo(tool, work, log)
            usage = _run(tool.backup(repo, file, 0), env, work, log)
            run = PeerRun(
                tool.name, name, len(data), usage.seconds, usage.cpu, usage.peak_rss, _du(repo)
            )
            shutil.rmtree(repo, ignore_errors=True)
            if best is None or run.seconds < best.seconds:
                best = run
        assert best is not None
        runs.append(best)
    file.unlink()
    return runs


def run_versions(
    tools: Sequence[Tool],
    versions: Sequence[bytes],
    work: pathlib.Path,
    progress: Callable[[str], None] = lambda _msg: None,
) -> list[PeerRun]:
    """Each tool backs up every version, in order, into one repository."""
    folder = work / "versions"
    folder.mkdir(exist_ok=True)
    file = folder / "file.bin"
    log = work / "peers.log"
    runs: list[PeerRun] = []
    for tool in tools:
        progress(f"peers, versions: {tool.name}")
        repo, env = _fresh_repo(tool, work, log)
        seconds = cpu = 0.0
        peak = 0
        for i, data in enumerate(versions):
            file.write_bytes(data)
            os.sync()
            usage = _run(tool.backup(repo, file, i), env, work, log)
            seconds += usage.seconds
            cpu += usage.cpu
            peak = max(peak, usage.peak_rss)
        total = sum(len(v) for v in versions)
        runs.append(PeerRun(tool.name, "versions", total, seconds, cpu, peak, _du(repo)))
        shutil.rmtree(repo, ignore_errors=True)
    file.unlink(missing_ok=True)
    return runs
