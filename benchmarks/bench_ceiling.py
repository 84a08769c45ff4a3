"""The most any engine could reach against this machine's floor (issue 14), measured.

The floor (``bench_engine.py``) counts only the training products: two per row, panel
and epoch at one thread's cache-hot rate for 16 columns. A search must also gather each
minibatch's rows, take the SGD step, and score its columns: the training, validation and
test rows at each recorded epoch count, and the validation rows after every other epoch
for the learning curves (the default). This benchmark trains the homework grid's two
pairs of groups (as the search pairs them on 2 cores) with a stripped-down loop that
has every idea of the issue, and adds the work a search must do one piece at a time:

1. each block of rows gathered once for both groups of a pair, then one 16-column
   product each way per panel (the products as the engine makes them);
2. the same with one 32-column product each way (both groups' panels side by side,
   both groups' minibatches cut into the same blocks: 640 rows in blocks of 80);
3. + scoring at the recorded epochs (fMSE and MAE of the training, validation and test
   rows, the 32 columns in one product);
4. + the validation rows after every other epoch (learning curves);
5. + the SGD step in numpy (residuals, the divergence check, the bias and weight
   updates), with as few passes as numpy allows;
6. the same without the learning curves (``--no-curves``).

Rows 1-4 do no SGD at all: they bound from above what an engine built from these pieces
(groups in pairs, products up to 32 columns) can reach, however cheap its step. Before
timing, the loop of rows 5-6 is checked against ``train_groups`` (the same weights within
a relative 1e-12 in float64, 1e-4 in float32, after 2 epochs). One thread, random data of
the homework shapes (4,000 training, 1,000 validation and 2,500 test rows of 48x48); the
fraction is the floor's time over the loop's, both pairs summed, with the cache-hot rate
measured before and after the loops and the faster taken (the machine's speed drifts).

    python benchmarks/bench_ceiling.py [--epochs 64] [--repeat 2]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
from bench_engine import HOMEWORK, floor_seconds, machine, product_rate
from threadpoolctl import threadpool_limits

from agereg.batched import PANEL, GroupSpec, block_rows, train_groups
from agereg.engine import Arrays, epoch_order
from agereg.plan import bundles, plan_groups

N_FIT, N_VAL, N_TEST, D = 4000, 1000, 2500, 48 * 48
LRS = tuple(float(x) for x in np.geomspace(1e-8, 3e-5, PANEL))  # none diverges here
L2 = 1e-3
LIMIT = 1e30  # a minibatch fMSE above it diverges (the engine's is the labels')


@dataclass(frozen=True)
class Work:
    """What one pass of the loop does besides gathering rows and multiplying."""

    width: int  # columns per product: PANEL or 2 * PANEL
    records: bool = False  # score training, validation and test rows at recorded epochs
    curves: bool = False  # score the validation rows after every other epoch
    step: bool = False  # take the SGD step


def train_pair(a: Arrays, sizes: tuple[int, int], epochs: int, recorded: set[int],
               work: Work) -> np.ndarray:
    """Train two groups of 16 columns (batch sizes ``sizes``) over shared blocks; return
    the (D, 32) weights (zero where ``work.step`` is False).

    The step works on all 32 columns at once, contiguous: numpy is several times slower
    per element on a (D, 16) half of a (D, 32) array (measured 3-7x). A half that is not
    ending its minibatch is multiplied by 1 and moved by 0 * G (its G is finite, or it
    would have diverged), which leaves its bits as they are."""
    X, dtype = a.X_fit, a.X_fit.dtype
    n, K = len(X), 2 * PANEL
    block = block_rows(math.gcd(*sizes), n)
    if any(m % block for m in (*sizes, n)):
        raise SystemExit(f"{sizes} on {n} rows cannot share blocks of {block} rows")
    lr = np.tile(np.asarray(LRS, dtype), 2)
    decay = (1 - lr * dtype.type(L2)).astype(dtype)
    half = np.repeat([0, 1], PANEL)  # the group of each column
    W, b = np.zeros((D, K), dtype), np.zeros(K, dtype)
    xs, F = np.empty((block, D), dtype), np.empty((block, K), dtype)
    Gb, G, T = np.empty((D, K), dtype), np.zeros((D, K), dtype), np.empty((D, K), dtype)
    sq, b_sum = np.zeros(K, dtype), np.zeros(K, dtype)
    panels = [np.zeros((D, PANEL), dtype) for _ in range(2)]  # the 16-column products'
    Fp, Gp = np.empty((block, PANEL), dtype), np.empty((D, PANEL), dtype)
    factors: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def step_factors(rows: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(lr / rows, decay) broadcast to (D, K) for the groups ending a minibatch of
        ``rows[g]`` rows (0: not ending): 0 and 1 for the others."""
        if rows not in factors:
            m = np.asarray(rows)[half]
            ending = m > 0
            scale = np.where(ending, lr / np.where(ending, m, 1).astype(dtype), 0)
            factors[rows] = (np.broadcast_to(scale.astype(dtype), (D, K)).copy(),
                             np.broadcast_to(np.where(ending, decay, 1).astype(dtype),
                                             (D, K)).copy())
        return factors[rows]

    labels = a.y_fit.astype(dtype)
    for epoch in range(1, epochs + 1):
        order = epoch_order(0, epoch, n)
        y = labels[order][:, None]
        for lo in range(0, n, block):
            np.take(X, order[lo : lo + block], axis=0, out=xs, mode="clip")
            if work.width == PANEL:
                for Wp in panels:
                    np.matmul(xs, Wp, out=Fp)
                    np.matmul(xs.T, Fp, out=Gp)
                continue
            np.matmul(xs, W, out=F)
            if work.step:
                F += b
                F -= y[lo : lo + block]
            np.matmul(xs.T, F, out=Gb)
            if not work.step:
                continue
            at = [lo % m for m in sizes]
            if 0 in at:  # a group starts a minibatch: its G restarts from this block's
                keep = np.asarray([x > 0 for x in at], dtype)[half]
                G *= keep
            G += Gb
            sq += np.einsum("mk,mk->k", F, F)
            b_sum += F.sum(axis=0)
            rows = tuple(x + block if x + block == m or lo + block == n else 0
                         for x, m in zip(at, sizes, strict=True))
            if any(rows):  # a group ends its minibatch here
                ending = np.asarray(rows)[half] > 0
                if not (sq[ending] <= 2 * np.asarray(rows)[half][ending] * LIMIT).all():
                    raise FloatingPointError("a column diverged")
                scale, dec = step_factors(rows)
                b[ending] -= lr[ending] * (b_sum[ending] / np.asarray(rows)[half][ending])
                sq[ending], b_sum[ending] = 0, 0
                np.multiply(G, scale, out=T)
                W *= dec
                W -= T
        scored = ([(a.X_fit, a.y_fit), (a.X_val, a.y_val), (a.X_te, a.y_te)]
                  if work.records and epoch in recorded else
                  [(a.X_val, a.y_val)] if work.curves else [])
        for Xs, ys in scored:
            R = Xs @ W
            R += b
            R -= ys.astype(dtype)[:, None]
            np.einsum("mk,mk->k", R, R)
            np.abs(R).mean(axis=0)
    return W


