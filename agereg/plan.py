"""Trials, the grid as a sized sequence, and groups: the units of work. No I/O here.

A *trial* is (batch_size, learning_rate, epochs, l2). A *column* is (batch_size,
learning_rate, l2): one trained model, recorded at several epoch counts. A *group* is the
unit of work sent to a worker: one batch size, a chunk of (learning_rate, l2) columns and
the epoch counts to record, trained together by the batched engine (or one after another
by the reference engine), optionally continuing from ``start_epoch``.

Since the engine's products have a fixed width (``batched.PANEL``), a column's numbers do
not depend on the group it is trained in: grouping decides speed, never results. The
groups that ran are stored in the run folder all the same (``plan.jsonl``).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from agereg.batched import PANEL, SHARED_BYTES
from agereg.config import Distribution, Grid
from agereg.records import DEFAULT_LOSS, Config3, TrialKey

# Columns per group: whole panels of the engine's product width, at most MAX_COLUMNS
# (wider groups would leave the workers of a large grid idle), aiming for TARGET_GROUPS
# groups so that small searches still keep a few cores busy.
TARGET_GROUPS = 4
MAX_COLUMNS = 32
# Two groups trained together (batched.train_groups) take about this share of the time of
# the two trained one after the other (measured on the homework grid: 0.79-0.95).
PAIRED_COST = 0.88


@dataclass(frozen=True, order=True)
class Trial:
    """One point of the space. Ordering: batch_size, learning_rate, epochs, l2."""

    batch_size: int
    learning_rate: float
    epochs: int
    l2: float
    loss: str = DEFAULT_LOSS

    def key(self) -> TrialKey:
        return (self.batch_size, self.learning_rate, self.epochs, self.l2, self.loss)


class ParameterGrid(Sequence[Trial]):
    """All trials of a finite grid in lexicographic order of (batch_size, learning_rate,
    epochs, l2)."""

    def __init__(self, grid: Grid) -> None:
        if isinstance(grid.learning_rate, Distribution) or isinstance(grid.l2, Distribution):
            raise ValueError("a grid with a distribution cannot be enumerated")
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


def grid_columns(grid: Grid) -> list[Config3]:
    """Every (batch_size, learning_rate, l2, loss) of a finite grid, in grid order."""
    lrs, l2s = grid.learning_rate, grid.l2
    assert not isinstance(lrs, Distribution) and not isinstance(l2s, Distribution)
    return [(bs, lr, l2, loss) for bs in grid.batch_size for lr in lrs for l2 in l2s
            for loss in grid.loss]


@dataclass(frozen=True)
class Group:
    """Columns of one batch size and loss trained in one pass: ``columns`` are
    (learning_rate, l2) pairs, ``epochs`` the sorted epoch counts to record,
    ``start_epoch`` where training resumes from saved parameters (0: from zero), ``fold``
    the cross-validation fold it trains on (None: the holdout split)."""

    index: int
    batch_size: int
    columns: tuple[tuple[float, float], ...]
    epochs: tuple[int, ...]
    start_epoch: int = 0
    fold: int | None = None
    loss: str = DEFAULT_LOSS

    def trials(self) -> list[Trial]:
        return [Trial(self.batch_size, lr, ep, l2, self.loss)
                for lr, l2 in self.columns for ep in self.epochs]

    def column_keys(self) -> list[Config3]:
        return [(self.batch_size, lr, l2, self.loss) for lr, l2 in self.columns]

    def trial_keys(self) -> list[TrialKey]:
        return [t.key() for t in self.trials()]


def column_chunk(n_columns: int, n_total: int, target_groups: int = TARGET_GROUPS) -> int:
    """Columns per group for a batch size holding ``n_columns`` of ``n_total`` columns:
    whole panels where possible, and enough groups to keep ``target_groups`` workers busy."""
    wanted = math.ceil(n_total / target_groups)
    chunk = max(PANEL, math.ceil(wanted / PANEL) * PANEL)
    return min(n_columns, MAX_COLUMNS, chunk)


def group_columns(
    columns: Sequence[Config3],
    epochs: Sequence[int],
    start_epoch: int = 0,
    target_groups: int = TARGET_GROUPS,
) -> list[Group]:
    """Split columns into groups by batch size and loss (in the order given); together
    they hold every trial exactly once."""
    by_bs: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for bs, lr, l2, loss in columns:
        by_bs.setdefault((bs, loss), []).append((lr, l2))
    groups: list[Group] = []
    for (bs, loss), cols in by_bs.items():
        n_chunks = math.ceil(len(cols) / column_chunk(len(cols), len(columns), target_groups))
        # near-equal chunks, so no worker gets a sliver
        bounds = [round(i * len(cols) / n_chunks) for i in range(n_chunks + 1)]
        for lo, hi in itertools.pairwise(bounds):
            groups.append(Group(len(groups), bs, tuple(cols[lo:hi]), tuple(sorted(epochs)),
                                start_epoch, loss=loss))
    return groups


def for_folds(groups: Sequence[Group], k: int) -> list[Group]:
    """The groups of every fold (fold by fold), or ``groups`` unchanged for a holdout
    (``k = 0``). Each fold's groups are separate units of work."""
    if not k:
        return list(groups)
    return [dataclasses.replace(g, index=f * len(groups) + i, fold=f)
            for f in range(k) for i, g in enumerate(groups)]


