"""The search space as a sized, indexable, deterministic sequence, and its grouping.

No I/O here. A *trial* is one point of the grid. A *group* is the unit of work sent to a
worker: one batch size, a chunk of (learning_rate, l2) columns and every epoch count,
trained together by the batched engine (or one after another by the reference engine).

Groups depend on the grid alone, never on ``n_jobs`` or the backend, so every trial is
computed by exactly the same floating-point operations however the work is spread.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from agereg.config import Grid

# Columns per group: at least MIN_COLUMNS (narrower matrix products waste most of their
# time on memory traffic), at most MAX_COLUMNS (wider groups would leave the workers of a
# large grid idle), and aiming for TARGET_GROUPS groups so that small grids still keep a
# few cores busy. Measured on the homework data: 16-32 columns per product run at 2-3x
# the per-trial speed of 4-8.
TARGET_GROUPS = 4
MIN_COLUMNS = 8
MAX_COLUMNS = 32


@dataclass(frozen=True, order=True)
class Trial:
    """One grid point. Ordering is the grid order: batch_size, learning_rate, epochs, l2."""

    batch_size: int
    learning_rate: float
    epochs: int
    l2: float

    def key(self) -> tuple[int, float, int, float]:
        return (self.batch_size, self.learning_rate, self.epochs, self.l2)


class ParameterGrid(Sequence[Trial]):
    """All trials of a grid in lexicographic order of (batch_size, learning_rate, epochs, l2)."""

    def __init__(self, grid: Grid) -> None:
        self._axes = (grid.batch_size, grid.learning_rate, grid.epochs, grid.l2)

    def __len__(self) -> int:
        return math.prod(len(a) for a in self._axes)

    def __getitem__(self, index: int) -> Trial:  # type: ignore[override]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        values = []
        for axis in reversed(self._axes):
            index, i = divmod(index, len(axis))
            values.append(axis[i])
        bs, lr, ep, l2 = reversed(values)
        return Trial(int(bs), float(lr), int(ep), float(l2))

    def __iter__(self) -> Iterator[Trial]:
        for bs, lr, ep, l2 in itertools.product(*self._axes):
            yield Trial(int(bs), float(lr), int(ep), float(l2))


@dataclass(frozen=True)
class Group:
    """Trials sharing a batch size and trained in one pass: ``columns`` are
    (learning_rate, l2) pairs, ``epochs`` the sorted epoch counts to record."""

    index: int
    batch_size: int
    columns: tuple[tuple[float, float], ...]
    epochs: tuple[int, ...]

    def trials(self) -> list[Trial]:
        return [
            Trial(self.batch_size, lr, ep, l2) for lr, l2 in self.columns for ep in self.epochs
        ]


def column_chunk(grid: Grid, target_groups: int = TARGET_GROUPS) -> int:
    """Columns per group. A function of the grid only, never of ``n_jobs``: the width of
    a group's matrix products changes the last bits of its results."""
    per_batch = len(grid.learning_rate) * len(grid.l2)
    wanted = math.ceil(per_batch * len(grid.batch_size) / target_groups)
    return min(per_batch, MAX_COLUMNS, max(MIN_COLUMNS, wanted))


def plan_groups(grid: Grid, target_groups: int = TARGET_GROUPS) -> list[Group]:
    """Split the grid into groups; together they hold every trial exactly once."""
    columns = [(lr, l2) for lr in grid.learning_rate for l2 in grid.l2]
    n_chunks = math.ceil(len(columns) / column_chunk(grid, target_groups))
    # near-equal chunks, so no worker gets a sliver
    bounds = [round(i * len(columns) / n_chunks) for i in range(n_chunks + 1)]
    groups = []
    for bs in grid.batch_size:
        for lo, hi in itertools.pairwise(bounds):
            groups.append(Group(len(groups), bs, tuple(columns[lo:hi]), tuple(grid.epochs)))
    return groups
