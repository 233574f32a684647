"""The shared test vectors (from tvix's ``fixtures.rs``) as Python values."""

from __future__ import annotations

from castore._digest import B3Digest

__all__ = ["BLOB_A", "BLOB_A_DIGEST", "BLOB_B", "BLOB_B_DIGEST", "EMPTY", "HELLOWORLD"]

EMPTY = b""
HELLOWORLD = b"Hello World!"
HELLOWORLD_DIGEST = B3Digest.from_hex(
    "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"
)
BLOB_A = b"\x00\x01"
BLOB_A_DIGEST = B3Digest.from_hex(
    "7b7015bb92cf0b318037702a6cdd81dee41224f734684c2c122cd6359cb1ee63"
)
BLOB_B = bytes(i % 255 for i in range(1044480))
BLOB_B_DIGEST = B3Digest.from_hex(
    "a82c5154a7a0c262c6fdb929a317585646f8fbcf80326d0a7b8747edaf2d99d2"
)
