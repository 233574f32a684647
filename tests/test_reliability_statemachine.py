"""The Hypothesis state machine against services whose object store injects random faults.

The machine (``castore.testing.statemachine``) writes, aborts, reads with seeks, and asks
``has`` and ``chunks``, comparing with the in-memory model. Here the store under the
service fails puts, gets and HEADs at random, times out, and returns truncated or
bit-flipped chunk objects; operations may raise castore's ``StoreError`` or
``DataCorruptionError``, and the machine checks what must still hold: never a wrong byte,
an acknowledged blob never lost, a failed write never leaving a blob with wrong bytes.

Three stacks: the object-store service itself, a gRPC client talking to a server over
it, and a combined service (write-through) over two faulty object stores. Chunks are
small (16 KiB on average) so that every blob has many.

Corruption is injected into chunk objects only. A blob index has no checksum of its own:
a corrupt one is caught by a read that reaches the blob's end, not by a read after a
seek (``docs/reliability.md``). Corrupt indexes are covered by
``test_reliability_faults.py`` (faulty gets at every point of a read) and by
``test_fuzz.py`` (every single-bit flip of a stored index).

``CASTORE_STRESS=N`` runs N times as many examples.
"""

from __future__ import annotations

import contextlib
import os

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from obstore.store import MemoryStore

from castore import BlobService, CombinedBlobService, ObjectStoreBlobService
from castore.errors import DataCorruptionError, StoreError
from castore.grpc import serve
from castore.registry import from_addr
from castore.testing.faults import Fault, FaultyStore
from castore.testing.statemachine import blob_service_machine
from castore.wrappers import WrapperBlobService

STRESS = max(1, int(os.environ.get("CASTORE_STRESS", "1")))
AVG = 16 * 1024
ALLOWED = (StoreError, DataCorruptionError)


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples * STRESS,
        stateful_step_count=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def _faulty(stores: list[FaultyStore], *, in_process: bool = True) -> FaultyStore:
    """A memory store failing a few calls in a hundred of each kind, and corrupting a few
    chunk gets in a hundred (Hypothesis keeps most blobs small: few calls an example).

    Each store also corrupts its first chunk get, truncated or flipped by turns, so that
    a run that reads any chunk at all sees corruption whatever else Hypothesis chooses (at
    random rates alone, a run whose examples read few chunks could see none: seen in CI).
    """
    store = FaultyStore(MemoryStore(), seed=len(stores) % 2, in_process=in_process)
    corrupt = Fault.FLIP if len(stores) % 2 else Fault.TRUNCATE
    store.plan("get", corrupt, nth=1, where="chunks/")
    store.plan("put", Fault.ERROR, rate=0.02)
    store.plan("put", Fault.ERROR, rate=0.01, after=True)
    store.plan("exists", Fault.ERROR, rate=0.02)
    store.plan("get", Fault.ERROR, rate=0.02)
    store.plan("any", Fault.TIMEOUT, rate=0.01)
    store.plan("get", Fault.TRUNCATE, rate=0.03, where="chunks/")
    store.plan("get", Fault.FLIP, rate=0.03, where="chunks/")
    stores.append(store)
    return store


def _run(
    make: object, stores: list[FaultyStore], examples: int, what: str, *, lifecycle: bool = True
) -> None:
    machine = blob_service_machine(
        make,  # type: ignore[arg-type]
        allowed_errors=ALLOWED,
        lifecycle=lifecycle,
    )
    run_state_machine_as_test(machine, settings=_settings(examples))
    calls = sum(s.total_calls for s in stores)
    injected = {op: sum(s.injected[op] for s in stores) for op in ("get", "exists", "put")}
    kinds: dict[str, int] = {}
    for s in stores:
        for _, _, fault in s.faults:
            kinds[fault.name] = kinds.get(fault.name, 0) + 1
    print(
        f"\nstate machine over {what}: {len(stores)} services, {calls} store calls, "
        f"{sum(injected.values())} faults injected {injected} {kinds}"
    )
    assert sum(injected.values()) > 0, "no fault was injected: the run proves nothing"
    assert kinds.get("TRUNCATE", 0) + kinds.get("FLIP", 0) > 0


def test_objectstore_over_faulty_store() -> None:
    stores: list[FaultyStore] = []

    async def make() -> BlobService:
        # Alternate the writer's two upload paths: puts from worker threads (memory and
        # local disk) and concurrent async puts (remote stores).
        in_process = len(stores) % 2 == 0
        return ObjectStoreBlobService(
            _faulty(stores, in_process=in_process), avg_chunk_size=AVG, timeout=5
        )

    _run(make, stores, 60, "ObjectStoreBlobService(FaultyStore)")


class _Served(WrapperBlobService):
    """A gRPC client whose :meth:`aclose` also stops the server behind it."""

    def __init__(self, client: BlobService, stack: contextlib.AsyncExitStack) -> None:
        super().__init__(client)
        self._stack = stack

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self._stack.aclose()


def test_grpc_over_faulty_store() -> None:
    stores: list[FaultyStore] = []

    async def make() -> BlobService:
        backend = ObjectStoreBlobService(_faulty(stores), avg_chunk_size=AVG, timeout=5)
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(backend)
        running = await stack.enter_async_context(serve(backend, grace=5))
        return _Served(from_addr(f"{running.url}?timeout=10"), stack)

    # The tvix protocol can neither delete nor list: the machine checks that it says so.
    _run(
        make,
        stores,
        30,
        "gRPC client -> server -> ObjectStoreBlobService(FaultyStore)",
        lifecycle=False,
    )


def test_combined_over_faulty_stores() -> None:
    stores: list[FaultyStore] = []

    async def make() -> BlobService:
        near = ObjectStoreBlobService(_faulty(stores), avg_chunk_size=AVG, timeout=5)
        far = ObjectStoreBlobService(_faulty(stores), avg_chunk_size=AVG, timeout=5)
        return CombinedBlobService(near, far, write_through=True)

    _run(make, stores, 30, "CombinedBlobService(write-through, two FaultyStores)")
