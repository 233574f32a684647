"""The parts of ``python -m castore.bench`` (see :mod:`castore.bench`).

- ``data``: the data sets (random bytes, text-like Python sources, edited versions) and a
  cheap generator of unique incompressible pieces.
- ``limits``: the per-stage CPU limit (write and read side) on a data set.
- ``api``: ingest and sequential read through the public API, with per-thread CPU.
- ``rss``: peak memory of a 2 GiB ingest and read-back, measured in a child process.
- ``proxy``: a TCP proxy that adds a delay to each request (real network-path latency).
- ``latency``: ingest into SeaweedFS with and without that delay.
- ``dedup``: ten edited versions of one file through castore.
- ``peers``: restic, borgbackup and casync on the same data, and castore's CLI beside them.
- ``report``: tables, targets and the Markdown file.
- ``allocator``: page faults and kernel time of repeated ingests into memory, a separate
  measurement (``python -m castore._bench.allocator``) behind the benchmark's notes.

Nothing here is imported by castore itself; it is not public API.
"""
