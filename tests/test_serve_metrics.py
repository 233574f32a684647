"""``castore serve``'s Prometheus metrics and request logs, scraped and read for real.

A ``castore serve`` process (gRPC and the HTTP gateway, over a store on disk, JSON logs)
takes concurrent Puts, Reads and Stats over both protocols while a scraper reads
``/metrics`` over HTTP again and again, parsing every scrape with prometheus-client's own
parser. Afterwards every count must match the calls made: requests by method and outcome,
bytes each way, chunks written against deduplicated, store errors by kind (a chunk file
corrupted on disk), in-flight back to 0; and every request has one log line whose id is
the one the client got back. A second test runs the command's own composition in this
process over a fault-injecting store, to count store errors of a failing store.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio
import anyio.to_thread
import grpc
import grpc.aio
import httpx
import pytest
import uvicorn  # noqa: F401  (imported here, not on the loop: its import blocks)
from prometheus_client.parser import text_string_to_metric_families
from serving import Served, castore_serve

from castore import B3Digest, from_addr
from castore._proto.tvix.castore.v1 import BlobChunk, ReadBlobRequest, StatBlobRequest
from castore.cli._logs import JsonFormatter, log_request, request_fields
from castore.cli._metrics import ServeMetrics
from castore.observe import Request, request_id
from castore.testing.conformance import pseudo_random_bytes

SERVICE = "/tvix.castore.v1.BlobService/"
ID = "x-request-id"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _same(b: bytes) -> bytes:
    return b


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels (prometheus-client's parser)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def scrape(http: httpx.AsyncClient, base: str) -> Samples:
    r = await http.get(base + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


# --- gRPC calls, one RPC each, so that the server's counts are exactly predictable -------


async def _pieces(data: bytes, hold: anyio.Event | None = None) -> AsyncIterator[bytes]:
    step = 64 << 10
    for i in range(0, len(data), step):
        yield bytes(BlobChunk(data=data[i : i + step]))
        if hold is not None and i == 0:
            await hold.wait()


async def grpc_put(
    channel: grpc.aio.Channel, data: bytes, rid: str | None = None, hold: anyio.Event | None = None
) -> tuple[bytes, str]:
    put = channel.stream_unary(
        SERVICE + "Put", request_serializer=_same, response_deserializer=_same
    )
    metadata = ((ID, rid),) if rid else None
    call = put(_pieces(data, hold), metadata=metadata)
    response = await call
    return response[-32:], _trailing_id(await call.trailing_metadata())


async def grpc_read(channel: grpc.aio.Channel, digest: bytes, rid: str | None = None) -> bytes:
    read = channel.unary_stream(
        SERVICE + "Read", request_serializer=_same, response_deserializer=_same
    )
    call = read(bytes(ReadBlobRequest(digest=digest)), metadata=((ID, rid),) if rid else None)
    got = bytearray()
    async for message in call:
        got += BlobChunk.parse(message).data
    if rid is not None:
        assert _trailing_id(await call.trailing_metadata()) == rid
    return bytes(got)


async def grpc_stat(channel: grpc.aio.Channel, digest: bytes) -> grpc.StatusCode:
    stat = channel.unary_unary(
        SERVICE + "Stat", request_serializer=_same, response_deserializer=_same
    )
    try:
        await stat(bytes(StatBlobRequest(digest=digest)))
    except grpc.aio.AioRpcError as e:
        assert len(_trailing_id(e.trailing_metadata())) == 32  # a generated id
        return e.code()
    return grpc.StatusCode.OK


def _trailing_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    ids = [v for k, v in metadata or () if k == ID]
    assert len(ids) == 1 and isinstance(ids[0], str), metadata
    return ids[0]


def request_lines(served: Served) -> list[dict[str, object]]:
    docs = [json.loads(line) for line in served.lines if line.startswith("{")]
    return [d for d in docs if d.get("logger") == "castore.serve.requests"]


async def _until(predicate_scrape: AsyncIterator[bool]) -> None:
    with anyio.fail_after(60):
        async for ok in predicate_scrape:
            if ok:
                return


# --- the load ----------------------------------------------------------------------------


BLOBS = 6
SIZE = 700_000  # about three chunks of the default 256 KiB average


async def test_metrics_and_logs_of_a_real_server_under_load(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    store_url = "objectstore+" + folder.as_uri()
    blobs = [pseudo_random_bytes(SIZE + i, seed=100 + i) for i in range(BLOBS)]
    digests = [B3Digest.of(b).digest for b in blobs]
    held_blob = pseudo_random_bytes(300_000, seed=99)
    scrapes: list[Samples] = []

    async with castore_serve(
        "--store", store_url, "--listen", "grpc+http://127.0.0.1:0",
        "--http", "127.0.0.1:0", "--log-format", "json", "--grace", "5",
    ) as served:  # fmt: skip
        target = (await served.url()).removeprefix("grpc+http://")
        base = await served.wait_for("castore serve: HTTP gateway on ")
        async with (
            grpc.aio.insecure_channel(target) as channel,
            httpx.AsyncClient(timeout=60) as http,
        ):
            stop_scraping = anyio.Event()

            async def scraper() -> None:
                while not stop_scraping.is_set():
                    scrapes.append(await scrape(http, base))
                    await anyio.sleep(0.02)

            async def held_puts() -> None:
                """A gRPC and an HTTP Put held open until the scraper saw them in flight;
                a second gRPC Put cancelled by its client meanwhile."""
                release = anyio.Event()

                async def body() -> AsyncIterator[bytes]:
                    yield held_blob[:1000]
                    await release.wait()
                    yield held_blob[1000:]

                async def http_held() -> None:
                    r = await http.put(base + "/blobs", content=body())
                    assert r.status_code == 201

                async def grpc_cancelled() -> None:
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        await grpc_put(channel, held_blob, hold=anyio.Event())
                    assert e.value.code() == grpc.StatusCode.CANCELLED

                async with anyio.create_task_group() as tg:
                    tg.start_soon(grpc_put, channel, held_blob, "held-grpc-put", release)
                    tg.start_soon(http_held)
                    cancelled = anyio.CancelScope()

                    async def run_cancelled() -> None:
                        with cancelled:
                            await grpc_cancelled()

                    tg.start_soon(run_cancelled)

                    async def seen_in_flight() -> AsyncIterator[bool]:
                        while True:
                            s = await scrape(http, base)
                            flying = "castore_requests_in_flight"
                            grpc_puts = value(s, flying, protocol="grpc", method="Put")
                            http_puts = value(s, flying, protocol="http", method="Put")
                            yield grpc_puts >= 2 and http_puts >= 1
                            await anyio.sleep(0.02)

                    await _until(seen_in_flight())
                    cancelled.cancel()  # the client cancels its call: CANCELLED, nothing stored
                    release.set()

            async def load() -> None:
                async with anyio.create_task_group() as tg:
                    for i, data in enumerate(blobs):
                        tg.start_soon(grpc_put, channel, data, f"put-a-{i}")
                        tg.start_soon(grpc_put, channel, data, f"put-b-{i}")
                        tg.start_soon(http_put, http, base, data, f"http-put-{i}")
                async with anyio.create_task_group() as tg:
                    for i, data in enumerate(blobs):
                        tg.start_soon(check_grpc_read, channel, digests[i], data, f"read-{i}")
                        tg.start_soon(check_http_get, http, base, digests[i], data, i)
                    tg.start_soon(check_not_found, channel)

            async with anyio.create_task_group() as tg:
                tg.start_soon(scraper)
                async with anyio.create_task_group() as work:
                    work.start_soon(held_puts)
                    work.start_soon(load)
                stop_scraping.set()

            # A malformed digest over HTTP, and a chunk file corrupted on disk: the next
            # Read over each protocol fails on it, as a store error.
            r = await http.get(base + "/blobs/not-a-digest")
            assert r.status_code == 400 and len(r.headers[ID]) == 32
            kind = await _corrupt_first_chunk(store_url, folder, digests[0])
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await grpc_read(channel, digests[0])
            assert failed.value.code() == grpc.StatusCode.DATA_LOSS
            r = await http.get(f"{base}/blobs/{digests[0].hex()}")
            assert r.status_code == 502

            async def idle() -> AsyncIterator[bool]:
                while True:
                    s = await scrape(http, base)
                    yield total(s, "castore_requests_in_flight") == 0
                    await anyio.sleep(0.05)

            await _until(idle())
            after = await scrape(http, base)

        _check_counts(after, blobs, held_blob, await _chunk_counts(store_url, digests, held_blob))
        assert value(after, "castore_store_errors_total", kind=kind) == 2
        assert total(after, "castore_store_errors_total") == 2
        _check_scrapes(scrapes)

        # One log line per request, each with the id its client got back.
        requests = total(after, "castore_requests_total")
        with anyio.fail_after(30):
            while len(request_lines(served)) < requests:
                await served.changed.wait()
        lines = request_lines(served)
        assert len(lines) == requests
        by_id = {str(d["request_id"]): d for d in lines}
        for i in range(BLOBS):
            for rid in (f"put-a-{i}", f"put-b-{i}", f"http-put-{i}"):
                assert by_id[rid]["method"] == "Put" and by_id[rid]["outcome"] == "ok"
                assert by_id[rid]["digest"] == digests[i].hex()
                assert by_id[rid]["bytes_received"] == len(blobs[i])
            assert by_id[f"read-{i}"]["bytes_sent"] == len(blobs[i])
        assert by_id["held-grpc-put"]["protocol"] == "grpc"
        outcomes = [d["outcome"] for d in lines]
        assert outcomes.count("cancelled") == 1 and outcomes.count("store_error") == 2
        failed_lines = [d for d in lines if d["outcome"] == "store_error"]
        assert {d["store_error"] for d in failed_lines} == {kind}
        assert all(d["level"] == "WARNING" for d in failed_lines)
        assert all(d["level"] == "INFO" for d in lines if d["outcome"] != "store_error")


async def http_put(http: httpx.AsyncClient, base: str, data: bytes, rid: str) -> None:
    r = await http.put(base + "/blobs", content=data, headers={ID: rid})
    assert r.status_code == 201 and r.headers[ID] == rid


async def check_grpc_read(channel: grpc.aio.Channel, digest: bytes, data: bytes, rid: str) -> None:
    assert await grpc_read(channel, digest, rid) == data


async def check_http_get(
    http: httpx.AsyncClient, base: str, digest: bytes, data: bytes, i: int
) -> None:
    # An id that is not sane (a space, a quote) is replaced by a generated one.
    r = await http.get(f"{base}/blobs/{digest.hex()}", headers={ID: f'bad "id" {i}'})
    assert r.status_code == 200 and r.content == data
    assert len(r.headers[ID]) == 32 and r.headers[ID] != f'bad "id" {i}'


async def check_not_found(channel: grpc.aio.Channel) -> None:
    missing = B3Digest.of(b"never stored").digest
    assert await grpc_stat(channel, missing) == grpc.StatusCode.NOT_FOUND


async def _chunk_counts(store_url: str, digests: list[bytes], held: bytes) -> list[int]:
    async with from_addr(store_url) as store:
        counts = []
        for d in [*digests, B3Digest.of(held).digest]:
            listed = await store.chunks(B3Digest(d))
            assert listed is not None
            counts.append(max(len(listed), 1))
        return counts


async def _corrupt_first_chunk(store_url: str, folder: Path, digest: bytes) -> str:
    """Overwrite the first chunk of ``digest`` on disk with garbage; the class name of
    the error reading it now raises (what the server must count)."""
    async with from_addr(store_url) as store:
        listed = await store.chunks(B3Digest(digest))
        assert listed
        hexed = listed[0].digest.hex()
        path = anyio.Path(folder / "chunks" / "b3" / hexed[:4] / hexed)
        assert await path.exists()
        await path.write_bytes(b"this is not a zstd frame" * 10)
        reader = await store.open_read(B3Digest(digest))
        assert reader is not None
        with pytest.raises(Exception) as e:
            async with reader:
                await reader.read()
    return type(e.value).__name__


def _check_counts(s: Samples, blobs: list[bytes], held: bytes, chunks: list[int]) -> None:
    sizes = sum(len(b) for b in blobs)

    def req(protocol: str, method: str, outcome: str) -> float:
        return value(s, "castore_requests_total", protocol=protocol, method=method, outcome=outcome)

    # Two gRPC Puts of each blob plus the held one; the cancelled one stored nothing.
    assert req("grpc", "Put", "ok") == 2 * BLOBS + 1
    assert req("grpc", "Put", "cancelled") == 1
    assert req("http", "Put", "ok") == BLOBS + 1
    assert req("grpc", "Read", "ok") == BLOBS
    assert req("grpc", "Read", "store_error") == 1
    assert req("http", "Read", "ok") == BLOBS
    assert req("http", "Read", "invalid") == 1
    assert req("http", "Read", "store_error") == 1
    assert req("grpc", "Stat", "not_found") == 1
    assert total(s, "castore_requests_total") == 5 * BLOBS + 7
    for protocol, method, n in (("grpc", "Put", 2 * BLOBS + 2), ("http", "Read", BLOBS + 2)):
        labels = {"protocol": protocol, "method": method}
        assert value(s, "castore_request_duration_seconds_count", **labels) == n
        assert value(s, "castore_request_duration_seconds_bucket", le="+Inf", **labels) == n
    # Every byte of every completed Put and Read; the cancelled Put got its first piece.
    received = value(s, "castore_bytes_received_total", protocol="grpc", method="Put")
    assert 2 * sizes + len(held) < received <= 2 * sizes + 2 * len(held)
    assert value(s, "castore_bytes_received_total", protocol="http", method="Put") == sizes + len(
        held
    )
    assert value(s, "castore_bytes_sent_total", protocol="grpc", method="Read") == sizes
    assert value(s, "castore_bytes_sent_total", protocol="http", method="Read") == sizes
    # Each blob's chunks were written once; its other Puts found them stored.
    assert value(s, "castore_chunks_total", outcome="written") == sum(chunks)
    dedup = 2 * sum(chunks[:BLOBS]) + chunks[BLOBS]
    assert value(s, "castore_chunks_total", outcome="deduplicated") == dedup
    assert total(s, "castore_requests_in_flight") == 0


def _check_scrapes(scrapes: list[Samples]) -> None:
    """Every scrape taken during the load parsed; counters never went down."""
    assert len(scrapes) >= 2
    for earlier, later in itertools.pairwise(scrapes):
        for key, v in earlier.items():
            if key[0].endswith(("_total", "_count", "_bucket", "_sum")):
                assert later.get(key, 0.0) >= v, key
    for s in scrapes:
        assert all(v >= 0 for (n, _), v in s.items() if n == "castore_requests_in_flight")


async def test_a_grpc_only_server_serves_metrics_on_their_own_port() -> None:
    async with castore_serve(
        "--store", "objectstore+memory:///", "--listen", "grpc+http://127.0.0.1:0",
        "--metrics", "127.0.0.1:0",
    ) as served:  # fmt: skip
        target = (await served.url()).removeprefix("grpc+http://")
        url = await served.wait_for("castore serve: metrics on ")
        assert url.endswith("/metrics")
        base = url.removesuffix("/metrics")
        missing = B3Digest.of(b"not stored")
        async with (
            grpc.aio.insecure_channel(target) as channel,
            httpx.AsyncClient(timeout=30) as http,
        ):
            assert await grpc_stat(channel, missing.digest) == grpc.StatusCode.NOT_FOUND
            s = await scrape(http, base)
            # Only /metrics: the gateway is not served here.
            assert (await http.get(f"{base}/blobs/{missing.hex()}")).status_code == 404
        labels = {"protocol": "grpc", "method": "Stat"}
        assert value(s, "castore_requests_total", outcome="not_found", **labels) == 1
        assert total(s, "castore_requests_total") == 1
        assert value(s, "castore_request_duration_seconds_count", **labels) == 1
        # The default log format: text, the request's fields as key=value.
        prefix = "castore serve: request request_id="
        with anyio.fail_after(30):
            while not any(line.startswith(prefix) for line in served.lines):
                await served.changed.wait()
        line = next(line for line in served.lines if line.startswith(prefix))
        assert " protocol=grpc method=Stat outcome=not_found status=NOT_FOUND " in line
        assert f" digest={missing.hex()} " in line


async def test_metrics_answer_while_the_calls_in_flight_drain() -> None:
    data = pseudo_random_bytes(200_000, seed=8)
    async with castore_serve(
        "--store", "objectstore+memory:///", "--listen", "grpc+http://127.0.0.1:0",
        "--metrics", "127.0.0.1:0", "--grace", "60",
    ) as served:  # fmt: skip
        target = (await served.url()).removeprefix("grpc+http://")
        base = (await served.wait_for("castore serve: metrics on ")).removesuffix("/metrics")
        release = anyio.Event()
        async with (
            grpc.aio.insecure_channel(target) as channel,
            httpx.AsyncClient(timeout=30) as http,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(grpc_put, channel, data, "draining-put", release)

            async def put_in_flight() -> AsyncIterator[bool]:
                while True:
                    s = await scrape(http, base)
                    yield value(s, "castore_requests_in_flight", protocol="grpc", method="Put") == 1
                    await anyio.sleep(0.02)

            await _until(put_in_flight())
            served.process.send_signal(signal.SIGTERM)
            await served.wait_for("castore serve: SIGTERM: finishing 1 call(s) in flight")
            # The gRPC server drains; /metrics still answers, and sees the Put.
            during = await scrape(http, base)
            assert value(during, "castore_requests_in_flight", protocol="grpc", method="Put") == 1
            release.set()
        with anyio.fail_after(60):
            await served.process.wait()
        assert served.process.returncode == 0
        # The log is written out before the process ends.
        with anyio.fail_after(30):
            while not any("request_id=draining-put" in line for line in served.lines):
                await served.changed.wait()
    line = next(line for line in served.lines if "request_id=draining-put" in line)
    assert " outcome=ok " in line


async def test_log_level_warning_logs_only_the_failures() -> None:
    # A gRPC store that nobody serves: every Stat that reaches it fails on the store.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    async with castore_serve(
        "--store", f"grpc+http://127.0.0.1:{dead}", "--listen", "grpc+http://127.0.0.1:0",
        "--metrics", "127.0.0.1:0", "--log-level", "warning", "--log-format", "json",
    ) as served:  # fmt: skip
        target = (await served.url()).removeprefix("grpc+http://")
        base = (await served.wait_for("castore serve: metrics on ")).removesuffix("/metrics")
        async with grpc.aio.insecure_channel(target) as channel:
            # INFO: a digest of the wrong length is refused before the store is asked.
            assert await grpc_stat(channel, b"short") == grpc.StatusCode.INVALID_ARGUMENT
            # WARNING: the store fails.
            assert await grpc_stat(channel, bytes(32)) == grpc.StatusCode.UNAVAILABLE
        with anyio.fail_after(30):
            while not request_lines(served):
                await served.changed.wait()
        async with httpx.AsyncClient(timeout=30) as http:
            s = await scrape(http, base)
    (line,) = request_lines(served)
    assert line["outcome"] == "store_error" and line["level"] == "WARNING"
    assert line["store_error"] == "StoreUnavailableError"
    labels = {"protocol": "grpc", "method": "Stat"}
    assert value(s, "castore_requests_total", outcome="invalid", **labels) == 1
    assert value(s, "castore_requests_total", outcome="store_error", **labels) == 1
    assert value(s, "castore_store_errors_total", kind="StoreUnavailableError") == 1


# --- a failing store, through the command's own composition ------------------------------


async def test_store_errors_of_a_failing_store_are_counted_by_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from obstore.store import MemoryStore

    from castore.cli import build_parser
    from castore.cli._serve import _start
    from castore.objectstore import ObjectStoreBlobService
    from castore.testing.faults import Fault, FaultyBlobService, FaultyStore

    store = FaultyStore(MemoryStore(), seed=1)
    service = FaultyBlobService(ObjectStoreBlobService(store, avg_chunk_size=16 * 1024))
    command = ["serve", "--store", "memory://", "--listen", "grpc+http://127.0.0.1:0"]
    command += ["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]
    # argparse reads translation files: not on the loop.
    args = await anyio.to_thread.run_sync(lambda: build_parser().parse_args(command))
    metrics = ServeMetrics(on_finished=log_request)
    data = pseudo_random_bytes(100_000, seed=5)
    caplog.set_level(logging.INFO, logger="castore.serve.requests")
    async with contextlib.AsyncExitStack() as stack:
        running, http_url, metrics_url = await _start(args, service, metrics, stack)
        assert running is not None and http_url is not None and metrics_url is not None
        target = running.url.removeprefix("grpc+http://")
        async with (
            grpc.aio.insecure_channel(target) as channel,
            httpx.AsyncClient(timeout=30) as http,
        ):
            store.plan("put", Fault.ERROR, nth=1)  # the first object put fails
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await grpc_put(channel, data, "failing-put")
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            store.clear()
            digest, rid = await grpc_put(channel, data)
            assert len(rid) == 32
            service.plan("open_read", Fault.TIMEOUT, nth=1)
            r = await http.get(f"{http_url}/blobs/{digest.hex()}", headers={ID: "timed-out"})
            assert r.status_code == 503 and r.headers[ID] == "timed-out"
            service.plan("has", Fault.ERROR, nth=1)
            assert await grpc_stat(channel, digest) == grpc.StatusCode.UNAVAILABLE
            # The metrics port serves /metrics alone; the gateway's port too.
            assert (await http.get(metrics_url + "/blobs")).status_code == 404
            s = await scrape(http, metrics_url)
            assert s == await scrape(http, http_url)

    assert value(s, "castore_store_errors_total", kind="StoreError") == 1
    assert value(s, "castore_store_errors_total", kind="StoreTimeoutError") == 1
    assert value(s, "castore_store_errors_total", kind="InjectedFault") == 1
    assert total(s, "castore_store_errors_total") == 3
    for protocol, method in (("grpc", "Put"), ("http", "Read"), ("grpc", "Stat")):
        got = value(
            s, "castore_requests_total", protocol=protocol, method=method, outcome="store_error"
        )
        assert got == 1, (protocol, method)
    # The failed Put stored nothing: only the second one's chunks were written.
    assert value(s, "castore_chunks_total", outcome="deduplicated") == 0
    assert value(s, "castore_chunks_total", outcome="written") >= 2
    records = [r for r in caplog.records if r.name == "castore.serve.requests"]
    failing = [r for r in records if r.__dict__["castore_request"]["request_id"] == "failing-put"]
    assert len(failing) == 1 and failing[0].levelno == logging.WARNING
    assert failing[0].__dict__["castore_request"]["store_error"] == "StoreError"


# --- the pieces --------------------------------------------------------------------------


def test_request_ids_are_kept_when_sane_and_made_otherwise() -> None:
    assert request_id("build-42/step:7") == "build-42/step:7"
    for bad in (None, "", "a b", 'quote"', "x" * 129, "new\nline", "é"):
        made = request_id(bad)
        assert len(made) == 32 and int(made, 16) >= 0
    assert request_id(None) != request_id(None)


def test_json_log_lines_carry_every_field() -> None:
    req = Request("grpc", "Put", "rid-1", "ipv4:127.0.0.1:5")
    req.digest = bytes(32)
    req.bytes_received = 10
    req.fail(ConnectionError("gone"), "error")
    req.finish()
    fields = request_fields(req)
    record = logging.LogRecord("castore.serve.requests", logging.WARNING, "", 0, "request %s",
                               (fields,), None)  # fmt: skip
    record.__dict__["castore_request"] = fields
    doc = json.loads(JsonFormatter().format(record))
    assert doc["request_id"] == "rid-1" and doc["message"] == "request"
    assert doc["level"] == "WARNING" and doc["logger"] == "castore.serve.requests"
    assert doc["outcome"] == "error" and doc["digest"] == "00" * 32
    assert doc["error"] == "ConnectionError: gone" and doc["peer"] == "ipv4:127.0.0.1:5"
    assert doc["time"].endswith("Z")
    assert "request_id=rid-1 protocol=grpc method=Put outcome=error" in record.getMessage()


def test_a_stuck_log_reader_holds_up_no_request_and_drops_are_counted() -> None:
    from castore.cli._logs import QUEUE_LIMIT, _Writer

    class Stuck(io.StringIO):
        """stderr whose reader stops reading until ``go`` is set."""

        def __init__(self) -> None:
            super().__init__()
            self.go = threading.Event()
            self.entered = threading.Event()

        def write(self, s: str) -> int:
            self.entered.set()
            assert self.go.wait(60)
            return super().write(s)

    def record(i: int) -> logging.LogRecord:
        return logging.LogRecord("castore.serve.requests", logging.INFO, "", 0, "line %d",
                                 (i,), None)  # fmt: skip

    stream = Stuck()
    writer = _Writer(logging.Formatter("%(message)s"), stream)
    writer.handle(record(0))
    assert stream.entered.wait(60)  # the writing thread is stuck in write()
    for i in range(1, QUEUE_LIMIT + 11):
        writer.handle(record(i))  # returns at once: queued, or dropped once the queue is full
    stream.go.set()
    writer.stop(timeout=60)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "line 0"
    assert "10 log records dropped" in lines[1]
    assert lines[2:] == [f"line {i}" for i in range(1, QUEUE_LIMIT + 1)]
