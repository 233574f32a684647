"""The error boundary at the object-store adapter: obstore's exceptions become castore's,
by type where obstore has one, and nothing foreign gets past the adapter."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from obstore.exceptions import (
    GenericError,
    InvalidPathError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import LocalStore, S3Store

from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    DigestMismatchError,
    StoreError,
    StorePermissionError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from castore.objectstore import ObstoreAdapter
from castore.objectstore._errors import map_store_errors

_DUMP = '\n\nDebug source:\nGeneric {\n    store: "S3",\n    kind: ConnectionRefused,\n}'


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (FileNotFoundError("gone"), BlobNotFoundError),
        (PermissionDeniedError("no"), StorePermissionError),
        (UnauthenticatedError("who"), StorePermissionError),
        (PermissionError("no"), StorePermissionError),
        (TimeoutError(), StoreTimeoutError),
        (ConnectionRefusedError(), StoreUnavailableError),
        # obstore has no type for a failed connection or a timeout: its message tells.
        (GenericError("HTTP error: error sending request" + _DUMP), StoreUnavailableError),
        (GenericError("Generic S3 error: operation timed out"), StoreTimeoutError),
        (GenericError("Generic S3 error: 500 Internal Server Error"), StoreError),
        (InvalidPathError("bad path"), StoreError),
        (OSError("disk full"), StoreError),
    ],
)
def test_each_foreign_error_maps_to_its_castore_error(
    raised: Exception, expected: type[CastoreError]
) -> None:
    with pytest.raises(CastoreError) as info, map_store_errors("storing", "chunks/b3/ab/abcd"):
        raise raised
    assert type(info.value) is expected
    assert info.value.__cause__ is raised
    message = str(info.value)
    assert message.startswith(f"storing chunks/b3/ab/abcd: {type(raised).__name__}")
    assert "Debug source" not in message and "\n" not in message


def test_castore_errors_and_cancellation_pass_unchanged() -> None:
    mismatch = DigestMismatchError("x")
    with pytest.raises(DigestMismatchError) as info, map_store_errors("reading", "k"):
        raise mismatch
    assert info.value is mismatch
    with pytest.raises(asyncio.CancelledError), map_store_errors("reading", "k"):
        raise asyncio.CancelledError


def test_the_adapter_raises_castore_errors_for_a_real_store(tmp_path: Path) -> None:
    """A local store whose folder is a file fails every put with obstore's own error;
    the adapter raises it as a StoreError, never as obstore's type."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    adapter = ObstoreAdapter(LocalStore(tmp_path))
    with pytest.raises(StoreError) as info:
        adapter.put_new("not-a-folder/chunks/x", b"data")
    assert not isinstance(info.value, GenericError)
    assert "storing not-a-folder/chunks/x" in str(info.value)


def _unreachable() -> ObstoreAdapter:
    store = S3Store(
        "bucket",
        endpoint="http://127.0.0.1:1",
        region="us-east-1",
        access_key_id="k",
        secret_access_key="s",
        client_options={"allow_http": True, "connect_timeout": "1s"},
        retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=1)},
    )
    return ObstoreAdapter(store)


async def test_the_adapter_reports_an_unreachable_store() -> None:
    adapter = _unreachable()
    with pytest.raises(StoreUnavailableError, match="checking chunks/x"):
        await adapter.exists_async("chunks/x")
    with pytest.raises(StoreUnavailableError, match="storing chunks/x"):
        await adapter.put_new_async("chunks/x", b"x")


def test_the_adapter_reports_an_unreachable_store_from_a_thread() -> None:
    with pytest.raises(StoreUnavailableError, match="reading blobs/y"):
        _unreachable().get("blobs/y")
