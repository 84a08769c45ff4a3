"""Successive halving with epochs as the resource.

The rungs are the listed epoch counts in increasing order. Every configuration trains to
the first rung; the best ``1/eta`` by validation loss (at least one) continue from their
parameters to the next rung, and so on. A configuration stopped at a rung keeps that
rung's losses with status ``pruned``. Ties are broken by the hyperparameters, so the
decisions are a function of the recorded losses alone and replay exactly on resume.
"""

from __future__ import annotations

from agereg.config import Grid
from agereg.records import Config3, Status, TrialKey, at_epochs, score
from agereg.strategies.base import Proposal, Results, initial_columns, missing
from agereg.words import counted


class Halving:
    name = "halving"
    continues = True

    def __init__(self, grid: Grid, eta: int, n_trials: int | None, seed: int,
                 by: str = "fmse") -> None:
        self.columns = initial_columns(grid, n_trials, seed)
        self.rungs = grid.epochs
        self.eta = eta
        self.by = by

    def survivors(self, alive: list[Config3], epoch: int, results: Results) -> list[Config3]:
        """The best ``len(alive) // eta`` (at least one) finished configurations at
        ``epoch``, back in their original order."""
        done = [c for c in alive if results[at_epochs(c, epoch)].status.has_losses()]
        done.sort(key=lambda c: (score(results[at_epochs(c, epoch)], self.by), c))
        keep = set(done[: max(1, len(alive) // self.eta)])
        return [c for c in alive if c in keep]

    def propose(self, results: Results) -> Proposal | None:
        alive = list(self.columns)
        pruned: list[TrialKey] = []
        for k, epoch in enumerate(self.rungs):
            start = self.rungs[k - 1] if k else 0
            keys = [at_epochs(c, epoch) for c in alive]
            if missing(keys, results):
                # the stage's name keys its groups in plan.jsonl: kept as runs stored it
                # ("(1 epochs)" too); the title is what the search prints
                rung = f"rung {k + 1} of {len(self.rungs)}"
                return Proposal(f"{rung} ({epoch} epochs)", tuple(alive), (epoch,), start,
                                tuple(pruned), title=f"{rung} ({counted(epoch, 'epoch')})")
            if k == len(self.rungs) - 1:
                break
            keep = self.survivors(alive, epoch, results)
            kept = set(keep)
            pruned += [at_epochs(c, epoch) for c in alive
                       if c not in kept and results[at_epochs(c, epoch)].status is Status.OK]
            alive = keep
            if not alive:
                break
        todo = tuple(k for k in pruned if results[k].status is Status.OK)
        return Proposal("pruning", (), (), 0, todo) if todo else None
