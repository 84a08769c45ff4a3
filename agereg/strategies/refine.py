"""Coarse to fine: the first round is the grid (or ``n_trials`` draws); each later round
places a ``points x points`` log-spaced sub-grid of learning rate and l2 around the best
trial so far, at its batch size.

* Round 2 spans ``h / 2`` decades either side of the best value, where ``h`` is the
  median spacing of the first round's values: a best on the edge of the range tried gets
  a sub-grid that reaches past it. Each later round halves the span of an axis while the
  best sits inside the last sub-grid on that axis, and keeps it while the best sits on
  the sub-grid's edge (the optimum lies further out).
* When the best sits at the largest epoch count tried, the next round also records twice
  that many epochs (epoch counts come free in one pass); when it sits at the smallest
  batch size tried, the next round also trains half and a quarter of that batch size
  (an epoch costs about the same at any batch size, and a smaller batch takes more
  steps in it).
* When the best trial's validation loss changes by at most ``tol`` (relative) across the
  l2 values tried with its other settings, its l2 won a tie: the next round spans every
  l2 tried, from the smallest to the largest, instead of centring on it.
* It stops after ``rounds`` rounds, or when a round improves the best validation loss by
  less than ``tol`` (relative).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence

import numpy as np

from agereg.config import Distribution, Grid
from agereg.records import TrialKey, TrialRecord, at_epochs, score
from agereg.strategies.base import (
    Proposal,
    Results,
    best_of,
    initial_columns,
    missing,
    nice,
)


def _spacing(values: Sequence[float], axis: object, n_drawn: int) -> float:
    """Decades between neighbouring values of the first round (log scale)."""
    if isinstance(axis, Distribution) and axis.low > 0:
        return (math.log10(axis.high) - math.log10(axis.low)) / max(2.0, math.sqrt(n_drawn))
    logs = sorted({math.log10(v) for v in values if v > 0})
    if len(logs) < 2:
        return 1.0
    return statistics.median(b - a for a, b in itertools.pairwise(logs))


def _around(best: float, tried: Sequence[float], h: float, points: int) -> list[float]:
    """``points`` log-spaced values within ``h`` decades of ``best`` (which may be 0 for
    l2: then 0 and values below the smallest positive one tried)."""
    if best == 0:
        low = min((v for v in tried if v > 0), default=1e-6)
        return [0.0] + [nice(low * 10 ** (-h * j)) for j in range(points - 1)]
    c = math.log10(best)
    return sorted({nice(10 ** (c + h * t)) for t in np.linspace(-1.0, 1.0, points)})


def _inside(value: float, values: Sequence[float]) -> bool:
    """Whether ``value`` lies strictly between the smallest and largest of ``values``."""
    return min(values) < value < max(values)


def _flat_in_l2(best: TrialRecord, tried: Sequence[TrialKey], results: Results, by: str,
                tol: float) -> bool:
    """Whether the best trial's validation loss changes by at most ``tol`` (relative)
    across the l2 values tried at its batch size, learning rate, epochs and loss: then
    its l2 won a tie, and is no centre for the next sub-grid."""
    key = best.key()
    same = [score(results[k], by) for k in tried if k[:3] == key[:3] and k[4] == key[4]
            and k in results and results[k].status.has_losses()]
    values = [v for v in same if v is not None]
    return len(values) >= 2 and max(values) - min(values) <= tol * abs(min(values))


def _spanning(values: Sequence[float], points: int) -> list[float]:
    """``points`` values spanning ``values``: log-spaced from the smallest positive one to
    the largest, with 0 in place of one of them when 0 is among ``values`` (as
    :func:`_around` does: never more than ``points``)."""
    positive = [v for v in values if v > 0]
    zero = [0.0] if 0.0 in values or not positive else []
    n = points - len(zero)
    if not positive or n < 1:
        return zero
    spread = np.geomspace(min(positive), max(positive), n) if n > 1 else [max(positive)]
    return sorted({*zero, *(nice(float(v)) for v in spread)})


class Refine:
    name = "refine"
    continues = False

    def __init__(self, grid: Grid, rounds: int, points: int, tol: float,
                 n_trials: int | None, seed: int, by: str = "fmse") -> None:
        self.by = by
        self.first = initial_columns(grid, n_trials, seed)
        self.epochs = grid.epochs
        self.rounds, self.points, self.tol = rounds, points, tol
        n = len(self.first)
        self.h0 = (_spacing([c[1] for c in self.first], grid.learning_rate, n),
                   _spacing([c[2] for c in self.first], grid.l2, n))

    def propose(self, results: Results) -> Proposal | None:
        columns, epochs = list(self.first), tuple(self.epochs)
        h_lr, h_l2 = self.h0
        tried: list[TrialKey] = []
        previous_best: float | None = None
        for r in range(self.rounds):
            keys = [at_epochs(c, ep) for c in columns for ep in epochs]
            if missing(keys, results):
                return Proposal(f"round {r + 1} of {self.rounds}", tuple(columns), epochs)
            tried += keys
            best = best_of(tried, results, self.by)
            value = None if best is None else score(best, self.by)
            if best is None or value is None:
                return None  # nothing finished: no centre for a finer grid
            if previous_best is not None and (
                    previous_best - value <= self.tol * abs(previous_best)):
                return None  # converged
            previous_best = value
            lrs = sorted({k[1] for k in tried})
            l2s = sorted({k[3] for k in tried})  # key: (bs, lr, epochs, l2, loss)
            # The span halves each round; after round 2 it halves only while the best
            # sits inside the last sub-grid on that axis: on its edge, the next sub-grid
            # keeps its span and so reaches as far again past that edge.
            h_lr = h_lr / 2 if r == 0 or _inside(best.learning_rate, [c[1] for c in columns]) \
                else h_lr
            h_l2 = h_l2 / 2 if r == 0 or _inside(best.l2, [c[2] for c in columns]) else h_l2
            if best.epochs >= max(k[2] for k in tried):
                epochs = tuple(sorted({*epochs, 2 * best.epochs}))
            sizes = [best.batch_size]
            if best.batch_size <= min(k[0] for k in tried) and best.batch_size > 1:
                # the smallest batch won: an epoch costs about the same at any batch size
                # and smaller ones take more steps per epoch, so try half and a quarter
                sizes += sorted({max(1, best.batch_size // 2), max(1, best.batch_size // 4)}
                                - {best.batch_size}, reverse=True)
            # where l2 makes no difference the best's l2 won a tie: span all of them
            flat = _flat_in_l2(best, tried, results, self.by, self.tol)
            l2_values = _spanning(l2s, self.points) if flat else \
                _around(best.l2, l2s, h_l2, self.points)
            columns = [(bs, lr, l2, best.loss) for bs in sizes
                       for lr in _around(best.learning_rate, lrs, h_lr, self.points)
                       for l2 in l2_values]
            columns = list(dict.fromkeys(columns))  # no duplicate columns
            columns.sort()
        return None
