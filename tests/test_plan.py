"""The grid as a sized, indexable sequence, and its grouping into work units."""

from __future__ import annotations

import pytest

from agereg.config import Grid
from agereg.plan import MAX_COLUMNS, ParameterGrid, Trial, bundles, for_folds, plan_groups

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


def test_homework_groups_pair_by_the_smallest_shared_stretch():
    groups = plan_groups(HOMEWORK)
    f64, f32 = 2304 * 8, 2304 * 4
    for jobs in (1, 2):
        # 160 with 640 (a 640-row stretch) and 200 with 400 (400 rows); 400 with 640 would
        # need 3,200 rows
        assert bundles(groups, [0] * 4, jobs, f64) == [(0, 3), (1, 2)]
        assert bundles(groups, [0] * 4, jobs, f32) == [(0, 3), (1, 2)]
    # a worker per group: pairing would leave two idle
    assert bundles(groups, [0] * 4, 4, f64) == [(0,), (1,), (2,), (3,)]
    # rows so large that no stretch of two batch sizes fits: nothing pairs
    assert sorted(bundles(groups, [0] * 4, 1, 10**6)) == [(0,), (1,), (2,), (3,)]


def test_only_groups_on_the_same_rows_from_the_same_epoch_pair():
    groups = for_folds(plan_groups(HOMEWORK), 2)  # batch sizes x folds
    tasks = bundles(groups, [0] * 8, 2, 2304 * 8)
    assert sorted(i for t in tasks for i in t) == list(range(8))  # each group once
    for t in tasks:
        assert len({groups[i].fold for i in t}) == 1
    assert sum(len(t) == 2 for t in tasks) == 4
    firsts = [0, 16, 0, 16]  # halving: two groups continue from epoch 16
    one = plan_groups(HOMEWORK)
    assert all(len({firsts[i] for i in t}) == 1 for t in bundles(one, firsts, 1, 8))
    # equal batch sizes pair first: a 32-row stretch
    same = plan_groups(Grid(batch_size=(32, 96), learning_rate=tuple(range(1, 33)),
                            epochs=(4,), l2=(0.0,)), target_groups=4)
    assert [tuple(same[i].batch_size for i in t) for t in bundles(same, [0] * 4, 1, 8)] == \
        [(32, 32), (96, 96)]


def test_pairs_are_kept_only_while_they_shorten_the_wall_time():
    six = plan_groups(Grid(batch_size=(10, 20, 40, 80, 160, 320), learning_rate=(1e-3,),
                           epochs=(8,), l2=(0.0,)))
    # six equal groups on two workers: three apart each (3 units); two pairs and two
    # singles take 2 x 0.88 + 1 = 2.76; three pairs 3 x 1.76 / 2 -> 3.52
    tasks = bundles(six, [0] * 6, 2, 8)
    assert sorted(len(t) for t in tasks) == [1, 1, 2, 2]
    assert [len(t) for t in tasks] == [2, 2, 1, 1]  # the costliest first
    assert sorted(len(t) for t in bundles(six, [0] * 6, 1, 8)) == [2, 2, 2]
