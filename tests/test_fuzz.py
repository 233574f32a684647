"""Fuzzing the decoders that read untrusted bytes: the blob-index decoder, the chunk
decoder (bounded zstd) and ``B3Digest.parse``.

Hypothesis feeds each one random input and mutations of valid input. Each may only
return a well-formed result or raise its documented error (``MalformedIndexError``;
``DecompressionError``, ``DecompressionBombError``, ``DigestMismatchError``;
``InvalidDigestError``): anything else, a crash or a wrong result fails. Memory is
checked with tracemalloc on every chunk decoded, and decompression bombs (a frame
declaring 1 TiB, frames without a declared size that expand to 1 GiB) are refused
quickly, without allocating, which a child process's peak RSS confirms.

``CASTORE_STRESS=N`` runs N times as many examples; ``tests/test_fuzz_atheris.py`` is
the longer, coverage-guided run.
"""

from __future__ import annotations

import base64
import json
import os
import random
import string
import subprocess
import sys
import textwrap
import time
import tracemalloc

import anyio
import blake3
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castore import B3Digest, ChunkMeta
from castore.errors import (
    DecompressionBombError,
    DecompressionError,
    DigestMismatchError,
    InvalidDigestError,
    MalformedIndexError,
)
from castore.objectstore._codec import decode_chunk, decode_chunk_into, decode_index, encode_index
from castore.testing.conformance import pseudo_random_bytes

STRESS = max(1, int(os.environ.get("CASTORE_STRESS", "1")))
FUZZ = settings(
    max_examples=1000 * STRESS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMIT = 64 * 1024  # the largest chunk the decoders are told to accept
CHUNK_ERRORS = (DecompressionError, DigestMismatchError)  # bombs are DecompressionErrors


# --- mutations ---------------------------------------------------------------------------

_mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]),
    st.integers(0, 1 << 30),
    st.integers(0, 255),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in mutations:
        i = where % (len(out) + 1)
        if kind == "flip" and out:
            out[i % len(out)] ^= 1 << (value % 8)
        elif kind == "set" and out:
            out[i % len(out)] = value
        elif kind == "insert":
            out[i:i] = bytes([value]) * (1 + value % 4)
        elif kind == "delete":
            del out[i : i + 1 + value % 8]
        elif kind == "truncate":
            del out[i:]
        elif kind == "duplicate":
            out[i:i] = out[i : i + value]
    return bytes(out)


# --- the blob-index decoder --------------------------------------------------------------


def _check_index(raw: bytes) -> list[ChunkMeta] | None:
    try:
        found = decode_index(raw, LIMIT)
    except MalformedIndexError:
        return None
    # Whatever decodes is well-formed, and no larger than its input allows: each entry
    # takes at least 2 + 2 + 32 + 2 bytes.
    assert len(found) * 38 <= len(raw)
    for meta in found:
        assert isinstance(meta, ChunkMeta) and len(meta.digest.digest) == 32
        assert 0 < meta.size <= LIMIT
    return found


_entries = st.lists(
    st.tuples(st.binary(min_size=32, max_size=32), st.integers(1, LIMIT)), min_size=2, max_size=40
)


@FUZZ
@given(st.binary(max_size=4096))
def test_index_decoder_on_random_bytes(raw: bytes) -> None:
    _check_index(raw)


@FUZZ
@given(_entries, st.lists(_mutation, min_size=1, max_size=4))
def test_index_decoder_on_mutated_indexes(
    entries: list[tuple[bytes, int]], mutations: list[tuple[str, int, int]]
) -> None:
    digests, sizes = [d for d, _ in entries], [s for _, s in entries]
    raw = encode_index(digests, sizes)
    assert _check_index(raw) == [ChunkMeta(B3Digest(d), s) for d, s in entries]
    _check_index(_mutate(raw, mutations))


# --- the chunk decoder -------------------------------------------------------------------

_SAMPLE = (string.ascii_letters * 40).encode() + random.Random(3).randbytes(3000)


def _frames(data: bytes) -> list[bytes]:
    """``data`` as zstd frames with and without a declared size (Rust writes the latter)."""
    with_size = zstandard.ZstdCompressor(level=3).compress(data)
    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    return [with_size, cobj.compress(data) + cobj.flush()]


