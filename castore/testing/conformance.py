"""The conformance suite: the behaviour every :class:`~castore.BlobService` shares.

Subclass :class:`BlobServiceConformance` in a test module and override the ``service``
fixture to yield a fresh, empty service::

    class TestMyBackend(BlobServiceConformance):
        @pytest.fixture
        async def service(self) -> AsyncIterator[BlobService]:
            async with MyBackend(...) as svc:
                yield svc

The async tests need an async pytest plugin; castore's own suite uses anyio's (mark the
tests with ``pytest.mark.anyio``, or let a conftest hook do it). The suite holds Rust
tvix-castore's shared blob-service tests and castore's additions:
the empty blob, chunk lists, the writer's state machine, concurrent writers, a large
round trip, random seeks checked against the bytes (Hypothesis), and deleting and
listing (``docs/lifecycle.md``). A service that cannot delete or list (the gRPC client:
the tvix protocol has neither) sets ``can_delete``/``can_list`` to ``False``, and the
suite checks that it says so with :class:`~castore.errors.UnsupportedOperationError`.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import AsyncIterator

import anyio
import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castore._digest import EMPTY_DIGEST, B3Digest
from castore.blobservice import BlobInfo, BlobReader, BlobService
from castore.errors import (
    InvalidDigestError,
    UnsupportedOperationError,
    WriteAbortedError,
    WriterClosedError,
)
from castore.testing.fixtures import BLOB_A, BLOB_A_DIGEST, BLOB_B, BLOB_B_DIGEST

__all__ = ["BlobServiceConformance", "check_reader_op", "pseudo_random_bytes"]

MISSING = B3Digest.of(b"castore conformance: never written")


def pseudo_random_bytes(n: int, seed: int = 0) -> bytes:
    """``n`` incompressible bytes, reproducible from ``seed``."""
    return random.Random(seed).randbytes(n)


async def check_reader_op(
    reader: BlobReader,
    data: bytes,
    pos: int,
    op: tuple[str, int],
    *,
    past_end: bool | None = None,
) -> int:
    """Apply one step to ``reader`` over the blob ``data``, with the cursor at ``pos``,
    check what it returned against ``data``, and return the new cursor.

    Steps: ``("read", n)`` (``-1`` reads to the end), ``("readinto", size)`` (into a
    buffer of ``size`` bytes, whose unwritten tail must stay as it was) and
    ``("seekW", offset)`` with ``W`` the ``whence`` (0, 1 or 2). A seek before the start
    must raise ``ValueError``; a seek past the end must succeed with ``past_end=True``,
    raise with ``False`` and may do either with ``None``.
    """
    kind, arg = op
    if kind == "read":
        got = await reader.read(arg)
        assert got == (data[pos:] if arg < 0 else data[pos : pos + arg])
        pos += len(got)
    elif kind == "readinto":
        buf = bytearray(b"\xee" * arg)
        n = await reader.readinto(buf)
        assert bytes(buf[:n]) == data[pos : pos + arg]
        assert buf[n:] == b"\xee" * (arg - n)
        pos += n
    else:
        whence = int(kind[-1])
        target = [arg, pos + arg, len(data) + arg][whence]
        if target < 0 or (target > len(data) and past_end is False):
            with pytest.raises(ValueError):
                await reader.seek(arg, whence)
        elif target > len(data) and past_end is None:
            # Plain cursors allow it (then read b""); chunked readers raise.
            try:
                assert await reader.seek(arg, whence) == target
                pos = target
            except ValueError:
                pass
        else:
            assert await reader.seek(arg, whence) == target
            pos = target
    assert reader.tell() == pos
    return pos


class _Boom(Exception):
    pass


async def _write_pieces(service: BlobService, data: bytes, piece: int) -> B3Digest:
    writer = await service.open_write()
    view = memoryview(data)
    for i in range(0, len(data), piece):
        await writer.write(view[i : i + piece])
    return await writer.close()


class BlobServiceConformance:
    """Tests every BlobService passes. Override :meth:`service`."""

    #: Size of the large round-trip blob; 64 MiB as the suite specifies.
    large_blob_size: int = 64 * 1024 * 1024

    #: Whether the service deletes blobs; if not, ``delete`` must raise
    #: :class:`~castore.errors.UnsupportedOperationError`.
    can_delete: bool = True

    #: Whether the service lists blobs; if not, ``list_blobs`` must raise
    #: :class:`~castore.errors.UnsupportedOperationError`.
    can_list: bool = True

    @pytest.fixture
    async def service(self) -> AsyncIterator[BlobService]:
        raise NotImplementedError("override the `service` fixture in your subclass")
        yield  # pragma: no cover

    # --- Rust's shared suite -------------------------------------------------------

    async def test_has_missing(self, service: BlobService) -> None:
        assert await service.has(MISSING) is False

    async def test_chunks_missing(self, service: BlobService) -> None:
        assert await service.chunks(MISSING) is None

    async def test_open_read_missing(self, service: BlobService) -> None:
        assert await service.open_read(MISSING) is None

    @pytest.mark.parametrize(
        ("blob", "digest"), [(BLOB_A, BLOB_A_DIGEST), (BLOB_B, BLOB_B_DIGEST)], ids=["A", "B"]
    )
    async def test_put_has_get(self, service: BlobService, blob: bytes, digest: B3Digest) -> None:
        writer = await service.open_write()
        assert await writer.write(blob) == len(blob)
        assert await writer.close() == digest
        assert await service.has(digest)
        reader = await service.open_read(digest)
        assert reader is not None
        async with reader:
            assert await reader.read() == blob
            assert await reader.read() == b""

    # --- digests in every form ------------------------------------------------------

    async def test_digest_strings_and_bytes(self, service: BlobService) -> None:
        """Every method that takes a digest takes ``blake3-…``, ``b3:…``, hex and raw bytes."""
        assert await service.put(BLOB_A) == BLOB_A_DIGEST
        b64 = str(BLOB_A_DIGEST)[len("blake3-") :]
        forms: list[str | bytes] = [
            str(BLOB_A_DIGEST),
            "b3:" + b64,
            BLOB_A_DIGEST.hex(),
            BLOB_A_DIGEST.hex().upper(),
            bytes(BLOB_A_DIGEST),
        ]
        for form in forms:
            assert await service.has(form) is True, form
            assert await service.chunks(form) is not None, form
            reader = await service.open_read(form)
            assert reader is not None, form
            async with reader:
                assert await reader.read() == BLOB_A
            assert await service.get(form) == BLOB_A
        assert await service.has(MISSING.hex()) is False
        assert await service.open_read(str(MISSING)) is None

    @pytest.mark.parametrize(
        ("bad", "says"),
        [
            (BLOB_A_DIGEST.hex()[:63], "got 63 characters"),
            ("blake3-" + "A" * 12, "32 bytes, got 9"),
            ("blake3-" + "A" * 10, "got 10 characters"),
            ("not a digest", "not a digest"),
            (b"short", "32 bytes"),
        ],
        ids=["hex63", "base64-short", "base64-bad", "words", "bytes"],
    )
    async def test_malformed_digest_strings(
        self, service: BlobService, bad: str | bytes, says: str
    ) -> None:
        for call in (service.has, service.open_read, service.chunks, service.get):
            with pytest.raises(InvalidDigestError, match=says) as info:
                await call(bad)
            assert isinstance(info.value, ValueError)

    async def test_seek_walk(self, service: BlobService) -> None:
        b = BLOB_B
        assert await service.put(b) == BLOB_B_DIGEST
        reader = await service.open_read(BLOB_B_DIGEST)
        assert reader is not None
        async with reader:
            assert await reader.read(10) == b[0:10]
            assert await reader.seek(10) == 10
            assert await reader.read(10) == b[10:20]
            assert await reader.seek(25) == 25
            assert await reader.read(10) == b[25:35]
            assert await reader.seek(12345, io.SEEK_CUR) == 12380
            assert await reader.read(10) == b[12380:12390]
            assert await reader.seek(len(b)) == len(b)
            assert await reader.read() == b""
            assert await reader.seek(-1, io.SEEK_END) == len(b) - 1
            assert await reader.read() == b[-1:]

    # --- castore's additions -------------------------------------------------------

    async def test_empty_blob(self, service: BlobService) -> None:
        # castore's rule: has(d) iff open_read(d) is not None, for the empty blob too.
        assert await service.has(EMPTY_DIGEST) is False
        assert await service.open_read(EMPTY_DIGEST) is None
        writer = await service.open_write()
        assert await writer.close() == EMPTY_DIGEST
        assert await service.has(EMPTY_DIGEST)
        assert await service.chunks(EMPTY_DIGEST) == []
        reader = await service.open_read(EMPTY_DIGEST)
        assert reader is not None
        async with reader:
            assert await reader.read() == b""

    async def test_chunks_of_present_blob(self, service: BlobService) -> None:
        data = pseudo_random_bytes(3 * 1024 * 1024 + 17, seed=1)
        digest = await service.put(data)
        chunks = await service.chunks(digest)
        assert chunks is not None
        if chunks:
            assert sum(c.size for c in chunks) == len(data)
            offset = 0
            for c in chunks:
                assert c.digest == B3Digest.of(data[offset : offset + c.size])
                # A chunk is itself readable through the service, by its digest.
                assert await service.has(c.digest)
                reader = await service.open_read(c.digest)
                assert reader is not None
                async with reader:
                    assert await reader.read() == data[offset : offset + c.size]
                offset += c.size
        small = await service.put(BLOB_A)
        assert await service.chunks(small) == []

    async def test_framing_does_not_matter(self, service: BlobService) -> None:
        data = pseudo_random_bytes(1_500_000, seed=2)
        whole = await service.put(data)
        assert await _write_pieces(service, data, 4093) == whole
        assert await _write_pieces(service, data[:5000], 1) == B3Digest.of(data[:5000])
        assert whole == B3Digest.of(data)

    async def test_close_twice(self, service: BlobService) -> None:
        writer = await service.open_write()
        await writer.write(b"twice")
        first = await writer.close()
        assert await writer.close() == first == B3Digest.of(b"twice")

    async def test_write_after_close(self, service: BlobService) -> None:
        writer = await service.open_write()
        await writer.write(b"x")
        await writer.close()
        with pytest.raises(WriterClosedError):
            await writer.write(b"y")

    async def test_abort_in_async_with(self, service: BlobService) -> None:
        data = pseudo_random_bytes(700_000, seed=3)
        with pytest.raises(_Boom):
            async with await service.open_write() as writer:
                await writer.write(data)
                raise _Boom
        assert not await service.has(B3Digest.of(data))
        with pytest.raises(WriteAbortedError):
            await writer.close()
        with pytest.raises(WriterClosedError):
            await writer.write(b"more")

    async def test_async_with_closes(self, service: BlobService) -> None:
        async with await service.open_write() as writer:
            await writer.write(BLOB_A)
        assert await writer.close() == BLOB_A_DIGEST
        assert await service.has(BLOB_A_DIGEST)

    async def test_concurrent_writers(self, service: BlobService) -> None:
        shared = pseudo_random_bytes(2_000_000, seed=4)
        distinct = [pseudo_random_bytes(600_000, seed=100 + i) for i in range(6)]
        results: dict[int, B3Digest] = {}

        async def put(i: int, data: bytes, piece: int) -> None:
            results[i] = await _write_pieces(service, data, piece)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(put, i, shared, 65536 + 997 * i)
            for i, data in enumerate(distinct):
                tg.start_soon(put, 10 + i, data, 100_000)
        assert {results[i] for i in range(6)} == {B3Digest.of(shared)}
        for i, data in enumerate(distinct):
            assert results[10 + i] == B3Digest.of(data)
        for data in [shared, *distinct]:
            reader = await service.open_read(B3Digest.of(data))
            assert reader is not None
            async with reader:
                assert await reader.read() == data

    async def test_large_roundtrip(self, service: BlobService) -> None:
        size = self.large_blob_size
        block = pseudo_random_bytes(1 << 20, seed=5)
        hasher = blake3.blake3()
        writer = await service.open_write()
        for i in range(size // len(block)):
            piece = block[i % 7 :] + block[: i % 7]  # vary content a little between MiBs
            hasher.update(piece)
            await writer.write(piece)
        digest = await writer.close()
        assert digest.digest == hasher.digest()
        reader = await service.open_read(digest)
        assert reader is not None
        check = blake3.blake3()
        total = 0
        async with reader:
            async for part in reader:
                check.update(part)
                total += len(part)
        assert total == size
        assert check.digest() == digest.digest

    async def test_readinto_and_iteration(self, service: BlobService) -> None:
        data = pseudo_random_bytes(1_100_000, seed=6)
        digest = await service.put(data)
        reader = await service.open_read(digest)
        assert reader is not None
        async with reader:
            buf = bytearray(1000)
            assert await reader.readinto(buf) == 1000
            assert bytes(buf) == data[:1000]
            assert reader.tell() == 1000
            rest = b"".join([part async for part in reader])
            assert rest == data[1000:]

    async def test_negative_seek_raises(self, service: BlobService) -> None:
        digest = await service.put(BLOB_B)
        reader = await service.open_read(digest)
        assert reader is not None
        async with reader:
            with pytest.raises(ValueError):
                await reader.seek(-1)
            with pytest.raises(ValueError):
                await reader.seek(-len(BLOB_B) - 1, io.SEEK_END)

    @settings(
        max_examples=int(os.environ.get("CASTORE_HYPOTHESIS_EXAMPLES", "40")),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("read"), st.integers(-1, 600_000)),
                st.tuples(st.just("readinto"), st.integers(0, 600_000)),
                st.tuples(st.just("seek0"), st.integers(0, 2_200_000)),
                st.tuples(st.just("seek1"), st.integers(-1_500_000, 1_500_000)),
                st.tuples(st.just("seek2"), st.integers(-2_200_000, 10)),
            ),
            max_size=12,
        )
    )
    async def test_random_seeks_and_reads(
        self, service: BlobService, ops: list[tuple[str, int]]
    ) -> None:
        data = pseudo_random_bytes(2_097_152 + 4321, seed=7)
        digest = B3Digest.of(data)
        if not await service.has(digest):
            assert await service.put(data) == digest
        reader = await service.open_read(digest)
        assert reader is not None
        pos = 0
        async with reader:
            for op in ops:
                pos = await check_reader_op(reader, data, pos, op)

    # --- deleting and listing ------------------------------------------------------

    async def _listed(self, service: BlobService, *, details: bool = False) -> list[BlobInfo]:
        return [info async for info in service.list_blobs(details=details)]

    async def test_delete_unsupported_says_so(self, service: BlobService) -> None:
        if self.can_delete:
            assert await service.delete(MISSING) is False
            return
        digest = await service.put(BLOB_A)
        with pytest.raises(UnsupportedOperationError):
            await service.delete(digest)
        assert await service.get(digest) == BLOB_A

    async def test_list_unsupported_says_so(self, service: BlobService) -> None:
        if self.can_list:
            assert await self._listed(service) == []
            return
        with pytest.raises(UnsupportedOperationError):
            await self._listed(service)

    async def test_delete_blob_of_many_chunks(self, service: BlobService) -> None:
        """A blob of two or more chunks (or any blob, on a store that does not chunk) is
        gone at once: ``has`` false, ``open_read`` and ``chunks`` ``None``, not listed."""
        if not self.can_delete:
            return
        data = pseudo_random_bytes(3 * 1024 * 1024 + 5, seed=20)
        digest = await service.put(data)
        chunks = await service.chunks(digest)
        assert await service.delete(digest) is True
        assert await service.has(digest) is False
        assert await service.open_read(digest) is None
        assert await service.chunks(digest) is None
        assert await service.delete(digest) is False
        if self.can_list:
            assert digest not in {i.digest for i in await self._listed(service)}
        # Its chunks stay readable by their own digests (until garbage collection).
        offset = 0
        for c in chunks or []:
            reader = await service.open_read(c.digest)
            if reader is not None:
                async with reader:
                    assert await reader.read() == data[offset : offset + c.size]
            offset += c.size
        # Putting it again brings it back.
        assert await service.put(data) == digest
        assert await service.get(digest) == data

    async def test_delete_blob_of_one_chunk(self, service: BlobService) -> None:
        """A small blob is no longer listed after delete; whatever the service still
        serves under its digest (a chunking store keeps the chunk until garbage
        collection) is its exact bytes."""
        if not self.can_delete:
            return
        digest = await service.put(BLOB_A)
        other = await service.put(BLOB_B)
        assert await service.delete(digest) is True
        assert await service.delete(digest) is False
        if self.can_list:
            assert {i.digest for i in await self._listed(service)} == {other}
        if await service.has(digest):
            assert await service.get(digest) == BLOB_A
            assert await service.chunks(digest) == []
        else:
            assert await service.open_read(digest) is None
            assert await service.chunks(digest) is None
        assert await service.get(other) == BLOB_B

    async def test_delete_empty_blob(self, service: BlobService) -> None:
        """The empty blob has no chunk to outlive its index: deleted, it is absent."""
        if not self.can_delete:
            return
        assert await service.delete(EMPTY_DIGEST) is False
        assert await service.put(b"") == EMPTY_DIGEST
        assert await service.delete(EMPTY_DIGEST) is True
        assert await service.has(EMPTY_DIGEST) is False
        assert await service.open_read(EMPTY_DIGEST) is None
        assert await service.chunks(EMPTY_DIGEST) is None

    async def test_delete_never_breaks_another_blob(self, service: BlobService) -> None:
        """Blobs that share chunks with a deleted blob read back exactly, whole and chunk
        by chunk; so does a blob whose bytes are exactly one chunk of the deleted one."""
        if not self.can_delete:
            return
        base = pseudo_random_bytes(3 * 1024 * 1024, seed=21)
        x = base + b"x" * 1000
        z = base[: 2 * 1024 * 1024] + pseudo_random_bytes(700_000, seed=22)
        dx, dz = await service.put(x), await service.put(z)
        x_chunks = await service.chunks(dx) or []
        # A blob equal to one chunk of x has that chunk's digest (FastCDC cuts it alone
        # as it cut it in x): on a chunking store the two share one object.
        if len(x_chunks) >= 2:
            start = x_chunks[0].size
            y = x[start : start + x_chunks[1].size]
            assert await service.put(y) == x_chunks[1].digest
        else:
            y = pseudo_random_bytes(1000, seed=23)
            await service.put(y)
        dy = B3Digest.of(y)

        assert await service.delete(dy) is True
        await _assert_reads(service, dx, x)
        await _assert_reads(service, dz, z)

        assert await service.delete(dx) is True
        assert await service.has(dx) is False
        await _assert_reads(service, dz, z)
        if len(x_chunks) >= 2:
            # y's bytes are still x's chunk, and z may use it too: readable by digest.
            assert await service.get(dy) == y
        if self.can_list:
            # (A caching service may also list chunks it keeps as blobs of their own.)
            listed = {i.digest for i in await self._listed(service)}
            assert dz in listed and dx not in listed

    async def test_list_blobs(self, service: BlobService) -> None:
        """Every stored blob is listed once; details give each blob's size, and the chunk
        count agrees with ``chunks``."""
        if not self.can_list:
            return
        big = pseudo_random_bytes(2 * 1024 * 1024 + 3, seed=24)
        blobs = {B3Digest.of(d): d for d in (BLOB_A, BLOB_B, b"", big)}
        for data in blobs.values():
            await service.put(data)
        await service.put(BLOB_A)  # a second write does not list it twice
        plain = await self._listed(service)
        assert sorted(i.digest.hex() for i in plain) == sorted(d.hex() for d in blobs)
        assert all(i.size is None and i.chunk_count is None for i in plain)
        detailed = await self._listed(service, details=True)
        assert len(detailed) == len(blobs)
        for info in detailed:
            assert info.size == len(blobs[info.digest])
            chunks = await service.chunks(info.digest)
            assert chunks is not None
            if chunks:
                assert info.chunk_count == len(chunks)
            elif info.chunk_count is not None:
                assert info.chunk_count == (0 if info.digest == EMPTY_DIGEST else 1)


async def _assert_reads(service: BlobService, digest: B3Digest, data: bytes) -> None:
    """``data`` reads back whole under ``digest``, and chunk by chunk by chunk digests."""
    assert await service.has(digest)
    assert await service.get(digest) == data
    offset = 0
    for c in await service.chunks(digest) or []:
        assert await service.get(c.digest) == data[offset : offset + c.size]
        offset += c.size
