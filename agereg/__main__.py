"""``python -m agereg``: the same entry point as the ``agereg`` console script."""

import sys

from agereg.cli import main

sys.exit(main())
