"""Benchmark `agereg eval --best` on the homework grid (issue "Closer to the floor": the
first evaluation within 3 s, a second one of the same run within 1.5 s, with the default
1,000 bootstrap resamples and every picture).

Generates homework-shaped synthetic data (5,000 + 2,500 images of 48x48), runs the
homework grid once, then times whole processes, median of --repeat:

1. the first evaluation: no ridge-basis cache, no grid pictures, no evaluation yet (all
   removed before each run), so it computes the eigendecomposition and draws 8 pictures;
2. a second evaluation (`--force`: the cache and the grid pictures exist), and one of
   the runner-up (`--rank 2`);
3. the same with `--retrain` (train the trial and the runner-up again instead of using
   the parameters the search kept), and with `--no-plots`, to show where the time goes.

    python benchmarks/bench_eval.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import machine

from agereg.synth import write_synthetic

ROOT = Path(__file__).resolve().parent.parent


def timed(args: list[str], before: Callable[[], None], repeat: int) -> list[float]:
    """Wall seconds of ``agereg ARGS`` as a whole process, ``before`` run before each."""
    out = []
    for _ in range(repeat):
        before()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "agereg", *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = write_synthetic(tmp / "data", seed=0)
        config = tmp / "grid.yaml"
        config.write_text((ROOT / "configs" / "grid.yaml").read_text()
                          .replace("dir: data", f"dir: {data}"))
        runs = tmp / "runs"
        subprocess.run([sys.executable, "-m", "agereg", "search", str(config), "--runs-dir",
                        str(runs), "--quiet"], check=True)
        run_dir = next(p for p in runs.iterdir() if p.is_dir() and not p.is_symlink())
        base = ["eval", "--best", "--run", str(run_dir)]

        def fresh() -> None:
            shutil.rmtree(run_dir / "evals", ignore_errors=True)
            for name in ("ridge_basis_train.npz", "heatmap_val.png", "val_vs_epochs.png"):
                (run_dir / name).unlink(missing_ok=True)

        rows = [
            ("first evaluation (eigendecomposition, 8 pictures)", timed(base, fresh, a.repeat),
             3.0),
            ("second evaluation (--force)", timed([*base, "--force"], lambda: None, a.repeat),
             1.5),
            ("another trial (--rank 2 --force)", timed(
                ["eval", "--rank", "2", "--run", str(run_dir), "--force"], lambda: None,
                a.repeat), 1.5),
            ("second, --retrain", timed([*base, "--force", "--retrain"], lambda: None,
                                        a.repeat), None),
            ("second, --no-plots", timed([*base, "--force", "--no-plots"], lambda: None,
                                         a.repeat), None),
        ]
        print(f"agereg eval --best on the homework grid's run (whole process, {a.repeat} runs)")
        print(f"{'':52} {'median':>7} {'min':>6} {'max':>6}  goal")
        for name, secs, goal in rows:
            verdict = "" if goal is None else (
                f"{goal:.1f} s: {'met' if statistics.median(secs) <= goal else 'NOT met'}")
            print(f"{name:52} {statistics.median(secs):6.2f}s {min(secs):5.2f}s "
                  f"{max(secs):5.2f}s  {verdict}")


if __name__ == "__main__":
    main()
