"""Blob-index encoding and bounded, verified chunk decoding.

The blob index is a serialized ``tvix.castore.v1.StatBlobResponse`` holding only its
``chunks`` (field 2, each a ``ChunkMeta{bytes digest = 1; uint64 size = 2}``). It is
encoded and decoded by hand here: both sides are a few lines, an order of magnitude
faster than the generated message class for indexes of thousands of chunks, and the
tests prove the bytes identical to the generated class's. The decoder follows protobuf's
rules (unknown fields skipped, the last of a repeated scalar wins) and then checks what
castore needs: 32-byte digests and sizes a chunk can have.

Chunk objects are single zstd frames. Decoding is bounded before anything is allocated:
a frame that declares more bytes than the chunk may hold is refused, a frame without a
declared size is decompressed with a ceiling, trailing bytes are an error, and the
result is checked against the chunk's BLAKE3 digest (and size, when known).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import blake3
import zstandard

from castore._digest import DIGEST_LEN, B3Digest, ChunkMeta
from castore.errors import (
    DecompressionBombError,
    DecompressionError,
    DigestMismatchError,
    MalformedIndexError,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "ZSTD_LEVEL",
    "compressor",
    "decode_chunk",
    "decode_chunk_into",
    "decode_index",
    "encode_index",
]

#: zstd level of chunk frames (zstd's default, as Rust's ``zstd::encode_all`` uses).
ZSTD_LEVEL = 3

_local = threading.local()


def compressor() -> zstandard.ZstdCompressor:
    """This thread's zstd compressor (zstandard objects are not thread-safe)."""
    c: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


# --- blob index ---------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# The tag of StatBlobResponse.chunks (field 2, length-delimited) and of the digest
# (field 1, length-delimited, always 32 bytes) inside a ChunkMeta.
_CHUNK_TAG = b"\x12"
_DIGEST_HEAD = b"\x0a\x20"
_SIZE_TAG = b"\x10"


