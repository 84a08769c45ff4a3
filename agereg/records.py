"""Typed, immutable records of a search: trial states, trial records, the run summary.

Storage (:mod:`agereg.runs`), the report and the CLI import these; nobody imports the
launcher to get a type.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import Enum

TrialKey = tuple[int, float, int, float]  # (batch_size, learning_rate, epochs, l2)
Config3 = tuple[int, float, float]  # (batch_size, learning_rate, l2): one trained column


class Status(str, Enum):
    """What became of a trial. ``ok`` and ``pruned`` trials have losses; ``pruned`` ones
    were stopped at that epoch count by successive halving. ``diverged`` (non-finite or
    exploding numbers) and ``failed`` (an exception in its group) rank last."""

    OK = "ok"
    PRUNED = "pruned"
    DIVERGED = "diverged"
    FAILED = "failed"

    def has_losses(self) -> bool:
        return self in (Status.OK, Status.PRUNED)

    def __str__(self) -> str:
        return self.value


def trial_id(key: TrialKey) -> str:
    """A stable id of a trial: the same hyperparameters give the same id in every run."""
    bs, lr, ep, l2 = key
    text = f"{int(bs)}|{float(lr)!r}|{int(ep)}|{float(l2)!r}"
    return hashlib.sha1(text.encode("ascii")).hexdigest()[:12]


@dataclass(frozen=True)
class TrialRecord:
    """One trained trial. Losses are None unless ``status.has_losses()``."""

    batch_size: int
    learning_rate: float
    epochs: int
    l2: float
    train_loss: float | None
    val_loss: float | None
    test_loss: float | None
    status: Status
    seconds: float
    error: str | None = None
    origin: str | None = None  # the run folder a reused trial was trained in (--extend)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))

    def key(self) -> TrialKey:
        return (self.batch_size, self.learning_rate, self.epochs, self.l2)

    def column(self) -> Config3:
        return (self.batch_size, self.learning_rate, self.l2)

    @property
    def trial_id(self) -> str:
        return trial_id(self.key())

    def with_status(self, status: Status) -> TrialRecord:
        return replace(self, status=status)


def rank(records: list[TrialRecord] | tuple[TrialRecord, ...]) -> list[TrialRecord]:
    """Trials with losses by validation loss (ties by hyperparameters), then diverged and
    failed ones by hyperparameters. A NaN never wins."""
    have = [r for r in records if r.status.has_losses() and r.val_loss is not None]
    rest = [r for r in records if not (r.status.has_losses() and r.val_loss is not None)]
    have.sort(key=lambda r: (r.val_loss, r.key()))
    rest.sort(key=lambda r: (r.status.value, r.key()))
    return have + rest


def best_record(ranked: list[TrialRecord]) -> TrialRecord | None:
    return ranked[0] if ranked and ranked[0].status.has_losses() else None


def status_counts(records: list[TrialRecord]) -> dict[str, int]:
    return {s.value: sum(r.status is s for r in records) for s in Status}


@dataclass(frozen=True)
class RunSummary:
    """What best.json says: the best trial, how far the search got, and notices."""

    ranked: list[TrialRecord]
    n_planned: int
    notices: tuple[str, ...] = field(default=())

    @property
    def best(self) -> TrialRecord | None:
        return best_record(self.ranked)

    @property
    def counts(self) -> dict[str, int]:
        return status_counts(self.ranked)
