"""Benchmark scale (issue "Closer to the floor"): a search on a large stand-in must keep
its memory flat in the number of workers (the prepared arrays are memory-mapped, one copy
in the page cache) and its time linear in the rows.

Runs the homework grid in float32 on DATA (make it with `agereg synth --out DIR
--n-train 200000`) with --n-jobs 1 and 2, sampling every 0.2 s the summed PSS
(proportional set size: shared pages split between the processes that map them, so the
sum is the memory really used) of agereg and its workers.

    python benchmarks/bench_scale.py DATA
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_engine import proc_bytes, process_tree, scratch

GRID = """\
name: scale
data: {{dir: {data}}}
execution: {{precision: float32}}
grid:
  batch_size: [160, 200, 400, 640]
  learning_rate: [3.0e-8, 3.0e-6, 3.0e-5, 3.0e-3]
  epochs: [16, 32, 48, 64]
  l2: [1.0e-7, 1.0e-5, 1.0e-3, 1.0e-1]
"""


def run(config: Path, n_jobs: int, runs: Path) -> tuple[float, int]:
    proc = subprocess.Popen([sys.executable, "-m", "agereg", "search", str(config), "--quiet",
                             "--n-jobs", str(n_jobs), "--runs-dir", str(runs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            pss = sum(proc_bytes(p, "smaps_rollup", "Pss") for p in process_tree(proc.pid))
            peak[0] = max(peak[0], pss)

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    t.start()
    proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    return wall, peak[0]


def main() -> None:
    data = Path(sys.argv[1]).resolve()
    tmp = scratch()
    config = tmp / "scale.yaml"
    config.write_text(GRID.format(data=data))
    for n_jobs in (1, 2):
        wall, peak = run(config, n_jobs, tmp / "runs")
        print(f"{data.name}: --n-jobs {n_jobs}: {wall:.1f} s, peak summed PSS "
              f"{peak / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
