"""Search strategies against each other and against Optuna and scikit-learn (issue 9).

For two datasets, the default synthetic stand-in (5,000 x 48x48) and scikit-learn's
bundled digits written in agereg's file layout (1,797 x 8x8, target = the digit), starting
from the homework grid's ranges:

* agereg grid (the homework grid, 256 trials), random (64 configurations x 4 epoch counts,
  the same trial count), halving (640 configurations: a space 10x larger, eta 3) and refine
  (3 rounds from the homework grid): best validation fMSE and wall time;
* Optuna's TPE sampler and scikit-learn's HalvingRandomSearchCV over SGDRegressor (constant
  learning rate, L2 penalty alpha = l2, max_iter = epochs) on the same train/validation
  split, given the wall time of agereg's slowest strategy;
* the exact ridge solution's best validation fMSE over the l2 range searched (50 log-spaced
  values in [1e-7, 1e-1], one SVD of the centred training matrix).

Optuna and scikit-learn are installed for this benchmark only (`pip install optuna
scikit-learn`), not as dependencies. Run: ``python benchmarks/bench_strategies.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from bench_engine import machine

from agereg.config import Config, DataConfig, Distribution, Grid, SearchConfig
from agereg.data import load_dataset
from agereg.pipeline import start_search
from agereg.split import load_split
from agereg.synth import write_synthetic

HOMEWORK = Grid(batch_size=(160, 200, 400, 640), learning_rate=(3e-8, 3e-6, 3e-5, 3e-3),
                epochs=(16, 32, 48, 64), l2=(1e-7, 1e-5, 1e-3, 1e-1))
SPACE = dataclasses.replace(HOMEWORK, learning_rate=Distribution("log_uniform", 3e-8, 3e-3),
                            l2=Distribution("log_uniform", 1e-7, 1e-1))
STRATEGIES = {
    "grid": (HOMEWORK, SearchConfig()),
    "random": (SPACE, SearchConfig("random", n_trials=64, seed=1)),
    "halving": (SPACE, SearchConfig("halving", n_trials=640, seed=1, eta=3)),
    "refine": (HOMEWORK, SearchConfig("refine", rounds=3)),
}


def write_digits(folder: Path) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    perm = np.random.default_rng(0).permutation(len(d.target))
    X, y = d.images[perm].astype(np.float64), d.target[perm].astype(np.float64)
    folder.mkdir(parents=True, exist_ok=True)
    n = 1297  # 1,297 for training (and validation), 500 for test
    for name, arr in (("Xtr", X[:n]), ("ytr", y[:n]), ("Xte", X[n:]), ("yte", y[n:])):
        np.save(folder / f"age_regression_{name}.npy", arr)
    return folder


def agereg_runs(data: Path, runs: Path) -> dict[str, tuple[float, float, int]]:
    out = {}
    for name, (grid, search) in STRATEGIES.items():
        cfg = Config(grid=grid, name=name, data=DataConfig(str(data)), search=search,
                     max_trials=10**6)
        t0 = time.perf_counter()
        outcome = start_search(cfg, runs)
        seconds = time.perf_counter() - t0
        best = outcome.summary.best
        out[name] = (best.val_loss if best and best.val_loss else math.inf, seconds,
                     len(outcome.ranked))
    return out


def train_val(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ds = load_dataset(data)
    split = load_split(data / "split.json", ds.info.n_train, ds.info.sha256["ytr"])
    X = np.asarray(ds.Xtr, dtype=np.float64)
    y = np.asarray(ds.ytr, dtype=np.float64)
    return X[split.train], y[split.train], X[split.val], y[split.val]


def ridge_best(Xtr, ytr, Xva, yva) -> tuple[float, float]:
    """min over l2 in [1e-7, 1e-1] of the exact ridge solution's validation fMSE."""
    n = len(ytr)
    mx, my = Xtr.mean(axis=0), ytr.mean()
    U, s, Vt = np.linalg.svd(Xtr - mx, full_matrices=False)
    uty = U.T @ (ytr - my)
    best = (math.inf, 0.0)
    for l2 in np.logspace(-7, -1, 50):
        w = Vt.T @ (s / (s**2 + n * l2) * uty)
        val = 0.5 * np.mean((Xva @ w + (my - mx @ w) - yva) ** 2)
        best = min(best, (float(val), float(l2)))
    return best


