"""What a check reports: the problems it finds, its summary, and which chunks it reads."""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from typing import Literal

from castore._digest import B3Digest

__all__ = ["CheckProblem", "CheckSummary", "ProblemKind", "Subset"]

#: What is wrong:
#:
#: - ``missing-chunk``: an index names a chunk (or a blob stored as one chunk has an
#:   empty index) and the chunk object is absent;
#: - ``corrupt-chunk``: a chunk object does not decode within the bound, or its bytes
#:   do not hash to its key;
#: - ``malformed-index``: a blob index that does not decode;
#: - ``wrong-size``: a chunk's bytes are right for its digest, but a blob index names it
#:   with another size (the index is wrong: reads of that blob fail).
ProblemKind = Literal["missing-chunk", "corrupt-chunk", "malformed-index", "wrong-size"]


@dataclass(frozen=True, slots=True)
class CheckProblem:
    """One problem a check found, and what repair did about it.

    ``key`` is the object the problem is in (a chunk, or a blob index); ``digest`` the
    chunk's or blob's digest; ``blob`` a blob whose index names the chunk (``None`` for an
    index problem, or for a chunk that no index names). ``repair`` says what repair did
    (``None``: no repair was asked for, or none applies); ``repaired`` is true when the
    problem is gone.
    """

    kind: ProblemKind
    key: str
    digest: B3Digest
    detail: str
    blob: B3Digest | None = None
    repair: str | None = None
    repaired: bool = False

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form (digests in ``blake3-`` form)."""
        return {
            "problem": self.kind,
            "key": self.key,
            "digest": str(self.digest),
            "blob": None if self.blob is None else str(self.blob),
            "detail": self.detail,
            "repair": self.repair,
            "repaired": self.repaired,
        }


@dataclass(slots=True)
class CheckSummary:
    """Counts of one check run (filled in as it goes; final once the check ends).

    ``chunks`` and ``chunk_bytes`` count the chunk objects listed (stored, compressed
    bytes); ``referenced`` the distinct chunks that blob indexes name; ``orphans`` the
    chunk objects no index names (garbage for the collector, or chunks of blobs being
    written while the check ran). ``chunks_read`` and ``bytes_read`` count the chunk
    objects a data check fetched and verified.
    """

    blobs: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    referenced: int = 0
    orphans: int = 0
    orphan_bytes: int = 0
    read_data: bool = False
    subset: str | None = None
    chunks_read: int = 0
    bytes_read: int = 0
    missing_chunks: int = 0
    corrupt_chunks: int = 0
    malformed_indexes: int = 0
    wrong_sizes: int = 0
    problems: int = 0
    repaired: int = 0
    seconds: float = 0.0

    @property
    def unrepaired(self) -> int:
        """Problems still there when the check ended."""
        return self.problems - self.repaired

    @property
    def clean(self) -> bool:
        """True when no problem is left (none found, or every one repaired)."""
        return self.unrepaired == 0

    def count(self, problem: CheckProblem) -> None:
        """Count one problem found (and whether repair fixed it)."""
        self.problems += 1
        self.repaired += problem.repaired
        if problem.kind == "missing-chunk":
            self.missing_chunks += 1
        elif problem.kind == "corrupt-chunk":
            self.corrupt_chunks += 1
        elif problem.kind == "malformed-index":
            self.malformed_indexes += 1
        else:
            self.wrong_sizes += 1

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form, with ``unrepaired`` and ``clean``."""
        doc: dict[str, object] = asdict(self)
        doc["unrepaired"] = self.unrepaired
        doc["clean"] = self.clean
        return doc


_SLICE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True, slots=True)
class Subset:
    """Which chunk objects a data check reads: slice ``n`` of ``t``, or a random share.

    ``Subset.parse("2/5")`` reads the second of five slices, chosen by digest, so that
    the runs ``1/5`` to ``5/5`` together read every chunk exactly once (one a night
    covers the bucket in five nights). ``Subset.parse("10%")`` reads a random tenth,
    a different one each run.
    """

    n: int = 1
    t: int = 1
    percent: float | None = None
    _rng: random.Random = field(
        default_factory=random.Random, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.percent is not None:
            if not 0 < self.percent <= 100:
                raise ValueError(f"a subset share is above 0 and at most 100 %, got {self.percent}")
        elif not 1 <= self.n <= self.t:
            raise ValueError(f"a subset slice N/T needs 1 <= N <= T, got {self.n}/{self.t}")

    @classmethod
    def parse(cls, text: str) -> Subset:
        """``N/T`` or ``P%``; raises ``ValueError`` saying what is accepted."""
        if m := _SLICE.match(text):
            return cls(int(m[1]), int(m[2]))
        if m := _PERCENT.match(text):
            return cls(percent=float(m[1]))
        raise ValueError(f"a subset is N/T (such as 2/5) or P% (such as 10%), got {text!r}")

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else f"{self.n}/{self.t}"

    def selects(self, digest: bytes) -> bool:
        """Whether the chunk with this digest is read."""
        if self.percent is not None:
            return self._rng.random() * 100 < self.percent
        return int.from_bytes(digest[:8], "big") % self.t == self.n - 1
