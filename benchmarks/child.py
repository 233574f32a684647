"""Child processes of the benchmark: ``python -m benchmarks.X`` from any working folder.

The benchmark is not installed, so a child finds the ``benchmarks`` package through
``PYTHONPATH`` set to the repository's root.
"""

from __future__ import annotations

import os
import pathlib
import sys

__all__ = ["ROOT", "module_command", "module_env"]

#: The folder that holds the ``benchmarks`` package.
ROOT = pathlib.Path(__file__).resolve().parent.parent


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args…`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def module_env() -> dict[str, str]:
    """This process's environment with :data:`ROOT` first on ``PYTHONPATH``."""
    old = os.environ.get("PYTHONPATH")
    path = str(ROOT) if not old else f"{ROOT}{os.pathsep}{old}"
    return {**os.environ, "PYTHONPATH": path}
