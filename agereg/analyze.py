"""``agereg analyze``: measured answers about batch size and learning rate for a dataset
and split, and for a finished run.

Orchestration only: the numbers come from :mod:`agereg.analysis`, pictures from
:mod:`agereg.plots`. With a run, the result is also written to ``RUN/analysis/`` (JSON and
pictures), where ``agereg report`` finds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agereg.analysis import (
    Noise,
    gradient_noise,
    range_top,
    row_curvature,
    scaling_rules,
    suggest_learning_rates,
    top_eigenvalue,
)
from agereg.config import Distribution
from agereg.data import load_dataset
from agereg.errors import DataError, RunError
from agereg.fileio import atomic_write_bytes, make_folder
from agereg.launcher import in_memory
from agereg.pipeline import Log, quiet
from agereg.runs import RunLock, json_safe, resolve_run, write_json
from agereg.split import SPLIT_NAME, load_split, make_split

ANALYSIS_DIR = "analysis"
ANALYSIS_NAME = "analysis.json"


def _noise_dict(noise: Noise) -> dict[str, Any]:
    return {
        "g_norm2": noise.g_norm2, "trace_sigma": noise.trace, "b_simple": noise.b_simple,
        "batch_sizes": list(noise.batch_sizes), "measured": list(noise.measured),
        "law": list(noise.law), "slope": noise.slope, "draws": noise.draws,
    }  # fmt: skip


def analyze(
    data: str | Path | None,
    run: str | Path | None,
    runs_dir: Path,
    batch_size: int | None = None,
    seed: int = 0,
    draws: int = 100,
    log: Log = quiet,
) -> dict[str, Any]:
    """Analyse the training rows of a dataset (its ``split.json``, or a new holdout from
    ``seed``) or of a run (its split, and its selected trial). Returns the JSON document;
    with a run it is also written to ``RUN/analysis/`` with its pictures."""
    from agereg.assessment import _train_columns, kept_fit, open_run
    from agereg.engine import Fit

    if not 1 <= draws <= 100_000:
        raise RunError(f"--draws {draws}: give 1 ... 100,000 minibatches per batch size")
    ctx = None
    if run is not None or data is None:
        run_dir = resolve_run(run, runs_dir)
        with RunLock(run_dir):
            ctx = open_run(run_dir, runs_dir, log)
        dataset, split, seed = ctx.dataset, ctx.split, ctx.cfg.seed
        where = f"run {ctx.run_dir}"
    else:
        dataset = load_dataset(data)
        path = Path(data) / SPLIT_NAME
        info = dataset.info
        split = (load_split(path, info.n_train, info.sha256["ytr"]) if path.exists() else
                 make_split(info.n_train, seed, 0.2, info.sha256["ytr"]))
        kind = f"its {SPLIT_NAME}" if path.exists() else f"a new 80/20 split, seed {seed}"
        where = f"data {data} ({kind})"
    arrays = in_memory(dataset, split, "float64")
    X, y = arrays.X_fit, arrays.y_fit
    n = len(y)
    if n < 2:  # minibatches of a single row vary by nothing: no noise to measure
        raise DataError(f"{where}: {n} training row; gradient noise needs at least 2 "
                        "(a larger training file, or a smaller val_fraction)")
    log(f"analysing {n} training rows of {where}")
    eig = top_eigenvalue(X)
    result: dict[str, Any] = {
        "source": where,
        "n_train": n,
        "n_features": int(X.shape[1]),
        "lambda_max": eig.lambda_max,
        "lr_limit": eig.lr_limit,
        "eigen": {"method": "power iteration from the mean row", "iterations": eig.iterations,
                  "relative_residual": eig.residual,
                  "note": "with l2 > 0 the largest eigenvalue grows by l2 (the weights'"
                          " block), so the limit shrinks slightly"},
    }
    log("measuring minibatch gradient noise at w = 0")
    at_zero = gradient_noise(X, y, np.zeros(X.shape[1]), 0.0, 0.0, seed, draws,
                             on_draw=_estimate(draws, log))
    result["noise_at_zero"] = _noise_dict(at_zero)
    bs = batch_size
    chosen = None
    if ctx is not None:
        grid = ctx.cfg.grid
        result["learning_rates"] = [
            {"learning_rate": lr, "fraction_of_limit": lr / eig.lr_limit,
             "stable_full_batch": lr < eig.lr_limit}
            for lr in (grid.learning_rate if not isinstance(grid.learning_rate, Distribution)
                       else (grid.learning_rate.low, grid.learning_rate.high))]
        selection = ctx.summary().selection
        chosen = selection.trial
        if chosen is not None:
            precision = ctx.cfg.execution.precision
            trained = arrays if precision == "float64" else in_memory(dataset, split, precision)
            # the parameters the search kept, else trained again as the search trained it
            kept = None if split.k else kept_fit(ctx, trained, chosen)
            if isinstance(kept, Fit):
                fit = kept
            else:
                log(f"training the selected trial (#{selection.rank}) to measure the noise "
                    "at its solution")
                (fit,) = _train_columns(ctx.cfg, trained, [chosen])
            if not fit.diverged:
                at_sol = gradient_noise(X, y, fit.w, fit.b, chosen.l2, seed, draws,
                                        on_draw=_estimate(draws, log))
                result["noise_at_selected"] = {
                    "trial": {"batch_size": chosen.batch_size,
                              "learning_rate": chosen.learning_rate, "epochs": chosen.epochs,
                              "l2": chosen.l2, "loss": chosen.loss},
                    **_noise_dict(at_sol)}
            bs = bs or chosen.batch_size
        if "absolute" in ctx.cfg.grid.loss:
            result["notes"] = [
                "the run trains with the absolute loss too: these figures (curvature, "
                "gradient noise, learning-rate range) are the squared loss's; the absolute "
                "loss has no curvature and its per-example gradients are sign(r) x, so for "
                "its trials they are a rough guide only"]
        scaling = scaling_rules(ctx.records, ctx.cfg.select_by)
        result["scaling"] = {"batch_sizes": list(scaling.batch_sizes),
                             "best_learning_rate": list(scaling.best_lr),
                             "alpha": scaling.alpha, "verdict": scaling.verdict}
    bs = bs or 32
    # the noise scale where training spends its time: at the selected trial's solution
    # when there is one (at w = 0 the gradient is almost all signal)
    at = result.get("noise_at_selected") or result["noise_at_zero"]
    result["b_simple"] = at["b_simple"]
    result["b_simple_at"] = "selected trial" if "noise_at_selected" in result else "w = 0"
    # a batch of all n rows (or more: the engine takes one full batch) has no noise
    full = bs >= n
    beta = row_curvature(X)
    result["row_curvature_max"] = beta
    top = range_top(eig.lambda_max, beta, bs, n)
    values = suggest_learning_rates(top)
    result["lr_range"] = {
        "batch_size": bs, "top": top, "values": values,
        "yaml": "learning_rate: [" + ", ".join(_yaml_number(v) for v in values) + "]",
        "rule": (f"B >= the {n} training rows: one full batch an epoch, no minibatch noise; "
                 "top = 1 / lambda_max, half the limit" if full else
                 f"top = B / (beta + (B - 1) lambda_max) with beta = max |x~_i|^2 = "
                 f"{beta:.4g}, the fastest step of minibatch SGD (Ma, Bassily & Belkin, "
                 "2018)") + ", then 3 decades down",
    }  # fmt: skip
    if chosen is not None and chosen.batch_size == bs and chosen.learning_rate > top:
        # the two suggestions a user sees, this range and the search's edge notice, must
        # not seem to contradict the trial that trained best
        result.setdefault("notes", []).append(
            f"the selected trial's learning rate {chosen.learning_rate:g} lies above this "
            f"range ({chosen.learning_rate / top:.2g} x its top) and trained best at batch "
            f"size {bs}: the top is the fastest step in theory, not a limit (full-batch "
            f"descent is stable up to 2 / lambda_max = {eig.lr_limit:.3g}); search around "
            f"{chosen.learning_rate:g} rather than below it")
    result = json_safe(result)  # type: ignore[assignment]
    if ctx is not None:
        _write(ctx.run_dir, result)
    return result


def _estimate(draws: int, log: Log, after: float = 2.0) -> Callable[[int], None]:
    """A progress callback for ``gradient_noise``: once ``after`` seconds have passed,
    say once how long the rest of the draws will take (``--draws`` in the tens of
    thousands takes minutes on the homework data, about 2 s per 1,000)."""
    t0, said = time.perf_counter(), False

    def on_draw(d: int) -> None:
        nonlocal said
        elapsed = time.perf_counter() - t0
        if not said and elapsed >= after and d < draws:
            said = True
            left = elapsed / d * (draws - d)
            log(f"  {d:,} of {draws:,} draws in {elapsed:.0f} s; about {left:.0f} s more")

    return on_draw


def _yaml_number(v: float) -> str:
    """A float as YAML reads a number (``1.0e-05``, never ``1e-05``, a string there)."""
    text = f"{v:.2e}" if v < 1e-3 or v >= 1e4 else repr(v)
    mantissa, _, exponent = text.partition("e")
    if exponent:
        mantissa = mantissa.rstrip("0").rstrip(".")
        mantissa = mantissa if "." in mantissa else mantissa + ".0"
        return f"{mantissa}e{int(exponent):+03d}"
    return text


def _write(run_dir: Path, result: dict[str, Any]) -> None:
    """RUN/analysis/analysis.json and its pictures (the JSON last)."""
    from agereg import plots

    folder = make_folder(run_dir / ANALYSIS_DIR)
    noise = [(name, result[key]) for name, key in (("w = 0", "noise_at_zero"),
                                                   ("selected trial", "noise_at_selected"))
             if key in result]
    atomic_write_bytes(folder / "gradient_noise.png", plots.gradient_noise(noise))
    pictures = ["gradient_noise.png"]
    sc = result.get("scaling")
    if sc and len(sc["batch_sizes"]) >= 2:
        grid = np.geomspace(sc["batch_sizes"][0], sc["batch_sizes"][-1], 50)
        lam, beta, n = result["lambda_max"], result["row_curvature_max"], result["n_train"]
        fastest = (list(grid), [range_top(lam, beta, round(b), n) for b in grid])
        atomic_write_bytes(folder / "lr_vs_batch.png", plots.lr_vs_batch(
            sc["batch_sizes"], sc["best_learning_rate"], result["lr_limit"], fastest))
        pictures.append("lr_vs_batch.png")
    result["pictures"] = pictures
    write_json(folder / ANALYSIS_NAME, result)