def sgd_val(Xtr, ytr, Xva, yva, lr: float, l2: float, epochs: int) -> float:
    from sklearn.linear_model import SGDRegressor

    model = SGDRegressor(learning_rate="constant", eta0=lr, alpha=l2, penalty="l2",
                         max_iter=epochs, tol=None, shuffle=True, random_state=0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            model.fit(Xtr, ytr)
            v = 0.5 * np.mean((model.predict(Xva) - yva) ** 2)
        except (ValueError, OverflowError, FloatingPointError):
            return math.inf
    return float(v) if np.isfinite(v) else math.inf


def optuna_best(Xtr, ytr, Xva, yva, budget: float) -> tuple[float, int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 3e-8, 3e-3, log=True)
        l2 = trial.suggest_float("l2", 1e-7, 1e-1, log=True)
        epochs = trial.suggest_categorical("epochs", [16, 32, 48, 64])
        v = sgd_val(Xtr, ytr, Xva, yva, lr, l2, epochs)
        return v if math.isfinite(v) else 1e12

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    study.optimize(objective, timeout=budget, n_jobs=os.cpu_count() or 1)
    return study.best_value, len(study.trials)


def sklearn_halving_best(Xtr, ytr, Xva, yva, budget: float) -> tuple[float, int, float]:
    from scipy.stats import loguniform
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.linear_model import SGDRegressor
    from sklearn.model_selection import HalvingRandomSearchCV, PredefinedSplit

    X = np.vstack([Xtr, Xva])
    y = np.concatenate([ytr, yva])
    fold = np.r_[np.full(len(ytr), -1), np.zeros(len(yva))]

    def search(n_candidates: int) -> tuple[float, float]:
        s = HalvingRandomSearchCV(
            SGDRegressor(learning_rate="constant", penalty="l2", tol=None, random_state=0),
            {"eta0": loguniform(3e-8, 3e-3), "alpha": loguniform(1e-7, 1e-1)},
            n_candidates=n_candidates, factor=3, resource="max_iter", min_resources=16,
            max_resources=64, cv=PredefinedSplit(fold), scoring="neg_mean_squared_error",
            random_state=1, n_jobs=-1, error_score=-1e12, refit=False)
        t0 = time.perf_counter()
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            s.fit(X, y)
        return -0.5 * s.best_score_, time.perf_counter() - t0

    _, t_small = search(12)  # calibrate: candidates that fit in the budget
    n = max(12, int(12 * budget / max(t_small, 1e-3)))
    best, seconds = search(n)
    return best, n, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("synthetic", "digits"), default=None)
    args = ap.parse_args()
    print(machine())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        datasets = {"synthetic": lambda: write_synthetic(root / "synthetic", seed=0),
                    "digits": lambda: write_digits(root / "digits")}
        for name, make in datasets.items():
            if args.only and name != args.only:
                continue
            data = Path(make())
            ours = agereg_runs(data, root / f"runs-{name}")
            Xtr, ytr, Xva, yva = train_val(data)
            budget = max(s for _, s, _ in ours.values())
            ridge, ridge_l2 = ridge_best(Xtr, ytr, Xva, yva)
            opt, n_opt = optuna_best(Xtr, ytr, Xva, yva, budget)
            skl, n_skl, t_skl = sklearn_halving_best(Xtr, ytr, Xva, yva, budget)
            print(f"\n{name}: exact ridge best validation fMSE {ridge:.4g} (l2 {ridge_l2:.2g})")
            print(f"{'method':<34}{'best val fMSE':>14}{'wall s':>9}{'trials':>8}"
                  f"{'vs ridge':>10}")
            rows = [(f"agereg {k}", v, s, n) for k, (v, s, n) in ours.items()]
            rows += [("Optuna TPE + SGDRegressor", opt, budget, n_opt),
                     ("sklearn HalvingRandomSearchCV", skl, t_skl, n_skl)]
            for label, v, s, n in rows:
                print(f"{label:<34}{v:>14.4g}{s:>9.1f}{n:>8}{100 * (v / ridge - 1):>9.1f}%")
            results[name] = {"ridge": ridge, "rows": rows}
    print("\n" + json.dumps(results, default=str))


if __name__ == "__main__":
    main()
