"""Every example in ``examples/`` runs, as a user would run it: in a subprocess.

- ``ingest_folder.py`` on a folder with duplicated and edited files, on memory and on
  ``objectstore+file://``; its figures are checked against what the folder holds.
- ``upload_service.py`` is started on a free port and used over HTTP (uploads, ranges,
  conditional requests, a client that leaves mid-upload).
- ``test_app_with_fixtures.py`` is copied into a fresh folder, as an application's suite, and
  run by pytest twice: with pytest-asyncio and plugins autoloaded, and with autoloading off
  and the plugins named (``-p anyio -p castore``), which also proves the ``castore`` entry
  point resolves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
from anyio.streams.buffered import BufferedByteReceiveStream

from castore import B3Digest, from_addr
from castore.testing.conformance import pseudo_random_bytes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _env() -> dict[str, str]:
    """The environment for an example: this checkout's castore first, no pytest options."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _make_folder(root: Path) -> dict[str, bytes]:
    """Files with duplicates and near-duplicates; returns name -> contents."""
    a = pseudo_random_bytes(2 * 1024 * 1024, seed=80)
    edited = bytearray(a)
    edited[1_000_000:1_000_100] = b"x" * 100
    text = b"castore example notes\n" * 40
    files = {
        "a.bin": a,
        "copy/a-again.bin": a,
        "copy/a-edited.bin": bytes(edited) + b"appended" * 100,
        "notes.txt": text,
        "copy/notes.txt": text,
        "empty": b"",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "link").symlink_to(root / "a.bin")  # skipped, not followed
    return files


async def _ingest(folder: Path, store: str, *extra: str) -> str:
    result = await anyio.run_process(
        [sys.executable, str(EXAMPLES / "ingest_folder.py"), str(folder), "--store", store, *extra],
        env=_env(),
    )
    return result.stdout.decode()


async def test_ingest_folder(tmp_path: Path) -> None:
    folder = tmp_path / "input"
    files = await anyio.to_thread.run_sync(_make_folder, folder)
    total = sum(len(d) for d in files.values())
    distinct = {bytes(d) for d in files.values()}

    # memory:// stores blobs whole: only identical files dedup.
    report = json.loads(await _ingest(folder, "memory://", "--json"))
    assert report["files"] == len(files)
    assert report["bytes_read"] == total
    assert report["unique_bytes"] == sum(len(d) for d in distinct)
    assert report["chunks_unique"] == len(distinct)
    assert report["chunks_total"] == len(files)
    assert report["bytes_on_disk"] is None

    # A chunking store: the edited copy shares all but the chunks around its edit.
    store = tmp_path / "store"
    url = "objectstore+file://" + quote(str(store))
    report = json.loads(await _ingest(folder, url, "--json"))
    assert report["bytes_read"] == total
    a = files["a.bin"]
    assert len(a) + len(files["notes.txt"]) < report["unique_bytes"] < len(a) * 1.7
    assert report["dedup_ratio"] > 1.9
    assert report["chunks_unique"] < report["chunks_total"]
    # Random data does not compress: the folder grew by about the unique bytes.
    assert 0.8 * report["unique_bytes"] < report["bytes_on_disk"] < 1.1 * report["unique_bytes"]
    # Everything is there, and readable through the library.
    async with from_addr(url) as service:
        for data in files.values():
            assert await service.get(B3Digest.of(data)) == data

    # Ingesting the same folder again stores nothing new.
    text = await _ingest(folder, url)
    assert "dedup ratio:" in text
    assert "on disk:       0  " in text


async def test_upload_service(tmp_path: Path) -> None:
    store = tmp_path / "store"
    url = "objectstore+file://" + quote(str(store))
    data = pseudo_random_bytes(1_500_000, seed=81)
    command = [sys.executable, str(EXAMPLES / "upload_service.py"), "--store", url, "--port", "0"]
    async with await anyio.open_process(command, env=_env()) as process:
        try:
            assert process.stdout is not None
            with anyio.fail_after(30):
                line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 200)
            base = line.decode().strip()
            assert base.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=base) as client:
                r = await client.put("/files/report.bin", content=data)
                assert r.status_code == 201, r.text
                digest = B3Digest.of(data)
                assert r.json()["digest"] == str(digest)
                r = await client.put("/files/docs/same.bin", content=data)
                assert r.json()["blob"] == f"/cas/blobs/{digest.hex()}"

                r = await client.get("/files")
                assert sorted(r.json()) == ["docs/same.bin", "report.bin"]
                r = await client.get("/files/docs/same.bin")
                assert r.content == data
                r = await client.get("/files/report.bin", headers={"Range": "bytes=700000-700999"})
                assert (r.status_code, r.content) == (206, data[700_000:701_000])
                assert r.headers["etag"] == f'"{digest.hex()}"'
                r = await client.get(
                    "/files/report.bin", headers={"If-None-Match": r.headers["etag"]}
                )
                assert r.status_code == 304
                r = await client.get(f"/cas/blobs/{digest.hex()}", headers={"Range": "bytes=-10"})
                assert (r.status_code, r.content) == (206, data[-10:])
                assert (await client.get("/files/nothing")).status_code == 404

                # A client that leaves mid-upload: nothing stored, the name not recorded.
                port = int(base.rsplit(":", 1)[1])
                partial = pseudo_random_bytes(600_000, seed=82)
                stream = await anyio.connect_tcp("127.0.0.1", port)
                head = b"PUT /files/cut.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n"
                await stream.send(head + partial)
                await anyio.sleep(0.3)
                await stream.aclose()
                await anyio.sleep(0.3)
                assert sorted((await client.get("/files")).json()) == [
                    "docs/same.bin",
                    "report.bin",
                ]
            async with from_addr(url) as service:
                assert await service.get(digest) == data
                assert not await service.has(B3Digest.of(partial))
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                await process.wait()
        assert process.stderr is not None
        errors = b"".join([part async for part in process.stderr]).decode()
    # uvicorn shuts down cleanly on SIGTERM, then re-raises the signal to exit by it.
    assert process.returncode in (0, -signal.SIGTERM), errors
    assert "Traceback" not in errors, errors


async def _run_pytest(folder: Path, *args: str, env: dict[str, str]) -> str:
    result = await anyio.run_process(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env=env,
        check=False,
    )
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, out
    return out


async def test_app_with_fixtures_example(tmp_path: Path) -> None:
    """The fixtures in an application's suite, under pytest-asyncio and under anyio."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    await anyio.to_thread.run_sync(
        shutil.copy, EXAMPLES / "test_app_with_fixtures.py", app_dir / "test_attachments.py"
    )

    # pytest-asyncio, plugins autoloaded (castore's among them); no S3 here, to save time.
    out = await _run_pytest(
        app_dir,
        "-p",
        "no:anyio",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-k",
        "not real_s3",
        env=_env(),
    )
    assert "5 passed" in out, out

    # anyio's plugin, autoloading off: the castore plugin is loaded by its entry-point name.
    env = _env()
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    out = await _run_pytest(
        app_dir, "-p", "anyio", "-p", "castore", "-o", "anyio_mode=auto", env=env
    )
    assert "6 passed" in out or "5 passed, 1 skipped" in out, out
