"""The benchmark's data sets.

``random``: bytes from ``os.urandom``; incompressible, every chunk unique.

``text``: Python source that compresses like source code, built from the ``.py`` files
of the running interpreter's standard library (``sysconfig.get_paths()["stdlib"]``,
about 30 MiB, ``site-packages`` left out). One copy is too small, and plain repetition
would make every copy after the first dedup to nothing, which would let castore skip work
that the per-stage limit counts. So copies are varied, in ways too small to change how
the text compresses: each copy lists the files in its own shuffled order (seeded by the
copy number), puts a header line naming the file and copy before each file, and inserts a
comment line ``# castore-bench <copy>.<line>`` after every 256th line. Every 128 KiB
(FastCDC's minimum chunk) then holds several lines no other copy has, so no chunk repeats;
the limit table reports the share of unique chunks to show it.

``versions``: ten versions of one 64 MiB file for the dedup section. Version 0 is seeded
pseudo-random bytes (incompressible, so stored sizes measure dedup alone and not how each
tool compresses); each later version applies 20 edits to the previous one at random
places, each an insertion, deletion or overwrite of 1 to 8 bytes.

``unique_pieces``: the child process of the memory section must feed 2 GiB without
holding it, and faster than castore consumes it (a slow generator would keep castore's
queues empty and hide their memory). It copies one random 4 MiB block per piece and
stamps an 8-byte counter into every 32 KiB of the copy: as incompressible as the block,
every chunk unique, at memcpy speed.
"""

from __future__ import annotations

import functools
import os
import pathlib
import random
import sysconfig
from collections.abc import Iterator

__all__ = [
    "PIECE",
    "random_data",
    "split",
    "stdlib_sources",
    "text_data",
    "unique_pieces",
    "versions",
]

#: Size of each ``write`` through the public API (and of each read).
PIECE = 4 << 20

_MARK_EVERY = 256  # lines between the comment lines that vary copies of the text


def random_data(size: int) -> bytes:
    """``size`` random bytes."""
    return os.urandom(size)


@functools.cache
def stdlib_sources() -> tuple[tuple[str, bytes, tuple[int, ...]], ...]:
    """The standard library's ``.py`` files: (relative path, bytes, block offsets).

    The offsets cut each file into blocks of :data:`_MARK_EVERY` lines (0 first, the
    file's length last), where the copies of :func:`text_data` insert their comment lines.
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, bytes, tuple[int, ...]]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "site-packages" in rel.parts or "dist-packages" in rel.parts:
            continue
        try:
            body = path.read_bytes()
        except OSError:
            continue
        offsets = [0]
        pos = 0
        lines = 0
        while True:
            nl = body.find(b"\n", pos)
            if nl < 0:
                break
            pos = nl + 1
            lines += 1
            if lines % _MARK_EVERY == 0:
                offsets.append(pos)
        if offsets[-1] != len(body):
            offsets.append(len(body))
        out.append((rel.as_posix(), body, tuple(offsets)))
    if not out:
        raise RuntimeError(f"no Python sources found under {root}")
    return tuple(out)


def text_data(size: int) -> bytes:
    """``size`` bytes of varied copies of the standard library's sources (module docstring)."""
    files = stdlib_sources()
    parts: list[bytes] = []
    total = 0
    copy = 0
    while total < size:
        order = list(range(len(files)))
        random.Random(copy).shuffle(order)
        for i in order:
            name, body, offsets = files[i]
            head = f"# ---- {name} (copy {copy}) ----\n".encode()
            parts.append(head)
            total += len(head)
            for k in range(len(offsets) - 1):
                block = body[offsets[k] : offsets[k + 1]]
                mark = f"# castore-bench {copy}.{k * _MARK_EVERY}\n".encode()
                parts.append(block)
                parts.append(mark)
                total += len(block) + len(mark)
            if total >= size:
                break
        copy += 1
    data = b"".join(parts)
    return data[:size]


def split(data: bytes, piece: int = PIECE) -> list[bytes]:
    """``data`` as a list of ``bytes`` of ``piece`` bytes (the last may be shorter).

    What a caller reading a file hands to ``write``: fresh immutable pieces, which
    castore's writer passes on without copying.
    """
    return [data[i : i + piece] for i in range(0, len(data), piece)]


def versions(
    size: int = 64 << 20, count: int = 10, edits: int = 20, seed: int = 8
) -> Iterator[bytes]:
    """``count`` versions of a ``size``-byte file, each ``edits`` small edits on the last."""
    rng = random.Random(seed)
    current = rng.randbytes(size)
    yield current
    for _ in range(count - 1):
        places = sorted(rng.randrange(len(current)) for _ in range(edits))
        parts: list[bytes] = []
        pos = 0
        for place in places:
            if place < pos:  # inside the bytes a previous edit of this round deleted
                continue
            parts.append(current[pos:place])
            n = rng.randint(1, 8)
            kind = rng.randrange(3)
            if kind == 0:  # insertion
                parts.append(rng.randbytes(n))
                pos = place
            elif kind == 1:  # deletion
                pos = place + n
            else:  # overwrite
                parts.append(rng.randbytes(n))
                pos = place + n
        parts.append(current[pos:])
        current = b"".join(parts)
        yield current


def unique_pieces(total: int, piece: int = PIECE, seed: int = 4) -> Iterator[bytes]:
    """``total`` bytes as pieces of ``piece`` bytes, unique and incompressible (see above)."""
    block = bytearray(random.Random(seed).randbytes(piece))
    stamp_every = 32 << 10
    sent = 0
    counter = 0
    while sent < total:
        n = min(piece, total - sent)
        for off in range(0, n - 8 + 1, stamp_every):
            block[off : off + 8] = counter.to_bytes(8, "little")
            counter += 1
        yield bytes(block[:n])
        sent += n
