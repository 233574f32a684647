"""What a command module provides: one ``register`` function.

``register(subparsers, common)`` adds the command's parser (with ``parents=[common]``, so
that ``--store`` and ``--config`` also work after the command's name) and sets its
``handler``: an async function of the parsed arguments that returns the exit code, or
raises (see :mod:`castore.cli._errors` for how an exception becomes a code).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeAlias

from castore.cli._errors import ExitCode

__all__ = ["DIGEST_HELP", "Handler", "Parser", "Register", "Subparsers"]


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit with :attr:`ExitCode.USAGE`."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: {message}\n")


#: The object ``Parser.add_subparsers`` returns.
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"
#: A command's body: the parsed arguments in, the exit code out.
Handler: TypeAlias = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
#: A command module's ``register(subparsers, common)``.
Register: TypeAlias = Callable[[Subparsers, Parser], None]

#: The help text of a DIGEST argument.
DIGEST_HELP = "blake3-…, b3:… or 64 hex characters"
