"""What a strategy is: it proposes the next batch of trials from the results so far.

A strategy never trains and never writes files. :meth:`Strategy.propose` is a pure
function of the results: it replays its own decisions from them, so a resumed search
(whose results come from the trial log) proposes exactly what the interrupted one would
have. It returns ``None`` when the search is complete.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agereg.config import Axis, Distribution, Grid
from agereg.plan import grid_columns
from agereg.records import Config3, TrialKey, TrialRecord, at_epochs, score

Results = Mapping[TrialKey, TrialRecord]


@dataclass(frozen=True)
class Proposal:
    """Train ``columns`` and record them at ``epochs``; ``start_epoch`` > 0 continues
    from the parameters after that epoch (successive halving). ``prune`` lists finished
    trials to mark ``pruned``. ``stage`` names the step, the same on every replay (it keys
    the stored plan); ``title``, when given, is how the step is shown instead."""

    stage: str
    columns: tuple[Config3, ...]
    epochs: tuple[int, ...]
    start_epoch: int = 0
    prune: tuple[TrialKey, ...] = ()
    title: str = ""

    def trial_keys(self) -> list[TrialKey]:
        return [at_epochs(c, ep) for c in self.columns for ep in self.epochs]


class Strategy(Protocol):
    name: str
    continues: bool  # whether proposals continue from saved parameters (start_epoch > 0)

    def propose(self, results: Results) -> Proposal | None: ...


def missing(keys: Sequence[TrialKey], results: Results) -> bool:
    return any(k not in results for k in keys)


def best_of(keys: Sequence[TrialKey], results: Results, by: str = "fmse"
            ) -> TrialRecord | None:
    """The trial with the lowest validation fMSE or MAE (``by``) among ``keys`` (ties by
    key)."""
    have = [results[k] for k in keys if k in results and results[k].status.has_losses()
            and score(results[k], by) is not None]
    return min(have, key=lambda r: (score(r, by), r.key())) if have else None


def nice(value: float) -> float:
    """A drawn or placed value rounded to 6 significant digits: readable in tables and
    configs, and still exact once written (repr round-trips)."""
    return float(f"{value:.6g}")


def _draw(axis: Axis | tuple[int, ...], rng: np.random.Generator) -> float:
    if isinstance(axis, Distribution):
        if axis.kind == "log_uniform":
            return nice(math.exp(rng.uniform(math.log(axis.low), math.log(axis.high))))
        return nice(rng.uniform(axis.low, axis.high))
    return axis[int(rng.integers(len(axis)))]


def draw_columns(grid: Grid, n: int, seed: int) -> list[Config3]:
    """``n`` distinct (batch_size, learning_rate, l2, loss) configurations drawn with
    ``seed``.

    From a finite grid: a sample without replacement (all of it when ``n`` is larger).
    With a distribution: each configuration draws batch_size, learning_rate, l2, then
    (with more than one) the loss. Returned sorted, so the grouping does not depend on
    the draw order."""
    rng = np.random.default_rng(seed)
    if grid.is_finite():
        every = grid_columns(grid)
        if n >= len(every):
            return every
        return [every[i] for i in sorted(rng.choice(len(every), size=n, replace=False))]
    seen: set[Config3] = set()
    for _ in range(100 * n):
        if len(seen) == n:
            break
        bs, lr, l2 = (int(_draw(grid.batch_size, rng)), _draw(grid.learning_rate, rng),
                      _draw(grid.l2, rng))
        loss = grid.loss[int(rng.integers(len(grid.loss)))] if len(grid.loss) > 1 \
            else grid.loss[0]
        seen.add((bs, lr, l2, loss))
    return sorted(seen)


def initial_columns(grid: Grid, n_trials: int | None, seed: int) -> list[Config3]:
    """The grid's configurations, or ``n_trials`` drawn ones when given."""
    if n_trials is None:
        return grid_columns(grid)
    return draw_columns(grid, n_trials, seed)
