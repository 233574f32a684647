"""What every command shares: which store to open, and digests from the command line.

The store is ``--store URL``, else ``$CASTORE_STORE``, else an embedded local store under
the user's data folder, so ``castore put FILE`` works with no setup. ``--config FILE``
instead builds the store from a composition file (its ``root`` instance; see
:mod:`castore.config`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import anyio

from castore._digest import B3Digest
from castore.blobservice import BlobService
from castore.cli._errors import ExitCode, Failure
from castore.errors import InvalidAddressError, InvalidDigestError
from castore.objectstore import ObjectStoreBlobService
from castore.registry import from_addr
from castore.wrappers.base import WrapperBlobService

__all__ = [
    "PIECE",
    "STORE_ENV",
    "add_store_options",
    "default_store_path",
    "default_store_url",
    "object_store_of",
    "open_store",
    "parse_digest",
    "store_url",
]

#: Environment variable naming the store when ``--store`` is not given.
STORE_ENV = "CASTORE_STORE"

#: Size of each read from an input file, and of each read from a blob.
PIECE = 4 * 1024 * 1024


def default_store_path() -> Path:
    """The embedded local store's folder: ``store`` in the user's data folder for castore."""
    import platformdirs

    return Path(platformdirs.user_data_dir("castore")) / "store"


def default_store_url() -> str:
    """The embedded local store, as an ``objectstore+file://`` URL."""
    return "objectstore+" + default_store_path().as_uri()


def add_store_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """Add ``--store`` and ``--config`` to the main parser, or (``after_command``) to the
    parent parser of every command, so that they are accepted on either side of the
    command's name. After the command their default is ``SUPPRESS``: a command that is not
    given them keeps the values given before it."""
    default = argparse.SUPPRESS if after_command else None
    parser.add_argument(
        "--store",
        dest="global_store",
        metavar="URL",
        default=default,
        help=f"the store, e.g. objectstore+s3://bucket/prefix (default: ${STORE_ENV}, "
        "else the local store under your data folder)",
    )
    parser.add_argument(
        "--config",
        dest="global_config",
        metavar="FILE",
        default=default,
        help="build the store from a composition file (its [blobservices.root]) instead of --store",
    )


def store_url(args: argparse.Namespace) -> str:
    """``--store``, else ``$CASTORE_STORE``, else the embedded local store."""
    given = getattr(args, "global_store", None)
    return str(given or os.environ.get(STORE_ENV) or default_store_url())


async def _open_config(path: str) -> BlobService:
    """The ``root`` instance of the composition file at ``path``."""
    from castore.config import parse

    try:
        text = await anyio.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Failure(ExitCode.LOCAL_IO, f"cannot read the config file {path}: {e}") from e
    try:
        return parse(text, source=path).build()
    except InvalidAddressError as e:
        raise Failure(ExitCode.BAD_STORE_URL, f"bad config: {e}") from e


async def open_store(args: argparse.Namespace) -> BlobService:
    """The store the command line names (``--config``, ``--store``, ``$CASTORE_STORE`` or
    the embedded one, whose folder is created on first use)."""
    config = getattr(args, "global_config", None)
    if config is not None:
        return await _open_config(config)
    url = store_url(args)
    if url == default_store_url():
        path = default_store_path()
        try:
            await anyio.Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise Failure(
                ExitCode.LOCAL_IO, f"cannot create the default store folder {path}: {e}"
            ) from e
    try:
        return from_addr(url)
    except InvalidAddressError as e:
        raise Failure(ExitCode.BAD_STORE_URL, f"bad store URL: {e}") from e


def parse_digest(text: str) -> B3Digest:
    """A digest given on the command line, or a usage failure saying what is wrong."""
    try:
        return B3Digest.parse(text)
    except InvalidDigestError as e:
        raise Failure(ExitCode.BAD_DIGEST, f"bad digest: {e}") from e


def object_store_of(service: BlobService, command: str, doing: str) -> ObjectStoreBlobService:
    """The object store under any wrappers of ``service``, or a failure saying that
    ``command`` (``"gc"``), which is to ``doing`` (``"collect garbage in"``), needs one."""
    inner = service
    while isinstance(inner, WrapperBlobService):
        inner = inner.inner
    if not isinstance(inner, ObjectStoreBlobService):
        raise Failure(
            ExitCode.STORE_FAILED,
            f"cannot {doing} {type(inner).__name__}: {command} runs on an object store "
            "(objectstore+… URL); run it where the storage is",
        )
    return inner
