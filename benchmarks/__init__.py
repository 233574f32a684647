"""castore's benchmark, run from a clone of the repository: ``python -m benchmarks`` or
``nox -s bench``. It is not part of the installed package.

- ``main``: the command line and the run.
- ``section``: what a section is (:class:`~benchmarks.section.Section`) and what it is
  given (:class:`~benchmarks.section.Context`).
- ``registry``: the sections, in order. A new section is a module with a ``Section``
  subclass and one line there.
- ``builtin``: the built-in sections, over the parts below.
- ``markdown``: tables, targets, the environment lines and the Markdown file.
- ``report``: the built-in sections' tables and targets.
- ``data``: the data sets (random bytes, text-like Python sources, edited versions) and a
  cheap generator of unique incompressible pieces.
- ``limits``: the per-stage CPU limit (write and read side) on a data set.
- ``api``: ingest and sequential read through the public API, with per-thread CPU.
- ``rss``: peak memory of a 2 GiB ingest and read-back, measured in a child process.
- ``proxy``: a TCP proxy that adds a delay to each request (real network-path latency).
- ``latency``: ingest into SeaweedFS with and without that delay.
- ``dedup``: ten edited versions of one file through castore.
- ``peers``: restic, borgbackup and casync on the same data, and castore's CLI beside them.
- ``allocator``: page faults and kernel time of repeated ingests into memory, a separate
  measurement (``python -m benchmarks.allocator``) behind the benchmark's notes.
- ``child``: how the parts start their child processes.
"""
