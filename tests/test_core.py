"""Value types, the error tree, the URL registry and the writer state machine."""

from __future__ import annotations

import warnings

import anyio.abc
import pytest

import castore
from castore import B3Digest, ChunkMeta, InvalidAddressError, InvalidDigestError, from_addr
from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    DataCorruptionError,
    DecompressionBombError,
    InvalidSeekError,
    StoreError,
    StorePermissionError,
    StoreTimeoutError,
    StoreUnavailableError,
    translate_store_error,
)
from castore.testing.fixtures import BLOB_A_DIGEST, HELLOWORLD, HELLOWORLD_DIGEST
from castore.wrappers import StatsBlobService, WrapperBlobWriter

HEX = "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_digest_length_is_checked(length: int) -> None:
    with pytest.raises(InvalidDigestError, match=f"got {length}"):
        B3Digest(b"\x00" * length)
    with pytest.raises(ValueError):
        B3Digest(b"\x00" * length)


def test_digest_forms() -> None:
    d = B3Digest.of(HELLOWORLD)
    assert d == HELLOWORLD_DIGEST
    assert d.hex() == HEX
    assert bytes(d) == bytes.fromhex(HEX)
    assert str(d) == "blake3-XKeBWty0hOmhNsEe/mnB1TAXbVSbXRjQOOtSgLSzRww="
    assert B3Digest.parse(str(d)) == d
    assert B3Digest.parse("b3:XKeBWty0hOmhNsEe/mnB1TAXbVSbXRjQOOtSgLSzRww=") == d
    assert B3Digest.parse(HEX) == d
    assert B3Digest.parse(HEX.upper()) == d
    assert B3Digest.from_hex(HEX) == d
    assert hash(d) == hash(B3Digest(bytes(d)))
    assert sorted([d, BLOB_A_DIGEST]) == sorted([BLOB_A_DIGEST, d])
    assert d != BLOB_A_DIGEST


@pytest.mark.parametrize(
    "text",
    [
        "",
        "zz" * 32,
        HEX[:-1],
        "blake3-!!!",
        "blake3-AAAA",
        "b3:" + "A" * 44,
        "sha256-abc",
        HEX + "0",
    ],
)
def test_digest_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidDigestError):
        B3Digest.parse(text)


def test_coerce_takes_every_form_and_says_what_is_wrong() -> None:
    d = B3Digest.of(b"x")
    for form in (d, str(d), d.hex(), "b3:" + str(d)[7:], d.digest, bytearray(d.digest)):
        assert B3Digest.coerce(form) == d
    with pytest.raises(InvalidDigestError, match="got 63 characters") as info:
        B3Digest.coerce(d.hex()[:63])
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidDigestError, match="got 3 characters"):
        B3Digest.coerce("xyz")
    with pytest.raises(InvalidDigestError, match="got int"):
        B3Digest.coerce(5)  # type: ignore[arg-type]


def test_digest_is_frozen() -> None:
    d = B3Digest.of(b"x")
    with pytest.raises(AttributeError):
        d.digest = b"\x00" * 32  # type: ignore[misc]


def test_chunkmeta() -> None:
    c = ChunkMeta(BLOB_A_DIGEST, 2)
    assert c.size == 2 and c.digest == BLOB_A_DIGEST
    with pytest.raises(ValueError):
        ChunkMeta(BLOB_A_DIGEST, -1)
    with pytest.raises(InvalidDigestError):
        ChunkMeta(b"\x00" * 32, 1)  # type: ignore[arg-type]


def test_error_tree_builtin_parents() -> None:
    assert issubclass(castore.BlobNotFoundError, FileNotFoundError)
    assert issubclass(InvalidDigestError, ValueError)
    assert issubclass(DecompressionBombError, DataCorruptionError)
    assert issubclass(StoreUnavailableError, ConnectionError)
    assert issubclass(StoreTimeoutError, TimeoutError)
    assert issubclass(StorePermissionError, PermissionError)
    assert all(
        issubclass(e, CastoreError)
        for e in (BlobNotFoundError, DataCorruptionError, StoreError, InvalidAddressError)
    )


def test_translate_store_error() -> None:
    with pytest.warns(DeprecationWarning, match="translate_store_error"):
        translate_store_error(OSError("x"), "op")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _check_translate_store_error()


def _check_translate_store_error() -> None:
    assert isinstance(translate_store_error(FileNotFoundError("k"), "get k"), BlobNotFoundError)
    assert isinstance(translate_store_error(ConnectionRefusedError(), "put"), StoreUnavailableError)
    assert isinstance(translate_store_error(TimeoutError(), "put"), StoreTimeoutError)
    assert isinstance(translate_store_error(PermissionError(), "put"), StorePermissionError)
    e = translate_store_error(RuntimeError("error sending request for url"), "put chunks/x")
    assert isinstance(e, StoreUnavailableError) and "put chunks/x" in str(e)
    generic = translate_store_error(RuntimeError("boom"), "head x")
    assert type(generic) is StoreError
    same = DataCorruptionError("x")
    assert translate_store_error(same, "y") is same


