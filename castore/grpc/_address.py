"""Parsing ``grpc+http://``, ``grpc+https://`` and ``grpc+unix://`` addresses.

The same URL forms name where a server listens and where a client connects, as in
tvix (``grpc+http://[::1]:8000``, ``grpc+unix:///run/castore.sock``). A client may also
be given several servers of one scheme, ``grpc+http://10.0.0.1:8000,10.0.0.2:8000``
(:func:`parse_endpoints`), over which grpc balances its calls.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, urlsplit

from castore.errors import InvalidAddressError

__all__ = ["SCHEMES", "Endpoint", "parse_endpoint", "parse_endpoints"]

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
        return f"grpc+{'https' if self.tls else 'http'}://{self.hostport}"

    @property
    def hostport(self) -> str:
        """``host:port``, ``[v6]:port`` for an IPv6 address."""
        assert self.host is not None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


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


def parse_endpoints(url: str | SplitResult) -> tuple[tuple[Endpoint, ...], dict[str, str]]:
    """Like :func:`parse_endpoint`, but ``grpc+http`` and ``grpc+https`` may list several
    ``host:port`` pairs after the one scheme, separated by commas.

    The hosts of a list are IP addresses, all IPv4 or all IPv6 (grpc balances over a list
    of addresses; a name that resolves to several addresses is given alone). Raises
    :class:`~castore.errors.InvalidAddressError` for an empty entry, an entry without a
    port, a second scheme, a name or a mix of address families.
    """
    parts = urlsplit(url) if isinstance(url, str) else url
    scheme = parts.scheme.lower()
    if "," not in parts.netloc or scheme not in ("grpc+http", "grpc+https"):
        single, single_options = parse_endpoint(parts)
        return (single,), single_options
    text = parts.geturl()
    if "//" in parts.path or "://" in parts.netloc:
        raise InvalidAddressError(
            f"give the scheme once for all endpoints, and only one scheme: {text!r}; "
            f"write {scheme}://HOST1:PORT1,HOST2:PORT2"
        )
    endpoints: list[Endpoint] = []
    options: dict[str, str] = {}
    for number, piece in enumerate(parts.netloc.split(","), start=1):
        if not piece.strip():
            raise InvalidAddressError(f"endpoint {number} of {text!r} is empty")
        try:
            endpoint, options = parse_endpoint(parts._replace(netloc=piece.strip()))
        except InvalidAddressError as e:
            raise InvalidAddressError(f"endpoint {number} of {text!r}: {e}") from None
        endpoints.append(endpoint)
    check_balanced(endpoints, text)
    return tuple(endpoints), options


def check_balanced(endpoints: Sequence[Endpoint], text: str) -> None:
    """Raise :class:`~castore.errors.InvalidAddressError` unless ``endpoints`` can make one
    balanced channel: TCP, one scheme, IP addresses of one family."""
    families = set()
    for endpoint in endpoints:
        if endpoint.path is not None:
            raise InvalidAddressError(f"{text!r}: a unix socket cannot be one of several endpoints")
        try:
            families.add(ipaddress.ip_address(endpoint.host or "").version)
        except ValueError:
            raise InvalidAddressError(
                f"{endpoint.host!r} in {text!r}: several endpoints must be IP addresses; "
                "give a name that resolves to several addresses alone"
            ) from None
    if len(families) > 1:
        raise InvalidAddressError(f"the endpoints of {text!r} mix IPv4 and IPv6 addresses")
    if len({endpoint.tls for endpoint in endpoints}) > 1:
        raise InvalidAddressError(f"the endpoints of {text!r} mix TLS and plain connections")


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
