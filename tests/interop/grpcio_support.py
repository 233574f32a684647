"""Helpers for the interop tests: grpcio stubs generated from ``protos/`` at test time,
a grpcio server backed by a dict, and ``castore serve`` as a real process.

The grpcio code is generated with ``grpc_tools.protoc`` into a temporary folder for the
session and never checked in, so the tests always speak the proto file as it is.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import blake3
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


@dataclass
class Stubs:
    """The generated grpcio modules."""

    pb2: ModuleType
    pb2_grpc: ModuleType


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stubs]:
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("grpcio_gen")
    proto = PROTOS / "tvix" / "castore" / "v1" / "rpc_blobstore.proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(proto),
        ]
    )
    assert code == 0, "protoc failed"
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("tvix.castore.v1.rpc_blobstore_pb2")
        pb2_grpc = importlib.import_module("tvix.castore.v1.rpc_blobstore_pb2_grpc")
        assert pathlib.Path(pb2.__file__).is_relative_to(out)
        yield Stubs(pb2, pb2_grpc)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == "tvix" or m.startswith("tvix.")]:
            del sys.modules[name]


# --- a grpcio server backed by a dict -------------------------------------------------------

#: Blobs above this size are listed by Stat as chunks of this size, each readable by digest.
DICT_CHUNK = 512 * 1024
#: The dict server streams Read in 4 KiB messages, as Rust's server does.
DICT_MESSAGE = 4096


def make_dict_servicer(stubs: Stubs) -> Any:
    """A ``BlobService`` servicer on grpcio that keeps blobs in a dict, written here from
    the proto alone (an implementation independent of castore's)."""
    import grpc

    pb2 = stubs.pb2

    class DictBlobService(stubs.pb2_grpc.BlobServiceServicer):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            self.blobs: dict[bytes, bytes] = {}
            self.lock = threading.Lock()

        def _lookup(self, digest: bytes, context: Any) -> bytes:
            if len(digest) != 32:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"digest must be 32 bytes, not {len(digest)}"
                )
            with self.lock:
                data = self.blobs.get(digest)
            if data is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "no such blob")
            assert data is not None
            return data

        def Stat(self, request: Any, context: Any) -> Any:
            data = self._lookup(request.digest, context)
            response = pb2.StatBlobResponse()
            if request.send_chunks and len(data) > DICT_CHUNK:
                for i in range(0, len(data), DICT_CHUNK):
                    piece = data[i : i + DICT_CHUNK]
                    response.chunks.add(digest=blake3.blake3(piece).digest(), size=len(piece))
            return response

        def Read(self, request: Any, context: Any) -> Iterator[Any]:
            data = self._lookup(request.digest, context)
            for i in range(0, len(data), DICT_MESSAGE):
                yield pb2.BlobChunk(data=data[i : i + DICT_MESSAGE])

        def Put(self, request_iterator: Iterator[Any], context: Any) -> Any:
            parts = [message.data for message in request_iterator]
            data = b"".join(parts)
            digest = blake3.blake3(data).digest()
            with self.lock:
                self.blobs[digest] = data
                if len(data) > DICT_CHUNK:
                    for i in range(0, len(data), DICT_CHUNK):
                        piece = data[i : i + DICT_CHUNK]
                        self.blobs.setdefault(blake3.blake3(piece).digest(), piece)
            return pb2.PutBlobResponse(digest=digest)

    return DictBlobService()


@dataclass
class DictServer:
    servicer: Any
    tcp_url: str
    unix_url: str


@pytest.fixture
def dict_server(stubs: Stubs, short_tmp: str) -> Iterator[DictServer]:
    """The dict servicer on a grpcio server, on 127.0.0.1 and on a unix socket."""
    import grpc

    servicer = make_dict_servicer(stubs)
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    stubs.pb2_grpc.add_BlobServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    sock = f"{short_tmp}/dict.sock"
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    try:
        yield DictServer(servicer, f"grpc+http://127.0.0.1:{port}", f"grpc+unix://{sock}")
    finally:
        server.stop(grace=None).wait()


# --- castore serve as a process --------------------------------------------------------------


@dataclass
class CastoreServe:
    process: subprocess.Popen[bytes]
    url: str
    lines: list[str]

    @property
    def grpcio_target(self) -> str:
        """The address in grpcio's syntax."""
        if self.url.startswith("grpc+unix://"):
            return "unix:" + self.url.removeprefix("grpc+unix://")
        return self.url.split("://", 1)[1]


def start_castore_serve(*args: str) -> CastoreServe:
    """``python -m castore serve ARGS``, once it says where it listens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASTORE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "castore", "serve", *args],
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    lines: list[str] = []
    prefix = "castore serve: listening on "
    timer = threading.Timer(30, process.kill)
    timer.start()
    try:
        for raw in process.stderr:
            line = raw.decode().rstrip("\n")
            lines.append(line)
            if line.startswith(prefix):
                break
    finally:
        timer.cancel()
    if not lines or not lines[-1].startswith(prefix):
        process.kill()
        raise AssertionError("castore serve did not start:\n" + "\n".join(lines))
    # Keep draining stderr so the process never blocks on a full pipe.
    threading.Thread(target=lambda: lines.extend(r.decode() for r in process.stderr or ()),
                     daemon=True).start()  # fmt: skip
    return CastoreServe(process, lines[-1][len(prefix) :], lines)


def stop_castore_serve(served: CastoreServe) -> int:
    """SIGTERM, and the exit code."""
    served.process.send_signal(signal.SIGTERM)
    try:
        return served.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        served.process.kill()
        raise


@pytest.fixture(scope="module")
def castore_server() -> Iterator[CastoreServe]:
    """``castore serve`` over TCP in front of an object store in memory (chunked blobs)."""
    served = start_castore_serve(
        "--store", "objectstore+memory:///", "--listen", "grpc+http://127.0.0.1:0"
    )
    try:
        yield served
    finally:
        assert stop_castore_serve(served) == 0, served.lines
