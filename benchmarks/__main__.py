"""``python -m benchmarks`` (see :mod:`benchmarks.main`)."""

import sys

from benchmarks.main import main

sys.exit(main())
