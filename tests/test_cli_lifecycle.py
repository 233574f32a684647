"""``castore rm`` and ``castore ls`` (and ``castore check``, in test_check_cli.py), run as
real subprocesses against local-disk stores, and in-process for what a subprocess cannot
reach."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from castore import B3Digest
from castore.cli import ExitCode, main
from castore.cli._progress import Status


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


# -- castore check ------------------------------------------------------------------------


def _chunk_files(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "chunks").rglob("*") if p.is_file())


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


def test_check_exit_codes_json_and_subsets(tmp_path: Path, env: dict[str, str]) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    store = f"objectstore+file://{folder}?avg_chunk_size=4096"
    data = random.Random(5).randbytes(150_000)
    digest = _put(store, env, tmp_path / "a", data)
    clean = castore("--store", store, "check", "--read-data", env=env)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.splitlines()[-1] == "no problems found"
    assert clean.stderr == ""  # no status line when stderr is not a terminal

    chunk = _chunk_files(folder)[7]
    _flip(chunk)
    # Structurally the store is whole: exit 0. Reading the data finds the flip: exit 1.
    assert castore("--store", store, "check", env=env).returncode == 0
    found = castore("--store", store, "check", "--read-data", env=env)
    assert found.returncode == 1, found.stderr
    first = found.stdout.splitlines()[0]
    assert first.startswith(
        f"corrupt-chunk  chunks/b3/{chunk.name[:4]}/{chunk.name} (blob {digest})"
    )
    assert "1 problems (1 corrupt chunks); 0 repaired, 1 left" in found.stdout

    as_json = castore("--store", store, "check", "--read-data", "--json", env=env)
    assert as_json.returncode == 1
    docs = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert docs[0]["problem"] == "corrupt-chunk" and docs[0]["blob"] == str(digest)
    assert docs[0]["digest"] == str(B3Digest.parse(chunk.name)) and not docs[0]["repaired"]
    summary = docs[-1]["summary"]
    assert summary["corrupt_chunks"] == 1 and summary["clean"] is False
    assert summary["chunks_read"] == summary["chunks"] == len(_chunk_files(folder))

    # Slices 1/2 and 2/2 read every chunk once between them; one of them finds the flip.
    codes, read = [], 0
    for n in (1, 2):
        part = castore("--store", store, "check", "--read-data-subset", f"{n}/2", "--json", env=env)
        codes.append(part.returncode)
        read += json.loads(part.stdout.splitlines()[-1])["summary"]["chunks_read"]
    assert sorted(codes) == [0, 1] and read == summary["chunks"]

    bad = castore("--store", store, "check", "--read-data-subset", "3/2", env=env)
    assert bad.returncode == ExitCode.USAGE and "N/T" in bad.stderr


def test_check_repairs_from_a_replica_or_by_delete_and_put(
    tmp_path: Path, env: dict[str, str]
) -> None:
    folder, replica = tmp_path / "store", tmp_path / "replica"
    folder.mkdir()
    replica.mkdir()
    store = f"objectstore+file://{folder}?avg_chunk_size=4096"
    replica_url = f"objectstore+file://{replica}?avg_chunk_size=4096"
    data = random.Random(6).randbytes(150_000)
    source = tmp_path / "a"
    digest = _put(store, env, source, data)
    assert _put(replica_url, env, source, data) == digest
    chunks = _chunk_files(folder)
    _flip(chunks[2])
    chunks[9].unlink()

    fixed = castore("--store", store, "check", "--read-data", "--repair-from", replica_url, env=env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert fixed.stdout.count("[repaired: replaced from the source]") == 2
    assert "2 problems (1 missing chunks, 1 corrupt chunks); 2 repaired, 0 left" in fixed.stdout
    assert castore("--store", store, "check", "--read-data", env=env).returncode == 0

    # No source: the corrupt chunk is deleted (exit 1: the blob still lacks it) and the
    # next put of the blob stores it anew.
    _flip(chunks[4])
    deleted = castore("--store", store, "check", "--read-data", "--repair", env=env)
    assert deleted.returncode == 1
    assert "deleted the corrupt chunk" in deleted.stdout and not chunks[4].exists()
    missing = castore("--store", store, "check", env=env)
    assert missing.returncode == 1 and missing.stdout.startswith("missing-chunk")
    assert _put(store, env, source, data) == digest
    assert castore("--store", store, "check", "--read-data", env=env).returncode == 0

    url = castore("--store", store, "check", "--repair-from", "bogus://x", env=env)
    assert url.returncode == ExitCode.BAD_STORE_URL and "--repair-from" in url.stderr


def test_check_that_cannot_run_exits_5(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", "memory://", "check"]) == ExitCode.STORE_FAILED
    err = capsys.readouterr().err
    assert err.startswith("castore: cannot check MemoryBlobService") and "object store" in err
    assert main(["--store", "grpc+http://127.0.0.1:9", "check"]) == ExitCode.STORE_FAILED


def test_check_shows_its_progress_on_a_terminal(tmp_path: Path, env: dict[str, str]) -> None:
    import pty
    import threading

    folder = tmp_path / "store"
    folder.mkdir()
    store = f"objectstore+file://{folder}"
    _put(store, env, tmp_path / "a", random.Random(7).randbytes(600_000))
    leader, follower = pty.openpty()
    seen = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "castore", "--store", store, "check", "--read-data"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=follower,
        )
        os.close(follower)
        stdout, _ = proc.communicate(timeout=120)
        reader.join(timeout=10)
    finally:
        os.close(leader)
    assert proc.returncode == 0 and stdout.decode().endswith("no problems found\n")
    assert b"\rcheck: " in seen.replace(b"\x1b[K", b"") and seen.endswith(b"\r\x1b[K")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_draws_on_a_terminal_only_and_clears() -> None:
    term = _Terminal()
    status = Status("gc", term)
    status("listing chunks", 7, 10)
    status("listing chunks", 8, 10)  # within a tenth of a second: not redrawn
    assert term.getvalue() == "\r\x1b[Kgc: listing chunks 7/10"
    status.clear()
    assert term.getvalue().endswith("\r\x1b[K")
    plain = io.StringIO()
    quiet = Status("check", plain)
    quiet("reading chunks", 3)
    quiet.clear()
    assert plain.getvalue() == ""
