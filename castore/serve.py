"""Deprecated: ``castore serve`` now lives in :mod:`castore.cli` (``castore.cli._serve``).

``DEFAULT_LISTEN``, ``add_parser``, ``run`` and ``main`` keep working for a release, with a
:class:`DeprecationWarning` when this module is imported.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

from castore.cli import _serve

__all__ = ["DEFAULT_LISTEN", "add_parser", "main", "run"]

warnings.warn(
    "castore.serve is deprecated: run `castore serve`, or use castore.cli.main(['serve', …])",
    DeprecationWarning,
    stacklevel=2,
)

DEFAULT_LISTEN = _serve.DEFAULT_LISTEN
run = _serve.run


def add_parser(subparsers: Any) -> None:
    """Register the ``serve`` subcommand on an argparse ``subparsers`` object."""
    from castore.cli._command import Parser
    from castore.cli._store import add_store_options

    common = Parser(add_help=False)
    add_store_options(common, after_command=False)
    _serve.register(subparsers, common)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m castore.serve``: the same as ``castore serve``."""
    from castore.cli import main as cli_main

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
