"""Benchmark `agereg analyze` on the homework data (issue "How large a batch, how fast a
learning rate"; goal: under 5 s). Makes the 5,000 + 2,500 synthetic images of 48x48,
runs the homework grid once, then times, as whole processes (start-up included):

1. `agereg analyze --data DIR`        (curvature, noise at w = 0, a learning-rate range)
2. `agereg analyze --run RUN`         (+ the selected trial's kept parameters, their
                                       noise, scaling rules, pictures)

and the cost the stability check adds to `agereg search` (power iteration only).

    python benchmarks/bench_analyze.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_engine import machine, scratch
from bench_startup import median_wall

from agereg.analysis import top_eigenvalue
from agereg.data import load_dataset
from agereg.synth import write_synthetic

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "grid.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(machine())
    tmp = scratch()
    write_synthetic(tmp / "data", seed=0)
    agereg = [sys.executable, "-m", "agereg"]
    subprocess.run([*agereg, "search", str(CONFIG), "--quiet"], cwd=tmp, check=True,
                   capture_output=True)
    print(f"median of {args.repeat} whole-process runs:")
    data_only = median_wall([*agereg, "analyze", "--data", "data"], tmp, args.repeat)
    with_run = median_wall([*agereg, "analyze"], tmp, args.repeat)
    print(f"  analyze --data:  {data_only:.2f} s")
    print(f"  analyze --run:   {with_run:.2f} s")
    ds = load_dataset(tmp / "data")
    t0 = time.perf_counter()
    X = np.asarray(ds.Xtr[:4000], dtype=np.float64)
    eig = top_eigenvalue(X, tol=1e-4)
    print(f"  the search's stability check: {time.perf_counter() - t0:.3f} s "
          f"({eig.iterations} power iterations, lambda_max {eig.lambda_max:.1f})")


if __name__ == "__main__":
    main()
