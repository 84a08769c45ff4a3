"""Typed, immutable records of a search: trial states, trial records, the run summary.

Storage (:mod:`agereg.runs`), the report and the CLI import these; nobody imports the
launcher to get a type.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

# (batch_size, learning_rate, epochs, l2, loss): one trial
TrialKey = tuple[int, float, int, float, str]
# (batch_size, learning_rate, l2, loss): one trained column, recorded at several epochs
Config3 = tuple[int, float, float, str]
DEFAULT_LOSS = "squared"


def at_epochs(column: Config3, epochs: int) -> TrialKey:
    """The trial of ``column`` after ``epochs`` epochs."""
    bs, lr, l2, loss = column
    return (bs, lr, epochs, l2, loss)


FoldLosses = tuple[float | None, float | None, float | None]  # (train, val, test) of a fold


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
    """A stable id of a trial: the same hyperparameters give the same id in every run
    (a squared-loss trial keeps the id it had before the loss became an axis)."""
    bs, lr, ep, l2, loss = key
    text = f"{int(bs)}|{float(lr)!r}|{int(ep)}|{float(l2)!r}"
    if loss != DEFAULT_LOSS:
        text += f"|{loss}"
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
    # The standard error of val_loss: over the validation images (holdout), or
    # val_sd / sqrt(K) (K folds). None when unknown (diverged, a 0.1 run).
    val_se: float | None = None
    fold: int | None = None  # a fold's own record (folds.jsonl): which fold
    val_sd: float | None = None  # K folds: standard deviation (ddof=1) of the folds' val
    folds: tuple[FoldLosses, ...] | None = None  # K folds: each fold's losses, in order
    # mean absolute errors (years) on the three sets, and the standard error of val_mae
    train_mae: float | None = None
    val_mae: float | None = None
    test_mae: float | None = None
    val_mae_se: float | None = None
    best_epoch: int | None = None  # the epoch <= epochs with the lowest validation fMSE
    loss: str = DEFAULT_LOSS  # the training loss: squared | absolute

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))

    def key(self) -> TrialKey:
        return (self.batch_size, self.learning_rate, self.epochs, self.l2, self.loss)

    def column(self) -> Config3:
        return (self.batch_size, self.learning_rate, self.l2, self.loss)

    @property
    def trial_id(self) -> str:
        return trial_id(self.key())

    def with_status(self, status: Status) -> TrialRecord:
        return replace(self, status=status)


def combine_folds(folds: Sequence[TrialRecord]) -> TrialRecord:
    """One trial from the records of its K folds (in fold order): the losses are the mean
    over folds (``math.fsum(values) / K``), ``val_sd`` their standard deviation (ddof=1),
    ``val_se = val_sd / sqrt(K)``, ``seconds`` the sum. A failed fold fails the trial
    (with its error); otherwise a diverged fold diverges it."""
    first = folds[0]
    k = len(folds)
    per_fold = tuple((f.train_loss, f.val_loss, f.test_loss) for f in folds)
    seconds = math.fsum(f.seconds for f in folds)
    base = replace(first, fold=None, seconds=seconds, folds=per_fold, val_se=None, val_sd=None,
                   error=None, val_mae_se=None, best_epoch=None)
    bad = [f for f in folds if f.status is Status.FAILED] or \
          [f for f in folds if f.status is Status.DIVERGED]
    if bad:
        return replace(base, train_loss=None, val_loss=None, test_loss=None, train_mae=None,
                       val_mae=None, test_mae=None, status=bad[0].status, error=bad[0].error)

    def mean(name: str) -> float | None:
        values = [getattr(f, name) for f in folds]
        return None if None in values else math.fsum(values) / k

    def sd(name: str) -> float:
        values = [getattr(f, name) for f in folds]
        return math.nan if None in values or k < 2 else statistics.stdev(values)

    val_sd, mae_sd = sd("val_loss"), sd("val_mae")
    return replace(base, train_loss=mean("train_loss"), val_loss=mean("val_loss"),
                   test_loss=mean("test_loss"), train_mae=mean("train_mae"),
                   val_mae=mean("val_mae"), test_mae=mean("test_mae"), status=Status.OK,
                   val_sd=val_sd, val_se=val_sd / math.sqrt(k),
                   val_mae_se=None if math.isnan(mae_sd) else mae_sd / math.sqrt(k))


def score(r: TrialRecord, by: str = "fmse") -> float | None:
    """The validation figure that ranks trials: fMSE (``val_loss``) or ``val_mae``."""
    return r.val_mae if by == "mae" else r.val_loss


def score_se(r: TrialRecord, by: str = "fmse") -> float | None:
    """The standard error of :func:`score`."""
    return r.val_mae_se if by == "mae" else r.val_se


def rank(records: list[TrialRecord] | tuple[TrialRecord, ...], by: str = "fmse"
         ) -> list[TrialRecord]:
    """Trials with losses by their validation fMSE or MAE (``by``; ties by
    hyperparameters), then diverged and failed ones by hyperparameters. A NaN never wins."""
    def ranked(r: TrialRecord) -> bool:
        return r.status.has_losses() and score(r, by) is not None

    have = [r for r in records if ranked(r)]
    rest = [r for r in records if not ranked(r)]
    have.sort(key=lambda r: (score(r, by), r.key()))
    rest.sort(key=lambda r: (r.status.value, r.key()))
    return have + rest


def finished_trials(ranked: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The trials of a ranking that have losses, in its order: the K-th is trial #K of
    ``agereg eval --rank K``, ``predict --trial K`` and the report."""
    return [r for r in ranked if r.status.has_losses()]


