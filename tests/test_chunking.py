"""FastCDC 2020: bit-exact with the Rust ``fastcdc`` crate, and streaming == one-shot."""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from castore.objectstore import DEFAULT_AVG_CHUNK_SIZE, StreamingChunker
from castore.objectstore._chunker import make_fastcdc

SEKIEN = Path("/work/shared/testdata/SekienAkashita.jpg")
if not SEKIEN.exists():  # the same file, relative to a checkout next to ../shared
    SEKIEN = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "SekienAkashita.jpg"


@pytest.fixture(scope="module")
def sekien() -> bytes:
    data = SEKIEN.read_bytes()
    assert len(data) == 109466
    assert hashlib.sha256(data).hexdigest().startswith("d9e749d9")
    assert hashlib.sha256(data).hexdigest().endswith("39ed")
    return data


# The crate's own test vectors for its v2020 module: (min, avg, max, normalization, seed)
# and the chunk lengths it produces on SekienAkashita.jpg.
VECTORS = [
    ((4096, 16384, 65535, 1, 0), [21325, 17140, 28084, 18217, 24700]),
    ((4096, 16384, 65535, 1, 666), [10605, 55745, 11346, 5883, 11586, 14301]),
    ((8192, 32768, 131072, 1, 0), [66549, 42917]),
    ((16384, 65536, 262144, 1, 0), [109466]),
    ((4096, 16384, 65535, 0, 0), [6634, 59915, 25597, 5237, 12083]),
    ((8192, 16384, 32768, 3, 0), [17350, 19911, 17426, 17519, 19940, 17320]),
]


@pytest.mark.parametrize(("params", "lengths"), VECTORS, ids=[str(v[0]) for v in VECTORS])
def test_rust_crate_vectors(
    sekien: bytes, params: tuple[int, int, int, int, int], lengths: list[int]
) -> None:
    mn, avg, mx, nc, seed = params
    cdc = FastCDC(avg, min_size=mn, max_size=mx, normalized_chunking=nc, seed=seed)  # type: ignore[arg-type]
    assert [c.length for c in cdc.cut_buf(sekien)] == lengths


def _lengths(chunker: StreamingChunker, pieces: list[bytes]) -> list[int]:
    """Chunk lengths from feeding ``pieces`` one call at a time, then EOF."""
    out: list[int] = []
    for i, p in enumerate(pieces):
        _, ends = chunker.feed([p], eof=i == len(pieces) - 1)
        prev = 0
        for e in ends:
            out.append(e - prev)
            prev = e
    if not pieces:
        _, ends = chunker.feed([], eof=True)
        assert ends == []
    return out


def test_castore_parameters_are_tvix_parameters() -> None:
    cdc = make_fastcdc(DEFAULT_AVG_CHUNK_SIZE)
    assert (cdc.min_size, cdc.avg_size, cdc.max_size) == (131072, 262144, 524288)


def test_streaming_sekien_matches_vectors(sekien: bytes) -> None:
    """castore's parameters (min = avg/2, max = 2*avg, normalization 1), streamed in
    1000-byte pieces, at an average small enough to give several chunks on this file."""
    oneshot = [c.length for c in make_fastcdc(16384).cut_buf(sekien)]
    assert len(oneshot) > 3
    pieces = [sekien[i : i + 1000] for i in range(0, len(sekien), 1000)]
    assert _lengths(StreamingChunker(16384), pieces) == oneshot