def test_from_addr_memory() -> None:
    assert isinstance(from_addr("memory://"), castore.MemoryBlobService)
    assert from_addr("memory://") is not from_addr("memory://")


@pytest.mark.parametrize("url", ["memory://foo", "memory:///x", "memory://?a=b"])
def test_from_addr_memory_rejects_extras(url: str) -> None:
    with pytest.raises(InvalidAddressError, match="memory://"):
        from_addr(url)


@pytest.mark.parametrize("url", ["nope://x", "", "memory", "tmp/x"])
def test_from_addr_unknown(url: str) -> None:
    with pytest.raises(InvalidAddressError, match="memory://"):
        from_addr(url)


async def test_close_reraises_cached_error() -> None:
    class Failing(castore.BlobWriter):
        async def _write(self, data: bytes | bytearray | memoryview) -> None:
            pass

        async def _finish(self) -> B3Digest:
            raise StoreUnavailableError("down")

        async def _abort(self) -> None:
            pass

    w = Failing()
    await w.write(b"x")
    with pytest.raises(StoreUnavailableError, match="down"):
        await w.close()
    with pytest.raises(StoreUnavailableError, match="down"):
        await w.close()
    with pytest.raises(castore.WriterClosedError):
        await w.write(b"y")


async def test_failed_write_poisons_writer() -> None:
    class Flaky(castore.BlobWriter):
        finished = False

        async def _write(self, data: bytes | bytearray | memoryview) -> None:
            raise StoreError("lost")

        async def _finish(self) -> B3Digest:
            self.finished = True
            return B3Digest.of(b"")

        async def _abort(self) -> None:
            pass

    w = Flaky()
    with pytest.raises(StoreError):
        await w.write(b"x")
    with pytest.raises(StoreError, match="lost"):
        await w.close()
    assert not w.finished


async def test_writer_is_an_async_resource_whose_aclose_aborts_an_open_writer() -> None:
    svc = castore.MemoryBlobService()
    w = await svc.open_write()
    assert isinstance(w, anyio.abc.AsyncResource)
    await w.write(HELLOWORLD)
    await w.aclose()
    await w.aclose()  # idempotent
    with pytest.raises(castore.WriteAbortedError):
        await w.close()
    with pytest.raises(castore.WriterClosedError):
        await w.write(b"x")
    assert not await svc.has(HELLOWORLD_DIGEST)


async def test_writer_aclose_after_close_keeps_the_blob() -> None:
    svc = castore.MemoryBlobService()
    w = StatsBlobService(svc)
    writer = await w.open_write()
    await writer.write(HELLOWORLD)
    assert await writer.close() == HELLOWORLD_DIGEST
    await writer.aclose()
    assert await writer.close() == HELLOWORLD_DIGEST
    assert await svc.get(HELLOWORLD_DIGEST) == HELLOWORLD


async def test_wrapper_writer_keeps_the_state_machine() -> None:
    inner = castore.MemoryBlobService()
    writer = WrapperBlobWriter(await inner.open_write())
    await writer.write(HELLOWORLD)
    assert await writer.close() == HELLOWORLD_DIGEST
    assert await writer.close() == HELLOWORLD_DIGEST
    with pytest.raises(castore.WriterClosedError):
        await writer.write(b"x")
    aborted = WrapperBlobWriter(await inner.open_write())
    await aborted.write(b"never stored")
    await aborted.aclose()
    with pytest.raises(castore.WriteAbortedError):
        await aborted.close()
    with pytest.raises(castore.WriteAbortedError):
        await aborted.inner.close()
    assert await inner.get(B3Digest.of(b"never stored")) is None


def test_seek_target_is_public() -> None:
    from castore.blobservice import _seek_target, seek_target

    assert seek_target(-2, 2, 0, 10) == 8
    assert _seek_target is seek_target
    with pytest.raises(InvalidSeekError):
        seek_target(-1, 0, 0, 10)


def test_public_names() -> None:
    for name in castore.__all__:
        assert hasattr(castore, name), name


def test_translate_store_error_keeps_the_summary() -> None:
    raw = RuntimeError(
        "Generic S3 error: HEAD http://127.0.0.1:1/b/x - HTTP error: error sending request"
        '\n\nDebug source:\nGeneric {\n    store: "S3",\n    kind: ConnectionRefused,\n}'
    )
    with pytest.warns(DeprecationWarning):
        e = translate_store_error(raw, "head x")
    assert isinstance(e, StoreUnavailableError)
    assert "Debug source" not in str(e) and "\n" not in str(e)
    assert "error sending request" in str(e)
