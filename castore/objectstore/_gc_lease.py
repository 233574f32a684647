"""The collector's lease: one collector at a time, with no service but the bucket.

Each claim is a new object ``gc/lease/<epoch>`` (see :class:`Lease`), so claims are only
ever created, never overwritten; ``docs/lifecycle.md`` explains how the lease keeps a
collector that was suspended or stalled from deleting while its successor sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from castore.errors import GcLeaseError
from castore.objectstore._errors import store_error
from castore.objectstore._gc_state import (
    GcClock,
    GcKeys,
    decode_json,
    encode_json,
    number,
    store_now,
)

if TYPE_CHECKING:
    from castore.objectstore._adapter import ObjectInfo, StoreAdapter

__all__ = ["Lease"]


@dataclass(frozen=True, slots=True)
class _Claim:
    epoch: int
    info: ObjectInfo
    holder: str
    duration: float
    margin: float
    released: bool

    def free_at(self) -> float:
        """Store time from which another collector may take over."""
        if self.released:
            return 0.0
        return self.info.last_modified.timestamp() + self.duration + self.margin


class Lease:
    """The collector's lease: one object created per claim under ``gc/lease/``.

    A claim is the creation of epoch ``n + 1`` (a conditional put that fails if the key
    exists), so two collectors can never both hold it: the one whose create succeeds
    does, and a listing afterwards confirms that no higher epoch exists. The holder
    renews by creating the next epoch itself, and releases by creating one marked
    released. Another collector takes over an unreleased claim only once the store's
    clock has passed its LastModified by the lease's duration plus a margin. The holder
    counts its lease on its own suspend-counting clock from just before it sent the
    create, and stops deleting when that runs out: its deletes then reach the store
    before anyone can take over.
    """

    def __init__(
        self,
        adapter: StoreAdapter,
        keys: GcKeys,
        clock: GcClock,
        *,
        duration: float,
        margin: float,
        holder: str,
    ) -> None:
        self._adapter = adapter
        self._keys = keys
        self._clock = clock
        self.duration = duration
        self.margin = margin
        self.holder = holder
        self.epoch = 0
        self.started = 0.0  # local clock, just before the claim's create was sent
        self.store_time = 0.0  # the claim's LastModified
        self.held = False

    async def _latest(self) -> _Claim | None:
        latest: ObjectInfo | None = None
        epoch = -1
        try:
            async for page in self._adapter.list(self._keys.lease_prefix.rstrip("/")):
                for info in page:
                    e = self._keys.parse_lease(info.key)
                    if e is not None and e > epoch:
                        epoch, latest = e, info
            if latest is None:
                return None
            raw = await self._adapter.get_async(latest.key)
        except Exception as e:
            raise store_error(e, f"reading the collector's lease {self._keys.lease_prefix}") from e
        if raw is None:  # deleted between the listing and the read: look again later
            raise GcLeaseError("the collector's lease changed while it was read; try again")
        doc = decode_json(raw, latest.key)
        return _Claim(
            epoch,
            latest,
            str(doc.get("holder", "?")),
            number(doc, "duration", latest.key),
            number(doc, "margin", latest.key),
            bool(doc.get("released", False)),
        )

    async def _create(self, epoch: int, released: bool) -> bool:
        doc = {
            "holder": self.holder,
            "duration": self.duration,
            "margin": self.margin,
            "released": released,
        }
        key = self._keys.lease(epoch)
        try:
            return await self._adapter.put_new_async(key, encode_json(doc))
        except Exception as e:
            raise store_error(e, f"creating the collector's lease {key}") from e

    async def _claim(self, epoch: int) -> None:
        started = self._clock.now()
        self.held = False
        if not await self._create(epoch, released=False):
            raise GcLeaseError("another collector claimed the lease first")
        latest = await self._latest()
        if latest is None or latest.epoch != epoch:
            raise GcLeaseError("another collector claimed the lease first")
        self.epoch = epoch
        self.started = started
        self.store_time = latest.info.last_modified.timestamp()
        self.held = True

    async def acquire(self) -> float:
        """Claim the lease; returns the claim's LastModified (the store's "now")."""
        latest = await self._latest()
        if latest is not None and not latest.released:
            now = await store_now(self._adapter, self._keys)
            if now < latest.free_at():
                raise GcLeaseError(
                    f"another collector ({latest.holder}) holds the lease; it may be taken "
                    f"over in {latest.free_at() - now:.0f} s",
                    holder=latest.holder,
                    free_in=latest.free_at() - now,
                )
        await self._claim(0 if latest is None else latest.epoch + 1)
        return self.store_time

    def remaining(self) -> float:
        """Seconds left of the lease on the local clock (negative once it ran out)."""
        return self.started + self.duration - self._clock.now()

    async def check(self) -> None:
        """Before a delete batch: renew when half the lease is gone; raise once it ran out.

        A collector that finds its lease over (it was suspended, or the store stalled)
        stops without deleting: another collector may already be sweeping.
        """
        if not self.held:
            raise GcLeaseError("the collector does not hold the lease")
        left = self.remaining()
        if left <= 0:
            self.held = False
            raise GcLeaseError(
                f"the collector's lease ran out {-left:.1f} s ago (suspended, or the store "
                "was too slow); stopped before deleting. The next run resumes the sweep."
            )
        if left < self.duration / 2:
            await self._claim(self.epoch + 1)
            if self.remaining() <= 0:
                self.held = False
                raise GcLeaseError("the collector's lease ran out while it was renewed")

    async def release(self) -> None:
        """Give the lease up, so the next collector need not wait for it to run out."""
        if not self.held:
            return
        self.held = False
        await self._create(self.epoch + 1, released=True)
        # Earlier epochs are no longer needed; a listing after every claim means a
        # collector that re-creates one of them can never believe it holds the lease.
        old = [self._keys.lease(e) for e in range(max(0, self.epoch - 64), self.epoch)]
        try:
            await self._adapter.delete_async(old)
        except Exception as e:
            raise store_error(
                e, f"deleting old lease epochs under {self._keys.lease_prefix}"
            ) from e
