"""Benchmark start-up on small searches (issue "Closer to the floor": agereg must never be
slower than Optuna with a hand-written loop on the 24-trial digits grid). Whole
processes, median of --repeat:

1. `agereg search` of the digits grid (batch [16, 64], lr [0.01, 0.05, 0.2], epochs
   [20, 60], l2 [0, 1e-3]) and of a 1-trial config;
2. Optuna (GridSampler over the same 24 trials) driving a hand-written numpy minibatch
   SGD loop of the same contract (needs `pip install optuna scikit-learn`).

    python benchmarks/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import machine, scratch
from bench_strategies import write_digits

GRID = """\
name: {name}
data: {{dir: {data}}}
grid:
  batch_size: {bs}
  learning_rate: {lr}
  epochs: {ep}
  l2: {l2}
"""

OPTUNA = textwrap.dedent("""\
    import numpy as np, optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    d = "{data}"
    X = np.load(d + "/age_regression_Xtr.npy").reshape(1297, -1).astype(float)
    y = np.load(d + "/age_regression_ytr.npy")
    perm = np.random.default_rng(0).permutation(len(y))
    val, tr = perm[:259], perm[259:]
    def objective(trial):
        bs, lr = trial.suggest_categorical("bs", [16, 64]), trial.suggest_categorical(
            "lr", [0.01, 0.05, 0.2])
        ep, l2 = trial.suggest_categorical("ep", [20, 60]), trial.suggest_categorical(
            "l2", [0.0, 1e-3])
        w, b = np.zeros(X.shape[1]), 0.0
        with np.errstate(all="ignore"):
            for e in range(1, ep + 1):
                order = tr[np.random.default_rng([0, e]).permutation(len(tr))]
                for s in range(0, len(order), bs):
                    S = order[s:s + bs]
                    r = X[S] @ w + b - y[S]
                    w, b = w - lr * (X[S].T @ r / len(S) + l2 * w), b - lr * r.mean()
            v = 0.5 * np.mean((X[val] @ w + b - y[val]) ** 2)
        return float(v) if np.isfinite(v) else float("inf")
    space = {{"bs": [16, 64], "lr": [0.01, 0.05, 0.2], "ep": [20, 60], "l2": [0.0, 1e-3]}}
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space))
    study.optimize(objective, n_trials=24)
    """)


def median_wall(args: list[str], cwd: Path, repeat: int) -> float:
    """The median wall time of a command, run ``repeat`` times."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(args, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(machine())
    tmp = scratch()
    data = write_digits(tmp / "digits")
    (tmp / "digits.yaml").write_text(GRID.format(name="digits", data=data, bs="[16, 64]",
                                                 lr="[0.01, 0.05, 0.2]", ep="[20, 60]",
                                                 l2="[0.0, 1.0e-3]"))
    (tmp / "one.yaml").write_text(GRID.format(name="one", data=data, bs="[16]", lr="[0.01]",
                                              ep="[20]", l2="[0.0]"))
    (tmp / "optuna_loop.py").write_text(OPTUNA.format(data=data))
    agereg = [sys.executable, "-m", "agereg", "search", "--quiet"]
    print(f"median of {args.repeat} whole-process runs:")
    for name, cmd in (("agereg search, digits grid (24 trials)", [*agereg, "digits.yaml"]),
                      ("agereg search, 1 trial", [*agereg, "one.yaml"]),
                      ("Optuna + hand-written loop, 24 trials",
                       [sys.executable, "optuna_loop.py"])):
        try:
            print(f"  {name}: {median_wall(cmd, tmp, args.repeat):.2f} s")
        except subprocess.CalledProcessError as exc:
            print(f"  {name}: failed ({exc.stderr.decode()[-200:].strip()})")


if __name__ == "__main__":
    main()
