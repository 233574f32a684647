"""Ingest a folder into a castore store and print what deduplication saved.

Usage::

    python examples/ingest_folder.py ~/src/project --store objectstore+file:///tmp/cas
    python examples/ingest_folder.py ~/src/project --store memory:// --json

Every regular file under the folder (symlinks are not followed) is streamed into the store
in 1 MiB pieces, a few files at a time, through :func:`castore.from_addr`. Then it adds up:

- **bytes read**: the files' sizes;
- **unique bytes**: every distinct chunk counted once. A chunking store (``objectstore+…``)
  lists each blob's chunks with ``chunks()``; a blob stored whole (``memory://``, or a small
  blob of one chunk) counts as one chunk. This is what the store holds before compression,
  so ``bytes read / unique bytes`` is the deduplication ratio: identical files and files
  that share long runs of bytes (versions of one file, copies with edits) cost once;
- **on disk** (``objectstore+file://`` only): how much the store's folder grew, chunk and
  index objects after zstd. On S3 and other remote stores the same figure would come from
  listing the bucket; the unique chunk sizes are the portable measure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread

import castore

PIECE = 1 << 20
PARALLEL_FILES = 4


@dataclass
class Report:
    """What one ingest read and what it costs in the store."""

    files: int
    bytes_read: int
    unique_bytes: int
    chunks_total: int
    chunks_unique: int
    dedup_ratio: float
    bytes_on_disk: int | None


def list_files(root: Path) -> list[Path]:
    """Regular files under ``root``, sorted; symlinks are skipped, not followed."""
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                found.append(path)
    return found


def folder_size(url: str) -> int | None:
    """Bytes in an ``objectstore+file://`` store's folder; ``None`` for other stores."""
    parts = urlsplit(url)
    if parts.scheme != "objectstore+file":
        return None
    root = Path(unquote(parts.path))
    total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            total += os.lstat(os.path.join(folder, name)).st_size
    return total


async def ingest_file(service: castore.BlobService, path: Path) -> tuple[castore.B3Digest, int]:
    """Stream one file into the store; returns its digest and size."""
    size = 0
    async with await anyio.open_file(path, "rb") as f, await service.open_write() as writer:
        while piece := await f.read(PIECE):
            await writer.write(piece)
            size += len(piece)
    return await writer.close(), size


async def ingest(folder: Path, url: str) -> Report:
    """Ingest every file under ``folder`` into the store at ``url``."""
    paths = await anyio.to_thread.run_sync(list_files, folder)
    before = await anyio.to_thread.run_sync(folder_size, url)
    blobs: dict[castore.B3Digest, int] = {}
    ingested: list[castore.B3Digest] = []  # one entry per file, duplicates included
    bytes_read = 0
    limiter = anyio.CapacityLimiter(PARALLEL_FILES)

    async with castore.from_addr(url) as service:

        async def one(path: Path) -> None:
            nonlocal bytes_read
            async with limiter:
                digest, size = await ingest_file(service, path)
            blobs[digest] = size
            ingested.append(digest)
            bytes_read += size

        async with anyio.create_task_group() as tg:
            for path in paths:
                tg.start_soon(one, path)

        # Each distinct chunk once; a blob with no finer chunking is its own chunk.
        unique: dict[castore.B3Digest, int] = {}
        chunk_count: dict[castore.B3Digest, int] = {}
        for digest, size in blobs.items():
            chunks = await service.chunks(digest)
            if chunks:
                chunk_count[digest] = len(chunks)
                for c in chunks:
                    unique[c.digest] = c.size
            else:
                chunk_count[digest] = 1
                unique[digest] = size
        chunks_total = sum(chunk_count[d] for d in ingested)

    after = await anyio.to_thread.run_sync(folder_size, url)
    unique_bytes = sum(unique.values())
    return Report(
        files=len(paths),
        bytes_read=bytes_read,
        unique_bytes=unique_bytes,
        chunks_total=chunks_total,
        chunks_unique=len(unique),
        dedup_ratio=round(bytes_read / unique_bytes, 3) if unique_bytes else 1.0,
        bytes_on_disk=None if before is None or after is None else after - before,
    )


def print_report(r: Report, url: str) -> None:
    saved = r.bytes_read - r.unique_bytes
    share = 100 * saved / r.bytes_read if r.bytes_read else 0.0
    print(f"store:         {url}")
    print(f"files:         {r.files}")
    print(f"bytes read:    {r.bytes_read:,}")
    print(
        f"unique bytes:  {r.unique_bytes:,}  ({r.chunks_unique} distinct chunks"
        f" of {r.chunks_total})"
    )
    print(f"dedup ratio:   {r.dedup_ratio:.2f}x  (saved {saved:,} bytes, {share:.1f}%)")
    if r.bytes_on_disk is not None:
        print(f"on disk:       {r.bytes_on_disk:,}  (added to the store's folder, after zstd)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the folder to ingest")
    parser.add_argument(
        "--store",
        default="memory://",
        help="castore URL, e.g. objectstore+file:///tmp/cas (default: memory://)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"not a folder: {args.folder}")
    report = anyio.run(ingest, args.folder, args.store)
    if args.json:
        json.dump(asdict(report), sys.stdout)
        print()
    else:
        print_report(report, args.store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
