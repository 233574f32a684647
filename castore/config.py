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

The types and their keys come from :mod:`castore.registry`, where each backend and
wrapper registers itself: ``memory``; ``objectstore`` and ``grpc`` (``url``, and
``options``: a table added to the URL's query); ``combined`` (``near``, ``far``, …);
``retry``, ``cache``, ``stats`` and ``logging`` (``inner``, …). A key left out is left
out of the constructor's call, so the constructor's default applies. The docs' page on
composition lists every key with its default.

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
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from castore.blobservice import BlobService
from castore.errors import ConfigError, InvalidAddressError
from castore.registry import ServiceType, service_types

__all__ = ["Composition", "load", "loads", "parse"]

DEFAULT_NAME = "root"


class _Entry:
    """One validated ``[blobservices.<name>]`` table."""

    def __init__(
        self,
        composition: Composition,
        name: str,
        table: Mapping[str, Any],
        types: Mapping[str, ServiceType],
    ) -> None:
        self.composition = composition
        self.name = name
        self.table = table
        self.type = self._type(types)
        required, optional = self.type.required, self.type.optional
        allowed = {*required, *optional, "type"}
        for key in table:
            if key not in allowed:
                raise self.error(
                    key,
                    f"unknown key for type {self.type.name!r}; accepted: "
                    + ", ".join(sorted({*required, *optional}) or ["(none)"]),
                )
        for key in required:
            if key not in table:
                raise self.error(key, f"missing; type {self.type.name!r} needs it")
        self.refs = {k: self.string(k) for k in self.type.references}
        # Parsed now, so that a bad value fails before anything is built.
        self.kwargs: dict[str, object] = {}
        for key, option in self.type.options.items():
            if key in table:
                try:
                    self.kwargs[key] = option.parse(table[key])
                except ValueError as e:
                    raise self.error(key, str(e)) from e
            elif option.fallback == "instance name":
                self.kwargs[key] = name
        self.url = self._url() if self.type.url_prefix is not None else None

    def _type(self, types: Mapping[str, ServiceType]) -> ServiceType:
        raw = self.table.get("type")
        if raw is None:
            if "url" in self.table:
                return types["url"]
            raise self.error(
                "type",
                "missing; give type = one of "
                + ", ".join(repr(t) for t in types if t != "url")
                + ", or url = '…' for any from_addr URL",
            )
        if not isinstance(raw, str) or raw not in types:
            raise self.error(
                "type",
                f"unknown type {raw!r}; one of " + ", ".join(repr(t) for t in types),
            )
        return types[raw]

    def error(self, key: str | None, why: str) -> ConfigError:
        where = f"blobservices.{self.name}" + ("" if key is None else f".{key}")
        return ConfigError(
            f"{self.composition.source}: {where}: {why}", instance=self.name, key=key
        )

    def string(self, key: str) -> str:
        value = self.table[key]
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return value

    def _url(self) -> str:
        url = self.string("url")
        prefix = self.type.url_prefix
        if prefix and not url.lower().startswith(prefix):
            raise self.error("url", f"type {self.type.name!r} needs a {prefix}… URL, got {url!r}")
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

    def build(self, refs: Mapping[str, BlobService]) -> BlobService:
        """The instance, from the instances its references name (already built)."""
        if self.url is not None:
            try:
                return self.type.build(self.url)
            except ConfigError:
                raise
            except InvalidAddressError as err:
                raise self.error("url", str(err)) from err
        args = [refs[k] for k in self.type.references]
        return self.type.build(*args, **self.kwargs)


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
        types = service_types()
        for name, table in services.items():
            if not isinstance(table, Mapping):
                raise ConfigError(
                    f"{source}: blobservices.{name}: expected a table, got {table!r}",
                    instance=name,
                )
            self._entries[name] = _Entry(self, name, table, types)
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
        refs = {key: self._build(target) for key, target in entry.refs.items()}
        try:
            service = entry.build(refs)
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
