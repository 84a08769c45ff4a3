"""Benchmark the engines on the homework grid (issue "Train many trials at once").

Generates homework-shaped synthetic data (5,000 + 2,500 images of 48x48), then runs the
4x4x4x4 homework grid through the real search pipeline with

1. the reference engine (one plain loop per trial) under joblib on every core,
2. the batched engine in float64,
3. the batched engine in float32,

and prints wall time, trials per second, peak RSS (the process and all its workers,
sampled from /proc) and speed-up ratios; then the float32 deviation from float64, and
scaling with grid size (256 -> 2,560 trials) and with N (5,000 -> 50,000 rows).

The floor: in the same run it measures this machine's one-thread rate for the engine's
product shapes (a (rows, D) block times the (D, 16) panel, and the block's transpose times
the (rows, 16) residuals, cache-hot, for each block size the grid's batch sizes use), and
prints the fraction of that floor that the search reaches on all cores: the floor is the
grid's training FLOP (two products per panel, row and epoch) divided by the rate times the
number of cores. The fraction is given for the whole search (start-up, scoring, curves and
log included) and for the engine alone (the search's tasks trained in-process on one
thread, pairs of groups together as the search trains them, the sum divided by the cores;
and each group apart, as before groups were paired; and the pairs scored only once, after
the last epoch, without learning curves, to show what the scoring costs). It also measures
the rate of 32-column products (two groups' panels in one product, an idea measured and
not kept: README).

    python benchmarks/bench_engine.py                 # everything (reference takes minutes)
    python benchmarks/bench_engine.py --reference-quarter  # a quarter of the reference
                                                           # trials, extrapolated (marked)
    python benchmarks/bench_engine.py --no-scaling
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from agereg.batched import PANEL, GroupSpec, block_rows, train_groups
from agereg.config import Config, DataConfig, ExecutionConfig, Grid
from agereg.engine import Arrays
from agereg.pipeline import start_search
from agereg.plan import Group, bundles, plan_groups
from agereg.synth import write_synthetic

LEARNING_RATES = (3e-8, 3e-6, 3e-5, 3e-3)
HOMEWORK = Grid(
    batch_size=(160, 200, 400, 640),
    learning_rate=LEARNING_RATES,
    epochs=(16, 32, 48, 64),
    l2=(1e-7, 1e-5, 1e-3, 1e-1),
)


def machine() -> str:
    """One line naming what the figures were measured on: processor, cores, BLAS and its
    kernels, numpy and Python (every benchmark prints it first)."""
    from threadpoolctl import threadpool_info

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')})"
                     for i in threadpool_info() if i["user_api"] == "blas")
    return (f"machine: {platform.machine()}, {cpu or 'processor unknown'}, {os.cpu_count()} "
            f"cores, BLAS {blas or 'unknown'}, numpy {np.__version__}, "
            f"Python {platform.python_version()}")


def scratch() -> Path:
    """A scratch folder for this benchmark run (data, run folders), removed when the
    process exits."""
    path = tempfile.mkdtemp(prefix="agereg-bench-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return Path(path)


def proc_bytes(pid: int, file: str, field: str) -> int:
    """A memory figure of a process from /proc/PID/FILE (``field: N kB``), in bytes; 0
    when the process is gone."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


