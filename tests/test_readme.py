"""The README's two commands, as written: the first one run (after its install step,
which the test environment has already done), the second one extracted exactly as CI
extracts it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
INSTALL = "python3 -m pip install . && "


def _first_command() -> str:
    match = re.search(r"## Try it.*?```sh\n(.*?)\n```", README, re.S)
    assert match is not None, "no command under 'Try it'"
    return match.group(1)


def test_the_first_command_stores_and_reads_back_the_readme(tmp_path: Path) -> None:
    command = _first_command()
    assert command.startswith(INSTALL)
    env = {k: v for k, v in os.environ.items() if k not in ("CASTORE_STORE", "CASTORE_DEBUG")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env["PATH"] = sysconfig.get_path("scripts") + os.pathsep + env.get("PATH", "")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command.removeprefix(INSTALL)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, (out, result.stderr.decode())
    digest = out.strip().splitlines()[-1].removeprefix("stored and read back: ")
    assert digest.startswith("blake3-") and f"digest  {digest}\n" in out
    assert (tmp_path / "xdg" / "castore" / "store" / "blobs").is_dir()


def test_ci_extracts_the_test_command() -> None:
    # The same awk program .ci/run uses.
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    awk = re.search(r"awk '(.*?)' README.md", script, re.S)
    assert awk is not None
    result = subprocess.run(
        ["awk", awk.group(1), "README.md"], cwd=ROOT, capture_output=True, timeout=30
    )
    assert result.stdout.decode() == "python3 -m pip install nox && python3 -m nox -s tests\n"


def test_the_library_example_runs(tmp_path: Path) -> None:
    """The README's Python example, with its folder moved under tmp_path."""
    match = re.search(r"## Use the library.*?```python\n(.*?)\n```", README, re.S)
    assert match is not None
    code = match.group(1)
    assert "B3Digest.parse(" in code and "store.put(" in code and "store.get(" in code
    assert "/tmp/castore-demo" in code
    code = code.replace("/tmp/castore-demo", str(tmp_path / "demo"))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        "blake3-XKeBWty0hOmhNsEe/mnB1TAXbVSbXRjQOOtSgLSzRww=",
        "b'Hello World!'",
        "b'World'",
    ]


def test_every_error_is_importable_from_castore() -> None:
    import castore
    import castore.errors

    errors = [
        name
        for name in castore.errors.__all__
        if isinstance(getattr(castore.errors, name), type)
        and issubclass(getattr(castore.errors, name), BaseException)
    ]
    assert "InvalidSeekError" in errors and "StorePermissionError" in errors
    for name in errors:
        assert name in castore.__all__, name
        assert getattr(castore, name) is getattr(castore.errors, name)


def test_docs_name_what_users_call() -> None:
    concepts = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    for method in ("svc.put(data)", "svc.get(digest)", "svc.has(digest)"):
        assert f"| `await {method}` |" in concepts, method
    # What users see of chunk sizes: the measured average, not only the target.
    assert "about 330 KiB" in README and "chunks of about 256 KiB" not in README