def _check_chunk(frame: bytes, data: bytes, expected_size: int | None) -> None:
    digest = blake3.blake3(data).digest()
    tracemalloc.start()
    try:
        got = decode_chunk(frame, digest, expected_size=expected_size, max_size=LIMIT)
    except CHUNK_ERRORS:
        got = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # One output buffer of at most the limit, a copy of the frame, and small change.
    assert peak <= 2 * LIMIT + len(frame) + (64 << 10), f"decoding allocated {peak} bytes"
    if got is not None:
        assert got == data, "a chunk decoded to other bytes than its digest names"
    if expected_size is not None:
        # Decoding into a reader's buffer accepts exactly the same frames.
        out = bytearray(expected_size)
        try:
            decode_chunk_into(frame, digest, memoryview(out))
        except CHUNK_ERRORS:
            assert got is None, "decode_chunk_into refused a frame decode_chunk accepts"
        else:
            assert got is not None, "decode_chunk_into accepted a frame decode_chunk refuses"
            assert out == data


@settings(FUZZ, max_examples=400 * STRESS)
@given(st.binary(max_size=8192))
def test_chunk_decoder_on_random_bytes(frame: bytes) -> None:
    _check_chunk(frame, _SAMPLE, None)
    _check_chunk(b"\x28\xb5\x2f\xfd" + frame, _SAMPLE, len(_SAMPLE))


@settings(FUZZ, max_examples=600 * STRESS)
@given(
    st.integers(1, len(_SAMPLE)),
    st.sampled_from([0, 1]),
    st.booleans(),
    st.lists(_mutation, min_size=1, max_size=3),
)
def test_chunk_decoder_on_mutated_frames(
    n: int, which: int, sized: bool, mutations: list[tuple[str, int, int]]
) -> None:
    data = _SAMPLE[:n]
    frame = _frames(data)[which]
    _check_chunk(frame, data, n if sized else None)
    _check_chunk(_mutate(frame, mutations), data, n if sized else None)


# --- decompression bombs -------------------------------------------------------------------


def _bomb_declaring(size: int) -> bytes:
    """A tiny frame whose header declares ``size`` bytes (8-byte content-size field)."""
    block = (1 | (1 << 1) | (16 << 3)).to_bytes(3, "little")  # last block: RLE, 16 bytes
    return b"\x28\xb5\x2f\xfd\xc0\x58" + size.to_bytes(8, "little") + block + b"x"


def _bomb_undeclared(total: int, window_log: int) -> bytes:
    """A frame without a declared size made of 128 KiB RLE blocks: ``total`` bytes out of
    a few bytes per block. ``window_log`` is the window it asks the decoder for."""
    blocks = total // (128 << 10)
    header = b"\x28\xb5\x2f\xfd\x00" + bytes([(window_log - 10) << 3])
    rle = (((128 << 10) << 3) | (1 << 1)).to_bytes(3, "little") + b"\x00"
    last = (((128 << 10) << 3) | (1 << 1) | 1).to_bytes(3, "little") + b"\x00"
    return header + rle * (blocks - 1) + last


BOMBS = {
    "declares 1 TiB": _bomb_declaring(1 << 40),
    "declares 2^63 bytes": _bomb_declaring(1 << 63),
    "undeclared, 1 GiB, 128 KiB window": _bomb_undeclared(1 << 30, 17),
    "undeclared, 1 GiB, 128 MiB window": _bomb_undeclared(1 << 30, 27),
}


def test_bombs_are_what_they_claim() -> None:
    """The crafted frames are valid zstd that really would expand that much."""
    assert zstandard.frame_content_size(BOMBS["declares 1 TiB"]) == 1 << 40
    for name in ("undeclared, 1 GiB, 128 KiB window", "undeclared, 1 GiB, 128 MiB window"):
        frame = BOMBS[name]
        assert zstandard.frame_content_size(frame) == -1 and len(frame) < 64 << 10
        with zstandard.ZstdDecompressor().stream_reader(frame) as reader:
            assert reader.read(1 << 20) == bytes(1 << 20)


@pytest.mark.parametrize("name", sorted(BOMBS))
@pytest.mark.parametrize("expected_size", [None, LIMIT], ids=["one-chunk", "listed"])
def test_bombs_are_refused_without_allocating(name: str, expected_size: int | None) -> None:
    if expected_size is not None:
        with pytest.raises(DecompressionBombError):
            decode_chunk_into(BOMBS[name], bytes(32), memoryview(bytearray(expected_size)))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DecompressionBombError):
            decode_chunk(BOMBS[name], bytes(32), expected_size=expected_size, max_size=512 << 10)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert peak < 2 << 20, f"{name}: {peak} bytes allocated"
    assert elapsed < 1.0, f"{name}: {elapsed:.2f} s"


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from test_fuzz import BOMBS
    from castore.objectstore._codec import decode_chunk
    from castore.errors import DecompressionBombError

    def hwm():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

    base = hwm()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for frame in BOMBS.values():
        for _ in range(3):
            try:
                decode_chunk(frame, bytes(32), expected_size=None, max_size=512 << 10)
            except DecompressionBombError:
                pass
            else:
                raise SystemExit("a bomb was not refused")
    print(json.dumps({"base": base, "peak": hwm()}))
    """
)


def test_bombs_do_not_raise_the_peak_rss() -> None:
    """The allocator's view (tracemalloc) misses zstd's own buffers: the process's peak
    resident memory while decoding every bomb three times stays flat."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc")
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(out.stdout)
    assert figures["peak"] - figures["base"] < 32 << 20, figures