def plan_groups(grid: Grid, target_groups: int = TARGET_GROUPS) -> list[Group]:
    """The groups of a finite grid."""
    return group_columns(grid_columns(grid), grid.epochs, 0, target_groups)


def bundles(groups: Sequence[Group], firsts: Sequence[int], jobs: int, row_bytes: int
            ) -> list[tuple[int, ...]]:
    """The tasks for ``jobs`` workers: indices into ``groups`` of the groups each task
    trains together, the costliest first. ``firsts[i]`` is the epoch group ``i`` starts
    from, ``row_bytes`` the size of one training row.

    Two groups pair when they train on the same rows (fold) from the same epoch and a
    whole number of both their minibatches fits in :data:`~agereg.batched.SHARED_BYTES`,
    the smallest such stretch first; then as many pairs are kept as shorten the estimated
    wall time (a group costs its panels times its epochs, a pair :data:`PAIRED_COST` of
    its two, and tasks go to the least loaded worker, costliest first)."""
    cost = [math.ceil(len(g.columns) / PANEL) * (g.epochs[-1] - f)
            for g, f in zip(groups, firsts, strict=True)]
    buckets: dict[tuple[int | None, int], dict[int, list[int]]] = {}
    for i, (g, f) in enumerate(zip(groups, firsts, strict=True)):
        buckets.setdefault((g.fold, f), {}).setdefault(g.batch_size, []).append(i)
    pairs: list[tuple[int, int, int]] = []  # (stretch, i, j)
    for by_size in buckets.values():
        sizes = sorted(by_size)
        fits = sorted((math.lcm(a, b), a, b) for x, a in enumerate(sizes) for b in sizes[x:]
                      if math.lcm(a, b) * row_bytes <= SHARED_BYTES)
        for span, a, b in fits:
            while len(by_size[a]) >= 1 + (a == b) and by_size[b]:
                pairs.append((span, by_size[a].pop(), by_size[b].pop()))
    pairs.sort()

    def tasks(p: int) -> list[tuple[float, tuple[int, ...]]]:
        paired = {i for _, i, j in pairs[:p]} | {j for _, i, j in pairs[:p]}
        out: list[tuple[float, tuple[int, ...]]] = [
            (PAIRED_COST * (cost[i] + cost[j]), (i, j)) for _, i, j in pairs[:p]]
        out += [(float(cost[i]), (i,)) for i in range(len(groups)) if i not in paired]
        return sorted(out, key=lambda t: (-t[0], t[1]))

    def wall(p: int) -> float:
        loads = [0.0] * max(1, jobs)
        for c, _ in tasks(p):
            heapq.heapreplace(loads, loads[0] + c)
        return max(loads)

    if len(groups) >= 4 * jobs:  # many tasks per worker: every pair saves time
        best = len(pairs)
    else:
        best = min(range(len(pairs) + 1), key=lambda p: (wall(p), -p))
    return [t for _, t in tasks(best)]
