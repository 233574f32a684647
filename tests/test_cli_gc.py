"""``castore gc``, run as a real subprocess against a local-disk store.

Time is moved by back-dating the collector's ``condemned`` marker on disk (its
LastModified is the file's mtime), so that a sweep falls due without waiting a grace.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from castore import B3Digest, ObjectStoreBlobService
from castore.cli import ExitCode
from castore.cli._gc import parse_duration
from castore.objectstore._gc_lease import Lease
from castore.objectstore._gc_state import SYSTEM_CLOCK, GcKeys
from castore.registry import from_addr


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CASTORE_")}
    environ["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    environ["HOME"] = str(tmp_path / "home")
    return environ


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "store").mkdir()
    return tmp_path / "store"


def _url(folder: Path) -> str:
    return f"objectstore+file://{folder}?avg_chunk_size=4096"


def castore(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "castore", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _put(url: str, env: dict[str, str], path: Path, data: bytes) -> B3Digest:
    path.write_bytes(data)
    result = castore("--store", url, "put", path, env=env)
    assert result.returncode == 0, result.stderr
    return B3Digest.of(data)


def _gc(url: str, env: dict[str, str], *more: str) -> dict[str, object]:
    result = castore(
        "--store", url, "gc", "--grace", "8s", "--min-age", "0", "--json", *more, env=env
    )
    assert result.returncode == ExitCode.OK, result.stderr
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    return doc


def _chunk_files(folder: Path) -> set[str]:
    return {p.name for p in (folder / "chunks").rglob("*") if p.is_file()}


def _back_date_condemned(folder: Path, seconds: float) -> None:
    markers = list((folder / "gc" / "gen").rglob("condemned"))
    assert markers, "no generation was condemned"
    for marker in markers:
        t = marker.stat().st_mtime - seconds
        os.utime(marker, (t, t))


def test_gc_condemns_then_sweeps_and_keeps_every_live_blob(
    tmp_path: Path, env: dict[str, str], folder: Path
) -> None:
    url = _url(folder)
    keep_data = random.Random(1).randbytes(200_000)
    gone_data = random.Random(2).randbytes(200_000)
    keep = _put(url, env, tmp_path / "keep", keep_data)
    gone = _put(url, env, tmp_path / "gone", gone_data)
    before = _chunk_files(folder)
    assert castore("--store", url, "rm", gone, env=env).returncode == 0

    dry = _gc(url, env, "--dry-run")
    assert dry["dry_run"] is True and dry["condemned"] > 0  # type: ignore[operator]
    dry_text = castore(
        "--store", url, "gc", "--grace", "8s", "--min-age", "0", "--dry-run", env=env
    )
    assert dry_text.returncode == 0, dry_text.stderr
    assert f"would condemn generation 1: {dry['condemned']} chunks" in dry_text.stdout
    assert "(dry run: nothing changed)" in dry_text.stdout
    assert not (folder / "gc").exists(), "a dry run wrote the collector's state"
    assert _chunk_files(folder) == before

    first = _gc(url, env)
    assert first["condemned"] == dry["condemned"] and first["deleted"] == 0
    assert first["generation"] is not None and first["indexes"] == 1
    assert _chunk_files(folder) == before

    text = castore("--store", url, "gc", "--grace", "8s", "--min-age", "0", env=env)
    assert text.returncode == 0, text.stderr
    assert f"generation {first['generation']} is due for its sweep in" in text.stdout
    assert _chunk_files(folder) == before

    _back_date_condemned(folder, 3600)
    second = _gc(url, env)
    assert second["swept"] == [first["generation"]]
    assert second["deleted"] == first["condemned"] and second["rescued"] == 0
    assert len(_chunk_files(folder)) == len(before) - int(second["deleted"])  # type: ignore[call-overload]

    got = castore("--store", url, "get", keep, "-o", tmp_path / "out", env=env)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out").read_bytes() == keep_data
    assert castore("--store", url, "has", gone, env=env).returncode == ExitCode.NOT_FOUND


def test_gc_exits_busy_while_another_collector_holds_the_lease(
    env: dict[str, str], folder: Path
) -> None:
    url = _url(folder)

    async def hold() -> None:
        svc = from_addr(url)
        assert isinstance(svc, ObjectStoreBlobService)
        lease = Lease(
            svc.adapter,
            GcKeys(svc._layout),
            SYSTEM_CLOCK,
            duration=300.0,
            margin=180.0,
            holder="another collector",
        )
        await lease.acquire()

    anyio.run(hold)
    result = castore("--store", url, "gc", env=env)
    assert result.returncode == ExitCode.BUSY, result.stderr
    assert "another collector" in result.stderr and "holds the lease" in result.stderr
    assert result.stderr.count("\n") == 1


def test_gc_refuses_what_it_cannot_collect(env: dict[str, str], folder: Path) -> None:
    short = castore("--store", _url(folder), "gc", "--grace", "2s", env=env)
    assert short.returncode == ExitCode.USAGE and "--grace must be at least" in short.stderr
    bad = castore("--store", _url(folder), "gc", "--grace", "soon", env=env)
    assert bad.returncode == ExitCode.USAGE and "not a duration" in bad.stderr
    memory = castore("--store", "memory://", "gc", env=env)
    assert memory.returncode == ExitCode.STORE_FAILED
    assert "gc runs on an object store" in memory.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("2w", 1209600.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "10x", "-5s", "1h 30"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
