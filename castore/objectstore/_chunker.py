"""FastCDC 2020 cut points, bit-exact with the Rust ``fastcdc`` crate, over streamed input.

``pyfastcdc`` ports the crate's ``v2020`` module (normalization level 1, the crate's gear
table). castore uses min = avg/2 and max = avg*2, as tvix does.

Streaming: when a buffer is cut in one go, every chunk except the last is final. The last
one ends at the end of the buffer either because the data ran out (a forced cut) or by
coincidence, and more data may move it, so it is carried over and cut again with the
next piece of input. A cut before the end of the buffer cannot move: FastCDC decides
a cut from the bytes up to it and from the chunk's start, never from bytes after it.
The tests check this against one-shot chunking for arbitrary splits of the input.

Zero-copy cutting (:meth:`StreamingChunker.cut`): a chunk that lies within one piece of
input is handed out as a view of that piece; only the bytes around a boundary between
pieces are copied, into a *bridge* of ``max`` bytes (the carried chunk and the start of
the next piece), enough to decide the carried chunk's cut. A chunk of exactly ``max``
bytes is final too: FastCDC forces a cut there whatever follows.
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

    Not thread-safe: feed it from one thread at a time, in order. Use either
    :meth:`feed` or :meth:`cut` on one chunker, not both.
    """

    __slots__ = ("_cdc", "_gather", "_max", "_pending", "_pending_len")

    def __init__(self, avg_chunk_size: int = DEFAULT_AVG_CHUNK_SIZE) -> None:
        self._cdc = make_fastcdc(avg_chunk_size)
        self._max = self._cdc.max_size
        # Small pieces are gathered up to this many bytes before one copy and one cut.
        self._gather = 2 * self._max
        # The carried bytes: the unfinished last chunk and any input after it not cut yet.
        self._pending: list[memoryview] = []
        self._pending_len = 0

    @property
    def pending(self) -> int:
        """Bytes carried over, not yet part of a final chunk."""
        return self._pending_len

    def feed(self, pieces: Sequence[Buffer], eof: bool) -> tuple[Buffer, list[int]]:
        """Append ``pieces`` to the carried bytes and cut.

        Returns the buffer that was cut (the carried bytes followed by ``pieces``) and
        the end offsets, in that buffer, of the chunks that are now final; they start at
        0. At ``eof`` every byte ends up in a chunk. The buffer may share memory with the
        pieces; it is only valid until the next call.
        """
        pending = self._pending
        if not pending and len(pieces) == 1:
            buf: Buffer = pieces[0]
        else:
            buf = b"".join([*pending, *pieces])
        ends = [c.offset + c.length for c in self._cdc.cut_buf(memoryview(buf))]
        self._pending, self._pending_len = [], 0
        if not eof and ends:
            ends.pop()
            start = ends[-1] if ends else 0
            tail = memoryview(buf).cast("B")[start:]
            if len(tail):
                self._pending, self._pending_len = [tail], len(tail)
        return buf, ends

    def cut(self, pieces: Sequence[Buffer], eof: bool) -> list[memoryview]:
        """Append ``pieces`` to the carried bytes; the chunks that are now final, in order.

        Each chunk is a view, either of one of the pieces (no copy) or of a bridge copied
        across a boundary between pieces (module docstring). The views, and the bytes
        carried to the next call, keep referring to the pieces: they must not change
        afterwards (pass ``bytes``). At ``eof`` every byte ends up in a chunk.
        """
        out: list[memoryview] = []
        emit = out.append
        cut_buf = self._cdc.cut_buf
        mx = self._max
        gather = self._gather
        pending = self._pending
        plen = self._pending_len
        for piece in pieces:
            p = memoryview(piece).cast("B")
            while len(p):
                if plen:
                    if plen + len(p) < gather:
                        pending.append(p)
                        plen += len(p)
                        break
                    # A bridge: the carried bytes and enough of p to hold a whole chunk
                    # from where the carried bytes start (plen + len(p) >= gather > mx).
                    take = max(0, mx - plen)
                    buf = memoryview(b"".join([*pending, p[:take]]))
                    rest = p[take:]
                    carried = plen
                else:
                    buf, rest, carried = p, p[len(p) :], 0
                start = 0
                last = len(buf)
                for c in cut_buf(buf):
                    if c.offset + c.length == last and c.length != mx:
                        break  # the last chunk: unfinished unless forced at max
                    emit(buf[start : c.offset + c.length])
                    start = c.offset + c.length
                if start == last:
                    pending, plen = [], 0
                    p = rest
                elif carried and start >= carried:
                    # The unfinished chunk starts inside p: cut p itself from there.
                    pending, plen = [], 0
                    p = p[start - carried :]
                else:
                    pending, plen = [buf[start:]], last - start
                    p = rest
        if eof and plen:
            buf = pending[0] if len(pending) == 1 else memoryview(b"".join(pending))
            start = 0
            for c in cut_buf(buf):
                emit(buf[start : c.offset + c.length])
                start = c.offset + c.length
            pending, plen = [], 0
        self._pending, self._pending_len = pending, plen
        return out
