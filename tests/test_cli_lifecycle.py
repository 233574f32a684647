"""``castore rm`` and ``castore ls`` (and ``castore check``, in test_check_cli.py), run as
real subprocesses against local-disk stores, and in-process for what a subprocess cannot
reach."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from castore import B3Digest
from castore.cli import ExitCode, main


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CASTORE_")}
    environ["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    environ["HOME"] = str(tmp_path / "home")
    return environ


def castore(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "castore", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def store(tmp_path: Path) -> str:
    (tmp_path / "store").mkdir()
    return "objectstore+file://" + str(tmp_path / "store")


def _put(store: str, env: dict[str, str], path: Path, data: bytes) -> B3Digest:
    path.write_bytes(data)
    result = castore("--store", store, "put", path, env=env)
    assert result.returncode == 0, result.stderr
    return B3Digest.of(data)


def test_ls_lists_every_blob_with_sizes_and_chunk_counts(
    tmp_path: Path, env: dict[str, str], store: str
) -> None:
    small = _put(store, env, tmp_path / "a", b"Hello World!")
    big_data = random.Random(3).randbytes(1_500_000)
    big = _put(store, env, tmp_path / "b", big_data)

    plain = castore("--store", store, "ls", env=env)
    assert plain.returncode == 0, plain.stderr
    assert sorted(plain.stdout.splitlines()) == sorted([str(small), str(big)])

    long = castore("ls", "--store", store, "--long", env=env)
    assert long.returncode == 0, long.stderr
    rows = {line.split()[2]: line.split()[:2] for line in long.stdout.splitlines()}
    assert rows[str(small)] == ["12", "1"]
    size, count = rows[str(big)]
    assert size == str(len(big_data)) and int(count) >= 2

    as_json = castore("ls", "--store", store, "--long", "--json", env=env)
    docs = {d["hex"]: d for d in map(json.loads, as_json.stdout.splitlines())}
    assert docs[big.hex()]["size"] == len(big_data)
    assert docs[big.hex()]["digest"] == str(big)
    assert docs[small.hex()] == {
        "digest": str(small),
        "hex": small.hex(),
        "size": 12,
        "chunks": 1,
    }
    short_json = castore("ls", "--store", store, "--json", env=env)
    assert {json.loads(line)["hex"] for line in short_json.stdout.splitlines()} == {
        small.hex(),
        big.hex(),
    }


def test_rm_deletes_says_what_stays_and_exits_1_for_absent_blobs(
    tmp_path: Path, env: dict[str, str], store: str
) -> None:
    small = _put(store, env, tmp_path / "a", b"Hello World!")
    shared = random.Random(4).randbytes(1_500_000)
    big = _put(store, env, tmp_path / "b", shared)
    other = _put(store, env, tmp_path / "c", shared + b"and a tail that makes it another blob")

    rm = castore("--store", store, "rm", str(small), big.hex(), env=env)
    assert rm.returncode == 0, rm.stderr
    assert rm.stdout.splitlines() == [f"deleted  {small}", f"deleted  {big}"]
    # What stays readable, and that no other blob is affected, is said every time.
    assert "stored as one chunk stays readable by its digest" in rm.stderr
    assert "No other blob is affected" in rm.stderr
    assert "garbage collection" in rm.stderr

    listed = castore("--store", store, "ls", env=env).stdout.splitlines()
    assert listed == [str(other)]
    # The one-chunk blob is still readable by digest; the chunked one is gone; the blob
    # that shares its chunks reads back exactly.
    assert castore("--store", store, "get", str(small), env=env).stdout == "Hello World!"
    assert castore("--store", store, "has", str(big), env=env).returncode == ExitCode.NOT_FOUND
    got = subprocess.run(
        [sys.executable, "-m", "castore", "--store", store, "get", str(other)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert got.returncode == 0 and got.stdout == shared + b"and a tail that makes it another blob"

    again = castore("--store", store, "rm", str(big), str(other), env=env)
    assert again.returncode == ExitCode.NOT_FOUND
    assert again.stdout.splitlines() == [f"not stored  {big}", f"deleted  {other}"]
    assert castore("--store", store, "ls", env=env).stdout == ""

    quiet = castore("--store", store, "rm", "-q", str(other), env=env)
    assert quiet.returncode == ExitCode.NOT_FOUND and quiet.stdout == "" and quiet.stderr == ""

    bad = castore("--store", store, "rm", "nope", env=env)
    assert bad.returncode == ExitCode.BAD_DIGEST and bad.stderr.startswith("castore: bad digest")
    assert castore("--store", store, "rm", env=env).returncode == ExitCode.USAGE


def test_rm_and_ls_through_grpc_say_the_store_cannot(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The tvix protocol has neither delete nor listing: a clear one-line error, exit 5."""
    url = "grpc+http://127.0.0.1:9"  # nothing is contacted: the client refuses first
    assert main(["--store", url, "rm", "af" * 32]) == ExitCode.STORE_FAILED
    err = capsys.readouterr().err
    assert err.startswith("castore: this store cannot do that:") and "delete" in err
    assert main(["--store", url, "ls"]) == ExitCode.STORE_FAILED
    err = capsys.readouterr().err
    assert err.startswith("castore: this store cannot do that:") and "list" in err


def test_ls_and_rm_on_memory_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", "memory://", "ls", "--long"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["--store", "memory://", "rm", "af" * 32]) == ExitCode.NOT_FOUND
    assert capsys.readouterr().out == f"not stored  {B3Digest.parse('af' * 32)}\n"
