"""Notices about a search's outcome, as sentences: plain records in, strings out."""

from __future__ import annotations

import math
from collections.abc import Sequence

from agereg.records import Status, TrialRecord, best_record, rank

AXES = ("batch_size", "learning_rate", "epochs", "l2")


def _suggest(axis: str, value: float, largest: bool, cap: float = math.inf) -> str:
    """The next range to try for an axis whose best value sits on an edge (a learning
    rate's no higher than ``cap``)."""
    if axis in ("learning_rate", "l2"):
        low, high = (value / 3, value * 30) if largest else (value / 30, value * 3)
        return f"{axis}: {{log_uniform: [{low:.3g}, {min(high, cap):.3g}]}}"
    v = int(value)
    values = [v, 2 * v, 4 * v] if largest else sorted({max(1, v // 4), max(1, v // 2), v})
    return f"{axis}: [{', '.join(str(x) for x in values)}]"


def edge_notices(records: Sequence[TrialRecord], by: str = "fmse", rule: str = "best",
                 lr_limit: float | None = None) -> tuple[str, ...]:
    """One sentence per axis on which the best trial's value (the lowest validation loss)
    is the smallest or largest value tried (of an axis with at least two values), with
    the next range to try. Under the ``one_se`` rule the selected trial may be another,
    more regularised one: the sentences then say "lowest-validation" instead of "best".
    ``lr_limit``: the full-batch stability limit ``2 / lambda_max`` of the training rows
    (the search's check measures it); a larger learning rate than the squared loss's best
    is then suggested only up to it, since beyond it full-batch descent diverges."""
    best = best_record(rank(list(records), by))
    if best is None:
        return _all_diverged(records, lr_limit)
    who = "best" if rule == "best" else "lowest-validation"
    out = []
    for axis in AXES:
        tried = sorted({getattr(r, axis) for r in records})
        value = getattr(best, axis)
        if len(tried) < 2 or tried[0] < value < tried[-1]:
            continue
        largest = value == tried[-1]
        if axis in ("batch_size", "epochs") and value == 1 and not largest:
            continue  # nothing smaller to try
        if axis == "l2" and value == 0:
            out.append(f"{who} l2 0 is the smallest tried: regularisation does not help at "
                       "these settings")
            continue
        side, where = ("largest", "above") if largest else ("smallest", "below")
        cap = math.inf  # how high a learning rate may be suggested
        if axis == "learning_rate" and largest and lr_limit and best.loss == "squared":
            cap = lr_limit
        if value >= cap:
            out.append(f"{who} learning_rate {value:g} is the largest tried and at the "
                       f"full-batch limit 2 / lambda_max = {cap:.3g}: larger ones diverge")
            continue
        up_to = (f", up to the full-batch limit 2 / lambda_max = {cap:.3g}"
                 if value * 30 > cap else "")
        out.append(f"{who} {axis} {value:g} is the {side} tried: the optimum may lie "
                   f"{where} it{up_to}; try {_suggest(axis, value, largest, cap)}")
    return tuple(out)


def _all_diverged(records: Sequence[TrialRecord], lr_limit: float | None) -> tuple[str, ...]:
    """When every trial diverged (none failed: that is no verdict on the learning rate),
    the range to try: three decades up to a third of the smallest learning rate tried,
    and no higher than 1 / lambda_max (half the full-batch limit, for the squared loss),
    the largest step minibatch SGD on least squares takes at its fastest."""
    if not records or any(r.status is not Status.DIVERGED for r in records):
        return ()
    smallest = min(r.learning_rate for r in records)
    high = smallest / 3
    limit = ""
    if lr_limit and all(r.loss == "squared" for r in records):
        high = min(high, lr_limit / 2)
        limit = f" (the full-batch limit 2 / lambda_max is {lr_limit:.3g})"
    return (f"every trial diverged, down to the smallest learning rate tried, "
            f"{smallest:g}{limit}; try learning_rate: {{log_uniform: [{high / 1000:.3g}, "
            f"{high:.3g}]}}",)
