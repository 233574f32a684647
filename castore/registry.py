"""What castore can build from a name: URL schemes for :func:`from_addr`, and the
instance types of composition files (:mod:`castore.config`).

Each backend and wrapper adds itself here when its module is imported (and importing
:mod:`castore` imports them all):

- :func:`register_scheme` makes :func:`from_addr` build URLs of a scheme. A scheme
  ``family+transport`` (``objectstore+s3``, ``grpc+http``) also gives composition files a
  type ``family`` that takes ``url`` and ``options``.
- :func:`register_type` makes a composition type of a constructor: the parameters it names
  as ``references`` take other instances, the ``options`` it lists take values from the
  file, parsed by an :class:`Option`. A key left out of the file is left out of the call,
  so the constructor's own default applies; :attr:`ServiceType.defaults` reads them from
  its signature, for messages and docs (``docs/architecture.md``, the registry).

==============================  ================================================
``memory://``                   :class:`~castore.MemoryBlobService`
``objectstore+memory:///``      :class:`~castore.ObjectStoreBlobService` in memory
``objectstore+file:///abs``     ... on local disk
``objectstore+s3://bucket/p``   ... on S3 (``gs://``, ``az://``, ``https://`` too)
``grpc+http://host:port``       :class:`~castore.GRPCBlobService` (also ``grpc+unix://``)
``/abs/path``, ``./rel``, ``~``  the object store on local disk (``objectstore+file://``)
``file://``, ``s3://``, …       ``objectstore+file://``, ``objectstore+s3://``, …
==============================  ================================================
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from castore.blobservice import BlobService
from castore.errors import InvalidAddressError

__all__ = [
    "Option",
    "ServiceType",
    "boolean",
    "from_addr",
    "integer",
    "level",
    "register_scheme",
    "register_type",
    "registered_schemes",
    "seconds",
    "service_types",
    "size",
    "text",
]

Factory = Callable[[SplitResult], BlobService]

_SCHEMES: dict[str, Factory] = {}
_TYPES: dict[str, ServiceType] = {}


# --- URL schemes ---------------------------------------------------------------------------


_PATH_STARTS = ("/", "./", "../", "~")


def register_scheme(scheme: str, factory: Factory) -> None:
    """Make ``from_addr`` build URLs with ``scheme`` through ``factory``."""
    _SCHEMES[scheme.lower()] = factory


def registered_schemes() -> list[str]:
    """The schemes :func:`from_addr` accepts, sorted."""
    return sorted(_SCHEMES)


def from_addr(url: str) -> BlobService:
    """Build a :class:`BlobService` from a URL such as ``objectstore+s3://bucket/prefix``.

    A path (``/abs``, ``./rel``, ``../rel``, ``~/…``) is the object store in that folder on
    local disk. Raises :class:`~castore.errors.InvalidAddressError` naming what is accepted
    when the scheme is unknown or the rest of the URL does not fit it.
    """
    if "://" not in url and (url in (".", "..") or url.startswith(_PATH_STARTS)):
        url = "objectstore+" + Path(os.path.abspath(os.path.expanduser(url))).as_uri()
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise InvalidAddressError(f"not a URL: {url!r}: {e}") from e
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        raise InvalidAddressError(
            f"not a service URL: {url!r}; expected a path (/abs, ./rel, ~/…) or scheme://…, "
            "one of: " + ", ".join(s + "://" for s in registered_schemes())
        )
    factory = _SCHEMES.get(scheme)
    if factory is None:
        raise InvalidAddressError(
            f"unknown scheme {scheme!r} in {url!r}; accepted: "
            + ", ".join(s + "://" for s in registered_schemes())
        )
    return factory(parts)


# --- option kinds --------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """How a composition file gives one keyword argument of a constructor.

    ``parse`` turns the TOML value into the argument, or raises :class:`ValueError` saying
    what was expected. ``fallback`` names a value used when the file leaves the key out
    instead of the constructor's default (only ``"instance name"`` exists).
    """

    parse: Callable[[object], object]
    fallback: str | None = None


def boolean() -> Option:
    """``true`` or ``false``."""

    def parse(value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value

    return Option(parse)


def integer(minimum: int = 0) -> Option:
    """An integer of at least ``minimum``."""

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return Option(parse)


def seconds(false: float | None = None) -> Option:
    """Seconds as an integer or float; ``false`` gives ``false`` (``None``: no limit)."""

    def parse(value: object) -> float | None:
        if value is False:
            return false
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected seconds (a number) or false, got {value!r}")
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return float(value)

    return Option(parse)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def size() -> Option:
    """Bytes, as an integer or a string such as ``"64 MiB"``."""

    def parse(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and (m := _SIZE.match(value)):
            unit = _UNITS.get(m.group(2).lower())
            if unit is None:
                raise ValueError(f"unknown unit {m.group(2)!r}; use B, KB, KiB, MB, MiB, GB or GiB")
            number = int(float(m.group(1)) * unit)
        else:
            raise ValueError(f"expected bytes (an integer or '64 MiB'), got {value!r}")
        if number < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return number

    return Option(parse)


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def level() -> Option:
    """A logging level: a name (any case) or a number."""

    def parse(value: object) -> str | int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if not isinstance(value, str) or value.upper() not in _LEVELS:
            raise ValueError(f"expected one of {', '.join(_LEVELS)}, got {value!r}")
        return value.upper()

    return Option(parse)


def text(*, fallback: str | None = None) -> Option:
    """A non-empty string. ``fallback="instance name"``: the instance's name when absent."""

    def parse(value: object) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a non-empty string, got {value!r}")
        return value

    return Option(parse, fallback)


