"""A Hypothesis state machine that checks any BlobService against the in-memory model.

It writes blobs (whole, in pieces, concurrently overlapping content), aborts writes,
reads with random seeks, asks ``has`` and ``chunks``, deletes blobs and lists them,
comparing every answer with a :class:`~castore.MemoryBlobService`. A deleted blob must not
take another blob with it, and whatever the service still serves under a deleted digest
(a chunking store keeps a one-chunk blob's chunk until garbage collection) must be its
exact bytes; every acknowledged blob must be listed, once. Faults may be allowed: then an
operation may raise one of ``allowed_errors``, and the machine checks what must still
hold: an acknowledged blob is never lost, whatever the service claims to hold reads back
exactly, and a failed or aborted write never leaves a blob with wrong bytes.

Use it from a test module, by subclassing::

    class MyMachine(BlobServiceMachine):
        async def make_service(self) -> BlobService:
            return build_my_service()

    TestMyMachine = MyMachine.TestCase
    TestMyMachine.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)

or with :func:`blob_service_machine`, which builds that subclass from a function::

    TestMyMachine = blob_service_machine(build_my_service_async).TestCase

The machine runs the service on an event loop in a helper thread (anyio's blocking
portal), so the Hypothesis test itself is synchronous.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from castore._digest import B3Digest
from castore.blobservice import BlobInfo, BlobService
from castore.errors import CastoreError, UnsupportedOperationError
from castore.memory import MemoryBlobService

__all__ = ["BlobServiceMachine", "blob_service_machine"]

# Blobs are built from a small pool of blocks so that different blobs share content
# (and so chunks), which exercises deduplication.
_BLOCK = 48 * 1024
_POOL = [random.Random(i).randbytes(_BLOCK) for i in range(8)]


def _blob(layout: list[tuple[int, int]]) -> bytes:
    """Concatenate (block index, cut) pairs: the block's first ``cut`` bytes."""
    return b"".join(_POOL[i][:cut] for i, cut in layout)


_layouts = st.lists(st.tuples(st.integers(0, 7), st.integers(1, _BLOCK)), max_size=40)
_pieces = st.integers(1, 300_000)
_ops = st.lists(
    st.tuples(st.sampled_from(["read", "seek0", "seek1", "seek2"]), st.integers(-300_000, 300_000)),
    max_size=8,
)


