"""``agereg predict``: predicted ages for new images with a run's trained model.

The model is the selected (or named) trial's saved evaluation (``evals/<trial_id>/``:
weights, bias, model.json); when the trial has none, it is evaluated first, as
``agereg eval`` would, and the caller says so. Images are validated like data files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agereg.assessment import (
    evaluate_run,
    load_model,
    nothing_finished,
    nth_finished,
    open_run,
)
from agereg.data import check_images
from agereg.errors import DataError, RunError
from agereg.evaluate import predict as linear_predict
from agereg.pipeline import Log, quiet
from agereg.records import finished_trials
from agereg.runs import RunLock, eval_folder, resolve_run


@dataclass(frozen=True)
class Prediction:
    run_dir: Path
    rank: int
    trial_id: str
    folder: Path  # where the model lives
    trained_now: bool  # no evaluation had saved the model: it was evaluated first
    ages: np.ndarray  # (N,)
    notes: tuple[str, ...] = ()  # where the model extrapolates (:func:`range_notes`)


def predict_images(images: str | Path, run: str | Path | None, runs_dir: Path,
                   trial: str = "best", log: Log = quiet, refit: bool = False) -> Prediction:
    """Predict ages for the images in ``images`` (an .npy of shape (N, H, W), (N, D), or
    one image) with trial ``trial`` ("best": as the run's select rule picks; or a rank);
    ``refit``: with its model retrained on the training and validation rows (``agereg
    eval --refit``; a cross-validated run's model always is)."""
    run_dir = resolve_run(run, runs_dir)
    with RunLock(run_dir, read_only_ok=True):  # a read-only run predicts too
        ctx = open_run(run_dir, runs_dir, log)
    summary = ctx.summary()
    ranked = finished_trials(summary.ranked)
    if not ranked:
        raise nothing_finished(ctx, "predict with", locked=False)
    if trial == "best":
        k = summary.selection.rank or 1
    else:
        try:
            k = int(trial)
        except ValueError:
            raise RunError(f"--trial {trial!r}: give best or a rank (1, 2, ...)") from None
    rec = nth_finished(ranked, k, "--trial")
    d = ctx.dataset.info.n_features
    X = check_images(Path(images), d)  # before any training: bad input costs nothing
    folder = eval_folder(run_dir, rec.trial_id, refit=refit or ctx.split.k > 0)
    trained_now = not (folder / "weights.npy").is_file()
    if trained_now:
        log(f"trial #{k} has no saved {'refit ' * refit}model yet: evaluating it first, "
            f"as `agereg eval --rank {k}{' --refit' * refit}` would")
        outcome = evaluate_run(run_dir, runs_dir, rank=k, refit=refit, log=log)
        folder = outcome.folder
    w, b = load_model(folder, d)
    ages = predict_rows(X, w, b)
    return Prediction(run_dir, k, rec.trial_id, folder, trained_now, ages,
                      range_notes(X, ctx.dataset.Xtr, ages, ctx.dataset.ytr))


def predict_rows(X: np.ndarray, w: np.ndarray, b: float, rows: int = 4096) -> np.ndarray:
    """``X w + b`` a block of ``rows`` images at a time, so that a large (memory-mapped)
    file is never converted to float64 whole (60,000 images of 48x48: 1.0 s and 0.7 GB
    peak, against 3.4 s and 1.7 GB). The numbers are those of the whole product to about
    1e-14: BLAS may sum a row's products in another order in a smaller matrix (as it
    already does in a larger one, when it splits the rows between threads)."""
    out = np.empty(len(X))
    for i in range(0, len(X), rows):
        out[i:i + rows] = linear_predict(np.asarray(X[i:i + rows], dtype=np.float64), w, b)
    return out


def range_notes(X: np.ndarray, X_train: np.ndarray, ages: np.ndarray, y_train: np.ndarray
                ) -> tuple[str, ...]:
    """Where the model extrapolates: images whose pixels lie far outside the training
    images' range (beyond it by more than its own width; images scaled 0-255 for a model
    trained on pixels in [0, 1] get ages in the thousands), and predicted ages outside the
    training ages. Notes, never errors: the numbers are what the model computes."""
    lo, hi = float(np.min(X_train)), float(np.max(X_train))
    a, b = float(np.min(X)), float(np.max(X))
    notes = []
    if a < lo - (hi - lo) or b > hi + (hi - lo):
        hint = " (dividing by 255 would match)" if lo >= 0 and hi <= 1 and 100 < b <= 255 \
            else ""
        notes.append(f"the images' pixels lie in [{a:.4g}, {b:.4g}], the training images' "
                     f"in [{lo:.4g}, {hi:.4g}]: the model extrapolates; scale the images as "
                     f"the training images were{hint}")
    y_lo, y_hi = float(np.min(y_train)), float(np.max(y_train))
    outside = int(np.count_nonzero((ages < y_lo) | (ages > y_hi)))
    if outside:
        which = ("the predicted age lies" if len(ages) == 1 else
                 f"{outside} of {len(ages)} predicted ages lie")
        notes.append(f"{which} outside the training ages ({y_lo:.4g} to {y_hi:.4g} years)")
    return tuple(notes)


__all__ = ["DataError", "Prediction", "predict_images", "predict_rows", "range_notes"]
