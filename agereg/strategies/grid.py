"""Exhaustive grid search: one proposal, every trial of the grid."""

from __future__ import annotations

from agereg.config import Grid
from agereg.plan import grid_columns
from agereg.strategies.base import Proposal, Results, missing


class GridSearch:
    name = "grid"
    continues = False

    def __init__(self, grid: Grid) -> None:
        self.proposal = Proposal("grid", tuple(grid_columns(grid)), grid.epochs)

    def propose(self, results: Results) -> Proposal | None:
        return self.proposal if missing(self.proposal.trial_keys(), results) else None
