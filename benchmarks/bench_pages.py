"""What writing the prepared arrays costs on this machine: the disk, or fresh memory?

A search writes its prepared arrays (138 MB of float64 for the homework data) into the
run's ``.work/`` folder; without an fsync that lands in the page cache, not on the disk.
This makes new 138 MB arrays three times keeping each (every one needs pages the process
has not had), then three times freeing each before the next (which reuses its pages); and
does the same with files: the same 138 MB written into a scratch folder three times
keeping each file, then three times removing the file after each write. One process, one
thread; the first-touch figures depend on how much memory the machine has touched since
it started, so run it in a fresh process.

    python benchmarks/bench_pages.py [--dir DIR] [--mb 138]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_engine import machine


def seconds(f: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--mb", type=int, default=138)
    args = ap.parse_args()
    print(machine())
    a = np.ones(args.mb * 2**20 // 8)
    held: list[np.ndarray] = []  # arrays first: the files' freed pages would warm them
    fresh = [seconds(lambda: held.append(np.ones_like(a))) for _ in range(3)]
    held.clear()
    again = []
    for _ in range(3):
        again.append(seconds(lambda: held.append(np.ones_like(a))))
        held.clear()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        kept = [seconds(functools.partial(a.tofile, root / f"kept{i}")) for i in range(3)]
        reused = []
        for i in range(3):
            reused.append(seconds(functools.partial(a.tofile, root / f"again{i}")))
            (root / f"again{i}").unlink()

    def show(xs: list[float]) -> str:
        return ", ".join(f"{x:.3f} s ({args.mb / 1024 / x:.1f} GB/s)" for x in xs)

    print(f"new {args.mb} MB arrays, kept:                 {show(fresh)}")
    print(f"new {args.mb} MB arrays, each freed after:     {show(again)}")
    print(f"write {args.mb} MB into {tmp}, files kept:      {show(kept)}")
    print(f"write {args.mb} MB, each file removed after:   {show(reused)}")


if __name__ == "__main__":
    main()
