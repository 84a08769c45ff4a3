"""Check the synthetic data against the numbers known from the real course files.

Usage::

    python benchmarks/calibrate_synth.py [--seed N] [--sgd-epochs E] [--gd-steps T] [--grid]

Generates the default-size synthetic data in memory and prints, for each calibration
target, the value measured on the real files (or the accepted range) next to the value
measured on the synthetic data. ``--grid`` also runs the 256-point homework grid.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agereg.synth import make_synthetic

GD_LR = 0.003
SGD_LR = 1e-3
SGD_BATCH = 64
VAL_FRACTION = 0.2

GRID: dict[str, list[float]] = {
    "batch_size": [160, 200, 400, 640],
    "lr": [3e-8, 3e-6, 3e-5, 3e-3],
    "epochs": [16, 32, 48, 64],
    "l2": [1e-7, 1e-5, 1e-3, 1e-1],
}


def fmse(pred: np.ndarray, y: np.ndarray) -> float:
    """Half mean squared error, the course's loss."""
    return 0.5 * float(np.mean((pred - y) ** 2))


def row(name: str, target: str, value: str) -> None:
    print(f"  {name:<44} {target:<26} {value}")


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """80/20 train/validation split by a seeded permutation."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = round(VAL_FRACTION * n)
    return perm[n_val:], perm[:n_val]


def full_batch_gd(
    X: np.ndarray, y: np.ndarray, lr: float, steps: int
) -> tuple[np.ndarray, float, bool]:
    """Full-batch GD from zero on fMSE; works on the Gram matrix, which is exact and fast."""
    n = X.shape[0]
    A = np.hstack([X, np.ones((n, 1))])
    G = A.T @ A / n
    c = A.T @ y / n
    theta = np.zeros(A.shape[1])
    for _ in range(steps):
        theta -= lr * (G @ theta - c)
        if not np.isfinite(theta[-1]):
            return theta, float("nan"), True
    return theta[:-1], float(theta[-1]), False


def sgd(
    X: np.ndarray,
    y: np.ndarray,
    lr: float,
    batch: int,
    epochs: int,
    l2: float,
    seed: int,
) -> tuple[np.ndarray, float]:
    """Minibatch SGD from zero, per-epoch reshuffle, bias not regularised."""
    w = np.zeros(X.shape[1])
    b = 0.0
    n = X.shape[0]
    for epoch in range(epochs):
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        Xp, yp = X[perm], y[perm]
        for start in range(0, n, batch):
            Xb = Xp[start : start + batch]
            r = Xb @ w + b - yp[start : start + batch]
            gw = Xb.T @ r / r.shape[0] + l2 * w
            gb = r.mean()
            w -= lr * gw
            b -= lr * gb
        if not np.isfinite(b):
            break
    return w, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gd-steps", type=int, default=5000)
    parser.add_argument("--sgd-epochs", type=int, default=100)
    parser.add_argument("--grid", action="store_true", help="also run the homework grid")
    args = parser.parse_args()
    seed = args.seed

    t0 = time.perf_counter()
    Xtr3, ytr, Xte3, yte = make_synthetic(seed=seed)
    gen_s = time.perf_counter() - t0
    Xtr = Xtr3.reshape(len(Xtr3), -1).astype(np.float64)
    Xte = Xte3.reshape(len(Xte3), -1).astype(np.float64)

    # Nothing big has been allocated before generation, so the peak RSS bounds its memory.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"synthetic data, seed {seed}")
    row("quantity", "real files / target", "synthetic")
    row("generation time / peak RSS", "a few s / < 1 GB", f"{gen_s:.2f} s / {peak_mb:.0f} MB")
    row("Xtr shape, dtype", "(5000, 48, 48) float32", f"{Xtr3.shape} {Xtr3.dtype}")
    row("Xte shape, dtype", "(2500, 48, 48) float32", f"{Xte3.shape} {Xte3.dtype}")
    row("pixel min / max", "within [0, 1]", f"{Xtr3.min():.3f} / {Xtr3.max():.3f}")
    row("pixel mean (train)", "0.40-0.55", f"{Xtr.mean():.3f}")
    frac_half = float(np.mean(ytr % 1 != 0))
    row("train age mean / std", "39.56 / 14.75", f"{ytr.mean():.2f} / {ytr.std():.2f}")
    row(
        "train age min / median / max",
        "0 / 40 / 100",
        f"{ytr.min():g} / {np.median(ytr):g} / {ytr.max():g}",
    )
    row(
        "train ages ending in .5",
        "80 of 5000 (1.6%)",
        f"{int(np.sum(ytr % 1 != 0))} of {len(ytr)} ({100 * frac_half:.1f}%)",
    )
    row("test age mean / std", "39.16 / 14.86", f"{yte.mean():.2f} / {yte.std():.2f}")
    row("test age min / max", "1 / 99", f"{yte.min():g} / {yte.max():g}")

    G = Xtr.T @ Xtr / len(Xtr)
    lam = scipy.linalg.eigh(G, eigvals_only=True)
    A = np.hstack([Xtr, np.ones((len(Xtr), 1))])
    lam_aug = scipy.linalg.eigh(A.T @ A / len(A), eigvals_only=True, subset_by_index=[2304, 2304])
    row("lambda_max of X^T X / n", "300-650 (< 667)", f"{lam[-1]:.1f}")
    row("  same with bias column", "< 2/0.003 = 667", f"{lam_aug[-1]:.1f}")
    Xc = Xtr - Xtr.mean(axis=0)
    lam_c = np.linalg.eigvalsh(Xc.T @ Xc / len(Xc))[::-1]
    row(
        "centred eigenvalues > 0.067 / > 0.01",
        "(info)",
        f"{int(np.sum(lam_c > 0.067))} / {int(np.sum(lam_c > 0.01))}",
    )
    row(
        "centred trace / lambda_1 / lambda_min",
        "(info)",
        f"{lam_c.sum():.2f} / {lam_c[0]:.3f} / {lam_c[-1]:.2e}",
    )

    row(
        "mean predictor test fMSE",
        "~110.5 (100-120)",
        f"{fmse(np.full_like(yte, ytr.mean()), yte):.1f}",
    )

    t0 = time.perf_counter()
    theta, *_ = np.linalg.lstsq(A, ytr, rcond=None)
    ls_tr = fmse(A @ theta, ytr)
    ls_te = fmse(Xte @ theta[:-1] + theta[-1], yte)
    row(
        "least squares (bias) train / test fMSE",
        "39.24 / 206.8",
        f"{ls_tr:.1f} / {ls_te:.1f}  ({time.perf_counter() - t0:.1f} s)",
    )

    t0 = time.perf_counter()
    w, b, diverged = full_batch_gd(Xtr, ytr, GD_LR, args.gd_steps)
    gd = "DIVERGED" if diverged else f"{fmse(Xtr @ w + b, ytr):.1f} / {fmse(Xte @ w + b, yte):.1f}"
    row(
        f"GD lr {GD_LR} {args.gd_steps} steps train / test",
        "83.55 / 93.1",
        f"{gd}  ({time.perf_counter() - t0:.1f} s)",
    )

    tr_idx, va_idx = split(len(Xtr), seed)
    row(
        "mean predictor val fMSE (80/20 split)",
        "(reference)",
        f"{fmse(np.full(len(va_idx), ytr[tr_idx].mean()), ytr[va_idx]):.1f}",
    )
    t0 = time.perf_counter()
    w, b = sgd(Xtr[tr_idx], ytr[tr_idx], SGD_LR, SGD_BATCH, args.sgd_epochs, 0.0, seed)
    sgd_va = fmse(Xtr[va_idx] @ w + b, ytr[va_idx])
    sgd_te = fmse(Xte @ w + b, yte)
    row(
        f"SGD lr {SGD_LR} b{SGD_BATCH} {args.sgd_epochs} ep val / test",
        "85.8 / 91.3 (300 ep)",
        f"{sgd_va:.1f} / {sgd_te:.1f}  ({time.perf_counter() - t0:.1f} s)",
    )

    if args.grid:
        t0 = time.perf_counter()
        best_va, best_te, best_cfg = np.inf, np.nan, None
        for cfg in itertools.product(*GRID.values()):
            bs, lr, ep, l2 = cfg
            w, b = sgd(Xtr[tr_idx], ytr[tr_idx], lr, int(bs), int(ep), l2, seed)
            va = fmse(Xtr[va_idx] @ w + b, ytr[va_idx])
            if va < best_va:  # NaN from a diverged run never compares smaller
                best_va, best_te, best_cfg = va, fmse(Xte @ w + b, yte), cfg
        row(
            "grid best val / test fMSE (256 runs)",
            "74.5-86 / 91-93",
            f"{best_va:.1f} / {best_te:.1f}  ({time.perf_counter() - t0:.0f} s)",
        )
        row("  at batch, lr, epochs, l2", "", ", ".join(f"{v:g}" for v in best_cfg or ()))


if __name__ == "__main__":
    main()
