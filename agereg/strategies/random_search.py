"""Random search: ``n_trials`` configurations drawn with the seed, each recorded at every
listed epoch count (one pass up to the largest)."""

from __future__ import annotations

from agereg.config import Grid
from agereg.strategies.base import Proposal, Results, draw_columns, missing


class RandomSearch:
    name = "random"
    continues = False

    def __init__(self, grid: Grid, n_trials: int, seed: int) -> None:
        columns = draw_columns(grid, n_trials, seed)
        self.proposal = Proposal("random", tuple(columns), grid.epochs)

    def propose(self, results: Results) -> Proposal | None:
        return self.proposal if missing(self.proposal.trial_keys(), results) else None
