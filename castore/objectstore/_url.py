"""``objectstore+…`` URLs for :func:`castore.from_addr`.

=====================================  =====================================================
``objectstore+memory:///``             an obstore ``MemoryStore`` (gone with the process)
``objectstore+file:///abs/path``       a ``LocalStore`` in that folder (created if missing)
``objectstore+s3://bucket/prefix``     ``S3Store``; ``gs://``, ``az://``, ``https://`` and
                                       ``http://`` work the same way
=====================================  =====================================================

``file://``, ``s3://``, ``gs://`` and ``az://`` alone are the same as with ``objectstore+``
(the forms obstore and fsspec users know), and :func:`castore.from_addr` takes a plain path
for ``objectstore+file://``.

Query pairs become obstore options: HTTP client options (``allow_http``, ``timeout``,
``connect_timeout``, ``proxy_url``…) go to ``client_options``, ``max_retries`` and
``retry_timeout`` (seconds) to ``retry_config``, and every other key to the store's
``config`` (for S3: ``endpoint``, ``region``, ``access_key_id``, ``secret_access_key``,
``session_token``…; obstore rejects keys it does not know). ``avg_chunk_size`` is
castore's own. Example::

    objectstore+s3://castore/blobs?endpoint=http://127.0.0.1:8333&region=us-east-1
        &access_key_id=…&secret_access_key=…&allow_http=true
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote

from obstore.store import LocalStore, MemoryStore, from_url

from castore.errors import InvalidAddressError, StorePermissionError
from castore.objectstore._errors import store_error
from castore.objectstore._service import ObjectStoreBlobService

__all__ = ["SCHEMES", "service_from_url"]

#: The schemes this module handles (registered with :func:`castore.register_scheme`).
SCHEMES = (
    "objectstore+memory",
    "objectstore+file",
    "objectstore+s3",
    "objectstore+gs",
    "objectstore+az",
    "objectstore+https",
    "objectstore+http",
    "file",
    "s3",
    "gs",
    "az",
)

# obstore's ClientConfig keys (HTTP client options, valid for every remote store).
_CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "randomize_addresses",
        "read_timeout",
        "root_certificate",
        "timeout",
        "user_agent",
    }
)
_RETRY_KEYS = frozenset({"max_retries", "retry_timeout"})


def _fail(url: str, why: str) -> InvalidAddressError:
    return InvalidAddressError(f"{url}: {why}")


def _query(parts: SplitResult, shown: str) -> dict[str, str]:
    if not parts.query:
        return {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError as e:
        raise _fail(shown, f"malformed query string ({e})") from e
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise _fail(shown, f"option {key!r} is given twice")
        if not value:
            raise _fail(shown, f"option {key!r} has no value")
        out[key] = value
    return out


def _shown(parts: SplitResult) -> str:
    """The URL as written, ``//`` included, without what may hold credentials (query,
    user info), for messages."""
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


def _avg(opts: dict[str, str], shown: str) -> dict[str, Any]:
    raw = opts.pop("avg_chunk_size", None)
    if raw is None:
        return {}
    try:
        return {"avg_chunk_size": int(raw)}
    except ValueError:
        raise _fail(shown, f"avg_chunk_size must be an integer, got {raw!r}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def service_from_url(parts: SplitResult) -> ObjectStoreBlobService:
    """Build the service for an ``objectstore+…`` URL (the ``from_addr`` factory)."""
    shown = _shown(parts)
    scheme = parts.scheme.lower()
    inner = scheme.partition("+")[2] or scheme  # file://, s3://… stand for objectstore+…
    if parts.fragment:
        raise _fail(shown, "a fragment (#…) means nothing here")
    opts = _query(parts, shown)
    kwargs = _avg(opts, shown)

    if inner in ("memory", "file") and opts:
        raise _fail(
            shown,
            f"unknown option(s) {', '.join(sorted(opts))}; {scheme}:// only takes avg_chunk_size",
        )
    try:
        netloc_has_user = parts.username is not None or parts.password is not None
    except ValueError:
        netloc_has_user = False
    if netloc_has_user:
        raise _fail(
            shown,
            "credentials in the host part are not accepted; pass access_key_id=… and "
            "secret_access_key=… as options or through the environment",
        )

    store: Any
    if inner == "memory":
        if parts.netloc or parts.path not in ("", "/"):
            raise _fail(
                shown, "objectstore+memory takes no host or path; use objectstore+memory:///"
            )
        store = MemoryStore()
    elif inner == "file":
        if parts.netloc not in ("", "localhost"):
            raise _fail(
                shown,
                f"{scheme}:// takes no host (got {parts.netloc!r}); use {scheme}:///absolute/path",
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise _fail(shown, f"{scheme}:// needs an absolute path: {scheme}:///abs")
        try:
            store = LocalStore(path, mkdir=True)
        except Exception as e:
            # A folder castore may not create (read-only file system, no permission) is a
            # permission failure, not a bad URL.
            denied = store_error(e, f"{shown}: cannot create the folder {path!r}")
            if isinstance(denied, StorePermissionError):
                raise denied from e
            raise _fail(shown, f"cannot use folder {path!r}: {_first_line(e)}") from e
    elif inner in ("s3", "gs", "az", "https", "http"):
        if not parts.hostname:
            what = "host" if inner.startswith("http") else "bucket"
            raise _fail(shown, f"{scheme}:// needs a {what}: {scheme}://{what}/prefix")
        config: dict[str, str] = {}
        client: dict[str, str] = {}
        retry: dict[str, Any] = {}
        for key, value in opts.items():
            if key in _CLIENT_KEYS:
                client[key] = value
            elif key in _RETRY_KEYS:
                retry[key] = _retry_value(key, value, shown)
            else:
                config[key] = value
        url = f"{inner}://{parts.netloc}{parts.path}"
        try:
            store = from_url(
                url,
                config=config or None,  # type: ignore[arg-type]
                client_options=client or None,  # type: ignore[arg-type]
                retry_config=retry or None,  # type: ignore[arg-type]
            )
        except Exception as e:
            raise _fail(shown, f"obstore rejected the store options: {_first_line(e)}") from e
    else:
        raise _fail(
            shown,
            f"unknown store {inner!r}; accepted: " + ", ".join(s + "://" for s in SCHEMES),
        )
    try:
        return ObjectStoreBlobService(store, **kwargs)
    except ValueError as e:
        raise _fail(shown, str(e)) from e


def _retry_value(key: str, value: str, shown: str) -> int | timedelta:
    try:
        if key == "max_retries":
            n = int(value)
            if n < 0:
                raise ValueError
            return n
        seconds = float(value)
        if not seconds > 0:
            raise ValueError
        return timedelta(seconds=seconds)
    except ValueError:
        kind = "a non-negative integer" if key == "max_retries" else "a positive number of seconds"
        raise _fail(shown, f"{key} must be {kind}, got {value!r}") from None