def test_edge_cases() -> None:
    ch = StreamingChunker(1024)
    assert ch.feed([], eof=True)[1] == []
    assert _lengths(StreamingChunker(1024), [b"x"]) == [1]
    assert _lengths(StreamingChunker(1024), [b"x" * 512]) == [512]  # at most min: one chunk
    # A run of identical bytes never matches the mask: cuts fall at max.
    assert _lengths(StreamingChunker(1024), [b"\0" * 5000]) == [2048, 2048, 904]
    # A long input fed in one piece without EOF keeps at most one unfinished chunk.
    ch = StreamingChunker(1024)
    ch.feed([random.Random(1).randbytes(100_000)], eof=False)
    assert 0 < ch.pending <= 2048


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 40_000),
    cuts=st.lists(st.integers(0, 40_000), max_size=30),
    text=st.booleans(),
)
def test_streaming_equals_oneshot(seed: int, size: int, cuts: list[int], text: bool) -> None:
    """Any split of the input gives the cut points of one-shot chunking."""
    rnd = random.Random(seed)
    if text:  # low-entropy input, where cuts depend on longer context
        words = [b"castore", b"chunk", b"blob ", b"\n", b"zstd", b"tvix", b"  "]
        data = b"".join(rnd.choice(words) for _ in range(size // 4))[:size]
    else:
        data = rnd.randbytes(size)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    oneshot = [c.length for c in make_fastcdc(1024).cut_buf(data)]
    assert _lengths(StreamingChunker(1024), pieces) == oneshot
    assert sum(oneshot) == len(data)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 3_000_000), max_size=8))
def test_streaming_equals_oneshot_default_size(seed: int, cuts: list[int]) -> None:
    """The same at castore's default 256 KiB average, over a few MiB."""
    data = random.Random(seed).randbytes(3_000_000)
    bounds = sorted({0, len(data), *cuts})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    oneshot = [c.length for c in make_fastcdc(DEFAULT_AVG_CHUNK_SIZE).cut_buf(data)]
    assert _lengths(StreamingChunker(), pieces) == oneshot


def _cut_chunks(chunker: StreamingChunker, groups: list[list[bytes]]) -> list[bytes]:
    """The chunks :meth:`StreamingChunker.cut` hands out over ``groups`` of pieces, then EOF."""
    out: list[bytes] = []
    for i, group in enumerate(groups):
        out += [bytes(c) for c in chunker.cut(group, eof=i == len(groups) - 1)]
    if not groups:
        assert chunker.cut([], eof=True) == []
    assert chunker.pending == 0
    return out


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 60_000),
    cuts=st.lists(st.integers(0, 60_000), max_size=40),
    group=st.integers(1, 5),
    text=st.booleans(),
)
def test_zero_copy_cut_equals_oneshot(
    seed: int, size: int, cuts: list[int], group: int, text: bool
) -> None:
    """``cut`` gives one-shot FastCDC's chunks, byte for byte, for any framing of the input
    (pieces smaller and larger than a chunk, several pieces per call)."""
    rnd = random.Random(seed)
    if text:
        words = [b"castore", b"chunk", b"blob ", b"\n", b"zstd", b"tvix", b"  ", b"\0" * 300]
        data = b"".join(rnd.choice(words) for _ in range(size // 4))[:size]
    else:
        data = rnd.randbytes(size)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    groups = [pieces[i : i + group] for i in range(0, len(pieces), group)]
    oneshot = [bytes(c.data) for c in make_fastcdc(1024).cut_buf(data)]
    assert _cut_chunks(StreamingChunker(1024), groups) == oneshot


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 3_000_000), max_size=12))
def test_zero_copy_cut_equals_oneshot_default_size(seed: int, cuts: list[int]) -> None:
    data = random.Random(seed).randbytes(3_000_000)
    bounds = sorted({0, len(data), *cuts})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    oneshot = [bytes(c.data) for c in make_fastcdc(DEFAULT_AVG_CHUNK_SIZE).cut_buf(data)]
    assert _cut_chunks(StreamingChunker(), [[p] for p in pieces]) == oneshot


def test_zero_copy_cut_shares_memory_with_large_pieces() -> None:
    """Chunks inside a large piece are views of it; only bridges are copies."""
    data = random.Random(5).randbytes(8 << 20)
    pieces = [data[i : i + (4 << 20)] for i in range(0, len(data), 4 << 20)]
    ch = StreamingChunker()
    chunks = ch.cut(pieces, eof=True)
    assert b"".join(chunks) == data
    shared = sum(len(c) for c in chunks if any(c.obj is p for p in pieces))
    assert shared >= len(data) - 2 * ch._max  # at most one bridge per boundary
    # A run of zeros: every cut forced at max, each of them final at once.
    ch = StreamingChunker(1024)
    assert [len(c) for c in ch.cut([b"\0" * 4096], eof=False)] == [2048, 2048]
    assert ch.pending == 0
