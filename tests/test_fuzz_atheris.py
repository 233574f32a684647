"""Coverage-guided fuzzing with atheris (libFuzzer), the longer run beside ``test_fuzz.py``.

Run directly, this file is an atheris harness for one target::

    python tests/test_fuzz_atheris.py index -runs=1000000
    python tests/test_fuzz_atheris.py chunk -max_total_time=600
    python tests/test_fuzz_atheris.py digest -max_total_time=600

Each target accepts only castore's documented errors; anything else (or a crash, or a
chunk decoded to bytes other than its digest names) stops libFuzzer with the input that
did it. Under pytest, each target runs for ``CASTORE_FUZZ_RUNS`` inputs (20 000 unless
told; ``CASTORE_STRESS=N`` multiplies it) in a child process. The ``test`` extra installs
atheris where a wheel exists (CPython 3.11 on x86-64 Linux, as in CI); elsewhere these
tests are skipped unless ``castore[fuzz]`` is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

STRESS = max(1, int(os.environ.get("CASTORE_STRESS", "1")))
RUNS = int(os.environ.get("CASTORE_FUZZ_RUNS", str(20_000 * STRESS)))
TARGETS = ("index", "chunk", "digest")
_LIMIT = 64 * 1024


def _target(name: str):  # type: ignore[no-untyped-def]
    """The function atheris calls with each input, for target ``name``."""
    import blake3
    import zstandard

    from castore._digest import B3Digest
    from castore.errors import (
        DecompressionError,
        DigestMismatchError,
        InvalidDigestError,
        MalformedIndexError,
    )
    from castore.objectstore._codec import decode_chunk, decode_index

    sample = bytes(range(256)) * 40
    sample_digest = blake3.blake3(sample).digest()
    seeds = [
        zstandard.ZstdCompressor().compress(sample),
        zstandard.ZstdCompressor().compressobj().compress(sample),
    ]

    def index(data: bytes) -> None:
        try:
            found = decode_index(data, _LIMIT)
        except MalformedIndexError:
            return
        assert all(len(m.digest.digest) == 32 and 0 < m.size <= _LIMIT for m in found)

    def chunk(data: bytes) -> None:
        # The input is a frame, or (first byte odd) a mutation of a real one.
        if data[:1] and data[0] & 1:
            data = seeds[data[0] >> 7] + data[1:]
        for expected in (None, len(sample)):
            try:
                got = decode_chunk(data, sample_digest, expected_size=expected, max_size=_LIMIT)
            except (DecompressionError, DigestMismatchError):
                continue
            assert got == sample

    def digest(data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        try:
            d = B3Digest.parse(text)
        except InvalidDigestError:
            return
        assert B3Digest.parse(d.hex()) == d == B3Digest.parse(str(d))

    return {"index": index, "chunk": chunk, "digest": digest}[name]


def main() -> None:
    import atheris

    name = sys.argv.pop(1)
    with atheris.instrument_imports(include=["castore"]):
        import castore._digest
        import castore.objectstore._codec  # noqa: F401
    atheris.Setup(sys.argv, _target(name))
    atheris.Fuzz()


@pytest.mark.parametrize("target", TARGETS)
def test_atheris(target: str) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (castore[fuzz])")
    out = subprocess.run(
        [sys.executable, __file__, target, f"-runs={RUNS}", "-rss_limit_mb=512"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    done = [line for line in out.stderr.splitlines() if line.startswith("Done ")]
    print(f"\natheris {target}: {done[-1] if done else out.stderr[-300:]}")


if __name__ == "__main__":
    main()
