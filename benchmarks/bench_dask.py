"""Time searches with the loky backend and on a 2-worker dask LocalCluster.

Usage::

    python benchmarks/bench_dask.py [--workers 2] [--skip-large]

Writes default-size synthetic data (5000 training and 2500 test images of 48x48) into a
temporary folder, then runs, through :func:`agereg.pipeline.start_search` (so the
connection check, the prepared arrays and the durable trial log are all counted):

* the homework grid: batch_size [160, 200, 400, 640] x learning_rate [3e-8, 3e-6, 3e-5,
  3e-3] x epochs [16, 32, 48, 64] x l2 [1e-7, 1e-5, 1e-3, 1e-1] (256 trials);
* a 10x grid: the same batch sizes and epochs, 10 learning rates (3e-8 ... 3e-3,
  log-spaced) x 16 l2 (1e-7 ... 1e-1, log-spaced): 2560 trials, 10x the columns, so about
  10x the arithmetic;
* the cost of a group: many trivial groups (tiny data, one epoch) through
  :func:`agereg.launcher.launch`, per backend (loky sends them in pairs, dask one per
  task).

It prints a table: wall time, the summed training time of the groups ("compute"),
compute / wall (the parallel speed-up; at most the number of workers, and of groups),
and whether the dask results equal loky's to the last digit (all columns but seconds).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agereg.config import Config, parse_config
from agereg.data import load_dataset
from agereg.launcher import launch, prepare_arrays
from agereg.pipeline import start_search
from agereg.plan import plan_groups
from agereg.split import make_split
from agereg.synth import write_synthetic

HOMEWORK = {
    "batch_size": [160, 200, 400, 640],
    "learning_rate": [3e-8, 3e-6, 3e-5, 3e-3],
    "epochs": [16, 32, 48, 64],
    "l2": [1e-7, 1e-5, 1e-3, 1e-1],
}
LARGE = {
    "batch_size": HOMEWORK["batch_size"],
    "learning_rate": [float(f"{v:.3g}") for v in np.geomspace(3e-8, 3e-3, 10)],
    "epochs": HOMEWORK["epochs"],
    "l2": [float(f"{v:.3g}") for v in np.geomspace(1e-7, 1e-1, 16)],
}
# Trivial groups: 10 batch sizes x 20 chunks of 16 (lr, l2) columns = 200 groups, one
# task each with dask, in pairs with loky.
TRIVIAL = {
    "batch_size": list(range(1, 11)),
    "learning_rate": [float(f"{v:.3g}") for v in np.geomspace(1e-6, 1e-3, 40)],
    "epochs": [1],
    "l2": [float(f"{v:.3g}") for v in np.geomspace(1e-7, 1e-1, 8)],
}


def config(data: Path, grid: dict, backend: str, scheduler: str | None, jobs: int) -> Config:
    raw = {"name": f"bench-{backend}", "seed": 0, "n_jobs": jobs, "data": {"dir": str(data)},
           "grid": grid, "execution": {"backend": backend, "scheduler": scheduler}}
    return parse_config(raw, "bench_dask")


def timed_search(cfg: Config, runs: Path) -> tuple[float, float, list[tuple]]:
    """Wall seconds, summed group seconds, and the ranked rows without their times."""
    t0 = time.perf_counter()
    out = start_search(cfg, runs)
    wall = time.perf_counter() - t0
    # A trial's seconds are its column's share of the group time, scaled by epochs / the
    # group's most epochs: the records with the most epochs add up to the group time.
    top = max(cfg.grid.epochs)
    compute = sum(r.seconds for r in out.ranked if r.epochs == top)
    rows = [(r.key(), r.train_loss, r.val_loss, r.test_loss, r.status) for r in out.ranked]
    return wall, compute, rows


def task_cost(tmp: Path, backend: str, scheduler: str | None, jobs: int) -> tuple[int, float]:
    """(groups, wall seconds) for many trivial groups straight through launch() (loky
    sends them in pairs, dask one per task)."""
    data = tmp / "trivial-data"
    if not data.exists():
        write_synthetic(data, seed=0, n_train=40, n_test=20, side=4)
    ds = load_dataset(data)
    split = make_split(ds.info.n_train, 0, 0.25, ds.info.sha256["ytr"])
    ref = prepare_arrays(ds, split, "float64", tmp / f"trivial-{backend}")
    grid = config(data, TRIVIAL, "loky", None, 1).grid
    groups = plan_groups(grid, target_groups=10**6)
    t0 = time.perf_counter()
    n = sum(1 for _ in launch(ref, groups, 0, "batched", jobs, backend, scheduler))
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="loky jobs and dask workers")
    ap.add_argument("--skip-large", action="store_true", help="only the homework grid")
    args = ap.parse_args()
    from distributed import LocalCluster

    w = args.workers
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; {w} loky jobs vs a "
          f"{w}-worker LocalCluster (1 thread each)", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        data = write_synthetic(tmp / "data")
        print(f"synthetic data: {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        with LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None) as cluster:
            address = cluster.scheduler_address
            print(f"LocalCluster start: {time.perf_counter() - t0:.1f} s", flush=True)
            costs = [(b, *task_cost(tmp, b, s, w)) for b, s in (("loky", None),
                                                                   ("dask", address))]
            grids = [("homework (256)", HOMEWORK)]
            if not args.skip_large:
                grids.append(("10x (2560)", LARGE))
            rows: list[tuple[str, str, float, float]] = []
            identical: dict[str, bool] = {}
            for name, grid in grids:
                results = {}
                for backend, sched in (("loky", None), ("dask", address)):
                    wall, compute, res = timed_search(config(data, grid, backend, sched, w),
                                                      tmp / "runs")
                    results[backend] = res
                    rows.append((name, backend, wall, compute))
                    print(f"  {name:15} {backend:5} wall {wall:7.2f} s  compute "
                          f"{compute:7.2f} s", flush=True)
                identical[name] = results["loky"] == results["dask"]
    print()
    print(f"{'grid':16}{'backend':9}{'wall s':>9}{'compute s':>11}{'speed-up':>10}")
    for name, backend, wall, compute in rows:
        print(f"{name:16}{backend:9}{wall:9.2f}{compute:11.2f}{compute / wall:10.2f}")
        if backend == "dask":
            same = identical[name]
            print(f"{name:16}{'dask == loky to the last digit:':39} {'yes' if same else 'NO'}")
    print()
    print(f"{'group cost':16}{'backend':9}{'groups':>9}{'wall s':>11}{'ms/group':>10}"
          f"{'ms/group/worker':>16}")
    for backend, n, wall in costs:
        print(f"{'trivial groups':16}{backend:9}{n:9d}{wall:11.2f}{1e3 * wall / n:10.2f}"
              f"{1e3 * wall * w / n:16.2f}")


if __name__ == "__main__":
    main()
