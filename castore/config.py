"""Composition files: named blob services wired together in TOML, as tvix/snix compose them.

Each ``[blobservices.<name>]`` table defines one instance; ``near``, ``far`` and
``inner`` refer to other instances by name. :func:`load` builds the one named ``root``
(or another name) and, on the way, every instance it refers to; an instance referred to
twice is built once and shared. A local cache in front of a gRPC server::

    [blobservices.root]
    type = "combined"
    near = "cache"
    far = "remote"

    [blobservices.cache]
    type = "objectstore"
    url = "objectstore+file:///var/cache/castore"

    [blobservices.remote]
    type = "retry"
    inner = "grpc"
    max_attempts = 6

    [blobservices.grpc]
    type = "grpc"
    url = "grpc+http://127.0.0.1:8000"

Types and their keys (``*`` marks a required key):

================  ==================================================================
``memory``        (none)
``objectstore``   ``url``\\* (``objectstore+…``), ``options`` (a table, added to the
                  URL's query: ``endpoint``, ``region``, ``allow_http``…)
``grpc``          ``url``\\* (``grpc+http://``, ``grpc+https://``, ``grpc+unix://``),
                  ``options``
``combined``      ``near``\\*, ``far``\\*, ``write_through`` (false), ``prefetch``
``retry``         ``inner``\\*, ``max_attempts``, ``base_delay``, ``max_delay``,
                  ``deadline`` (seconds, or false for none), ``attempt_timeout``
``cache``         ``inner``\\*, ``max_bytes``, ``max_item_bytes`` (integers or sizes
                  such as ``"64 MiB"``), ``prefetch``
``stats``         ``inner``\\*
``logging``       ``inner``\\*, ``logger``, ``level``, ``error_level`` (``"DEBUG"``,
                  ``"INFO"``…), ``name`` (defaults to the instance's name)
================  ==================================================================

An instance with only ``url = "…"`` (and ``options``) and no ``type`` (or ``type =
"url"``) is whatever
:func:`castore.from_addr` makes of that URL, which stays the one-line way to get a
single service. Every mistake raises :class:`~castore.errors.ConfigError` naming the
instance and key (``blobservices.root.near: …``): unknown types and keys, wrong value
types, references to undefined instances, and reference cycles.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from castore.blobservice import BlobService
from castore.errors import ConfigError, InvalidAddressError
from castore.registry import from_addr

__all__ = ["Composition", "load", "loads", "parse"]

DEFAULT_NAME = "root"

#: Keys every type accepts besides ``type``: its required and optional keys.
_SCHEMA: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "memory": (frozenset(), frozenset()),
    "objectstore": (frozenset({"url"}), frozenset({"options"})),
    "grpc": (frozenset({"url"}), frozenset({"options"})),
    "url": (frozenset({"url"}), frozenset({"options"})),
    "combined": (frozenset({"near", "far"}), frozenset({"write_through", "prefetch"})),
    "retry": (
        frozenset({"inner"}),
        frozenset({"max_attempts", "base_delay", "max_delay", "deadline", "attempt_timeout"}),
    ),
    "cache": (frozenset({"inner"}), frozenset({"max_bytes", "max_item_bytes", "prefetch"})),
    "stats": (frozenset({"inner"}), frozenset()),
    "logging": (frozenset({"inner"}), frozenset({"logger", "level", "error_level", "name"})),
}
#: Keys that name other instances.
_REFERENCES = ("near", "far", "inner")
#: Which URL schemes each URL-taking type accepts.
_SCHEME_PREFIX = {"objectstore": "objectstore+", "grpc": "grpc+"}

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


class _Entry:
    """One validated ``[blobservices.<name>]`` table."""

    def __init__(self, composition: Composition, name: str, table: Mapping[str, Any]) -> None:
        self.composition = composition
        self.name = name
        self.table = table
        self.type = self._type()
        required, optional = _SCHEMA[self.type]
        allowed = required | optional | {"type"}
        for key in table:
            if key not in allowed:
                raise self.error(
                    key,
                    f"unknown key for type {self.type!r}; accepted: "
                    + ", ".join(sorted(required | optional) or ["(none)"]),
                )
        for key in sorted(required):
            if key not in table:
                raise self.error(key, f"missing; type {self.type!r} needs it")
        self.refs = {k: self.string(k) for k in _REFERENCES if k in table}

    def _type(self) -> str:
        raw = self.table.get("type")
        if raw is None:
            if "url" in self.table:
                return "url"
            raise self.error(
                "type",
                "missing; give type = one of "
                + ", ".join(repr(t) for t in _SCHEMA if t != "url")
                + ", or url = '…' for any from_addr URL",
            )
        if not isinstance(raw, str) or raw not in _SCHEMA:
            raise self.error(
                "type",
                f"unknown type {raw!r}; one of " + ", ".join(repr(t) for t in _SCHEMA),
            )
        return raw

    def error(self, key: str | None, why: str) -> ConfigError:
        where = f"blobservices.{self.name}" + ("" if key is None else f".{key}")
        return ConfigError(
            f"{self.composition.source}: {where}: {why}", instance=self.name, key=key
        )

    # --- typed getters ---------------------------------------------------------------

    def string(self, key: str) -> str:
        value = self.table[key]
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def seconds(self, key: str, default: float | None) -> float | None:
        """Seconds as an integer or float; ``false`` means "no limit"."""
        value = self.table.get(key, default)
        if value is None or value is False:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected seconds (a number) or false, got {value!r}")
        if value < 0:
            raise self.error(key, f"must not be negative, got {value}")
        return float(value)

    def size(self, key: str) -> int | None:
        """Bytes as an integer or a string such as ``"64 MiB"``; ``None`` when absent."""
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and (m := _SIZE.match(value)):
            unit = _UNITS.get(m.group(2).lower())
            if unit is None:
                raise self.error(
                    key, f"unknown unit {m.group(2)!r}; use B, KB, KiB, MB, MiB, GB or GiB"
                )
            number = int(float(m.group(1)) * unit)
        else:
            raise self.error(key, f"expected bytes (an integer or '64 MiB'), got {value!r}")
        if number < 0:
            raise self.error(key, f"must not be negative, got {value!r}")
        return number

    def level(self, key: str, default: str) -> str | int:
        value = self.table.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        names = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if not isinstance(value, str) or value.upper() not in names:
            raise self.error(key, f"expected one of {', '.join(names)}, got {value!r}")
        return value.upper()

    def url(self) -> str:
        url = self.string("url")
        prefix = _SCHEME_PREFIX.get(self.type)
        if prefix is not None and not url.lower().startswith(prefix):
            raise self.error("url", f"type {self.type!r} needs a {prefix}… URL, got {url!r}")
        options = self.table.get("options")
        if options is None:
            return url
        if not isinstance(options, Mapping):
            raise self.error("options", f"expected a table, got {options!r}")
        pairs: list[tuple[str, str]] = []
        for k, v in options.items():
            if isinstance(v, bool):
                pairs.append((k, "true" if v else "false"))
            elif isinstance(v, int | float | str):
                pairs.append((k, str(v)))
            else:
                raise self.error("options", f"option {k!r}: expected a scalar, got {v!r}")
        if not pairs:
            return url
        return url + ("&" if "?" in url else "?") + urlencode(pairs)


def _build_memory(e: _Entry, ref: Callable[[str], BlobService]) -> BlobService:
    from castore.memory import MemoryBlobService

    return MemoryBlobService()


def _build_url(e: _Entry, ref: Callable[[str], BlobService]) -> BlobService:
    url = e.url()
    try:
        return from_addr(url)
    except ConfigError:
        raise
    except InvalidAddressError as err:
        raise e.error("url", str(err)) from err


def _build_combined(e: _Entry, ref: Callable[[str], BlobService]) -> BlobService:
    from castore.combined import CombinedBlobService
    from castore.reader import DEFAULT_PREFETCH

    return CombinedBlobService(
        ref("near"),
        ref("far"),
        write_through=e.boolean("write_through", False),
        prefetch=e.integer("prefetch", DEFAULT_PREFETCH),
    )


def _build_retry(e: _Entry, ref: Callable[[str], BlobService]) -> BlobService:
    from castore.wrappers.retry import RetryBlobService

    base_delay = e.seconds("base_delay", 0.05)
    max_delay = e.seconds("max_delay", 2.0)
    return RetryBlobService(
        ref("inner"),
        max_attempts=e.integer("max_attempts", 5, minimum=1),
        base_delay=0.0 if base_delay is None else base_delay,
        max_delay=0.0 if max_delay is None else max_delay,
        deadline=e.seconds("deadline", 30.0),
        attempt_timeout=e.seconds("attempt_timeout", None),
    )


def _build_cache(e: _Entry, ref: Callable[[str], BlobService]) -> BlobService:
    from castore.reader import DEFAULT_PREFETCH
    from castore.wrappers.cache import DEFAULT_MAX_BYTES, CachingBlobService

    max_bytes = e.size("max_bytes")
    return CachingBlobService(
        ref("inner"),
        max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
        max_item_bytes=e.size("max_item_bytes"),
        prefetch=e.integer("prefetch", DEFAULT_PREFETCH),
    )


def _build_stats(e: _Entry, ref: Callable[[str], BlobService]) -> BlobService:
    from castore.wrappers.stats import StatsBlobService

    return StatsBlobService(ref("inner"))


def _build_logging(e: _Entry, ref: Callable[[str], BlobService]) -> BlobService:
    from castore.wrappers.logging import DEFAULT_LOGGER, LoggingBlobService

    return LoggingBlobService(
        ref("inner"),
        logger=e.string("logger") if "logger" in e.table else DEFAULT_LOGGER,
        level=e.level("level", "DEBUG"),
        error_level=e.level("error_level", "WARNING"),
        name=e.string("name") if "name" in e.table else e.name,
    )


_BUILDERS: dict[str, Callable[[_Entry, Callable[[str], BlobService]], BlobService]] = {
    "memory": _build_memory,
    "objectstore": _build_url,
    "grpc": _build_url,
    "url": _build_url,
    "combined": _build_combined,
    "retry": _build_retry,
    "cache": _build_cache,
    "stats": _build_stats,
    "logging": _build_logging,
}


class Composition:
    """A validated set of named blob service definitions; :meth:`build` makes instances.

    Construction checks every entry (types, keys, references, cycles) without building
    anything, so a broken file fails before any connection is made. ``source`` names the
    file in error messages.
    """

    def __init__(self, document: Mapping[str, Any], *, source: str = "<config>") -> None:
        self.source = source
        for key in document:
            if key != "blobservices":
                raise ConfigError(
                    f"{source}: {key}: unknown top-level key; castore composes [blobservices.*]",
                    key=key,
                )
        services = document.get("blobservices")
        if not isinstance(services, Mapping) or not services:
            raise ConfigError(
                f"{source}: no [blobservices.<name>] tables; define at least "
                f"[blobservices.{DEFAULT_NAME}]",
                key="blobservices",
            )
        self._entries: dict[str, _Entry] = {}
        for name, table in services.items():
            if not isinstance(table, Mapping):
                raise ConfigError(
                    f"{source}: blobservices.{name}: expected a table, got {table!r}",
                    instance=name,
                )
            self._entries[name] = _Entry(self, name, table)
        for entry in self._entries.values():
            for key, target in entry.refs.items():
                if target not in self._entries:
                    close = difflib.get_close_matches(target, list(self._entries), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise entry.error(
                        key,
                        f"no instance named {target!r}{hint}; defined: "
                        + ", ".join(sorted(self._entries)),
                    )
        self._check_cycles()
        self._built: dict[str, BlobService] = {}

    @property
    def names(self) -> list[str]:
        """The instance names defined, in file order."""
        return list(self._entries)

    @property
    def built(self) -> Mapping[str, BlobService]:
        """The instances built so far, by name (to reach a nested ``stats`` wrapper)."""
        return dict(self._built)

    def _check_cycles(self) -> None:
        done: set[str] = set()
        for name in self._entries:
            self._visit(name, [], done)

    def _visit(self, name: str, path: list[str], done: set[str]) -> None:
        """Depth-first walk of the references; ``path`` is the chain that led here."""
        if name in done:
            return
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise self._entries[name].error(None, "reference cycle: " + " -> ".join(cycle))
        path.append(name)
        for target in self._entries[name].refs.values():
            self._visit(target, path, done)
        path.pop()
        done.add(name)

    def build(self, name: str = DEFAULT_NAME) -> BlobService:
        """The instance ``name``, with everything it refers to (each built once)."""
        if name not in self._entries:
            raise ConfigError(
                f"{self.source}: no [blobservices.{name}] to build; defined: "
                + ", ".join(sorted(self._entries)),
                instance=name,
            )
        return self._build(name)

    def _build(self, name: str) -> BlobService:
        service = self._built.get(name)
        if service is not None:
            return service
        entry = self._entries[name]

        def ref(key: str) -> BlobService:
            return self._build(entry.refs[key])

        try:
            service = _BUILDERS[entry.type](entry, ref)
        except ConfigError:
            raise
        except ValueError as err:
            raise entry.error(None, str(err)) from err
        self._built[name] = service
        return service


def parse(text: str, *, source: str = "<string>") -> Composition:
    """Parse TOML ``text`` into a :class:`Composition` (validated, nothing built)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from e
    return Composition(document, source=source)


def loads(text: str, name: str = DEFAULT_NAME) -> BlobService:
    """Build instance ``name`` from TOML ``text``."""
    return parse(text).build(name)


def load(source: str | os.PathLike[str], name: str = DEFAULT_NAME) -> BlobService:
    """Build instance ``name`` (default ``root``) from a composition file or TOML text.

    A path-like object is a file. A string is TOML text when it holds a newline or an
    ``=`` (no sensible file name does), and a file path otherwise; use :func:`loads` to
    be explicit. Reading the file is blocking I/O: call this before or outside the event
    loop, or in a worker thread.
    """
    if isinstance(source, str) and ("\n" in source or "=" in source):
        return parse(source).build(name)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the composition file: {e}") from e
    return parse(text, source=str(path)).build(name)