class PeakRSS:
    """Peak resident memory of this process plus its descendants, sampled every 20 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = sum(proc_bytes(p, "status", "VmRSS") for p in process_tree(os.getpid()))
            self.peak = max(self.peak, rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed_search(cfg: Config, runs: Path) -> tuple[float, int, dict]:
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        outcome = start_search(cfg, runs)
        wall = time.perf_counter() - t0
    vals = {r.key(): r.val_loss for r in outcome.ranked}
    return wall, rss.peak, vals


def config(data: Path, grid: Grid, engine: str = "batched", precision: str = "float64",
           n_jobs: int = -1) -> Config:
    return Config(grid=grid, seed=0, name="bench", n_jobs=n_jobs, data=DataConfig(str(data)),
                  execution=ExecutionConfig(engine=engine, precision=precision))


def row(name: str, wall: float, n: int, rss: int, ref: float | None) -> str:
    speed = f"{ref / wall:8.1f}x" if ref else "        -"
    return f"{name:<42} {wall:9.2f} s {n / wall:10.1f} {rss / 2**20:10.0f} MiB {speed}"


def product_rate(rows: int, d: int, dtype: type, seconds: float = 0.5,
                 gather_from: int = 0, panels: int = 1, width: int = PANEL) -> float:
    """One thread's FLOP/s for the engine's two products at one block size: cache-hot, or
    with each block first gathered in a random order from ``gather_from`` rows (what a
    minibatch step has to do), then used by ``panels`` panels of ``width`` columns (the
    engine's are 16 wide)."""
    rng = np.random.default_rng(0)
    X: np.ndarray = rng.random((max(rows, gather_from), d)).astype(dtype)
    xs = X[:rows].copy()  # its own buffer: a view of X would make take() copy through a temporary
    Ws = [rng.random((d, width)).astype(dtype) * 1e-3 for _ in range(panels)]
    R: np.ndarray = np.empty((rows, width), dtype)
    G: np.ndarray = np.empty((d, width), dtype)
    order = rng.permutation(len(X))
    best = 0.0
    for _ in range(3):
        reps, t0 = 0, time.perf_counter()
        while (el := time.perf_counter() - t0) < seconds / 3:
            for i in range(20):
                if gather_from:
                    lo = (reps + i) * rows % (len(X) - rows + 1)
                    np.take(X, order[lo : lo + rows], axis=0, out=xs, mode="clip")
                for W in Ws:
                    np.matmul(xs, W, out=R)
                    np.matmul(xs.T, R, out=G)
            reps += 20
        best = max(best, 4 * rows * d * width * panels * reps / el)
    return best


def training_flop(g: Group, n: int, d: int, epochs: int | None = None) -> int:
    """A group's training FLOP on ``n`` rows of ``d`` features: two products per panel of
    :data:`PANEL` columns, row and epoch, up to its last epoch (or ``epochs``)."""
    return 4 * n * d * PANEL * -(-len(g.columns) // PANEL) * (epochs or g.epochs[-1])


def floor_seconds(groups: list[Group], n: int, d: int, rates: dict[int, float],
                  epochs: int | None = None) -> float:
    """One thread's time for the groups' training products at ``rates``, this machine's
    cache-hot FLOP/s by block size (:func:`product_rate`)."""
    return sum(training_flop(g, n, d, epochs) / rates[block_rows(g.batch_size, n)]
               for g in groups)


def floor_report(data: Path, walls: dict[str, float]) -> None:
    """The fraction of this machine's floor that the homework grid reaches."""
    from threadpoolctl import threadpool_limits

    from agereg.data import load_dataset
    from agereg.split import load_split

    cores = os.cpu_count() or 1
    ds = load_dataset(data)
    split = load_split(data / "split.json", ds.info.n_train, ds.info.sha256["ytr"])
    n, d = len(split.train), int(np.prod(ds.Xtr.shape[1:]))
    groups = plan_groups(HOMEWORK)  # what the search trains
    blocks = [block_rows(g.batch_size, n) for g in groups]
    panels = [-(-len(g.columns) // PANEL) for g in groups]
    flop = [training_flop(g, n, d) for g in groups]
    print(f"\nfloor: {sum(flop) / 1e9:.0f} GFLOP of training products ({len(groups)} groups, "
          f"{sum(panels)} panels of {PANEL} columns in all, x {max(HOMEWORK.epochs)} epochs x "
          f"{n} rows x D={d}; two products per row); {cores} cores")

    def spec(g: Group, epochs: tuple[int, ...] | None = None, **kw: Any) -> GroupSpec:
        """The group as the launcher trains it (its epochs, or ``epochs``)."""
        return GroupSpec(g.batch_size, [lr for lr, _ in g.columns],
                         [l2 for _, l2 in g.columns], epochs or g.epochs, **kw)

    for precision, dtype in (("float64", np.float64), ("float32", np.float32)):
        with threadpool_limits(1, user_api="blas"):
            rates = {rows: product_rate(rows, d, dtype) for rows in sorted(set(blocks))}
            floor = floor_seconds(groups, n, d, rates) / cores
            X = np.asarray(ds.Xtr, dtype=dtype).reshape(len(ds.ytr), d)
            y = np.asarray(ds.ytr, dtype=np.float64)
            arrays = Arrays(np.ascontiguousarray(X[split.train]), y[split.train],
                            np.ascontiguousarray(X[split.val]), y[split.val],
                            np.asarray(ds.Xte, dtype=dtype).reshape(-1, d),
                            np.asarray(ds.yte, dtype=np.float64))
            # the search's tasks; the same training scored once, at the end, without
            # curves; each group on its own
            engine, bare, apart = 0.0, 0.0, 0.0
            for task in bundles(groups, [0] * len(groups), cores, d * X.dtype.itemsize):
                t0 = time.perf_counter()
                train_groups(arrays, 0, [spec(groups[i], curves=True, weights=True)
                                         for i in task])
                engine += time.perf_counter() - t0
                t0 = time.perf_counter()
                train_groups(arrays, 0, [spec(groups[i], epochs=groups[i].epochs[-1:])
                                         for i in task])
                bare += time.perf_counter() - t0
            for g in groups:
                t0 = time.perf_counter()
                train_groups(arrays, 0, [spec(g, curves=True, weights=True)])
                apart += time.perf_counter() - t0
            gathered = {rows: product_rate(rows, d, dtype, gather_from=n) for rows in rates}
            rows = min(rates)
            shared = {p: product_rate(rows, d, dtype, gather_from=n, panels=p) for p in (2, 4)}
            wide = {r: product_rate(r, d, dtype, width=2 * PANEL) for r in rates}
            wide_gathered = product_rate(rows, d, dtype, gather_from=n, width=2 * PANEL)
        shown = ", ".join(f"{rows} rows {rate / 1e9:.1f}" for rows, rate in rates.items())
        print(f"  {precision}: one thread, cache-hot: {shown} GFLOP/s -> floor "
              f"{floor:.2f} s on {cores} cores")
        shown = ", ".join(f"{rate / 1e9:.1f}" for rate in gathered.values())
        print(f"    the same products with each block gathered from the {n} training rows "
              f"first: {shown} GFLOP/s")
        print(f"    one gathered {rows}-row block used by 2 panels: {shared[2] / 1e9:.1f}, "
              f"by 4: {shared[4] / 1e9:.1f} GFLOP/s (the most sharing blocks across batch "
              "sizes could give)")
        shown = ", ".join(f"{rows} rows {rate / 1e9:.1f}" for rows, rate in wide.items())
        print(f"    {2 * PANEL} columns a product instead of {PANEL} (two groups' panels at once), "
              f"cache-hot: {shown} GFLOP/s; one gathered {rows}-row block used by one "
              f"{2 * PANEL}-column product: {wide_gathered / 1e9:.1f} GFLOP/s")
        print(f"    whole search {walls[precision]:.2f} s: {100 * floor / walls[precision]:.0f}% "
              f"of the floor; engine alone {engine / cores:.2f} s "
              f"({engine:.2f} s of the search's tasks on one thread / {cores}): "
              f"{100 * floor * cores / engine:.0f}%; each group apart "
              f"{apart / cores:.2f} s: {100 * floor * cores / apart:.0f}%")
        print(f"    the same pairs scored once, after the last epoch, without curves (the "
              f"scoring the floor does not count taken out): {bare / cores:.2f} s: "
              f"{100 * floor * cores / bare:.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference-quarter", action="store_true",
                    help="time the reference engine on one learning rate (64 trials, the "
                    "same batch sizes and epochs) and extrapolate x4")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the batched runs")
    args = ap.parse_args()

    print(machine())
    tmp = scratch()
    data = write_synthetic(tmp / "data", seed=0)
    runs = tmp / "runs"
    n = len(HOMEWORK)
    print(f"homework grid: {n} trials on {data} (5,000 x 48x48 synthetic, 80/20 split)\n")
    print(f"{'engine':<42} {'wall':>11} {'trials/s':>10} {'peak RSS':>14} {'speed-up':>9}")

    results: dict[str, tuple[float, int, dict]] = {}
    for precision in ("float64", "float32"):
        best = min((timed_search(config(data, HOMEWORK, precision=precision), runs)
                    for _ in range(args.repeat)), key=lambda t: t[0])
        results[precision] = best

    if args.reference_quarter:
        grid = dataclasses.replace(HOMEWORK, learning_rate=LEARNING_RATES[:1])
        wall, rss, _ = timed_search(config(data, grid, engine="reference"), runs)
        ref_wall = wall * n / len(grid)
        label = f"reference, joblib (extrapolated from {len(grid)})"
        ref_rss = rss
    else:
        ref_wall, ref_rss, ref_vals = timed_search(config(data, HOMEWORK, engine="reference"),
                                                    runs)
        label = "reference, joblib"
        d = [abs(ref_vals[k] - results["float64"][2][k]) / abs(ref_vals[k])
             for k in ref_vals if ref_vals[k] is not None and results["float64"][2][k]]
        print(f"(batched float64 vs reference: max relative difference of val fMSE {max(d):.1e})")
    print(row(label, ref_wall, n, ref_rss, None))
    for precision in ("float64", "float32"):
        wall, rss, _ = results[precision]
        print(row(f"batched, {precision}", wall, n, rss, ref_wall))

    floor_report(data, {p: results[p][0] for p in results})

    v64, v32 = results["float64"][2], results["float32"][2]
    both = [k for k in v64 if v64[k] is not None and v32.get(k) is not None]
    rel = np.array([abs(v32[k] - v64[k]) / v64[k] for k in both])
    best64 = min(both, key=lambda k: v64[k])
    best32 = min(both, key=lambda k: v32[k])
    div = sum(v is None for v in v64.values()), sum(v is None for v in v32.values())
    print(f"\nfloat32 vs float64 validation fMSE over {len(both)} finished trials: max relative "
          f"deviation {rel.max():.2e}, median {np.median(rel):.2e}; same best trial: "
          f"{best64 == best32}; diverged {div[0]} (float64) / {div[1]} (float32)")
    print(f"best trial {best64}: val fMSE {v64[best64]:.4f} (float64), "
          f"{v32[best64]:.4f} (float32)")

    if args.no_scaling:
        return
    print("\nscaling (batched, float64 and float32):")
    lrs10 = tuple(float(x) for x in np.geomspace(3e-8, 3e-3, 40))
    big_grid = dataclasses.replace(HOMEWORK, learning_rate=lrs10)
    for precision in ("float64", "float32"):
        w1 = results[precision][0]
        w10, rss, _ = timed_search(config(data, big_grid, precision=precision), runs)
        print(f"  grid {n} -> {len(big_grid)} trials, {precision}: {w1:.2f} s -> {w10:.2f} s "
              f"(x{w10 / w1:.1f} for x{len(big_grid) / n:.0f} trials), peak RSS "
              f"{rss / 2**20:.0f} MiB")
    big = write_synthetic(tmp / "data50k", seed=0, n_train=50_000, n_test=2_500)
    for precision in ("float64", "float32"):
        w1 = results[precision][0]
        w10, rss, _ = timed_search(config(big, HOMEWORK, precision=precision), runs)
        print(f"  N 5,000 -> 50,000 rows, {precision}: {w1:.2f} s -> {w10:.2f} s "
              f"(x{w10 / w1:.1f} for x10 rows), peak RSS {rss / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
