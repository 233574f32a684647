"""Deprecated: the chunked reader moved to :mod:`castore.reader`.

``from castore.chunkedreader import X`` keeps working for a release, with a
``DeprecationWarning``; import ``X`` from :mod:`castore.reader` (or ``castore``).
"""

from __future__ import annotations

import warnings
from typing import Any

_MOVED = ("DEFAULT_PREFETCH", "ChunkFetcher", "ChunkedReader", "SyncChunkFetcher", "verify_chunk")


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"castore.chunkedreader is deprecated: import {name} from castore.reader",
        DeprecationWarning,
        stacklevel=2,
    )
    import castore.reader

    return getattr(castore.reader, name)
