"""Search strategies: each proposes trials from the results so far (see :mod:`.base`)."""

from __future__ import annotations

from agereg.config import Config
from agereg.strategies.base import Proposal, Results, Strategy
from agereg.strategies.grid import GridSearch
from agereg.strategies.halving import Halving
from agereg.strategies.random_search import RandomSearch
from agereg.strategies.refine import Refine

__all__ = ["Proposal", "Results", "Strategy", "make_strategy"]


def make_strategy(cfg: Config) -> Strategy:
    s, grid = cfg.search, cfg.grid
    seed = cfg.seed if s.seed is None else s.seed
    if s.strategy == "random":
        assert s.n_trials is not None  # the config requires it
        return RandomSearch(grid, s.n_trials, seed)
    if s.strategy == "halving":
        return Halving(grid, s.eta, s.n_trials, seed, cfg.select_by)
    if s.strategy == "refine":
        return Refine(grid, s.rounds, s.points, s.tol, s.n_trials, seed, cfg.select_by)
    return GridSearch(grid)
