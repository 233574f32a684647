"""Developer sessions: ``nox -s tests lint typecheck docs proto bench``."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck", "proto_check"]

ROOT = pathlib.Path(__file__).parent
PROTO_OUT = ROOT / "castore" / "_proto"
COMPILER = ["betterproto2-compiler==0.10.1", "grpcio-tools>=1.66"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite (starts a real SeaweedFS S3 server on 127.0.0.1)."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and the benchmark."""
    session.install("-e", ".[test]", "mypy>=1.11", "types-grpcio")
    session.run("mypy", "castore", "benchmarks")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with mkdocs --strict."""
    session.install("-e", ".", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))


def _generate(session: nox.Session, out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    bindir = pathlib.Path(session.bin)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    session.run(
        "python",
        "-m",
        "grpc_tools.protoc",
        f"-I{ROOT / 'protos'}",
        f"--python_betterproto2_out={out}",
        # Messages only: castore's client and server bind them to grpc.aio themselves.
        "--python_betterproto2_opt=client_generation=none,server_generation=none",
        *sorted(str(p) for p in (ROOT / "protos").rglob("*.proto")),
        env=env,
    )


@nox.session
def proto(session: nox.Session) -> None:
    """Regenerate castore/_proto from protos/ with betterproto2."""
    session.install(*COMPILER)
    shutil.rmtree(PROTO_OUT, ignore_errors=True)
    _generate(session, PROTO_OUT)


@nox.session
def proto_check(session: nox.Session) -> None:
    """Fail when the checked-in generated code differs from a fresh generation."""
    session.install(*COMPILER)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp) / "_proto"
        _generate(session, fresh)
        old = {p.relative_to(PROTO_OUT): p.read_bytes() for p in PROTO_OUT.rglob("*.py")}
        new = {p.relative_to(fresh): p.read_bytes() for p in fresh.rglob("*.py")}
        if old != new:
            diff = sorted(str(k) for k in old.keys() ^ new.keys()) + sorted(
                str(k) for k in old.keys() & new.keys() if old[k] != new[k]
            )
            session.error(f"castore/_proto is stale, run `nox -s proto`: {diff}")


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput, memory and dedup figures as same-run ratios; writes docs/benchmarks.md.

    The benchmark lives in ``benchmarks/`` beside the package, not in it: ``python -m
    benchmarks`` from the repository's root (``nox -s bench -- --quick --out -`` for a smoke
    run)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "benchmarks", *session.posargs)
