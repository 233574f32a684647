"""The workload of the cluster fault tests: writer, deleter and collector processes that
keep a journal of what they did, and the reading of those journals.

Run as ``python tests/clusterload.py '<json config>'`` (``role`` is ``writer``,
``deleter`` or ``collector``); every process runs until the file ``stop`` names exists,
then finishes what it is doing and exits 0. Each appends one JSON object a line to its
``journal``, flushed as written, and only after the fact: a ``put`` line once ``close``
returned the digest, a ``deleted`` line once ``delete`` returned. So the journals say
what the store must hold, whatever was killed meanwhile.

- A **writer** runs lanes, each writing blob after blob through one path: the
  several-endpoint gRPC client (``grpc``) or the object store itself (``direct``). Blobs
  are named by a spec from which :func:`blob_bytes` rebuilds them: ``u:…`` blobs are
  unique (a header, shared pieces and a unique tail), ``p:…`` blobs are made of shared
  pieces only, so several writers store the same digest, and blobs that a deleter
  removed come back (their chunks may be condemned by then: the collector's rescue
  path). Now and then a lane reads a blob it wrote back through the other path.
- A **deleter** follows the writers' journals and deletes about a third of the blobs
  committed, through the object store (gRPC has no delete), writing ``deleting`` before
  and ``deleted`` after each.
- A **collector** runs garbage collection again and again with the smallest grace. With
  ``pause_in_sweep`` it stops dead (the whole process, loop included) after the first
  delete batch of a sweep that has more, and says so in its journal: the test kills it
  there.

Every error a client sees is journaled with its class; one that is not a castore error
is ``unexpected``, and bytes that differ from what was written are ``wrong``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

KiB = 1024
#: Average chunk size of every service of the workload: small, so blobs share chunks.
AVG_CHUNK = 16 * KiB
#: The shared pieces every blob is built from (each spans a few chunks).
POOL_SIZE = 8
PIECE = 32 * KiB


def _pool() -> list[bytes]:
    rng = random.Random(20261207)
    return [rng.randbytes(PIECE) for _ in range(POOL_SIZE)]


POOL = _pool()


def blob_bytes(spec: str) -> bytes:
    """The bytes of the blob named ``spec`` (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "p":
        return b"".join(POOL[int(i)] for i in rest.split(","))
    if kind == "b":  # b:NAME:SIZE, unique bytes of that size
        return random.Random(spec).randbytes(int(rest.rsplit(":", 1)[1]))
    if kind != "u":
        raise ValueError(f"not a blob spec: {spec!r}")
    rng = random.Random(spec)
    header = spec.encode().ljust(64, b".")
    pieces = b"".join(rng.choice(POOL) for _ in range(rng.randint(0, 3)))
    big = rng.random() < 0.06
    tail = rng.randbytes(rng.randint(256 * KiB, 768 * KiB) if big else rng.randint(1, 64 * KiB))
    return header + pieces + tail


def pooled_spec(rng: random.Random) -> str:
    """A blob of one to three shared pieces: few enough that writers meet."""
    return "p:" + ",".join(str(rng.randrange(4)) for _ in range(rng.randint(1, 3)))


# --- the processes -------------------------------------------------------------------------


class Journal:
    """Appends JSON lines to a file, each flushed at once."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def add(self, **record: Any) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()


def _error(e: BaseException) -> dict[str, str]:
    from castore.errors import CastoreError

    kind = type(e).__name__ if isinstance(e, CastoreError) else f"unexpected:{type(e).__name__}"
    return {"kind": kind, "msg": str(e)[:300]}


async def _write(service: Any, data: bytes, piece: int) -> Any:
    async with await service.open_write() as writer:
        for i in range(0, len(data), piece):
            await writer.write(data[i : i + piece])
        return await writer.close()


async def _writer(cfg: dict[str, Any], journal: Journal, stop: anyio.Path) -> None:
    from castore import B3Digest, from_addr

    services = {"grpc": from_addr(cfg["grpc"]), "direct": from_addr(cfg["direct"])}
    deleter_journal = Path(cfg["deleter_journal"])

    def being_deleted(hex_: str) -> bool:
        return any(r["op"] == "deleting" and r["hex"] == hex_ for r in records(deleter_journal))

    async def read_back(via: str, spec: str, hex_: str, data: bytes) -> None:
        t0 = time.time()
        try:
            got = await services[via].get(B3Digest.from_hex(hex_))
        except Exception as e:
            journal.add(
                op="error", where="read", via=via, spec=spec, t0=t0, t1=time.time(), **_error(e)
            )
            return
        if got is None:
            outcome = "deleted" if await asyncio.to_thread(being_deleted, hex_) else "lost"
        else:
            outcome = "ok" if got == data else "wrong"
        journal.add(op="read", via=via, spec=spec, hex=hex_, outcome=outcome, t0=t0, t1=time.time())

    async def lane(number: int, via: str) -> None:
        rng = random.Random(f"{cfg['name']}/{number}")
        other = "direct" if via == "grpc" else "grpc"
        seq = 0
        while not await stop.exists():
            seq += 1
            spec = pooled_spec(rng) if rng.random() < 0.3 else f"u:{cfg['name']}.{number}.{seq}"
            data = blob_bytes(spec)
            for attempt in (1, 2):  # a failed put is tried once more, as a client would
                t0 = time.time()
                try:
                    digest = await _write(services[via], data, rng.choice((16, 64, 256)) * KiB)
                except Exception as e:
                    journal.add(
                        op="error", where="put", via=via, lane=f"{cfg['name']}.{number}",
                        spec=spec, attempt=attempt, t0=t0, t1=time.time(), **_error(e),
                    )  # fmt: skip
                    continue
                t1 = time.time()
                if digest != B3Digest.of(data):
                    journal.add(op="wrong-digest", via=via, spec=spec, got=digest.hex())
                    break
                journal.add(
                    op="put", via=via, lane=f"{cfg['name']}.{number}", spec=spec,
                    hex=digest.hex(), size=len(data), attempt=attempt, t0=t0, t1=t1,
                )  # fmt: skip
                if rng.random() < 0.25:
                    await read_back(other, spec, digest.hex(), data)
                break
            await asyncio.sleep(rng.random() * 2 * cfg.get("think", 0.0))

    try:
        async with asyncio.TaskGroup() as tg:
            for number, via in enumerate(cfg["lanes"]):
                tg.create_task(lane(number, via))
    finally:
        for service in services.values():
            await service.aclose()


async def _deleter(cfg: dict[str, Any], journal: Journal, stop: anyio.Path) -> None:
    from castore import B3Digest, from_addr

    rng = random.Random(cfg["name"])
    service = from_addr(cfg["direct"])
    seen: set[tuple[str, float]] = set()
    try:
        while not await stop.exists():
            written = await asyncio.to_thread(
                lambda: [r for path in cfg["writer_journals"] for r in records(Path(path))]
            )
            fresh = [
                r
                for r in written
                if r["op"] == "put"
                and (r["hex"], r["t1"]) not in seen
                and r["t1"] < time.time() - 0.3
            ]
            for r in fresh:
                seen.add((r["hex"], r["t1"]))
                if rng.random() >= cfg.get("rate", 0.35) or await stop.exists():
                    continue
                t0 = time.time()
                journal.add(op="deleting", hex=r["hex"], t0=t0)
                try:
                    found = await service.delete(B3Digest.from_hex(r["hex"]))
                except Exception as e:
                    journal.add(
                        op="error", where="delete", hex=r["hex"], t0=t0, t1=time.time(), **_error(e)
                    )
                    continue
                journal.add(op="deleted", hex=r["hex"], found=found, t0=t0, t1=time.time())
            await asyncio.sleep(0.3)
    finally:
        await service.aclose()


async def _collector(cfg: dict[str, Any], journal: Journal, stop: anyio.Path) -> None:
    from castore import ObjectStoreBlobService, from_addr
    from castore.errors import GcLeaseError
    from castore.objectstore import _gc

    # Test hooks: small delete batches, so a sweep has several; and a takeover margin of
    # seconds, not minutes (a killed collector has no request left in flight).
    _gc._BATCH = cfg.get("batch", 8)
    _gc.MIN_TAKEOVER_MARGIN = cfg.get("margin", 1.0)
    runs = 0  # runs finished

    def progress(phase: str, done: int, total: int | None) -> None:
        pause = cfg.get("pause_in_sweep") and runs >= cfg.get("pause_after", 0)
        if pause and phase.startswith("sweeping") and total and done < total:
            journal.add(
                op="paused",
                generation=int(phase.split()[-1]),
                done=done,
                total=total,
                t=time.time(),
            )
            time.sleep(3600)  # the whole process stops here, as if hung: the test kills it

    service = from_addr(cfg["direct"])
    assert isinstance(service, ObjectStoreBlobService)
    try:
        while not await stop.exists():
            t0 = time.time()
            try:
                report = await service.collect_garbage(
                    grace=_gc.MIN_GRACE, min_age=0, lease=cfg.get("lease", 5.0), progress=progress
                )
            except GcLeaseError as e:
                journal.add(op="busy", free_in=e.free_in, t0=t0, t1=time.time())
                await asyncio.sleep(min(1.0, max(0.2, e.free_in or 1.0)))
                continue
            except Exception as e:
                journal.add(op="error", where="gc", t0=t0, t1=time.time(), **_error(e))
                await asyncio.sleep(1.0)
                continue
            journal.add(op="gc", t0=t0, t1=time.time(), **report.as_dict())
            runs += 1
            await asyncio.sleep(cfg.get("every", 1.0))
    finally:
        await service.aclose()


def main(argv: list[str]) -> None:
    cfg = json.loads(argv[1])
    journal = Journal(cfg["journal"])
    stop = anyio.Path(cfg["stop"])
    role = {"writer": _writer, "deleter": _deleter, "collector": _collector}[cfg["role"]]
    journal.add(op="start", role=cfg["role"], pid=os.getpid(), t=time.time())
    asyncio.run(role(cfg, journal, stop))
    journal.add(op="exit", t=time.time())


# --- reading the journals -------------------------------------------------------------------


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The complete lines of a journal (a line being written is left out)."""
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            yield json.loads(line)


def records(path: Path) -> list[dict[str, Any]]:
    return list(_records(path)) if path.exists() else []


@dataclass
class Truth:
    """What the journals say, put together."""

    puts: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    reads: list[dict[str, Any]] = field(default_factory=list)
    gc_runs: list[dict[str, Any]] = field(default_factory=list)
    bad: list[dict[str, Any]] = field(default_factory=list)
    delete_starts: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def read(cls, paths: list[Path]) -> Truth:
        truth = cls()
        for path in paths:
            for r in records(path):
                op = r["op"]
                if op == "put":
                    truth.puts.append(r)
                elif op == "deleting":
                    truth.delete_starts.setdefault(r["hex"], []).append(r["t0"])
                elif op == "deleted":
                    truth.deletes.append(r)
                elif op == "error":
                    truth.errors.append(r)
                    if r["kind"].startswith("unexpected"):
                        truth.bad.append(r)
                elif op == "read":
                    truth.reads.append(r)
                    if r["outcome"] in ("wrong", "lost"):
                        truth.bad.append(r)
                elif op == "gc":
                    truth.gc_runs.append(r)
                elif op == "wrong-digest":
                    truth.bad.append(r)
        return truth

    def live(self) -> dict[str, str]:
        """Digest (hex) -> spec of every blob that must be stored: a put of it began after
        every delete of that digest had returned (a delete still on its way may land
        after a put that overlaps it, so such a put proves nothing)."""
        ended: dict[tuple[str, float], float] = {}
        for r in [*self.deletes, *self.errors]:
            if r.get("where", "delete") == "delete" and "hex" in r:
                ended[(r["hex"], r["t0"])] = r["t1"]
        last: dict[str, float] = {}
        for hex_, starts in self.delete_starts.items():
            last[hex_] = max(ended.get((hex_, s), float("inf")) for s in starts)
        return {
            r["hex"]: r["spec"] for r in self.puts if r["t0"] > last.get(r["hex"], float("-inf"))
        }

    def error_kinds(self) -> Counter[str]:
        """Client errors as ``where:Kind``, with the node's own error when a gRPC status
        carried one (``put:StoreUnavailableError(GcConflictError)``)."""
        out: Counter[str] = Counter()
        for r in self.errors:
            cause = re.search(r"UNAVAILABLE: \w+: (\w+Error)", r["msg"])
            out[f"{r['where']}:{r['kind']}" + (f"({cause[1]})" if cause else "")] += 1
        return out

    def put_bytes(self) -> int:
        return sum(r["size"] for r in self.puts)


def recovery(puts: list[dict[str, Any]], since: float, lanes: set[str]) -> float | None:
    """Seconds from ``since`` until every lane in ``lanes`` finished a put that it began
    after ``since``; ``None`` while one has not."""
    latest = since
    for lane in lanes:
        ends = [r["t1"] for r in puts if r["lane"] == lane and r["t0"] >= since]
        if not ends:
            return None
        latest = max(latest, min(ends))
    return latest - since


if __name__ == "__main__":
    main(sys.argv)
