"""Numbers and ``Range`` headers, read strictly and without surprises on huge values."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["UNSATISFIABLE", "Unsatisfiable", "number", "parse_range"]

_DIGITS = re.compile(r"[0-9]+")
# A number with more digits than this is beyond any blob's length; int() of a very long
# digit string is also refused by Python (and slow), so it is never parsed.
_MAX_DIGITS = 18
_HUGE = 10**_MAX_DIGITS


class Unsatisfiable:
    """The result of :func:`parse_range` for a range that lies outside the blob."""

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE: Final = Unsatisfiable()


def number(text: str) -> int | None:
    """A decimal number of ASCII digits (spaces around allowed), else ``None``. Numbers of
    more than 18 digits come back as 10**18, beyond any length."""
    text = text.strip()
    if not _DIGITS.fullmatch(text):
        return None
    return _HUGE if len(text) > _MAX_DIGITS else int(text)


def parse_range(header: str, length: int) -> tuple[int, int] | Unsatisfiable | None:
    """Interpret a ``Range`` header for a blob of ``length`` bytes.

    Returns ``(start, end)`` (``end`` exclusive) for one satisfiable byte range,
    :data:`UNSATISFIABLE` for a single range that lies outside the blob (or whose last
    position is before its first), and ``None`` when the header is to be ignored and the
    whole blob sent: another unit, a syntax error, or several ranges.
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s for s in spec.split(",") if s.strip()]
    if len(specs) != 1:
        return None
    first_text, dash, last_text = specs[0].partition("-")
    if not dash:
        return None
    if not first_text.strip():
        suffix = number(last_text)
        if suffix is None:
            return None
        if suffix == 0 or length == 0:
            return UNSATISFIABLE
        return (max(0, length - suffix), length)
    first = number(first_text)
    last = number(last_text) if last_text.strip() else None
    if first is None or (last_text.strip() and last is None):
        return None
    if last is not None and last < first:
        return UNSATISFIABLE
    if first >= length:
        return UNSATISFIABLE
    end = length if last is None else min(last + 1, length)
    return (first, end)
