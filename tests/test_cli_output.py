"""Output for scripts and people: ``put --quiet``/``--json``, several digests for ``has``
and ``stat``, ``stat``'s summary and ``--chunks`` table, ``get`` refusing a terminal, and
what a writer reports as newly stored (``BlobWriter.new_bytes``) on every kind of store."""

from __future__ import annotations

import json
import os
import pty
import random
import subprocess
import sys
from pathlib import Path

import pytest

from castore import B3Digest, from_addr
from castore.cli import ExitCode, main


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("CASTORE_STORE", "CASTORE_DEBUG")}
    environ["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    environ["HOME"] = str(tmp_path / "home")
    environ["CASTORE_STORE"] = str(tmp_path / "store")
    return environ


def _castore(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "castore", *map(str, args)],
        env=env,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A small file, a 3 MiB random one, and that one with 1 MiB of new data after it."""
    small = tmp_path / "small.txt"
    small.write_bytes(b"Hello World!")
    big = tmp_path / "big.bin"
    big.write_bytes(_data(3 << 20, seed=1))
    grown = tmp_path / "grown.bin"
    grown.write_bytes(big.read_bytes() + _data(1 << 20, seed=2))
    return small, big, grown


def test_put_quiet_prints_digests_alone(
    files: tuple[Path, Path, Path], env: dict[str, str]
) -> None:
    small, big, _ = files
    put = _castore("put", "--quiet", small, big, env=env)
    assert put.returncode == 0, put.stderr
    assert put.stdout.decode() == (
        f"{B3Digest.of(small.read_bytes())}\n{B3Digest.of(big.read_bytes())}\n"
    )
    both = _castore("put", "-q", "--json", small, env=env)
    assert both.returncode == ExitCode.USAGE and b"not allowed with" in both.stderr


def test_put_json_reports_size_chunks_and_new_bytes(
    files: tuple[Path, Path, Path], env: dict[str, str]
) -> None:
    small, big, grown = files
    put = _castore("put", "--json", small, big, env=env)
    assert put.returncode == 0, put.stderr
    docs = [json.loads(line) for line in put.stdout.decode().splitlines()]
    assert [d["name"] for d in docs] == [str(small), str(big)]
    assert docs[0] == {
        "name": str(small),
        "digest": str(B3Digest.of(b"Hello World!")),
        "size": 12,
        "chunks": 1,
        "new_bytes": 12,
    }
    assert docs[1]["size"] == docs[1]["new_bytes"] == 3 << 20
    assert docs[1]["chunks"] > 3  # random data: ~330 KiB chunks

    # Stored again: nothing new. A file that extends it: only its tail is new.
    again = _castore("put", "--json", big, grown, env=env)
    assert again.returncode == 0, again.stderr
    first, second = (json.loads(line) for line in again.stdout.decode().splitlines())
    assert first["new_bytes"] == 0 and first["digest"] == docs[1]["digest"]
    assert second["size"] == 4 << 20
    assert 1 << 20 <= second["new_bytes"] < 2 << 20


@pytest.fixture(params=["memory", "objectstore-memory", "local", "s3"])
def kind_and_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """Each kind of writer: whole blobs, in-process puts, the local put pool, S3 uploads."""
    kind = str(request.param)
    if kind == "s3":
        return kind, str(request.getfixturevalue("castore_s3_url"))
    urls = {
        "memory": "memory://",
        "objectstore-memory": "objectstore+memory:///",
        "local": "objectstore+file://" + str(tmp_path / "store"),
    }
    return kind, urls[kind]


async def test_writer_new_bytes_on_every_store(kind_and_url: tuple[str, str]) -> None:
    kind, url = kind_and_url
    data = _data(2 << 20, seed=3)
    async with from_addr(url) as store:
        for payload, new in ((data, len(data)), (data, 0), (data + b"tail", None)):
            writer = await store.open_write()
            assert writer.new_bytes is None
            await writer.write(payload)
            await writer.close()
            if new is None:  # only the last chunk or two differ
                assert writer.new_bytes is not None
                if kind == "memory":  # stores whole blobs: all of it is new
                    assert writer.new_bytes == len(payload)
                else:
                    assert 0 < writer.new_bytes < len(data) // 2
            else:
                assert writer.new_bytes == new, (kind, payload is data)


async def test_writer_write_stats_on_every_store(kind_and_url: tuple[str, str]) -> None:
    kind, url = kind_and_url
    data = _data(2 << 20, seed=4)
    zeros = bytes(4 << 20)  # eight identical chunks of the largest size
    async with from_addr(url) as store:
        stats = []
        for payload in (data, data, zeros, b""):
            writer = await store.open_write()
            assert writer.write_stats is None
            await writer.write(payload)
            digest = await writer.close()
            stats.append(writer.write_stats)
            if kind == "memory":
                continue
            # The counts agree with the index the writer left behind.
            listed = await store.chunks(digest)
            assert listed is not None
            assert stats[-1] is not None
            assert stats[-1].chunks == max(len(listed), 1 if payload else 0)
    if kind == "memory":  # stores whole blobs: no chunks of its own
        assert stats == [None] * 4
        return
    first, again, same, empty = stats
    assert first is not None and again is not None and same is not None and empty is not None
    assert first.chunks > 1 and first.new_chunks == first.chunks and first.new_bytes == len(data)
    assert first.deduplicated_chunks == 0
    assert again.chunks == first.chunks and again.new_chunks == 0 and again.new_bytes == 0
    assert again.deduplicated_chunks == first.chunks
    assert same.chunks == 8 and same.new_chunks == 1 and same.deduplicated_chunks == 7
    assert (empty.chunks, empty.new_chunks, empty.new_bytes) == (0, 0, 0)


def test_has_and_stat_take_several_digests(
    files: tuple[Path, Path, Path], env: dict[str, str]
) -> None:
    small, big, _ = files
    put = _castore("put", "-q", small, big, env=env)
    d_small, d_big = put.stdout.decode().split()
    missing = str(B3Digest.of(b"never stored"))

    assert _castore("has", d_small, d_big, env=env).returncode == 0
    has = _castore("has", "-v", d_small, missing, d_big, env=env)
    assert has.returncode == ExitCode.NOT_FOUND
    assert has.stdout.decode() == f"{d_small}  present\n{missing}  absent\n{d_big}  present\n"
    assert _castore("has", missing, d_big, env=env).returncode == ExitCode.NOT_FOUND

    stat = _castore("stat", d_small, d_big, env=env)
    assert stat.returncode == 0, stat.stderr
    blocks = stat.stdout.decode().split("\n\n")
    assert len(blocks) == 2
    assert blocks[0].startswith(f"digest  {d_small}\n") and blocks[1].startswith(f"digest  {d_big}")

    stat = _castore("stat", "--json", d_big, missing, d_small, env=env)
    assert stat.returncode == ExitCode.NOT_FOUND
    assert stat.stderr.decode() == f"castore: blob {missing} is not in the store\n"
    assert [json.loads(line)["digest"] for line in stat.stdout.decode().splitlines()] == [
        d_big,
        d_small,
    ]


def test_stat_summary_chunk_table_and_json_agree(
    files: tuple[Path, Path, Path], env: dict[str, str]
) -> None:
    small, big, _ = files
    d_small, d_big = _castore("put", "-q", small, big, env=env).stdout.decode().split()

    # The default is a summary, whatever the blob's size.
    text = _castore("stat", d_big, env=env).stdout.decode()
    lines = text.splitlines()
    assert len(lines) == 4 and lines[2] == f"size    {3 << 20}"
    count = int(lines[3].split()[1])
    assert count > 3

    # --chunks: a header, then offset, size, digest; JSON says the same.
    table = _castore("stat", "--chunks", d_big, env=env).stdout.decode().splitlines()
    assert table[:4] == lines
    assert table[4].split() == ["offset", "size", "digest"]
    rows = [row.split() for row in table[5:]]
    doc = json.loads(_castore("stat", "--json", d_big, env=env).stdout)
    assert doc["chunk_count"] == len(doc["chunks"]) == len(rows) == count
    offset = 0
    for row, chunk in zip(rows, doc["chunks"], strict=True):
        assert [int(row[0]), int(row[1]), row[2]] == [offset, chunk["size"], chunk["digest"]]
        assert chunk["offset"] == offset and chunk["hex"] == B3Digest.parse(row[2]).hex()
        offset += chunk["size"]
    assert offset == doc["size"] == 3 << 20

    # A small blob is one chunk in text and in JSON: the blob itself.
    small_text = _castore("stat", d_small, env=env).stdout.decode()
    assert "chunks  1 (stored whole)\n" in small_text
    small_doc = json.loads(_castore("stat", "--json", d_small, env=env).stdout)
    assert small_doc["chunk_count"] == 1 and small_doc["stored_whole"] is True
    assert small_doc["chunks"] == [
        {"digest": d_small, "hex": B3Digest.parse(d_small).hex(), "offset": 0, "size": 12}
    ]
    # The empty blob has none.
    empty = _castore("put", "-q", "-", env=env).stdout.decode().strip()
    assert "chunks  0\n" in _castore("stat", empty, env=env).stdout.decode()
    assert json.loads(_castore("stat", "--json", empty, env=env).stdout)["chunks"] == []


def _stdout_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run castore with stdout on a real pseudo-terminal; exit code, terminal, stderr."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "castore", *args],
            env=env,
            stdout=follower,
            stderr=subprocess.PIPE,
        )
        os.close(follower)
        _, err = proc.communicate(timeout=120)
        seen = bytearray()
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the program has exited and closed its side
                break
            if not chunk:
                break
            seen.extend(chunk)
    finally:
        os.close(leader)
    return proc.returncode, bytes(seen), err


def test_get_refuses_a_terminal_unless_told(tmp_path: Path, env: dict[str, str]) -> None:
    data = b"printable, and small enough for a terminal buffer\n"
    digest = str(B3Digest.of(data))
    assert (
        subprocess.run(
            [sys.executable, "-m", "castore", "put", "-"], input=data, env=env, timeout=60
        ).returncode
        == 0
    )
    code, seen, err = _stdout_on_a_terminal(["get", digest], env)
    assert code == ExitCode.USAGE
    assert seen == b""
    assert err.decode().startswith("castore: not writing a blob to the terminal; ")
    assert "-o -" in err.decode()
    code, seen, err = _stdout_on_a_terminal(["get", digest, "-o", "-"], env)
    assert (code, err) == (0, b"")
    assert seen.replace(b"\r\n", b"\n") == data
    # A pipe and a file are written as before.
    assert _castore("get", digest, env=env).stdout == data
    out = tmp_path / "out.txt"
    code, seen, err = _stdout_on_a_terminal(["get", digest, "-o", str(out)], env)
    assert (code, seen, err) == (0, b"", b"")
    assert out.read_bytes() == data


def test_get_into_a_folder_without_room_for_a_temporary_file(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data = b"cannot land in /proc"
    digest = str(B3Digest.of(data))
    store = env["CASTORE_STORE"]
    subprocess.run([sys.executable, "-m", "castore", "put", "-"], input=data, env=env, timeout=60)
    code = main(["--store", store, "get", digest, "-o", "/proc/version"])
    assert code == ExitCode.LOCAL_IO
    err = capsys.readouterr().err
    assert err.startswith("castore: cannot write /proc/version: cannot create the temporary ")
    assert "in /proc: No such file or directory" in err
    assert Path("/proc/version").read_bytes() != data
