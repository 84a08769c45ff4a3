"""Benchmark the progress report (issue "Use the model, find your runs, and a terminal"):
how often it moves, how good an estimate of the time left it gives after a fifth of the
work, and what it costs.

For the homework grid (batched engine) and a quarter of it with the reference engine, a
search runs with a recording progress callback. At the first report past 20% of the
trials, the estimate of the time left (the speed since the first report that moved, as
rich's bar computes it over a run this short) is compared with the time the search
really took from there.
The cost is the wall time with the callback against without (best of --repeat).

    python benchmarks/bench_progress.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from bench_engine import machine, scratch

from agereg.config import Config, DataConfig, ExecutionConfig, Grid
from agereg.pipeline import start_search
from agereg.synth import write_synthetic

HOMEWORK = Grid(batch_size=(160, 200, 400, 640), learning_rate=(3e-8, 3e-6, 3e-5, 3e-3),
                epochs=(16, 32, 48, 64), l2=(1e-7, 1e-5, 1e-3, 1e-1))


def config(data: Path, grid: Grid, engine: str) -> Config:
    return Config(grid=grid, seed=0, name="bench", n_jobs=-1, data=DataConfig(str(data)),
                  execution=ExecutionConfig(engine=engine))


def eta_check(cfg: Config, runs: Path) -> tuple[int, float, float, float]:
    """(reports, elapsed at 20%, estimated time left then, actual time left)."""
    seen: list[tuple[float, float, int]] = []
    t0 = time.perf_counter()

    def progress(done: float, total: int, note: str) -> None:
        seen.append((time.perf_counter() - t0, done, total))

    start_search(cfg, runs, progress=progress)
    end = time.perf_counter() - t0
    # as rich's bar does: the speed counts from the first report that moved, so the
    # start-up (array preparation, worker processes) is not taken for slow training
    moved = next((t, d) for t, d, _ in seen if d > seen[0][1])
    for t, done, total in seen:
        if done >= 0.2 * total and t > moved[0]:
            speed = (done - moved[1]) / (t - moved[0])
            return len(seen), t, (total - done) / speed, end - t
    raise AssertionError("no report past a fifth of the work")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(machine())
    tmp = scratch()
    data = write_synthetic(tmp / "data", seed=0)
    runs = tmp / "runs"
    quarter = dataclasses.replace(HOMEWORK, learning_rate=(3e-3,))
    for name, cfg in (("homework grid, batched", config(data, HOMEWORK, "batched")),
                      ("a quarter of it, reference", config(data, quarter, "reference"))):
        n, at, guess, actual = eta_check(cfg, runs)
        print(f"{name}: {n} progress reports; at {at:.1f} s (a fifth of the trials) the "
              f"estimated time left is {guess:.1f} s, the actual {actual:.1f} s "
              f"(error {abs(guess - actual) / actual:.0%})")
    cfg = config(data, HOMEWORK, "batched")
    with_cb = min(_timed(cfg, runs, True) for _ in range(args.repeat))
    without = min(_timed(cfg, runs, False) for _ in range(args.repeat))
    print(f"cost: {with_cb:.2f} s with progress reports, {without:.2f} s without "
          f"({(with_cb / without - 1):+.1%}), best of {args.repeat}")


def _timed(cfg: Config, runs: Path, report: bool) -> float:
    t0 = time.perf_counter()
    start_search(cfg, runs, progress=(lambda d, t, n: None) if report else None)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
