"""The Hypothesis state machine over the memory backend and over fault-injected services."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from hypothesis import Phase, settings
from obstore.store import MemoryStore

from castore import B3Digest, BlobInfo, BlobService, MemoryBlobService, ObjectStoreBlobService
from castore.testing.faults import Fault, FaultyBlobService, InjectedFault
from castore.testing.statemachine import BlobServiceMachine, blob_service_machine
from castore.wrappers import WrapperBlobService

EXAMPLES = int(os.environ.get("CASTORE_STATEFUL_EXAMPLES", "15"))
STATEFUL = settings(max_examples=EXAMPLES, stateful_step_count=15, deadline=None)


async def _memory() -> BlobService:
    return MemoryBlobService()


TestMemoryMachine = blob_service_machine(_memory).TestCase
TestMemoryMachine.settings = STATEFUL


class SubclassedMemoryMachine(BlobServiceMachine):
    """The machine used by subclassing, as a third-party backend's tests would."""

    async def make_service(self) -> BlobService:
        return MemoryBlobService()


TestSubclassedMemoryMachine = SubclassedMemoryMachine.TestCase
TestSubclassedMemoryMachine.settings = STATEFUL


def test_the_base_machine_needs_a_service() -> None:
    with pytest.raises(NotImplementedError, match="make_service"):
        BlobServiceMachine()


async def _faulty_memory() -> BlobService:
    svc = FaultyBlobService(MemoryBlobService(), seed=7)
    svc.plan("write", Fault.ERROR, rate=0.05)
    svc.plan("close", Fault.ERROR, rate=0.1)
    svc.plan("has", Fault.TIMEOUT, rate=0.05)
    return svc


TestFaultyMemoryMachine = blob_service_machine(
    _faulty_memory, allowed_errors=(InjectedFault, TimeoutError)
).TestCase
TestFaultyMemoryMachine.settings = STATEFUL


async def _lying() -> BlobService:
    svc = FaultyBlobService(MemoryBlobService(), seed=3)
    svc.plan("read", Fault.FLIP, rate=1.0)
    return svc


class LyingMachine(BlobServiceMachine):
    async def make_service(self) -> BlobService:
        return await _lying()


@pytest.mark.parametrize("machine", [LyingMachine, blob_service_machine(_lying)])
def test_machine_catches_wrong_bytes(machine: type[BlobServiceMachine]) -> None:
    """The machine is not vacuous: a service that flips bits in reads fails it, whether the
    machine is subclassed or built by blob_service_machine."""
    from hypothesis.stateful import run_state_machine_as_test

    # Enough steps that a write is followed by a read among the delete and list rules
    # (20 examples of 10 steps missed it once in a loaded run); no shrinking, which
    # only costs time here: any failure will do.
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=100,
                stateful_step_count=25,
                deadline=None,
                database=None,
                report_multiple_bugs=False,
                phases=(Phase.explicit, Phase.generate),
            ),
        )


async def _objectstore() -> BlobService:
    return ObjectStoreBlobService(MemoryStore(), avg_chunk_size=16 * 1024)


TestObjectStoreMachine = blob_service_machine(_objectstore).TestCase
TestObjectStoreMachine.settings = STATEFUL


class _KeepsIndexes(WrapperBlobService):
    """Says it deleted, deletes nothing: a delete that leaves the blob readable."""

    async def delete(self, digest: B3Digest) -> bool:
        return await self.has(digest)


class _ListsNothing(WrapperBlobService):
    async def list_blobs(self, *, details: bool = False) -> AsyncIterator[BlobInfo]:
        return
        yield


@pytest.mark.parametrize("broken", [_KeepsIndexes, _ListsNothing])
def test_machine_catches_broken_delete_and_listing(broken: type[WrapperBlobService]) -> None:
    """The delete and listing rules are not vacuous: a service whose delete leaves a blob
    of many chunks in place, or whose listing omits blobs, fails the machine."""
    from hypothesis.stateful import run_state_machine_as_test

    async def make() -> BlobService:
        return broken(await _objectstore())

    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            blob_service_machine(make),
            settings=settings(
                max_examples=50,
                stateful_step_count=15,
                deadline=None,
                database=None,
                report_multiple_bugs=False,
            ),
        )