# --- composition types ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceType:
    """One instance type of composition files.

    A constructor type calls ``build(*references, **options)``; a URL type (``url_prefix``
    set) takes ``url`` and ``options`` and builds through :func:`from_addr`.
    """

    name: str
    build: Callable[..., BlobService]
    references: tuple[str, ...] = ()
    options: Mapping[str, Option] = field(default_factory=dict)
    url_prefix: str | None = None

    @property
    def required(self) -> tuple[str, ...]:
        """Keys a table of this type must have."""
        return ("url",) if self.url_prefix is not None else self.references

    @property
    def optional(self) -> tuple[str, ...]:
        """Keys a table of this type may have."""
        return ("options",) if self.url_prefix is not None else tuple(self.options)

    @property
    def defaults(self) -> dict[str, object]:
        """The constructor's default of each option, from its signature."""
        if self.url_prefix is not None:
            return {}
        params = inspect.signature(self.build).parameters
        return {k: params[k].default for k in self.options}


def register_type(
    name: str,
    constructor: Callable[..., BlobService],
    *,
    references: tuple[str, ...] = (),
    options: Mapping[str, Option] | None = None,
) -> None:
    """Make ``name`` a composition type built by ``constructor``.

    ``references`` are the constructor's leading positional parameters that take other
    instances (``inner``; ``near`` and ``far``); ``options`` its keyword parameters that a
    file may set, each with its :class:`Option`. Every name must be a parameter of the
    constructor and every option must have a default there: a mismatch is a bug in the
    registration and raises :class:`TypeError` at import.
    """
    options = dict(options or {})
    params = inspect.signature(constructor).parameters
    for key in (*references, *options):
        if key not in params:
            raise TypeError(f"{name}: {constructor!r} has no parameter {key!r}")
    for key in options:
        if params[key].default is inspect.Parameter.empty:
            raise TypeError(f"{name}: option {key!r} of {constructor!r} has no default")
    _TYPES[name] = ServiceType(name, constructor, tuple(references), options)


def service_types() -> dict[str, ServiceType]:
    """Every composition type: the registered ones, one per scheme family, and ``url``
    (any URL :func:`from_addr` takes)."""
    types = dict(_TYPES)
    for scheme in registered_schemes():
        family, plus, _ = scheme.partition("+")
        if plus and family not in types:
            types[family] = ServiceType(family, from_addr, url_prefix=family + "+")
    types.setdefault("url", ServiceType("url", from_addr, url_prefix=""))
    return types
