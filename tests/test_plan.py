"""The grid as a sized, indexable sequence, and its grouping into work units."""

from __future__ import annotations

import pytest

from agereg.config import Grid
from agereg.plan import MAX_COLUMNS, ParameterGrid, Trial, plan_groups

HOMEWORK = Grid((160, 200, 400, 640), (3e-8, 3e-6, 3e-5, 3e-3), (16, 32, 48, 64),
                (1e-7, 1e-5, 1e-3, 1e-1))


def test_grid_length_indexing_and_order():
    grid = ParameterGrid(HOMEWORK)
    assert len(grid) == len(HOMEWORK) == 256
    trials = list(grid)
    assert trials == [grid[i] for i in range(256)] == sorted(trials)
    assert grid[0] == Trial(160, 3e-8, 16, 1e-7) and grid[-1] == Trial(640, 3e-3, 64, 1e-1)
    assert len(set(trials)) == 256
    with pytest.raises(IndexError):
        grid[256]


@pytest.mark.parametrize("grid", [
    HOMEWORK,
    Grid((32,), (1e-3, 1e-2), (1, 2, 3), (0.0,)),
    Grid((8, 16), tuple(float(i) for i in range(1, 41)), (5,), tuple(float(i) for i in range(4))),
])
def test_groups_hold_every_trial_once(grid: Grid):
    groups = plan_groups(grid)
    trials = [t for g in groups for t in g.trials()]
    assert sorted(trials) == list(ParameterGrid(grid))
    assert all(1 <= len(g.columns) <= MAX_COLUMNS for g in groups)
    assert [g.index for g in groups] == list(range(len(groups)))


def test_homework_groups_are_one_per_batch_size():
    groups = plan_groups(HOMEWORK)
    assert [(g.batch_size, len(g.columns)) for g in groups] == [(160, 16), (200, 16),
                                                               (400, 16), (640, 16)]


def test_large_grids_are_split_for_many_workers():
    big = Grid((160, 200, 400, 640), tuple(float(i) for i in range(1, 11)), (16,),
               tuple(float(i) for i in range(16)))
    assert len(plan_groups(big)) == 20  # 160 columns per batch size in chunks of 32
