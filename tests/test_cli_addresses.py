"""Store addresses as users already write them: plain paths, ``file://``, ``s3://``,
``gs://``, ``az://``; messages that quote a URL as it was written; a store folder castore
may not write reported as a permission failure (exit 8), not as a bad URL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio.to_thread
import pytest

from castore import B3Digest, BlobService, ObjectStoreBlobService, from_addr
from castore.cli import ExitCode, main
from castore.errors import InvalidAddressError, StorePermissionError


def _castore(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "castore", *args], env=env, capture_output=True, timeout=120
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("CASTORE_STORE", "CASTORE_DEBUG")}
    environ["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    environ["HOME"] = str(tmp_path / "home")
    return environ


async def _open(url: str) -> BlobService:
    """``from_addr`` in a worker thread: a relative path reads the current folder."""
    return await anyio.to_thread.run_sync(from_addr, url)


async def _round_trip(url: str, data: bytes) -> B3Digest:
    async with await _open(url) as store:
        assert isinstance(store, ObjectStoreBlobService)
        digest = await store.put(data)
        assert await store.get(digest) == data
    return digest


async def test_paths_and_file_urls_are_the_local_object_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "store"
    digest = await _round_trip(str(folder), b"by absolute path")
    # The same folder by every other spelling: the blob is there.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for url in (
        "./store",
        "store/../store",  # not a path start: rejected below
        "~/store",
        "file://" + str(folder),
        "objectstore+file://" + str(folder),
    ):
        if url == "store/../store":
            with pytest.raises(InvalidAddressError, match=r"a path \(/abs, \./rel, ~/…\)"):
                from_addr(url)
            continue
        async with await _open(url) as store:
            assert await store.get(digest) == b"by absolute path", url
    monkeypatch.chdir(folder)
    async with await _open(".") as store:
        assert await store.has(digest)


async def test_s3_url_without_objectstore_prefix(castore_s3_url: str) -> None:
    assert castore_s3_url.startswith("objectstore+s3://")
    plain = castore_s3_url.removeprefix("objectstore+")
    digest = await _round_trip(plain, b"through s3://")
    async with await _open(castore_s3_url) as store:
        assert await store.get(digest) == b"through s3://"


def test_gs_and_az_urls_build_object_stores() -> None:
    # Building does not contact the cloud; the options are the stores' own.
    for url in ("gs://bucket/prefix", "az://container/prefix?account_name=acct"):
        assert isinstance(from_addr(url), ObjectStoreBlobService), url
    with pytest.raises(InvalidAddressError, match=r"gs://bucket/prefix: .*nonsense"):
        from_addr("gs://bucket/prefix?nonsense=1")


def test_messages_quote_urls_with_their_slashes() -> None:
    cases = {
        "objectstore+file:///tmp/x#frag": "objectstore+file:///tmp/x:",
        "file:///tmp/x#frag": "file:///tmp/x:",
        "objectstore+memory:///#frag": "objectstore+memory:///:",
        "file://host/tmp/x": "file:// takes no host",
        "memory:///path": "'memory:///path'",
    }
    for url, expected in cases.items():
        with pytest.raises(InvalidAddressError) as caught:
            from_addr(url)
        assert expected in str(caught.value), (url, str(caught.value))
        assert ":/tmp" not in str(caught.value).replace("///tmp", "")


def test_plain_paths_and_short_urls_on_the_command_line(
    tmp_path: Path, env: dict[str, str]
) -> None:
    source = tmp_path / "data.txt"
    source.write_bytes(b"stored by path")
    folder = tmp_path / "new" / "store"  # created on first use
    put = _castore("--store", str(folder), "put", str(source), env=env)
    assert put.returncode == 0, put.stderr
    digest = put.stdout.split()[0].decode()
    for url in ("file://" + str(folder), "objectstore+file://" + str(folder)):
        got = _castore("--store", url, "get", digest, env=env)
        assert (got.returncode, got.stdout) == (0, b"stored by path"), got.stderr


def test_a_folder_castore_may_not_create_is_a_permission_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # sysfs refuses new folders to everyone, root included.
    with pytest.raises(StorePermissionError, match=r"file:///sys/castore-test: cannot create"):
        from_addr("/sys/castore-test")
    assert main(["--store", "/sys/castore-test", "has", "ab" * 32]) == ExitCode.PERMISSION
    err = capsys.readouterr().err
    assert err.startswith("castore: permission denied by the store: ")
    assert "bad store URL" not in err


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_store_on_a_read_only_file_system_is_a_permission_failure(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """A real read-only tmpfs, mounted in a private mount namespace of the child only."""
    ro = tmp_path / "ro"
    ro.mkdir()
    source = tmp_path / "data.txt"
    source.write_bytes(b"cannot be stored")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here: {probe.stderr.decode().strip()}")
    castore = f"{sys.executable} -m castore"
    script = (
        f"mount -t tmpfs -o ro tmpfs {ro} || exit 99; "
        f"{castore} --store {ro}/store put {source}; echo new=$?; "
        f"{castore} --store {ro} put {source}; echo existing=$?"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True, timeout=120
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert f"new={ExitCode.PERMISSION}\n" in out, (out, err)
    assert f"existing={ExitCode.PERMISSION}\n" in out, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all("permission denied by the store" in li for li in lines), err
    assert "Read-only file system" in err and "bad store URL" not in err
