"""``python -m castore``: the ``castore`` command (see :mod:`castore.cli`)."""

from castore.cli import main

raise SystemExit(main())
