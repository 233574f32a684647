"""Composition files (castore.config): what they build, and the errors that name the key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from castore import (
    BlobService,
    CachingBlobService,
    CombinedBlobService,
    LoggingBlobService,
    MemoryBlobService,
    ObjectStoreBlobService,
    RetryBlobService,
    StatsBlobService,
)
from castore.config import Composition, load, loads, parse
from castore.errors import ConfigError, InvalidAddressError
from castore.testing.fixtures import BLOB_B, BLOB_B_DIGEST

FULL = """
[blobservices.root]
type = "logging"
inner = "counted"
level = "info"

[blobservices.counted]
type = "stats"
inner = "combined"

[blobservices.combined]
type = "combined"
near = "hot"
far = "remote"
write_through = true

[blobservices.hot]
type = "cache"
inner = "disk"
max_bytes = "8 MiB"
max_item_bytes = 1048576

[blobservices.disk]
type = "objectstore"
url = "objectstore+memory:///"
options = { avg_chunk_size = 65536 }

[blobservices.remote]
type = "retry"
inner = "far"
max_attempts = 3
base_delay = 0.01
deadline = false

[blobservices.far]
type = "memory"
"""


def test_builds_the_whole_graph() -> None:
    comp = parse(FULL)
    root = comp.build()
    assert isinstance(root, LoggingBlobService)
    assert root.logger.name == "castore.blobservice"
    stats = root.inner
    assert isinstance(stats, StatsBlobService)
    combined = stats.inner
    assert isinstance(combined, CombinedBlobService) and combined.write_through
    assert isinstance(combined.near, CachingBlobService)
    assert combined.near.max_bytes == 8 << 20 and combined.near.max_item_bytes == 1 << 20
    assert isinstance(combined.near.inner, ObjectStoreBlobService)
    retry = combined.far
    assert isinstance(retry, RetryBlobService)
    assert retry.max_attempts == 3 and retry.base_delay == 0.01 and retry.deadline is None
    assert isinstance(retry.inner, MemoryBlobService)
    assert set(comp.built) == set(comp.names)


async def test_the_built_graph_works() -> None:
    comp = parse(FULL)
    root = comp.build()
    async with root:
        assert await root.put(BLOB_B) == BLOB_B_DIGEST
        assert await root.get(BLOB_B_DIGEST) == BLOB_B
    far = comp.built["far"]
    assert await far.get(BLOB_B_DIGEST) == BLOB_B  # written through
    stats = comp.built["counted"]
    assert isinstance(stats, StatsBlobService)
    assert stats.statistics().bytes_written == len(BLOB_B)


def test_builds_another_name_and_only_what_it_needs() -> None:
    comp = parse(FULL)
    assert isinstance(comp.build("remote"), RetryBlobService)
    assert set(comp.built) == {"remote", "far"}


def test_shared_instances_are_built_once() -> None:
    comp = parse(
        """
        [blobservices.root]
        type = "combined"
        near = "a"
        far = "b"
        [blobservices.a]
        type = "stats"
        inner = "store"
        [blobservices.b]
        type = "retry"
        inner = "store"
        [blobservices.store]
        type = "memory"
        """
    )
    root = comp.build()
    assert isinstance(root, CombinedBlobService)
    a, b = root.near, root.far
    assert isinstance(a, StatsBlobService) and isinstance(b, RetryBlobService)
    assert a.inner is b.inner is comp.built["store"]


def test_url_only_instances_use_from_addr() -> None:
    svc = loads('[blobservices.root]\nurl = "memory://"\n')
    assert isinstance(svc, MemoryBlobService)
    svc = loads('[blobservices.root]\ntype = "url"\nurl = "objectstore+memory:///"\n')
    assert isinstance(svc, ObjectStoreBlobService)


def test_logging_level_and_name() -> None:
    svc = loads(
        '[blobservices.root]\ntype = "logging"\ninner = "m"\nlogger = "my.app"\n'
        'level = "INFO"\n[blobservices.m]\ntype = "memory"\n'
    )
    assert isinstance(svc, LoggingBlobService)
    assert svc.logger.name == "my.app"
    assert svc._level == logging.INFO and svc._name == "root"


def test_load_reads_files_and_text(tmp_path: Path) -> None:
    path = tmp_path / "castore.toml"
    path.write_text('[blobservices.root]\ntype = "memory"\n')
    assert isinstance(load(path), MemoryBlobService)
    assert isinstance(load(str(path)), MemoryBlobService)
    assert isinstance(load(path.read_text()), MemoryBlobService)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")


# --- errors name the instance and the key ------------------------------------------------


def _error(text: str, name: str = "root") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text).build(name)
    return info.value


@pytest.mark.parametrize(
    ("text", "instance", "key", "message"),
    [
        ('[blobservices.root]\ntype = "memroy"\n', "root", "type", "unknown type 'memroy'"),
        ("[blobservices.root]\nnear = 'x'\n", "root", "type", "missing"),
        (
            '[blobservices.root]\ntype = "memory"\ncolour = "red"\n',
            "root",
            "colour",
            "unknown key for type 'memory'",
        ),
        (
            '[blobservices.root]\ntype = "combined"\nnear = "root"\n',
            "root",
            "far",
            "missing; type 'combined' needs it",
        ),
        (
            '[blobservices.root]\ntype = "stats"\ninner = "cahce"\n[blobservices.cache]\n'
            'type = "memory"\n',
            "root",
            "inner",
            "no instance named 'cahce' (did you mean 'cache'?)",
        ),
        (
            '[blobservices.root]\ntype = "retry"\ninner = "m"\nmax_attempts = "3"\n'
            '[blobservices.m]\ntype = "memory"\n',
            "root",
            "max_attempts",
            "expected an integer",
        ),
        (
            '[blobservices.root]\ntype = "retry"\ninner = "m"\nmax_attempts = 0\n'
            '[blobservices.m]\ntype = "memory"\n',
            "root",
            "max_attempts",
            "at least 1",
        ),
        (
            '[blobservices.root]\ntype = "combined"\nnear = "m"\nfar = "m"\n'
            'write_through = "yes"\n[blobservices.m]\ntype = "memory"\n',
            "root",
            "write_through",
            "expected true or false",
        ),
        (
            '[blobservices.root]\ntype = "cache"\ninner = "m"\nmax_bytes = "12 parsecs"\n'
            '[blobservices.m]\ntype = "memory"\n',
            "root",
            "max_bytes",
            "unknown unit",
        ),
        (
            '[blobservices.root]\ntype = "objectstore"\nurl = "grpc+http://127.0.0.1:1"\n',
            "root",
            "url",
            "needs a objectstore+… URL",
        ),
        (
            '[blobservices.root]\nurl = "nosuch+scheme://x"\n',
            "root",
            "url",
            "unknown scheme 'nosuch+scheme'",
        ),
        (
            '[blobservices.root]\ntype = "objectstore"\nurl = "objectstore+memory:///"\n'
            "options = { colour = 1 }\n",
            "root",
            "url",
            "colour",
        ),
        (
            '[blobservices.root]\ntype = "logging"\ninner = "m"\nlevel = "LOUD"\n'
            '[blobservices.m]\ntype = "memory"\n',
            "root",
            "level",
            "expected one of DEBUG",
        ),
    ],
)
def test_errors_name_the_bad_key(text: str, instance: str, key: str, message: str) -> None:
    err = _error(text)
    assert err.instance == instance and err.key == key
    assert f"blobservices.{instance}.{key}" in str(err)
    assert message in str(err)
    assert isinstance(err, InvalidAddressError)  # callers of from_addr catch it too


def test_cycles_are_reported_with_their_path() -> None:
    err = _error(
        """
        [blobservices.root]
        type = "combined"
        near = "cache"
        far = "remote"
        [blobservices.cache]
        type = "stats"
        inner = "loop"
        [blobservices.loop]
        type = "retry"
        inner = "cache"
        [blobservices.remote]
        type = "memory"
        """
    )
    assert "reference cycle: cache -> loop -> cache" in str(err)
    self_ref = _error('[blobservices.root]\ntype = "stats"\ninner = "root"\n')
    assert "reference cycle: root -> root" in str(self_ref)


def test_cycles_are_found_before_anything_is_built() -> None:
    # The cycle is not reachable from root, and still rejected: the file is wrong.
    with pytest.raises(ConfigError, match="reference cycle"):
        parse(
            '[blobservices.root]\ntype = "memory"\n'
            '[blobservices.a]\ntype = "stats"\ninner = "b"\n'
            '[blobservices.b]\ntype = "stats"\ninner = "a"\n'
        )


def test_file_level_errors() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("[blobservices.root\n")
    with pytest.raises(ConfigError, match=r"no \[blobservices"):
        parse("title = 'nothing'\n".replace("title", "blobservices"))
    with pytest.raises(ConfigError, match="unknown top-level key") as info:
        parse('[blobservices.root]\ntype = "memory"\n[directoryservices.root]\ntype = "x"\n')
    assert info.value.key == "directoryservices"
    with pytest.raises(ConfigError, match=r"no \[blobservices.nothere\] to build; defined: root"):
        parse('[blobservices.root]\ntype = "memory"\n').build("nothere")
    with pytest.raises(ConfigError, match=r"blobservices\.root: expected a table"):
        parse('blobservices = { root = "memory://" }\n')


def test_composition_from_a_mapping() -> None:
    comp = Composition(
        {"blobservices": {"root": {"type": "stats", "inner": "m"}, "m": {"type": "memory"}}},
        source="inline",
    )
    svc: BlobService = comp.build()
    assert isinstance(svc, StatsBlobService)
    with pytest.raises(ConfigError, match=r"^inline: blobservices\.x\.type"):
        Composition({"blobservices": {"x": {"type": 3}}}, source="inline")


# --- castore --config and castore serve --config -----------------------------------------


def _cache_in_front(tmp_path: Path, far: str) -> Path:
    """A composition file: a local-disk near store in front of ``far``."""
    path = tmp_path / "castore.toml"
    path.write_text(
        f"""
        [blobservices.root]
        type = "combined"
        near = "cache"
        far = "remote"

        [blobservices.cache]
        type = "objectstore"
        url = "objectstore+file://{tmp_path / "near"}"

        [blobservices.remote]
        type = "retry"
        inner = "far"

        [blobservices.far]
        url = "{far}"
        """
    )
    return path


def test_cli_config_reads_through_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from castore.cli import ExitCode, main

    far = f"objectstore+file://{tmp_path / 'far'}"
    near = f"objectstore+file://{tmp_path / 'near'}"
    config = _cache_in_front(tmp_path, far)
    src = tmp_path / "blob"
    src.write_bytes(BLOB_B)
    assert main(["--store", far, "put", str(src)]) == ExitCode.OK
    digest = capsys.readouterr().out.split()[0]
    assert main(["--store", near, "has", digest]) == ExitCode.NOT_FOUND

    out = tmp_path / "out"
    assert main(["--config", str(config), "get", digest, "-o", str(out)]) == ExitCode.OK
    assert out.read_bytes() == BLOB_B
    assert main(["--store", near, "has", digest]) == ExitCode.OK  # copied into near
    # The option is also accepted after the command.
    assert main(["has", "--config", str(config), digest]) == ExitCode.OK


def test_cli_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from castore.cli import ExitCode, main

    config = tmp_path / "bad.toml"
    config.write_text('[blobservices.root]\ntype = "combined"\nnear = "a"\nfar = "b"\n')
    digest = BLOB_B_DIGEST.hex()
    assert main(["--config", str(config), "has", digest]) == ExitCode.BAD_STORE_URL
    err = capsys.readouterr().err
    assert "blobservices.root.near: no instance named 'a'" in err
    assert len(err.strip().splitlines()) == 1
    missing = str(tmp_path / "missing.toml")
    assert main(["--config", missing, "has", digest]) == ExitCode.LOCAL_IO
    assert "cannot read the config file" in capsys.readouterr().err
    both = ["--config", str(config), "--store", "memory://", "has", digest]
    assert main(both) == ExitCode.USAGE
    assert "not both" in capsys.readouterr().err


async def test_serve_config(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import anyio

    import castore

    backing = f"objectstore+file://{tmp_path / 'served'}"
    config = tmp_path / "serve.toml"
    config.write_text(
        f'[blobservices.root]\ntype = "stats"\ninner = "disk"\n'
        f'[blobservices.disk]\nurl = "{backing}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CASTORE_STORE", "CASTORE_DEBUG")}
    command = [sys.executable, "-m", "castore", "--config", str(config), "serve"]
    command += ["--listen", "grpc+http://127.0.0.1:0"]
    async with await anyio.open_process(command, env=env, stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        seen = b""
        with anyio.fail_after(30):
            while b"listening on " not in seen or not seen.endswith(b"\n"):
                seen += await proc.stderr.receive()
        url = seen.decode().split("listening on ", 1)[1].split()[0]
        async with castore.from_addr(url) as client:
            assert await client.put(BLOB_B) == BLOB_B_DIGEST
            assert await client.get(BLOB_B_DIGEST) == BLOB_B
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await proc.wait() == 0
    async with castore.from_addr(backing) as disk:
        assert await disk.has(BLOB_B_DIGEST)


# --- the registry: types come from the packages, defaults from the constructors ---------


def test_every_type_is_registered_by_its_package() -> None:
    from castore.registry import service_types

    types = service_types()
    assert set(types) >= {
        "memory",
        "objectstore",
        "grpc",
        "url",
        "combined",
        "retry",
        "cache",
        "stats",
        "logging",
    }
    assert types["objectstore"].url_prefix == "objectstore+"
    assert types["grpc"].url_prefix == "grpc+"
    assert types["combined"].references == ("near", "far")


def test_defaults_are_the_constructors() -> None:
    import inspect

    from castore.registry import service_types

    for t in service_types().values():
        if t.url_prefix is not None:
            continue
        params = inspect.signature(t.build).parameters
        assert t.defaults == {k: params[k].default for k in t.options}
    retry = service_types()["retry"].defaults
    assert retry["max_attempts"] == 5 and retry["deadline"] == 30.0


def test_a_key_left_out_takes_the_constructors_default() -> None:
    root = loads(
        '[blobservices.root]\ntype = "retry"\ninner = "m"\n[blobservices.m]\ntype = "memory"\n'
    )
    assert isinstance(root, RetryBlobService)
    plain = RetryBlobService(MemoryBlobService())
    for attr in ("max_attempts", "base_delay", "max_delay", "deadline", "attempt_timeout"):
        assert getattr(root, attr) == getattr(plain, attr), attr
    logged = loads(
        '[blobservices.lg]\ntype = "logging"\ninner = "m"\n[blobservices.m]\ntype = "memory"\n',
        "lg",
    )
    assert isinstance(logged, LoggingBlobService) and logged._name == "lg"


def test_a_third_party_wrapper_registers_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    from castore import registry
    from castore.wrappers import WrapperBlobService

    monkeypatch.setattr(registry, "_TYPES", dict(registry._TYPES))

    class Tagged(WrapperBlobService):
        def __init__(self, inner: BlobService, *, tag: str = "plain", weight: int = 3) -> None:
            super().__init__(inner)
            self.tag = tag
            self.weight = weight

    registry.register_type(
        "tagged",
        Tagged,
        references=("inner",),
        options={"tag": registry.text(), "weight": registry.integer(minimum=1)},
    )
    assert registry.service_types()["tagged"].defaults == {"tag": "plain", "weight": 3}
    base = '[blobservices.root]\ntype = "tagged"\ninner = "m"\n'
    base_m = '[blobservices.m]\ntype = "memory"\n'
    built = loads(base + 'tag = "blue"\n' + base_m)
    assert isinstance(built, Tagged) and (built.tag, built.weight) == ("blue", 3)
    assert isinstance(built.inner, MemoryBlobService)
    with pytest.raises(ConfigError, match="weight: must be at least 1"):
        loads(base + "weight = 0\n" + base_m)
    with pytest.raises(ConfigError, match="accepted: inner, tag, weight"):
        loads(base + "colour = 1\n" + base_m)


def test_a_registration_that_does_not_fit_the_constructor_fails_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from castore import registry

    monkeypatch.setattr(registry, "_TYPES", dict(registry._TYPES))
    with pytest.raises(TypeError, match="no parameter 'max_attempt'"):
        registry.register_type("r2", RetryBlobService, options={"max_attempt": registry.integer()})
    with pytest.raises(TypeError, match=r"option .inner. .* has no default"):
        registry.register_type("r3", RetryBlobService, options={"inner": registry.text()})


def test_a_scheme_family_is_a_type(monkeypatch: pytest.MonkeyPatch) -> None:
    from castore import registry

    monkeypatch.setattr(registry, "_SCHEMES", dict(registry._SCHEMES))
    made: list[str] = []

    def factory(parts: object) -> BlobService:
        made.append(str(parts))
        return MemoryBlobService()

    registry.register_scheme("thing+mem", factory)
    built = loads('[blobservices.root]\ntype = "thing"\nurl = "thing+mem://x"\n')
    assert isinstance(built, MemoryBlobService) and len(made) == 1
    with pytest.raises(ConfigError, match="needs a thing\\+… URL"):
        loads('[blobservices.root]\ntype = "thing"\nurl = "memory://"\n')


def test_the_docs_list_every_type_and_key() -> None:
    from castore.registry import service_types

    doc = (Path(__file__).parent.parent / "docs" / "composition.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in doc.splitlines()
        if line.startswith("| `")
    }
    for name, t in service_types().items():
        if name == "url":
            continue
        assert name in rows, name
        for key in (*t.required, *t.optional):
            assert f"`{key}`" in rows[name], (name, key)
