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


def _fork_away_from_the_parents_peak() -> None:
    """Go on in a forked child, so that libFuzzer's ``-rss_limit_mb`` sees this fuzzer's
    memory alone.

    Linux keeps a process's peak RSS (``ru_maxrss``, which libFuzzer checks) across
    ``execve``, and a child that Python's subprocess starts inherits its parent's peak:
    under a pytest process that had grown to 755 MB, the fuzzer began over its 512 MB
    limit. A forked child's peak starts from its own memory. This process waits for
    it and exits with its status.
    """
    pid = os.fork()
    if pid == 0:
        return
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))


def main() -> None:
    import atheris

    name = sys.argv.pop(1)
    _fork_away_from_the_parents_peak()
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


def test_the_fuzzer_does_not_start_at_its_parents_peak_rss() -> None:
    """A parent whose memory once reached 600 MB starts the harness: the fuzzer's RSS,
    as libFuzzer reports it at start, is its own and under the 512 MB limit."""
    pytest.importorskip("atheris", reason="atheris is not installed (castore[fuzz])")
    parent = (
        "import subprocess, sys\n"
        "big = bytearray(600 << 20)\n"
        "big[::4096] = b'\\x01' * len(range(0, len(big), 4096))\n"
        "del big\n"
        "sys.exit(subprocess.run(sys.argv[1:]).returncode)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", parent, sys.executable, __file__, "digest", "-runs=10"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    inited = [line for line in out.stderr.splitlines() if "INITED" in line]
    assert inited, out.stderr[-3000:]
    rss_mb = int(inited[0].split("rss: ")[1].split("Mb")[0])
    assert rss_mb < 512, inited[0]


if __name__ == "__main__":
    main()
