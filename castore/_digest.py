"""Value types: :class:`B3Digest` and :class:`ChunkMeta`."""

from __future__ import annotations

import base64
import binascii
import string
from dataclasses import dataclass
from typing import TypeAlias

import blake3

from castore.errors import InvalidDigestError

__all__ = ["DIGEST_LEN", "EMPTY_DIGEST", "B3Digest", "ChunkMeta", "DigestLike"]

DIGEST_LEN = 32


@dataclass(frozen=True, slots=True, order=True)
class B3Digest:
    """A BLAKE3 digest: exactly 32 bytes.

    ``str(d)`` is ``blake3-<padded base64>`` (snix's display form); ``d.hex()`` is the
    lowercase hex used in object keys. :meth:`parse` accepts hex, ``blake3-…`` and tvix's
    ``b3:…``; :meth:`coerce` also takes a digest or its 32 raw bytes, and is what every
    method of castore that takes a digest applies to its argument.
    """

    digest: bytes

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        raw = bytes(data)
        if len(raw) != DIGEST_LEN:
            raise InvalidDigestError(f"a BLAKE3 digest is {DIGEST_LEN} bytes, got {len(raw)}")
        object.__setattr__(self, "digest", raw)

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> B3Digest:
        """The digest of ``data``."""
        return cls(blake3.blake3(data, max_threads=1).digest())

    @classmethod
    def from_hex(cls, text: str) -> B3Digest:
        """Parse 64 hex characters."""
        if len(text) != 2 * DIGEST_LEN:
            raise InvalidDigestError(
                f"not a digest: {text!r}: a hex BLAKE3 digest is {2 * DIGEST_LEN} characters, "
                f"got {len(text)} characters"
            )
        try:
            return cls(bytes.fromhex(text))
        except ValueError as e:
            raise InvalidDigestError(f"not a hex digest: {text!r}") from e

    @classmethod
    def coerce(cls, value: DigestLike) -> B3Digest:
        """``value`` as a digest: a :class:`B3Digest` as it is, a string by :meth:`parse`,
        bytes as the 32 raw bytes of a digest.

        Raises :class:`~castore.errors.InvalidDigestError` (a :class:`ValueError`) saying
        what is wrong, for anything else.
        """
        if isinstance(value, B3Digest):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, bytes | bytearray | memoryview):
            return cls(value)
        raise InvalidDigestError(
            "expected a B3Digest, a digest string (blake3-…, b3:… or 64 hex characters) or "
            f"32 bytes, got {type(value).__name__}"
        )

    @classmethod
    def parse(cls, text: str) -> B3Digest:
        """Parse ``blake3-<base64>``, ``b3:<base64>`` or 64 hex characters."""
        if not isinstance(text, str):
            raise InvalidDigestError(f"expected a digest string, got {type(text).__name__}")
        text = text.strip()
        for prefix in ("blake3-", "b3:"):
            if text.startswith(prefix):
                body = text[len(prefix) :]
                try:
                    raw = base64.b64decode(body, validate=True)
                except (binascii.Error, ValueError) as e:
                    raise InvalidDigestError(
                        f"not a digest: {text!r}: not base64 after {prefix!r}, got "
                        f"{len(body)} characters (a digest is 44 with padding)"
                    ) from e
                return cls(raw)
        if text and all(c in string.hexdigits for c in text):
            return cls.from_hex(text)
        raise InvalidDigestError(
            f"not a digest: {text!r}, got {len(text)} characters (expected 64 hex characters, "
            "blake3-<base64> or b3:<base64>)"
        )

    def hex(self) -> str:
        """Lowercase hex, as in object keys."""
        return self.digest.hex()

    def __bytes__(self) -> bytes:
        return self.digest

    def __str__(self) -> str:
        return "blake3-" + base64.b64encode(self.digest).decode("ascii")

    def __repr__(self) -> str:
        return f"B3Digest({self.hex()})"


#: What methods that take a digest accept (see :meth:`B3Digest.coerce`).
DigestLike: TypeAlias = B3Digest | str | bytes

EMPTY_DIGEST = B3Digest.of(b"")


@dataclass(frozen=True, slots=True)
class ChunkMeta:
    """One chunk of a blob: its digest and its uncompressed size in bytes."""

    digest: B3Digest
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.digest, B3Digest):
            raise InvalidDigestError(f"ChunkMeta.digest must be a B3Digest, got {self.digest!r}")
        if self.size < 0:
            raise ValueError(f"ChunkMeta.size must not be negative, got {self.size}")