def check(a: Arrays, sizes: tuple[int, int], tol: float) -> float:
    """The loop's weights after 2 epochs against ``train_groups``'s; raise beyond ``tol``."""
    ref = train_groups(a, 0, [GroupSpec(m, LRS, [L2] * PANEL, [2]) for m in sizes])
    want = np.concatenate([r.state.W for r in ref if not isinstance(r, Exception)
                           and r.state is not None], axis=1)
    got = train_pair(a, sizes, 2, set(), Work(2 * PANEL, step=True))
    worst = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    if not worst <= tol:
        raise SystemExit(f"the loop does not train what train_groups trains: {worst:.1e}")
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=max(HOMEWORK.epochs))
    ap.add_argument("--repeat", type=int, default=2, help="best of N")
    args = ap.parse_args()
    print(machine())
    groups = plan_groups(HOMEWORK)
    rng = np.random.default_rng(0)
    rows = {k: rng.random((m, D)) for k, m in (("fit", N_FIT), ("val", N_VAL),
                                              ("test", N_TEST))}
    labels = {k: rng.uniform(1, 100, len(v)) for k, v in rows.items()}
    recorded = {e for e in HOMEWORK.epochs if e <= args.epochs} | {args.epochs}
    ladder = [("gathered once a pair, 16-column products", Work(PANEL)),
              ("32-column products", Work(2 * PANEL)),
              ("+ scores at the recorded epochs", Work(2 * PANEL, records=True)),
              ("+ validation every other epoch (curves)", Work(2 * PANEL, True, True)),
              ("+ the SGD step in numpy", Work(2 * PANEL, True, True, True)),
              ("the same without curves (--no-curves)", Work(2 * PANEL, True, False, True))]
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-4)):
        a = Arrays(*(x for k in rows for x in (rows[k].astype(dtype), labels[k])))
        tasks = bundles(groups, [0] * len(groups), 2, D * np.dtype(dtype).itemsize)
        if any(len(t) != 2 for t in tasks):
            raise SystemExit(f"expected the homework grid in pairs on 2 cores, not {tasks}")
        pairs = [(groups[t[0]].batch_size, groups[t[1]].batch_size) for t in tasks]
        blocks = sorted({block_rows(g.batch_size, N_FIT) for g in groups})
        with threadpool_limits(1, user_api="blas"):
            # the machine's speed drifts: the rate is measured before and after the loops,
            # and the faster of the two makes the floor (the stricter one)
            before = {r: product_rate(r, D, dtype) for r in blocks}
            agree = max(check(a, p, tol) for p in pairs)
            times = [(name, min(sum(_timed(a, p, args.epochs, recorded, work) for p in pairs)
                                for _ in range(args.repeat))) for name, work in ladder]
            after = {r: product_rate(r, D, dtype) for r in blocks}
        rates = {r: max(before[r], after[r]) for r in blocks}
        floor = floor_seconds(groups, N_FIT, D, rates, args.epochs)
        extra = (sum(N_FIT + N_VAL + N_TEST for _ in recorded)
                 + N_VAL * (args.epochs - len(recorded))) / (2 * N_FIT * args.epochs)
        print(f"\n{np.dtype(dtype).name}: pairs {pairs}, {args.epochs} epochs, floor "
              f"{floor:.2f} s on one thread (cache-hot before / after the loops: "
              + ", ".join(f"{r} rows {before[r] / 1e9:.1f} / {after[r] / 1e9:.1f}"
                          for r in blocks)
              + f" GFLOP/s, the faster taken); the step agrees with train_groups to {agree:.1e}")
        print(f"  scores and curves multiply {100 * extra:.1f}% more than the floor "
              f"counts: at most {100 / (1 + extra):.0f}% with every product at the floor's rate")
        for name, best in times:
            print(f"  {name:<44} {best:6.2f} s  {100 * floor / best:3.0f}% of the floor")


def _timed(a: Arrays, sizes: tuple[int, int], epochs: int, recorded: set[int],
           work: Work) -> float:
    t0 = time.perf_counter()
    train_pair(a, sizes, epochs, recorded, work)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