def encode_index(digests: Sequence[bytes], sizes: Sequence[int]) -> bytes:
    """The index bytes for a blob with these chunks, as Rust writes them.

    A blob of fewer than two chunks gets an empty chunk list, which is zero bytes.
    """
    if len(digests) < 2:
        return b""
    parts: list[bytes] = []
    append = parts.append
    for d, s in zip(digests, sizes, strict=True):
        # proto3 omits a zero size; a ChunkMeta is at most 2+32+1+10 bytes, so its
        # length prefix is always a single byte.
        inner = _DIGEST_HEAD + d + (_SIZE_TAG + _varint(s) if s else b"")
        append(_CHUNK_TAG + bytes((len(inner),)) + inner)
    return b"".join(parts)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise MalformedIndexError("blob index: truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if result >> 64:
                raise MalformedIndexError("blob index: varint overflows 64 bits")
            return result, pos
        shift += 7
        if shift >= 70:
            raise MalformedIndexError("blob index: varint longer than 10 bytes")


def _skip(data: bytes, pos: int, end: int, wire: int) -> int:
    if wire == 0:
        return _read_varint(data, pos, end)[1]
    if wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    elif wire == 2:
        n, pos = _read_varint(data, pos, end)
        pos += n
    else:
        raise MalformedIndexError(f"blob index: unsupported wire type {wire}")
    if pos > end:
        raise MalformedIndexError("blob index: field runs past the end")
    return pos


def _chunk_meta(data: bytes, pos: int, end: int, max_chunk_size: int) -> ChunkMeta:
    digest = b""
    size = 0
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 2:
            n, pos = _read_varint(data, pos, end)
            if pos + n > end:
                raise MalformedIndexError("blob index: chunk digest runs past the end")
            digest = data[pos : pos + n]
            pos += n
        elif field == 2 and wire == 0:
            size, pos = _read_varint(data, pos, end)
        elif field == 0:
            raise MalformedIndexError("blob index: field number 0")
        elif field in (1, 2):
            raise MalformedIndexError(f"blob index: ChunkMeta field {field} has wire type {wire}")
        else:
            pos = _skip(data, pos, end, wire)
    if len(digest) != DIGEST_LEN:
        raise MalformedIndexError(
            f"blob index: a chunk digest is {len(digest)} bytes, expected {DIGEST_LEN}"
        )
    if not 0 < size <= max_chunk_size:
        raise MalformedIndexError(
            f"blob index: chunk {digest.hex()} claims {size} bytes; a chunk holds 1 to "
            f"{max_chunk_size}"
        )
    return ChunkMeta(B3Digest(digest), size)


def decode_index(data: Buffer, max_chunk_size: int) -> list[ChunkMeta]:
    """The chunks listed in a blob index; raises :class:`MalformedIndexError`.

    ``max_chunk_size`` bounds the size a listed chunk may claim, so that a hostile index
    cannot make a reader allocate more than one chunk can hold.
    """
    raw = bytes(data)
    out: list[ChunkMeta] = []
    pos, end = 0, len(raw)
    while pos < end:
        key, pos = _read_varint(raw, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise MalformedIndexError("blob index: field number 0")
        if field == 2:
            if wire != 2:
                raise MalformedIndexError(f"blob index: chunks field has wire type {wire}")
            n, pos = _read_varint(raw, pos, end)
            if pos + n > end:
                raise MalformedIndexError("blob index: chunk entry runs past the end")
            out.append(_chunk_meta(raw, pos, pos + n, max_chunk_size))
            pos += n
        else:
            pos = _skip(raw, pos, end, wire)
    return out


# --- chunk frames --------------------------------------------------------------------------


def decode_chunk(
    frame: Buffer, digest: bytes, *, expected_size: int | None, max_size: int
) -> bytes:
    """Decompress one chunk frame and verify it against ``digest`` (and ``expected_size``).

    At most ``max_size`` bytes (or ``expected_size`` when known) are ever allocated.
    Raises :class:`DecompressionBombError`, :class:`DecompressionError` or
    :class:`DigestMismatchError`; never returns bytes that are not the chunk.
    """
    limit = max_size if expected_size is None else min(expected_size, max_size)
    frame = memoryview(frame)
    what = f"chunk {digest.hex()}"
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise DecompressionError(f"{what}: not a zstd frame: {e}") from e
    if declared > limit:
        raise DecompressionBombError(
            f"{what}: frame declares {declared} bytes, more than the {limit} it may hold"
        )
    dctx = _decompressor()
    try:
        # max_output_size only applies to frames that do not declare their size; frames
        # that do were checked above and are verified by zstd to hold what they declare.
        data = dctx.decompress(frame, max_output_size=limit, allow_extra_data=False)
    except zstandard.ZstdError as e:
        if declared < 0 and _exceeds(dctx, frame, limit):
            raise DecompressionBombError(
                f"{what}: frame expands to more than the {limit} bytes it may hold"
            ) from e
        raise DecompressionError(f"{what}: corrupt zstd frame: {e}") from e
    if expected_size is not None and len(data) != expected_size:
        raise DigestMismatchError(f"{what}: expected {expected_size} bytes, got {len(data)}")
    actual = blake3.blake3(data, max_threads=1).digest()
    if actual != digest:
        raise DigestMismatchError(f"{what}: data hashes to {actual.hex()}")
    return data


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _frame_length(frame: memoryview) -> int:
    """The length of the zstd frame that ``frame`` starts with, by its block headers.

    -1 if the frame is truncated or a block type is invalid. Only the framing is read
    (about one block header per 128 KiB); zstd checks the rest as it decodes.
    """
    if frame[:4] != _ZSTD_MAGIC:
        return -1
    pos = zstandard.frame_header_size(frame)
    checksum = frame[4] & 0x04
    end = len(frame)
    while True:
        if pos + 3 > end:
            return -1
        head = frame[pos] | frame[pos + 1] << 8 | frame[pos + 2] << 16
        kind = (head >> 1) & 3
        if kind == 3:  # reserved
            return -1
        pos += 3 + (1 if kind == 1 else head >> 3)  # an RLE block holds one byte
        if head & 1:  # the last block
            break
    pos += 4 if checksum else 0
    return pos if pos <= end else -1


def decode_chunk_into(frame: Buffer, digest: bytes, out: memoryview) -> None:
    """Decompress one chunk frame into ``out`` and verify it against ``digest``.

    ``out`` is exactly as long as the chunk (its listed size); nothing is allocated for
    the chunk's bytes, so a reader can reuse its buffers. The same checks as
    :func:`decode_chunk`, with the same errors: a frame that declares or expands to more
    than ``len(out)`` bytes, trailing bytes, truncation, fewer bytes or other bytes than
    the chunk's. On an error ``out`` holds garbage, which the caller must not use.
    """
    size = len(out)
    frame = memoryview(frame)
    what = f"chunk {digest.hex()}"
    try:
        declared = zstandard.frame_content_size(frame)
        length = _frame_length(frame)
    except zstandard.ZstdError as e:
        raise DecompressionError(f"{what}: not a zstd frame: {e}") from e
    if declared > size:
        raise DecompressionBombError(
            f"{what}: frame declares {declared} bytes, more than the {size} it may hold"
        )
    if length != len(frame):
        problem = "is truncated or corrupt" if length < 0 else "has trailing bytes"
        raise DecompressionError(f"{what}: zstd frame {problem}")
    got = 0
    try:
        # The whole frame as one input: zstd then decodes a frame that declares its size
        # in one pass straight into out, without its window buffer.
        reader = _decompressor().stream_reader(
            frame, read_size=max(1, len(frame)), read_across_frames=False
        )
        while got < size and (n := reader.readinto(out[got:])):
            got += n
        extra = reader.readinto(bytearray(1)) if got == size else 0
    except zstandard.ZstdError as e:
        raise DecompressionError(f"{what}: corrupt zstd frame: {e}") from e
    if extra:
        raise DecompressionBombError(
            f"{what}: frame expands to more than the {size} bytes it may hold"
        )
    if got != size:
        raise DigestMismatchError(f"{what}: expected {size} bytes, got {got}")
    actual = blake3.blake3(out, max_threads=1).digest()
    if actual != digest:
        raise DigestMismatchError(f"{what}: data hashes to {actual.hex()}")


def _exceeds(dctx: zstandard.ZstdDecompressor, frame: memoryview, limit: int) -> bool:
    """Whether a frame without a declared size decodes to more than ``limit`` bytes."""
    try:
        total = 0
        with dctx.stream_reader(frame, read_across_frames=False) as r:
            while total <= limit:
                piece = r.read(limit + 1 - total)
                if not piece:
                    return False
                total += len(piece)
        return True
    except zstandard.ZstdError:
        return False
