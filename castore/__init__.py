"""castore: a content-addressed blob store for asyncio.

Blobs are addressed by their BLAKE3 digest, cut into chunks by FastCDC 2020, stored as
zstd-compressed objects through obstore, and served over tvix's gRPC ``BlobService``.
Start with :func:`from_addr`.
"""

from __future__ import annotations

from castore._digest import EMPTY_DIGEST, B3Digest, ChunkMeta, DigestLike
from castore.blobservice import BlobInfo, BlobReader, BlobService, BlobWriter, WriteStats
from castore.combined import CombinedBlobService
from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    ConfigError,
    DataCorruptionError,
    DecompressionBombError,
    DecompressionError,
    DigestMismatchError,
    GcConflictError,
    GcLeaseError,
    InvalidAddressError,
    InvalidDigestError,
    InvalidSeekError,
    MalformedIndexError,
    MalformedMessageError,
    StoreError,
    StorePermissionError,
    StoreTimeoutError,
    StoreUnavailableError,
    UnsupportedOperationError,
    WriteAbortedError,
    WriterClosedError,
)
from castore.grpc import GRPCBlobService
from castore.memory import MemoryBlobService
from castore.objectstore import ObjectStoreBlobService
from castore.reader import ChunkedReader, ChunkSource
from castore.registry import from_addr, register_scheme
from castore.wrappers import (
    CachingBlobService,
    LoggingBlobService,
    RetryBlobService,
    StatsBlobService,
)

__all__ = [
    "EMPTY_DIGEST",
    "B3Digest",
    "BlobInfo",
    "BlobNotFoundError",
    "BlobReader",
    "BlobService",
    "BlobWriter",
    "CachingBlobService",
    "CastoreError",
    "ChunkMeta",
    "ChunkSource",
    "ChunkedReader",
    "CombinedBlobService",
    "ConfigError",
    "DataCorruptionError",
    "DecompressionBombError",
    "DecompressionError",
    "DigestLike",
    "DigestMismatchError",
    "GRPCBlobService",
    "GcConflictError",
    "GcLeaseError",
    "InvalidAddressError",
    "InvalidDigestError",
    "InvalidSeekError",
    "LoggingBlobService",
    "MalformedIndexError",
    "MalformedMessageError",
    "MemoryBlobService",
    "ObjectStoreBlobService",
    "RetryBlobService",
    "StatsBlobService",
    "StoreError",
    "StorePermissionError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "UnsupportedOperationError",
    "WriteAbortedError",
    "WriteStats",
    "WriterClosedError",
    "from_addr",
    "register_scheme",
]
__version__ = "0.1.0"
