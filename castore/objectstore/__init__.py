"""The object-store backend: :class:`ObjectStoreBlobService` and what it is built from.

- ``_service``: the service, the reader side (one-chunk blobs and ChunkedReader).
- ``_writer``: the concurrent writer pipeline.
- ``_chunker``: streaming FastCDC 2020, bit-exact with the Rust crate.
- ``_codec``: blob-index encoding and bounded, verified chunk decoding.
- ``_layout``: object keys (tvix/snix bucket layout).
- ``_adapter``: :class:`StoreAdapter`, the narrow interface to the store, for wrappers.
- ``_errors``: the translation of obstore's exceptions into castore's (the adapter's).
- ``_check``, ``_check_types``, ``_repair``: checking a bucket, and repairing it.
- ``_url``: ``objectstore+…`` URLs for :func:`castore.from_addr`.

Importing this package registers the ``objectstore+…`` schemes.
"""

from __future__ import annotations

from castore.objectstore._adapter import ObjectInfo, ObstoreAdapter, StoreAdapter
from castore.objectstore._check import Check, CheckProgress
from castore.objectstore._check_types import CheckProblem, CheckSummary, ProblemKind, Subset
from castore.objectstore._chunker import DEFAULT_AVG_CHUNK_SIZE, StreamingChunker
from castore.objectstore._gc import GcReport
from castore.objectstore._service import ObjectStoreBlobService
from castore.objectstore._url import SCHEMES, service_from_url
from castore.objectstore._writer import PipelineConfig
from castore.registry import register_scheme

__all__ = [
    "DEFAULT_AVG_CHUNK_SIZE",
    "Check",
    "CheckProblem",
    "CheckProgress",
    "CheckSummary",
    "GcReport",
    "ObjectInfo",
    "ObjectStoreBlobService",
    "ObstoreAdapter",
    "PipelineConfig",
    "ProblemKind",
    "StoreAdapter",
    "StreamingChunker",
    "Subset",
]

for _scheme in SCHEMES:
    register_scheme(_scheme, service_from_url)
