"""What a section of the benchmark is, and what it is given.

A section measures one thing and reports it: :meth:`Section.measure` takes the figures,
:meth:`Section.tables` turns them into tables, :meth:`Section.targets` into rows of the
targets table. The run (:mod:`benchmarks.main`) makes one instance of each section in
:data:`benchmarks.registry.SECTIONS`, measures the chosen ones in that order, and then asks
every section for its tables and targets. A section keeps what it measured on ``self``.
"""

from __future__ import annotations

import abc
import pathlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from benchmarks.markdown import Table, Target
from benchmarks.report import Results

__all__ = ["Context", "Section", "Table", "Target"]


@dataclass
class Context:
    """The run's options and sizes, a scratch folder, and what the sections share."""

    command: str
    cores: int
    selected: frozenset[str]
    size: int
    rss_size: int
    versions_size: int
    versions_count: int
    repeat: int
    delay: float
    peer_tools: frozenset[str] | None
    work: pathlib.Path
    #: Figures of the built-in sections, which share their data sets.
    res: Results = field(default_factory=Results)
    tool_versions: list[str] = field(default_factory=list)
    load: list[tuple[float, float, float]] = field(default_factory=list)
    _done: set[Callable[[Context], None]] = field(default_factory=set)

    def once(self, step: Callable[[Context], None]) -> None:
        """Run ``step`` unless it already ran: sections that share work each ask for it."""
        if step not in self._done:
            self._done.add(step)
            step(self)

    def progress(self, msg: str) -> None:
        """A progress line on stderr."""
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Section(abc.ABC):
    """One part of the benchmark, named on the command line by :attr:`name`."""

    #: The name ``--only`` takes.
    name: ClassVar[str]
    #: One line for ``--help``.
    help: ClassVar[str]
    #: Run when ``--only`` is not given.
    default: ClassVar[bool] = True

    @abc.abstractmethod
    def measure(self, ctx: Context) -> None:
        """Take the figures; called only when the section was chosen."""

    @abc.abstractmethod
    def tables(self, ctx: Context) -> list[Table]:
        """The tables of what :meth:`measure` took; none when it did not run."""

    def targets(self, ctx: Context) -> list[Target]:
        """Rows of the targets table. Called even when the section did not run, so that its
        targets show as ``NOT RUN`` rather than missing."""
        return []
