"""``castore serve`` at its edges: the HTTP gateway after a plain install, a missing
optional dependency, addresses it cannot listen on, listen addresses that are not, and
exit codes that say which (each checked before anything claims to be listening)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from castore.cli import ExitCode, main

ROOT = Path(__file__).resolve().parent.parent


def _serve(*args: str, prelude: str = "") -> subprocess.CompletedProcess[bytes]:
    """``castore serve`` in a child process; ``prelude`` runs first (to hide a module)."""
    code = f"{prelude}\nimport sys\nfrom castore.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASTORE_")}
    return subprocess.run(
        [sys.executable, "-c", code, "serve", "--store", "memory://", *args],
        env=env,
        capture_output=True,
        timeout=60,
    )


def _one_line_error(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    assert "listening on" not in err and "HTTP gateway on" not in err, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("castore: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port that another socket is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_the_http_gateway_comes_with_a_plain_install() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = [re.split(r"[<>=;\[ ]", d, maxsplit=1)[0] for d in project["dependencies"]]
    assert "uvicorn" in core
    # castore[http] still installs, for the install lines already written.
    assert any(d.startswith("uvicorn") for d in project["optional-dependencies"]["http"])
    # The installed distribution says the same: uvicorn is required without any extra.
    requires = importlib.metadata.requires("castore") or []
    plain = [r for r in requires if r.startswith("uvicorn") and "extra ==" not in r]
    assert plain, requires


def test_a_missing_gateway_dependency_has_its_own_code_before_listening() -> None:
    hide = "import sys; sys.modules['uvicorn'] = None"
    for extra in ([], ["--no-grpc"]):
        result = _serve(
            "--listen", "grpc+http://127.0.0.1:0", "--http", "127.0.0.1:0", *extra, prelude=hide
        )
        line = _one_line_error(result, ExitCode.MISSING_DEPENDENCY)
        assert "needs uvicorn, which is not installed" in line
    # --metrics serves over HTTP too.
    result = _serve("--listen", "grpc+http://127.0.0.1:0", "--metrics", "127.0.0.1:0", prelude=hide)
    line = _one_line_error(result, ExitCode.MISSING_DEPENDENCY)
    assert "--metrics needs uvicorn, which is not installed" in line


def test_a_port_in_use_has_its_own_code_and_names_the_address(taken_port: int) -> None:
    listen = f"grpc+http://127.0.0.1:{taken_port}"
    line = _one_line_error(_serve("--listen", listen), ExitCode.LISTEN)
    assert line == f"castore: cannot listen on {listen}: Address already in use"

    # The HTTP gateway's port: nothing said "listening" for the gRPC server either.
    result = _serve("--listen", "grpc+http://127.0.0.1:0", "--http", f"127.0.0.1:{taken_port}")
    line = _one_line_error(result, ExitCode.LISTEN)
    assert (
        line == f"castore: cannot listen on http://127.0.0.1:{taken_port}: Address already in use"
    )


def test_a_listen_address_that_is_not_one_is_a_usage_error() -> None:
    for bad, why in (
        ("http://127.0.0.1:8000", "not a gRPC address"),
        ("grpc+http://127.0.0.1", "needs a host and a port"),
        ("grpc+http://127.0.0.1:0?x=1", "takes no options"),
    ):
        result = _serve("--listen", bad)
        err = result.stderr.decode()
        assert result.returncode == ExitCode.USAGE, (bad, err)
        assert "argument --listen: " in err and why in err, err
        assert "bad store URL" not in err


def test_tls_flags_are_checked_before_serving(tmp_path: Path) -> None:
    line = _one_line_error(_serve("--tls-cert", "/nonexistent.pem"), ExitCode.USAGE)
    assert "--tls-cert and --tls-key go together" in line
    result = _serve("--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key")
    line = _one_line_error(result, ExitCode.LOCAL_IO)
    assert line.startswith("castore: cannot read the TLS certificate /nonexistent.pem")


def test_every_exit_code_is_in_help_and_in_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    docs = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    codes = {v for k, v in vars(ExitCode).items() if k.isupper()}
    assert {9, 10, 130, 141} <= codes
    for code in codes:
        assert re.search(rf"\b{code} [a-z]", help_text), (code, help_text)
        assert f"\n| {code} | " in docs, code
