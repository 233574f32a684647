"""Parsing ``grpc+http://``, ``grpc+https://`` and ``grpc+unix://`` addresses.

The same URL forms name where a server listens and where a client connects, as in
tvix (``grpc+http://[::1]:8000``, ``grpc+unix:///run/castore.sock``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, urlsplit

from castore.errors import InvalidAddressError

__all__ = ["SCHEMES", "Endpoint", "parse_endpoint"]

SCHEMES = ("grpc+http", "grpc+https", "grpc+unix")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A TCP ``host``/``port`` or a unix socket ``path``; ``tls`` for ``grpc+https``."""

    host: str | None = None
    port: int | None = None
    path: str | None = None
    tls: bool = False

    @property
    def url(self) -> str:
        """The endpoint as a URL, without options."""
        if self.path is not None:
            return f"grpc+unix://{self.path}"
        assert self.host is not None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"grpc+{'https' if self.tls else 'http'}://{host}:{self.port}"


def parse_endpoint(url: str | SplitResult) -> tuple[Endpoint, dict[str, str]]:
    """Split a gRPC URL into its :class:`Endpoint` and its query options.

    Raises :class:`~castore.errors.InvalidAddressError` saying what is expected: a port
    for TCP, an absolute path and no host for unix sockets, no fragment, no option twice.
    """
    parts = urlsplit(url) if isinstance(url, str) else url
    text = parts.geturl()
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidAddressError(
            f"not a gRPC address: {text!r}; expected grpc+http://host:port, "
            "grpc+https://host:port or grpc+unix:///path"
        )
    if parts.fragment:
        raise InvalidAddressError(f"a gRPC address takes no #fragment: {text!r}")
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key in options:
            raise InvalidAddressError(f"option {key!r} given twice in {text!r}")
        options[key] = value
    if scheme == "grpc+unix":
        if parts.netloc:
            raise InvalidAddressError(
                f"grpc+unix takes an absolute path and no host: {text!r}; "
                "write grpc+unix:///path/to.sock (three slashes)"
            )
        if not parts.path.startswith("/"):
            raise InvalidAddressError(f"grpc+unix needs an absolute socket path: {text!r}")
        return Endpoint(path=parts.path), options
    if parts.path not in ("", "/"):
        raise InvalidAddressError(f"a gRPC address takes no path: {text!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidAddressError(f"a gRPC address takes no user or password: {text!r}")
    try:
        port = parts.port
    except ValueError as e:
        raise InvalidAddressError(f"bad port in {text!r}: {e}") from e
    host = parts.hostname
    if not host or port is None:
        raise InvalidAddressError(f"{scheme} needs a host and a port: {text!r}")
    return Endpoint(host=host, port=port, tls=scheme == "grpc+https"), options


def parse_flag(options: dict[str, str], key: str) -> bool:
    """A boolean option: ``1``/``true``/``yes``/empty are true, ``0``/``false``/``no`` false."""
    value = options.pop(key, None)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("", "1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise InvalidAddressError(f"option {key}={value!r}: expected 1 or 0")
