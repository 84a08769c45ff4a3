"""The parameters the search trained, kept in the run folder so that ``eval`` need not
train a trial again.

One file per trained group of the holdout split, ``params/<id>.npz``: the group's
identity (batch size, loss, columns, epochs, start epoch) and the weights ``W`` (E, K, D)
and biases ``b`` (E, K) of its K columns after each of its E recorded epochs, in the
engine's dtype, NaN where a column diverged. It is written atomically before the group's
records are appended to the trial log, so a logged trial normally has its parameters.
A missing, unreadable or mismatching file is never trusted: the caller trains the trial
again (the same numbers) and says why. Cross-validation folds keep none: their
parameters are not a model anyone evaluates.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from agereg.fileio import KiB, NotReadable, make_folder, read_npz, save_npz
from agereg.plan import Group
from agereg.records import TrialRecord

PARAMS_DIR = "params"


def _identity(group: Group) -> str:
    return json.dumps({"batch_size": group.batch_size, "loss": group.loss,
                       "columns": [list(c) for c in group.columns],
                       "epochs": list(group.epochs), "start_epoch": group.start_epoch},
                      sort_keys=True)


def params_path(run_dir: Path, group: Group) -> Path:
    """Where a group's parameters live: named by a hash of its identity."""
    digest = hashlib.sha256(_identity(group).encode()).hexdigest()[:16]
    return run_dir / PARAMS_DIR / f"{digest}.npz"


def save_params(run_dir: Path, group: Group, W: np.ndarray, b: np.ndarray) -> None:
    """Write a group's parameters, ``W`` (E, K, D) and ``b`` (E, K), atomically."""
    path = params_path(run_dir, group)
    make_folder(path.parent, then=f", then resume with `agereg search --resume {run_dir}`")
    save_npz(path, W=W, b=b, identity=np.array(_identity(group)))


def load_params(run_dir: Path, groups: list[Group], rec: TrialRecord, d: int
                ) -> tuple[np.ndarray, np.generic] | str:
    """The stored weights (D,) and bias, in the engine's dtype, of the finished trial
    ``rec`` with ``d`` features, from the first of ``groups`` (the stored plan's) that
    trained it and kept its parameters; otherwise a sentence saying why not."""
    found = [g for g in groups if g.fold is None and g.batch_size == rec.batch_size
             and g.loss == rec.loss and rec.epochs in g.epochs
             and (rec.learning_rate, rec.l2) in g.columns]
    reason = ("the run keeps no parameters for it (a run written before agereg kept them, "
              "or a trial reused by --extend whose run is gone or kept none)")
    for g in found:
        path = params_path(run_dir, g)
        E, K = len(g.epochs), len(g.columns)
        try:
            z = read_npz(path, E * K * (d + 1) * 8 + 64 * KiB)
            W, b, identity = z["W"], z["b"], str(z["identity"])
        except FileNotFoundError:
            continue
        except (OSError, KeyError, NotReadable) as exc:
            reason = f"{path} is unreadable ({exc})"
            continue
        if identity != _identity(g) or W.shape != (E, K, d) or b.shape != (E, K):
            reason = f"{path} does not match the run's plan"
            continue
        i, k = g.epochs.index(rec.epochs), g.columns.index((rec.learning_rate, rec.l2))
        w, bias = W[i, k], b[i, k]
        if W.dtype not in (np.float32, np.float64) or not (np.isfinite(w).all()
                                                           and np.isfinite(bias)):
            reason = f"{path} holds no finite parameters for it"
            continue
        return w, bias
    return reason
