"""Reading chunked blobs: a :class:`ChunkSource` gives verified chunks, a
:class:`ChunkedReader` reads a blob from one.

- ``_source``: the :class:`ChunkSource` protocol, :func:`verify_chunk`, and
  :func:`read_chunk`, the one way to read a chunk from any service;
- ``_pullers``: the window of chunks a reader wants and the pullers that fetch it;
- ``_blobhash``: the whole-blob BLAKE3, hashed in chunk order as chunks arrive;
- ``_reader``: :class:`ChunkedReader`, the cursor, reads and the whole-blob check.

See ``docs/architecture.md`` for the data path of a read.
"""

from castore.reader._reader import DEFAULT_PREFETCH, ChunkedReader
from castore.reader._source import (
    ChunkFetcher,
    ChunkSource,
    FunctionChunkSource,
    ServiceChunkSource,
    SyncChunkFetcher,
    ThreadChunkSource,
    read_chunk,
    verify_chunk,
)

__all__ = [
    "DEFAULT_PREFETCH",
    "ChunkFetcher",
    "ChunkSource",
    "ChunkedReader",
    "FunctionChunkSource",
    "ServiceChunkSource",
    "SyncChunkFetcher",
    "ThreadChunkSource",
    "read_chunk",
    "verify_chunk",
]