class BlobServiceMachine(RuleBasedStateMachine):
    """Checks the service :meth:`make_service` builds against :class:`~castore.MemoryBlobService`.

    Subclass it and define :meth:`make_service` (and :attr:`allowed_errors` where faults
    are expected), or let :func:`blob_service_machine` do that; ``.TestCase`` is the test.
    """

    #: Exceptions the service may raise (for example when it wraps a fault-injecting
    #: store); any other exception fails the test.
    allowed_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    #: ``False`` for services that can neither delete nor list (a gRPC client): the
    #: machine then checks that they say so with
    #: :class:`~castore.errors.UnsupportedOperationError`.
    lifecycle: ClassVar[bool] = True

    blobs = Bundle("blobs")

    async def make_service(self) -> BlobService:
        """The service under test; runs on the machine's event loop, once per example."""
        raise NotImplementedError("define make_service, or use blob_service_machine()")

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = start_blocking_portal()
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        try:
            self.sut: BlobService = self.portal.call(self.make_service)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self.model = MemoryBlobService()
        self.acked: dict[B3Digest, bytes] = {}
        self.failed: dict[B3Digest, bytes] = {}
        self.deleted: dict[B3Digest, bytes] = {}

    def teardown(self) -> None:
        try:
            self.portal.call(self.sut.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return self.portal.call(fn, *args)

    def tolerated(self, exc: BaseException) -> bool:
        return bool(self.allowed_errors) and isinstance(exc, self.allowed_errors)

    @initialize()
    def start(self) -> None:
        try:
            assert self.run(self.sut.has, B3Digest.of(b"never")) is False
        except CastoreError as e:
            if not self.tolerated(e):
                raise

    async def _write(self, data: bytes, piece: int) -> B3Digest:
        writer = await self.sut.open_write()
        view = memoryview(data)
        for i in range(0, len(data), piece):
            await writer.write(view[i : i + piece])
        return await writer.close()

    @rule(target=blobs, layout=_layouts, piece=_pieces)
    def write(self, layout: list[tuple[int, int]], piece: int) -> B3Digest:
        data = _blob(layout)
        want: B3Digest = self.run(self.model.put, data)
        try:
            got: B3Digest = self.run(self._write, data, piece)
        except CastoreError as e:
            if not self.tolerated(e):
                raise
            self.failed[want] = data
            return want
        assert got == want
        self.acked[want] = data
        self.deleted.pop(want, None)
        return want

    @rule(target=blobs, layouts=st.lists(_layouts, min_size=2, max_size=4), piece=_pieces)
    def write_concurrently(self, layouts: list[list[tuple[int, int]]], piece: int) -> B3Digest:
        datas = [_blob(lay) for lay in layouts]
        results: list[B3Digest | BaseException] = [B3Digest.of(b"")] * len(datas)

        async def one(i: int) -> None:
            try:
                results[i] = await self._write(datas[i], piece)
            except CastoreError as e:
                results[i] = e

        async def all_of() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(len(datas)):
                    tg.start_soon(one, i)

        self.run(all_of)
        for data, res in zip(datas, results, strict=True):
            want = B3Digest.of(data)
            if isinstance(res, BaseException):
                if not self.tolerated(res):
                    raise res
                self.failed[want] = data
            else:
                assert res == want
                self.acked[want] = data
                self.deleted.pop(want, None)
                self.run(self.model.put, data)
        return B3Digest.of(datas[0])

    @rule(layout=_layouts, piece=_pieces, cut=st.floats(0, 1))
    def aborted_write(self, layout: list[tuple[int, int]], piece: int, cut: float) -> None:
        data = _blob(layout) + b"castore: aborted"
        digest = B3Digest.of(data)

        async def go() -> None:
            writer = await self.sut.open_write()
            upto = int(len(data) * cut)
            for i in range(0, upto, piece):
                await writer.write(data[i : min(upto, i + piece)])
            await writer.abort()

        try:
            self.run(go)
            if digest not in self.acked:
                assert self.run(self.sut.has, digest) is False
        except CastoreError as e:
            if not self.tolerated(e):
                raise

    @rule(digest=blobs, ops=_ops)
    def read(self, digest: B3Digest, ops: list[tuple[str, int]]) -> None:
        data = self.acked.get(digest)
        if data is None:
            return

        async def go() -> None:
            reader = await self.sut.open_read(digest)
            assert reader is not None, "an acknowledged blob is missing"
            pos = 0
            async with reader:
                for kind, arg in ops:
                    if kind == "read":
                        got = await reader.read(arg)
                        want = data[pos:] if arg < 0 else data[pos : pos + arg]
                        assert got == want
                        pos += len(got)
                        continue
                    whence = int(kind[-1])
                    target = [arg, pos + arg, len(data) + arg][whence]
                    if 0 <= target <= len(data):
                        assert await reader.seek(arg, whence) == target
                        pos = target
                    elif target < 0:
                        try:
                            await reader.seek(arg, whence)
                        except ValueError:
                            continue
                        raise AssertionError("a negative seek did not raise")
                await reader.seek(0)
                assert await reader.read() == data

        try:
            self.run(go)
        except CastoreError as e:
            if not self.tolerated(e) or isinstance(e, ValueError):
                raise

    @rule(digest=blobs)
    def has_and_chunks(self, digest: B3Digest) -> None:
        try:
            present = self.run(self.sut.has, digest)
            chunks = self.run(self.sut.chunks, digest)
        except CastoreError as e:
            if not self.tolerated(e):
                raise
            return
        if digest in self.acked:
            assert present, "an acknowledged blob is not there"
            assert chunks is not None
            if chunks:
                assert sum(c.size for c in chunks) == len(self.acked[digest])
        elif not present:
            assert chunks is None

    @rule(digest=blobs)
    def failed_writes_leave_nothing_wrong(self, digest: B3Digest) -> None:
        data = self.failed.get(digest)
        if data is None or digest in self.acked:
            return
        try:
            if self.run(self.sut.has, digest):
                # A write that failed late may have stored the blob whole; then it
                # must read back exactly.
                got = self.run(self.sut.get, digest)
                assert got == data
        except CastoreError as e:
            if not self.tolerated(e):
                raise

    def _unsupported(self, fn: Callable[[], Awaitable[Any]], what: str) -> None:
        try:
            self.run(fn)
        except UnsupportedOperationError:
            return
        raise AssertionError(f"{what} did not say it is unsupported")

    @rule(digest=blobs)
    def delete(self, digest: B3Digest) -> None:
        if not self.lifecycle:
            self._unsupported(lambda: self.sut.delete(digest), "delete")
            return
        data = self.acked.get(digest) or self.failed.get(digest)
        try:
            found = self.run(self.sut.delete, digest)
        except CastoreError as e:
            if not self.tolerated(e):
                raise
            # Deleted or not: it may still be there, and then must read back exactly.
            if digest in self.acked:
                self.failed[digest] = self.acked.pop(digest)
                self.run(self.model.delete, digest)
            return
        if digest in self.acked:
            assert found, "delete did not find an acknowledged blob"
        elif digest not in self.failed and digest not in self.deleted:
            # A deleted blob stored as one chunk stays readable by its digest, and a
            # read through a caching service (combined) may store it in near again: a
            # second delete may find it. A blob never stored is never found.
            assert not found, "delete found a blob that was never stored"
        self.run(self.model.delete, digest)
        self.acked.pop(digest, None)
        self.failed.pop(digest, None)
        if data is not None:
            self.deleted[digest] = data

    @rule(digest=blobs)
    def deleted_blobs_are_gone_or_exact(self, digest: B3Digest) -> None:
        data = self.deleted.get(digest)
        if data is None:
            return
        try:
            chunks = self.run(self.sut.chunks, digest)
            # A blob of two or more chunks is gone at once; one stored as a single chunk
            # may be served from that chunk until garbage collection.
            assert not chunks, "a deleted blob still has its chunk list"
            if chunks is not None:
                assert self.run(self.sut.get, digest) == data
        except CastoreError as e:
            if not self.tolerated(e):
                raise

    @rule(details=st.booleans())
    def list_blobs(self, details: bool) -> None:
        async def listing() -> list[BlobInfo]:
            return [i async for i in self.sut.list_blobs(details=details)]

        if not self.lifecycle:
            self._unsupported(listing, "list_blobs")
            return
        try:
            infos: list[BlobInfo] = self.run(listing)
        except CastoreError as e:
            if not self.tolerated(e):
                raise
            return
        listed = {i.digest for i in infos}
        assert len(listed) == len(infos), "a blob was listed twice"
        missing = set(self.acked) - listed
        assert not missing, f"acknowledged blobs not listed: {sorted(d.hex() for d in missing)}"
        for info in infos:
            data = self.acked.get(info.digest)
            if details and data is not None and not self.allowed_errors:
                assert info.size == len(data)

    @invariant()
    def model_agrees(self) -> None:
        assert len(self.model) >= len(self.acked)


def blob_service_machine(
    make_service: Callable[[], Awaitable[BlobService]],
    *,
    allowed_errors: tuple[type[BaseException], ...] = (),
    lifecycle: bool = True,
) -> type[BlobServiceMachine]:
    """A :class:`BlobServiceMachine` subclass testing the services ``make_service`` builds.

    ``make_service`` runs on the machine's event loop, once per Hypothesis example.
    ``allowed_errors`` are exceptions the service may raise (for example when it wraps
    a fault-injecting store); any other exception fails the test. ``lifecycle=False``:
    the service can neither delete nor list (see :attr:`BlobServiceMachine.lifecycle`).
    """

    async def make(self: BlobServiceMachine) -> BlobService:
        return await make_service()

    return type(
        "BlobServiceMachine",
        (BlobServiceMachine,),
        {"make_service": make, "allowed_errors": allowed_errors, "lifecycle": lifecycle},
    )
