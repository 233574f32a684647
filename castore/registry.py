"""``from_addr``: the one way to build a :class:`BlobService` from a URL.

Backends register a scheme with :func:`register_scheme`; castore's own register on
import of :mod:`castore`. Schemes (``+`` separates castore's backend from the store's):

==============================  ================================================
``memory://``                   :class:`~castore.MemoryBlobService`
``objectstore+memory:///``      :class:`~castore.ObjectStoreBlobService` in memory
``objectstore+file:///abs``     ... on local disk
``objectstore+s3://bucket/p``   ... on S3 (``gs://``, ``az://``, ``https://`` too)
``grpc+http://host:port``       :class:`~castore.GRPCBlobService` (also ``grpc+unix://``)
==============================  ================================================
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

from castore.blobservice import BlobService
from castore.errors import InvalidAddressError

__all__ = ["from_addr", "register_scheme", "registered_schemes"]

Factory = Callable[[SplitResult], BlobService]

_REGISTRY: dict[str, Factory] = {}


def register_scheme(scheme: str, factory: Factory) -> None:
    """Make ``from_addr`` build URLs with ``scheme`` through ``factory``."""
    _REGISTRY[scheme.lower()] = factory


def registered_schemes() -> list[str]:
    """The schemes :func:`from_addr` accepts, sorted."""
    return sorted(_REGISTRY)


def from_addr(url: str) -> BlobService:
    """Build a :class:`BlobService` from a URL such as ``objectstore+s3://bucket/prefix``.

    Raises :class:`~castore.errors.InvalidAddressError` naming what is accepted when the
    scheme is unknown or the rest of the URL does not fit it.
    """
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise InvalidAddressError(f"not a URL: {url!r}: {e}") from e
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        raise InvalidAddressError(
            f"not a service URL: {url!r}; expected scheme://…, one of: "
            + ", ".join(s + "://" for s in registered_schemes())
        )
    factory = _REGISTRY.get(scheme)
    if factory is None:
        raise InvalidAddressError(
            f"unknown scheme {scheme!r} in {url!r}; accepted: "
            + ", ".join(s + "://" for s in registered_schemes())
        )
    return factory(parts)


def _memory(parts: SplitResult) -> BlobService:
    from castore.memory import MemoryBlobService

    if parts.netloc or parts.path or parts.query or parts.fragment:
        raise InvalidAddressError(
            f"memory:// takes no host, path or options, got {parts.geturl()!r}; use 'memory://'"
        )
    return MemoryBlobService()


register_scheme("memory", _memory)
