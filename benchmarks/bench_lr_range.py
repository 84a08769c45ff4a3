"""Does `agereg analyze`'s suggested learning-rate range hold the learning rates that
train best? For two datasets (the synthetic stand-in and scikit-learn's digits, as in
bench_strategies.py) it searches a fine learning-rate sweep at several batch sizes, takes
each batch size's best learning rate (lowest validation fMSE over the epoch counts), and
sets it against two tops of the range, both from `agereg analyze` of that run:

* noise (the rule before 2026-11-27): ``0.5 * lr_limit / (1 + B_simple / B)``, McCandlish
  et al.'s (2018) optimal step, with the noise scale measured at the run's selected trial;
* curvature (the rule now): ``B / (beta + (B - 1) * lambda_max)`` with
  ``beta = max_i |x~_i|^2``, the largest per-example curvature (Ma, Bassily & Belkin, 2018).

Printed per batch size: the best learning rate and its ratio to each top (1: the top is
the best; > 1: the best lies above the range, which then misses it). Quality, not time:
nothing here is a timing. Needs scikit-learn for the digits (`pip install scikit-learn`).
Run: ``python benchmarks/bench_lr_range.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from bench_engine import machine
from bench_strategies import write_digits

from agereg.analyze import analyze
from agereg.config import Config, DataConfig, Grid
from agereg.pipeline import start_search
from agereg.synth import write_synthetic


def sweep(low: float, high: float, count: int) -> tuple[float, ...]:
    """``count`` learning rates from ``low`` to ``high``, log-spaced, to 3 digits."""
    return tuple(float(f"{v:.3g}") for v in np.geomspace(low, high, count))


SWEEP = {  # learning rates 0.1 decade apart, up to the stability limit of each dataset
    "synthetic": (sweep(1e-5, 3.5e-3, 26), (10, 40, 160, 640), (16, 64)),
    "digits": (sweep(1e-6, 7e-4, 29), (1, 4, 16, 64), (20, 60)),
}


def main() -> None:
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        makers = {"synthetic": lambda: write_synthetic(root / "synthetic", seed=0),
                  "digits": lambda: write_digits(root / "digits")}
        for name, (lrs, batch_sizes, epochs) in SWEEP.items():
            grid = Grid(batch_size=batch_sizes, learning_rate=lrs, epochs=epochs, l2=(0.0,))
            data = Path(makers[name]())
            runs = root / f"runs-{name}"
            outcome = start_search(Config(grid=grid, name=name, data=DataConfig(str(data))),
                                   runs)
            ranked = [r for r in outcome.ranked if r.status.has_losses()]
            print(f"\n{name}: {len(lrs)} learning rates {lrs[0]:g} ... {lrs[-1]:g}, epochs "
                  f"{list(epochs)}")
            print(f"{'B':>5}{'best lr':>10}{'val fMSE':>10}{'noise top':>11}{'best/top':>9}"
                  f"{'curv. top':>11}{'best/top':>9}")
            for bs in batch_sizes:
                best = next(r for r in ranked if r.batch_size == bs)
                res = analyze(None, outcome.run_dir, runs, batch_size=bs, draws=50)
                noise_top = 0.5 * res["lr_limit"] / (1 + res["b_simple"] / bs)
                curv_top = res["lr_range"]["top"]
                print(f"{bs:>5}{best.learning_rate:>10.3g}{best.val_loss:>10.4g}"
                      f"{noise_top:>11.2g}{best.learning_rate / noise_top:>9.2f}"
                      f"{curv_top:>11.2g}{best.learning_rate / curv_top:>9.2f}")


if __name__ == "__main__":
    main()
