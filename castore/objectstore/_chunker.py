"""FastCDC 2020 cut points, bit-exact with the Rust ``fastcdc`` crate, over streamed input.

``pyfastcdc`` ports the crate's ``v2020`` module (normalization level 1, the crate's gear
table). castore uses min = avg/2 and max = avg*2, as tvix does.

Streaming: when a buffer is cut in one go, every chunk except the last is final. The last
one ends at the end of the buffer either because the data ran out (a forced cut) or by
coincidence, and more data may move it, so it is carried over and cut again with the
next piece of input. A cut before the end of the buffer cannot move: FastCDC decides
a cut from the bytes up to it and from the chunk's start, never from bytes after it.
The tests check this against one-shot chunking for arbitrary splits of the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyfastcdc import FastCDC

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "DEFAULT_AVG_CHUNK_SIZE",
    "MAX_AVG_CHUNK_SIZE",
    "MIN_AVG_CHUNK_SIZE",
    "StreamingChunker",
    "make_fastcdc",
]

DEFAULT_AVG_CHUNK_SIZE = 256 * 1024
# pyfastcdc's (and the crate's) bounds: max >= 1 KiB and min <= 1 MiB, with min = avg/2
# and max = 2*avg.
MIN_AVG_CHUNK_SIZE = 512
MAX_AVG_CHUNK_SIZE = 2 * 1024 * 1024


def make_fastcdc(avg_chunk_size: int) -> FastCDC:
    """A FastCDC 2020 chunker with tvix's parameters for ``avg_chunk_size``."""
    return FastCDC(
        avg_chunk_size,
        min_size=avg_chunk_size // 2,
        max_size=avg_chunk_size * 2,
        normalized_chunking=1,
        seed=0,
    )


class StreamingChunker:
    """Cuts a byte stream fed piece by piece into the same chunks as one-shot FastCDC.

    Not thread-safe: feed it from one thread at a time, in order.
    """

    __slots__ = ("_cdc", "_tail")

    def __init__(self, avg_chunk_size: int = DEFAULT_AVG_CHUNK_SIZE) -> None:
        self._cdc = make_fastcdc(avg_chunk_size)
        self._tail: Buffer = b""

    @property
    def pending(self) -> int:
        """Bytes carried over, not yet part of a final chunk."""
        return len(memoryview(self._tail))

    def feed(self, pieces: Sequence[Buffer], eof: bool) -> tuple[Buffer, list[int]]:
        """Append ``pieces`` to the carried bytes and cut.

        Returns the buffer that was cut (the carried bytes followed by ``pieces``) and
        the end offsets, in that buffer, of the chunks that are now final; they start at
        0. At ``eof`` every byte ends up in a chunk. The buffer may share memory with the
        pieces; it is only valid until the next call.
        """
        tail = self._tail
        if not len(memoryview(tail)) and len(pieces) == 1:
            buf: Buffer = pieces[0]
        else:
            buf = b"".join([tail, *pieces])
        ends = [c.offset + c.length for c in self._cdc.cut_buf(memoryview(buf))]
        if eof:
            self._tail = b""
        elif ends:
            ends.pop()
            start = ends[-1] if ends else 0
            self._tail = memoryview(buf)[start:]
        return buf, ends
