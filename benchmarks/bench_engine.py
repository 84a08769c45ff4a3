"""Benchmark the engines on the homework grid (issue "Train many trials at once").

Generates homework-shaped synthetic data (5,000 + 2,500 images of 48x48), then runs the
4x4x4x4 homework grid through the real search pipeline with

1. the reference engine (one plain loop per trial) under joblib on every core,
2. the batched engine in float64,
3. the batched engine in float32,

and prints wall time, trials per second, peak RSS (the process and all its workers,
sampled from /proc) and speed-up ratios; then the float32 deviation from float64, and
scaling with grid size (256 -> 2,560 trials) and with N (5,000 -> 50,000 rows).

    python benchmarks/bench_engine.py                 # everything (reference takes minutes)
    python benchmarks/bench_engine.py --reference-quarter  # a quarter of the reference
                                                           # trials, extrapolated (marked)
    python benchmarks/bench_engine.py --no-scaling
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from agereg.config import Config, DataConfig, ExecutionConfig, Grid
from agereg.pipeline import start_search
from agereg.synth import write_synthetic

HOMEWORK = Grid(
    batch_size=(160, 200, 400, 640),
    learning_rate=(3e-8, 3e-6, 3e-5, 3e-3),
    epochs=(16, 32, 48, 64),
    l2=(1e-7, 1e-5, 1e-3, 1e-1),
)


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

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(self._rss(p) for p in process_tree(os.getpid())))
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
    return f"{name:<34} {wall:9.2f} s {n / wall:10.1f} {rss / 2**20:10.0f} MiB {speed}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference-quarter", action="store_true",
                    help="time the reference engine on one learning rate (64 trials, the "
                    "same batch sizes and epochs) and extrapolate x4")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the batched runs")
    args = ap.parse_args()

    from threadpoolctl import threadpool_info

    blas = [f"{i['internal_api']} {i.get('version')} ({i.get('architecture')})"
            for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or ''}"
          f" python {platform.python_version()}, numpy {np.__version__}, BLAS {blas}")
    tmp = Path(tempfile.mkdtemp(prefix="agereg-bench-"))
    data = write_synthetic(tmp / "data", seed=0)
    runs = tmp / "runs"
    n = len(HOMEWORK)
    print(f"homework grid: {n} trials on {data} (5,000 x 48x48 synthetic, 80/20 split)\n")
    print(f"{'engine':<34} {'wall':>11} {'trials/s':>10} {'peak RSS':>14} {'speed-up':>9}")

    results: dict[str, tuple[float, int, dict]] = {}
    for precision in ("float64", "float32"):
        best = min((timed_search(config(data, HOMEWORK, precision=precision), runs)
                    for _ in range(args.repeat)), key=lambda t: t[0])
        results[precision] = best

    if args.reference_quarter:
        grid = dataclasses.replace(HOMEWORK, learning_rate=HOMEWORK.learning_rate[:1])
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
