"""``python -m agereg``: the same entry point as the ``agereg`` console script."""

from agereg.entry import run

run()