# --- B3Digest.parse ------------------------------------------------------------------------


def _check_parse(text: str) -> None:
    try:
        d = B3Digest.parse(text)
    except InvalidDigestError:
        return
    assert len(d.digest) == 32
    # Only a digest parses, and it is the same digest in every notation.
    assert B3Digest.parse(d.hex()) == d == B3Digest.parse(str(d))
    assert B3Digest.parse("b3:" + base64.b64encode(d.digest).decode()) == d


_digest_like = st.one_of(
    st.text(max_size=120),
    st.text(alphabet="0123456789abcdefABCDEF./\\%:-_ \x00\n", max_size=70),
    st.builds(
        lambda p, b: p + b,
        st.sampled_from(["blake3-", "b3:", "", "sha256-", "blake3:"]),
        st.text(alphabet=string.ascii_letters + string.digits + "+/=-_.%", max_size=60),
    ),
    st.binary(min_size=0, max_size=40).map(lambda b: "blake3-" + base64.b64encode(b).decode()),
    st.binary(min_size=30, max_size=34).map(bytes.hex),
)


@FUZZ
@given(_digest_like)
def test_digest_parser(text: str) -> None:
    _check_parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "../" * 21 + "a",
        "..%2f" * 12 + "abcd",
        "/etc/passwd",
        "a" * 63 + "/",
        "a" * 62 + "..",
        "blake3-" + base64.b64encode(b"../" * 10 + b"..").decode() + "/x",
        "b3:../../../../",
        "0x" + "a" * 62,
        "\u0660" * 64,  # Arabic-Indic digits: str.isdigit, but not hex
        "a" * 64 + "\x00",
    ],
)
def test_path_like_digests_are_rejected(text: str) -> None:
    with pytest.raises(InvalidDigestError):
        B3Digest.parse(text)


# --- every single-bit corruption of a stored blob --------------------------------------


def test_every_bit_flip_of_an_index_is_caught_by_a_whole_read() -> None:
    """Each of the index's bits flipped in turn, in the store: reading the blob whole
    raises an error from castore's tree or returns the exact bytes, never other bytes.

    (A flip that turns a chunk entry's tag into an unknown field makes the decoder skip
    that entry, as protobuf does; only the check of the whole blob's digest at the end of
    the read catches those: ``docs/reliability.md``.)

    A plain (not debug-mode) event loop: 2500 reads in a few seconds."""
    anyio.run(_flip_every_bit_of_an_index)


async def _flip_every_bit_of_an_index() -> None:
    import obstore
    from obstore.store import MemoryStore

    from castore import ObjectStoreBlobService
    from castore.errors import BlobNotFoundError, DataCorruptionError

    store = MemoryStore()
    data = pseudo_random_bytes(160_000, seed=33)
    async with ObjectStoreBlobService(store, avg_chunk_size=16 * 1024) as svc:
        digest = await svc.put(data)
        key = f"blobs/b3/{digest.hex()[:4]}/{digest.hex()}"
        index = bytes(await (await obstore.get_async(store, key)).bytes_async())
        entries = len(decode_index(index, LIMIT))
        assert entries >= 5
        outcomes: dict[str, int] = {}
        for bit in range(len(index) * 8):
            flipped = bytearray(index)
            flipped[bit // 8] ^= 1 << (bit % 8)
            await obstore.put_async(store, key, bytes(flipped))
            try:
                listed = len(decode_index(bytes(flipped), LIMIT))
            except MalformedIndexError:
                listed = -1
            try:
                got = await svc.get(digest)
            except (DataCorruptionError, BlobNotFoundError) as e:
                kind = type(e).__name__
            else:
                assert got == data, f"bit {bit}: other bytes returned"
                kind = "exact"
            if 0 <= listed < entries:
                kind += " (an entry skipped)"
            outcomes[kind] = outcomes.get(kind, 0) + 1
        await obstore.put_async(store, key, index)
        assert await svc.get(digest) == data
    print(f"\nevery bit of a {entries}-chunk index flipped: {len(index) * 8} reads, {outcomes}")
