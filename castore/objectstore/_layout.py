"""Object keys of the tvix/snix castore bucket layout.

``blobs/b3/<4 hex>/<64 hex>`` holds a blob's index and ``chunks/b3/<4 hex>/<64 hex>`` a
chunk's zstd frame. The shard folder is the first two bytes of the digest as four hex
characters: every Rust version writes four, whatever its doc comment says.
"""

from __future__ import annotations

__all__ = ["Layout"]


class Layout:
    """Builds object keys under an optional ``prefix`` (no leading or trailing slash)."""

    __slots__ = ("_blobs", "_chunks")

    def __init__(self, prefix: str = "") -> None:
        base = "/".join(p for p in prefix.split("/") if p)
        lead = base + "/" if base else ""
        self._blobs = lead + "blobs/b3/"
        self._chunks = lead + "chunks/b3/"

    @property
    def blobs(self) -> str:
        """The folder of every blob index, as a listing prefix (ends with ``/``)."""
        return self._blobs

    @property
    def chunks(self) -> str:
        """The folder of every chunk, as a listing prefix (ends with ``/``)."""
        return self._chunks

    @staticmethod
    def digest_of(key: str) -> bytes | None:
        """The digest a blob or chunk key names, or ``None`` for a key of another shape
        (a stray object, a temporary file, a shard folder that does not match)."""
        shard, _, name = key.rpartition("/")
        if len(name) != 64 or not shard.endswith(name[:4]):
            return None
        try:
            raw = bytes.fromhex(name)
        except ValueError:
            return None
        # Keys are lowercase hex; anything else was not written by a castore or tvix node.
        return raw if raw.hex() == name and shard[-5:-4] in ("/", "") else None

    def blob(self, digest: bytes) -> str:
        """The key of the blob index for ``digest`` (32 raw bytes)."""
        h = digest.hex()
        return f"{self._blobs}{h[:4]}/{h}"

    def chunk(self, digest: bytes) -> str:
        """The key of the chunk object for ``digest`` (32 raw bytes)."""
        h = digest.hex()
        return f"{self._chunks}{h[:4]}/{h}"
