"""A buffer of received bytes that hands them out with one copy at most."""

from __future__ import annotations

import collections

__all__ = ["Pieces"]


class Pieces:
    """Bytes received and not yet returned, kept as the messages' own ``bytes`` so that a
    read costs one copy at most (none when it takes exactly one message)."""

    def __init__(self) -> None:
        self._parts: collections.deque[bytes] = collections.deque()
        self._head = 0  # bytes of _parts[0] already consumed
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        if data:
            self._parts.append(data)
            self._size += len(data)

    def clear(self) -> None:
        self._parts.clear()
        self._head = 0
        self._size = 0

    def skip(self, n: int) -> None:
        """Drop the first ``n`` bytes (at most ``len(self)``)."""
        self._size -= n
        while n:
            first = self._parts[0]
            left = len(first) - self._head
            if n < left:
                self._head += n
                return
            n -= left
            self._parts.popleft()
            self._head = 0

    def take(self, n: int) -> bytes:
        """Remove and return the first ``n`` bytes (at most ``len(self)``)."""
        if n == 0:
            return b""
        first = self._parts[0]
        if self._head == 0 and len(first) == n:
            self._parts.popleft()
            self._size -= n
            return first
        if len(first) - self._head >= n:
            out = first[self._head : self._head + n]
            self.skip(n)
            return out
        pieces: list[memoryview] = []
        want, head = n, self._head
        for part in self._parts:
            view = memoryview(part)[head : head + want]
            pieces.append(view)
            want -= len(view)
            head = 0
            if not want:
                break
        out = b"".join(pieces)
        self.skip(n)
        return out
