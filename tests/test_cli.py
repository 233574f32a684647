"""The ``castore`` command, run as a real subprocess against temporary stores (local disk,
the default store under a temporary data folder, SeaweedFS S3), and in-process where
that reaches what a subprocess cannot (stdin, the parser)."""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import random
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from castore import B3Digest, MemoryBlobService, registry
from castore.cli import PROGRESS_MIN, ExitCode, default_store_url, main
from castore.testing.seaweedfs import SeaweedFS

HEX_EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def _data(n: int, seed: int = 0) -> bytes:
    """``n`` pseudo-random bytes: FastCDC cuts them into chunks of ~256 KiB."""
    return random.Random(seed).randbytes(n)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose default store lives in tmp_path, with no CASTORE_STORE."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CASTORE_STORE", "CASTORE_DEBUG")}
    environ["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    environ["HOME"] = str(tmp_path / "home")
    return environ


def castore(
    *args: str | Path, env: dict[str, str], stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "castore", *map(str, args)],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=timeout,
    )


def _check_clean_error(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err
    assert err.startswith("castore: ")
    assert len(err.strip().splitlines()) == 1, err
    return err


# -- subprocess, local disk ---------------------------------------------------------------


def test_put_get_stat_has_on_local_disk(tmp_path: Path, env: dict[str, str]) -> None:
    store = "objectstore+file://" + str(tmp_path / "store")
    (tmp_path / "store").mkdir()
    small = tmp_path / "small.txt"
    small.write_bytes(b"Hello World!")
    big = tmp_path / "big.bin"
    big.write_bytes(_data(3 * 1024 * 1024 + 17))

    put = castore("--store", store, "put", small, big, env=env)
    assert put.returncode == 0, put.stderr
    lines = put.stdout.decode().splitlines()
    assert lines == [
        f"{B3Digest.of(small.read_bytes())}  {small}",
        f"{B3Digest.of(big.read_bytes())}  {big}",
    ]
    big_digest = B3Digest.of(big.read_bytes())

    # get accepts what put prints, hex and tvix's b3: form; to stdout and to a file.
    got = castore("--store", store, "get", str(big_digest), env=env)
    assert got.returncode == 0 and got.stdout == big.read_bytes()
    out = tmp_path / "out.bin"
    got = castore("get", "--store", store, big_digest.hex(), "-o", out, env=env)
    assert got.returncode == 0 and got.stdout == b""
    assert out.read_bytes() == big.read_bytes()
    assert not list(tmp_path.glob(".out.bin.*"))
    b3 = "b3:" + str(big_digest).removeprefix("blake3-")
    got = castore("--store", store, "get", b3, env=env)
    assert got.stdout == big.read_bytes()

    stat = castore("--store", store, "stat", str(big_digest), "--json", env=env)
    assert stat.returncode == 0, stat.stderr
    doc = json.loads(stat.stdout)
    assert doc["digest"] == str(big_digest) and doc["hex"] == big_digest.hex()
    assert doc["size"] == big.stat().st_size
    assert len(doc["chunks"]) > 1
    assert sum(c["size"] for c in doc["chunks"]) == doc["size"]

    stat = castore("--store", store, "stat", str(B3Digest.of(b"Hello World!")), env=env)
    text = stat.stdout.decode()
    assert stat.returncode == 0 and "size    12\n" in text and "chunks  1" in text

    assert castore("--store", store, "has", str(big_digest), env=env).returncode == 0
    missing = B3Digest.of(b"never stored")
    has = castore("--store", store, "has", "-v", str(missing), env=env)
    assert has.returncode == ExitCode.NOT_FOUND
    assert has.stdout.decode() == f"{missing}  absent\n"


def test_stdin_and_castore_store_env(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "store").mkdir()
    env["CASTORE_STORE"] = "objectstore+file://" + str(tmp_path / "store")
    data = _data(1_000_000, seed=1)
    put = castore("put", "-", env=env, stdin=data)
    assert put.returncode == 0, put.stderr
    assert put.stdout.decode() == f"{B3Digest.of(data)}  -\n"
    got = castore("get", str(B3Digest.of(data)), env=env)
    assert got.stdout == data


def test_default_store_needs_no_setup(tmp_path: Path, env: dict[str, str]) -> None:
    source = tmp_path / "file.txt"
    source.write_bytes(b"stored in the default store\n")
    put = castore("put", source, env=env)
    assert put.returncode == 0, put.stderr
    digest = put.stdout.decode().split()[0]
    assert (tmp_path / "xdg" / "castore" / "store").is_dir()
    assert any((tmp_path / "xdg" / "castore" / "store").rglob("*"))
    assert castore("get", digest, env=env).stdout == source.read_bytes()


def test_console_script_is_installed(tmp_path: Path, env: dict[str, str]) -> None:
    script = shutil.which("castore", path=sysconfig.get_path("scripts"))
    assert script is not None, "the castore entry point is not installed"
    result = subprocess.run([script, "--version"], env=env, capture_output=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.decode().startswith("castore ")


# -- errors -------------------------------------------------------------------------------


def test_bad_digests_exit_3(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "s").mkdir()
    store = "objectstore+file://" + str(tmp_path / "s")
    bads = ("zz", "blake3-!!!", "b3:AAAA", "ab" * 31)
    commands = ("get", "stat", "has")
    # Every pair in-process, one subprocess per bad digest.
    for bad in bads:
        for command in commands:
            assert main(["--store", store, command, bad]) == ExitCode.BAD_DIGEST
            assert capsys.readouterr().err.startswith("castore: bad digest: ")
    for i, bad in enumerate(bads):
        result = castore("--store", store, commands[i % 3], bad, env=env)
        assert "bad digest" in _check_clean_error(result, ExitCode.BAD_DIGEST)


def test_missing_blobs_exit_1(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "s").mkdir()
    store = "objectstore+file://" + str(tmp_path / "s")
    missing = str(B3Digest.of(b"missing"))
    out = tmp_path / "out"
    for args in (["get", missing], ["get", missing, "-o", str(out)], ["stat", missing]):
        err = _check_clean_error(castore("--store", store, *args, env=env), ExitCode.NOT_FOUND)
        assert "not in the store" in err
    assert not out.exists()
    assert castore("--store", store, "has", missing, env=env).returncode == ExitCode.NOT_FOUND


def test_bad_store_urls_exit_4(env: dict[str, str]) -> None:
    for url in ("nonsense", "foo://bar", "memory://x", "objectstore+nope://b"):
        err = _check_clean_error(
            castore("--store", url, "has", HEX_EMPTY, env=env), ExitCode.BAD_STORE_URL
        )
        assert "bad store URL" in err


def test_unreadable_input_and_unwritable_output_exit_7(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "s").mkdir()
    store = "objectstore+file://" + str(tmp_path / "s")
    good = tmp_path / "good.txt"
    good.write_bytes(b"good")
    # A missing input is reported, the others are still stored.
    result = castore("--store", store, "put", tmp_path / "missing", good, env=env)
    assert result.returncode == ExitCode.LOCAL_IO
    assert result.stdout.decode() == f"{B3Digest.of(b'good')}  {good}\n"
    assert "cannot read" in result.stderr.decode() and "Traceback" not in result.stderr.decode()
    digest = str(B3Digest.of(b"good"))
    err = _check_clean_error(
        castore("--store", store, "get", digest, "-o", tmp_path / "no" / "dir", env=env),
        ExitCode.LOCAL_IO,
    )
    assert "cannot write" in err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_get_to_a_full_device_exits_7(tmp_path: Path, env: dict[str, str]) -> None:
    """A write that fails while the next piece is being read is reported as a local error,
    once, without a traceback (get writes one buffer while it reads into the other)."""
    (tmp_path / "s").mkdir()
    store = "objectstore+file://" + str(tmp_path / "s")
    data = _data(9 * 1024 * 1024, seed=7)
    digest = castore("--store", store, "put", "-", env=env, stdin=data).stdout.split()[0]
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "castore", "--store", store, "get", digest.decode()],
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    err = _check_clean_error(result, ExitCode.LOCAL_IO)
    assert "cannot write" in err and "No space left" in err


def test_corrupt_data_exits_6_and_leaves_no_output_file(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = tmp_path / "s"
    root.mkdir()
    store = "objectstore+file://" + str(root)
    data = _data(100_000, seed=5)
    digest = B3Digest.of(data)
    assert castore("--store", store, "put", "-", env=env, stdin=data).returncode == 0
    chunk = root / "chunks" / "b3" / digest.hex()[:4] / digest.hex()
    assert chunk.is_file()
    # A valid zstd frame of other bytes: it decompresses, and its digest does not match.
    chunk.write_bytes(zstandard.ZstdCompressor().compress(_data(100_000, seed=6)))
    out = tmp_path / "out.bin"
    for args in (["get", str(digest)], ["get", str(digest), "-o", str(out)]):
        result = castore("--store", store, *args, env=env)
        err = _check_clean_error(result, ExitCode.CORRUPT)
        assert "corrupt" in err
        assert result.stdout == b""
    assert not out.exists()
    assert not list(tmp_path.glob(".out.bin.*"))


def test_usage_errors_exit_2(env: dict[str, str]) -> None:
    for args in ([], ["get"], ["frobnicate"], ["put"], ["put", "-", "-"]):
        result = castore(*args, env=env, stdin=b"")
        assert result.returncode == ExitCode.USAGE, (args, result.stderr)
        assert b"Traceback" not in result.stderr


def test_closed_pipe_is_quiet(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "s").mkdir()
    env["CASTORE_STORE"] = "objectstore+file://" + str(tmp_path / "s")
    data = _data(20 * 1024 * 1024, seed=2)
    put = castore("put", "-", env=env, stdin=data)
    digest = put.stdout.split()[0].decode()
    proc = subprocess.Popen(
        [sys.executable, "-m", "castore", "get", digest],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == data[:10]
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == ExitCode.BROKEN_PIPE
    assert b"Traceback" not in err and b"Exception ignored" not in err


# -- S3 (SeaweedFS) -------------------------------------------------------------------------


def test_put_get_through_s3_and_unreachable_store(
    seaweedfs: SeaweedFS, castore_s3_url: str, tmp_path: Path, env: dict[str, str]
) -> None:
    data = _data(2 * 1024 * 1024, seed=3)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    put = castore("--store", castore_s3_url, "put", source, env=env)
    assert put.returncode == 0, put.stderr
    digest = put.stdout.split()[0].decode()
    assert castore("--store", castore_s3_url, "get", digest, env=env).stdout == data

    # The same store with nothing listening: a clean "store failed" within seconds.
    dead = castore_s3_url.replace(f"%3A{seaweedfs.ports.s3}", f"%3A{_closed_port()}")
    assert dead != castore_s3_url
    started = time.monotonic()
    err = _check_clean_error(
        castore("--store", dead, "has", digest, env=env, timeout=300), ExitCode.STORE_FAILED
    )
    assert "store" in err
    assert time.monotonic() - started < 200


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- progress bar on a terminal -----------------------------------------------------------


def _on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run castore with stderr on a real pseudo-terminal; its exit code, stdout, stderr.

    A thread drains the terminal as the program writes, so it can never block on a full
    terminal buffer.
    """
    leader, follower = pty.openpty()
    seen = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO once the program has exited and closed its side
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "castore", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=follower,
        )
        os.close(follower)
        stdout, _ = proc.communicate(timeout=180)
        reader.join(timeout=10)
    finally:
        os.close(leader)
    return proc.returncode, stdout, bytes(seen)


def test_progress_bar_on_a_terminal_only(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "s").mkdir()
    env["CASTORE_STORE"] = "objectstore+file://" + str(tmp_path / "s")
    big = tmp_path / "big.bin"
    big.write_bytes(_data(PROGRESS_MIN * 2, seed=4))
    digest = B3Digest.of(big.read_bytes())

    # stderr a pipe: no bar.
    plain = castore("put", big, env=env)
    assert plain.returncode == 0 and plain.stderr == b""

    # stderr a real terminal: a bar drawn with carriage returns, then erased.
    code, stdout, seen = _on_a_terminal(["put", str(big)], env)
    assert code == 0
    assert stdout.decode() == f"{digest}  {big}\n"
    assert b"\r" in seen and b"MiB" in seen and b"%" in seen and b"/s" in seen
    assert seen.endswith(b"\r\x1b[K")

    # get -o to a file: the size is known from the chunk list, so the bar has a percentage.
    out = tmp_path / "out.bin"
    code, stdout, seen = _on_a_terminal(["get", str(digest), "-o", str(out)], env)
    assert code == 0 and stdout == b""
    assert out.read_bytes() == big.read_bytes()
    assert b"%" in seen and b"/s" in seen and seen.endswith(b"\r\x1b[K")


# -- in-process -----------------------------------------------------------------------------


@pytest.fixture
def shared_memory(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryBlobService]:
    """One MemoryBlobService behind ``clitest://``, shared by several ``main()`` calls."""
    service = MemoryBlobService()
    monkeypatch.setitem(registry._SCHEMES, "clitest", lambda parts: service)
    monkeypatch.delenv("CASTORE_STORE", raising=False)
    yield service


def test_in_process_round_trip_through_stdin(
    shared_memory: MemoryBlobService,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    data = b"from stdin " * 5000
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["--store", "clitest://", "put", "-"]) == 0
    digest = B3Digest.of(data)
    assert capsysbinary.readouterr().out == f"{digest}  -\n".encode()
    assert len(shared_memory) == 1

    assert main(["--store", "clitest://", "get", digest.hex()]) == 0
    assert capsysbinary.readouterr().out == data

    assert main(["--store", "clitest://", "stat", str(digest)]) == 0
    out = capsysbinary.readouterr().out.decode()
    assert f"size    {len(data)}\n" in out and "stored whole" in out

    assert main(["--store", "clitest://", "has", str(digest)]) == 0
    assert main(["--store", "clitest://", "has", HEX_EMPTY]) == ExitCode.NOT_FOUND


def test_in_process_errors_and_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CASTORE_STORE", raising=False)
    assert main(["--store", "memory://", "get", "nope"]) == ExitCode.BAD_DIGEST
    err = capsys.readouterr().err
    assert err.startswith("castore: bad digest: not a digest") and "Traceback" not in err
    monkeypatch.setenv("CASTORE_DEBUG", "1")
    with pytest.raises(Exception, match="unknown scheme"):
        main(["--store", "bogus://", "has", HEX_EMPTY])


def test_default_store_url_is_under_the_user_data_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/some/where")
    assert default_store_url() == "objectstore+file:///some/where/castore/store"


def test_every_command_is_offered(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    for command in ("put", "get", "stat", "has", "ls", "rm", "check", "serve"):
        assert command in usage


def test_castore_serve_module_still_works_with_a_deprecation_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sys

    sys.modules.pop("castore.serve", None)
    with pytest.warns(DeprecationWarning, match="castore.serve is deprecated"):
        import castore.serve
    assert castore.serve.DEFAULT_LISTEN == "grpc+http://127.0.0.1:8000"
    parser = argparse.ArgumentParser(prog="castore")
    castore.serve.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--store", "memory://", "--no-grpc"])
    assert args.handler is castore.serve.run and args.global_store == "memory://"
    # No --http with --no-grpc: nothing to serve, said before anything starts.
    assert castore.serve.main(["--store", "memory://", "--no-grpc"]) == ExitCode.USAGE
    assert "--no-grpc needs --http" in capsys.readouterr().err