def best_record(ranked: list[TrialRecord]) -> TrialRecord | None:
    return ranked[0] if ranked and ranked[0].status.has_losses() else None


def status_counts(records: list[TrialRecord]) -> dict[str, int]:
    return {s.value: sum(r.status is s for r in records) for s in Status}


# "Most regularised" for the one-standard-error rule, as a sort key (smallest first):
# fewer epochs (earlier stopping), then larger l2, then a smaller learning rate, then a
# larger batch size (fewer steps per epoch), then the lower validation loss.
REGULARISATION_ORDER = ("fewer epochs, then larger l2, then smaller learning_rate, then "
                        "larger batch_size, then lower validation loss")


def regularisation_key(r: TrialRecord, by: str = "fmse") -> tuple[float, ...]:
    return (r.epochs, -r.l2, r.learning_rate, -r.batch_size, score(r, by) or math.inf)


@dataclass(frozen=True)
class Selection:
    """The trial a selection rule picks from a ranking (``rank`` is its 1-based place in
    it). For ``one_se``: the lowest validation loss, its standard error ``se`` and the
    ``threshold`` = lowest + se below which ``n_within`` trials qualified."""

    rule: str
    trial: TrialRecord | None
    rank: int | None
    lowest: TrialRecord | None
    se: float | None = None
    threshold: float | None = None
    n_within: int = 0
    note: str | None = None
    by: str = "fmse"


def select(ranked: list[TrialRecord], rule: str = "best", by: str = "fmse") -> Selection:
    """Pick a trial from a ranking: ``best`` (rank 1) or ``one_se``, the most regularised
    trial (:data:`REGULARISATION_ORDER`) whose validation loss is within one standard
    error of the lowest (Hastie, Tibshirani & Friedman, *Elements of Statistical
    Learning*, 7.10)."""
    finished = [r for r in ranked if r.status.has_losses() and score(r, by) is not None]
    if not finished:
        return Selection(rule, None, None, None, by=by)
    lowest = finished[0]
    se = score_se(lowest, by)
    if rule == "best":
        return Selection(rule, lowest, 1, lowest, se, None, 1, by=by)
    if se is None or not math.isfinite(se):
        return Selection(rule, lowest, 1, lowest, None, None, 1,
                         "one_se: the best trial has no standard error (a single validation "
                         "image?), so the lowest validation loss is selected", by)
    low = score(lowest, by)
    assert low is not None
    threshold = low + se
    within = [r for r in finished if (v := score(r, by)) is not None and v <= threshold]
    chosen = min(within, key=lambda r: regularisation_key(r, by))
    return Selection(rule, chosen, ranked.index(chosen) + 1, lowest, se, threshold, len(within),
                     by=by)


@dataclass(frozen=True)
class RunSummary:
    """What best.json says: the selected trial, how far the search got, and notices."""

    ranked: list[TrialRecord]
    n_planned: int
    notices: tuple[str, ...] = field(default=())
    rule: str = "best"
    by: str = "fmse"

    @property
    def selection(self) -> Selection:
        return select(self.ranked, self.rule, self.by)

    @property
    def best(self) -> TrialRecord | None:
        """The selected trial (rank 1 under ``select: best``)."""
        return self.selection.trial

    @property
    def counts(self) -> dict[str, int]:
        return status_counts(self.ranked)
