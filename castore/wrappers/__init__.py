"""Wrappers: thin :class:`~castore.BlobService` classes that add one behaviour to any service.

Compose them by nesting, innermost first, or in a configuration file
(:mod:`castore.config`)::

    svc = StatsBlobService(RetryBlobService(from_addr("grpc+http://127.0.0.1:8000")))

- :class:`RetryBlobService`: retries transient failures, with jittered backoff.
- :class:`CachingBlobService`: a bounded in-memory LRU of verified chunks and blobs.
- :class:`StatsBlobService`: counters, read with ``statistics()``.
- :class:`LoggingBlobService`: one structured log record per operation.
- :class:`WrapperBlobService`: the forwarding base to build your own.
"""

from __future__ import annotations

from castore.wrappers.base import WrapperBlobReader, WrapperBlobService, WrapperBlobWriter
from castore.wrappers.cache import CacheStatistics, CachingBlobService
from castore.wrappers.logging import LoggingBlobService
from castore.wrappers.retry import RetryBlobService, is_transient
from castore.wrappers.stats import BlobServiceStatistics, StatsBlobService

__all__ = [
    "BlobServiceStatistics",
    "CacheStatistics",
    "CachingBlobService",
    "LoggingBlobService",
    "RetryBlobService",
    "StatsBlobService",
    "WrapperBlobReader",
    "WrapperBlobService",
    "WrapperBlobWriter",
    "is_transient",
]
