"""The batched engine: many (learning_rate, l2) columns of one batch size trained at once,
as ``(D, 16)`` weight panels with two matrix-matrix products per panel and minibatch step,
every requested epoch count recorded in one pass; and several such groups trained over one
shared gathering of each epoch's rows (:func:`train_groups`). It implements the training
contract of :mod:`agereg.engine`, whose :func:`~agereg.engine.train_reference` is its
oracle in the tests. numpy only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from agereg.engine import (
    Arrays,
    Fit,
    Scores,
    derivative,
    epoch_order,
    explode_limit,
    scores_of,
    val_scores_of,
)

# Rows per block inside a minibatch: a (128, 2304) float64 block is 2.4 MB, small enough
# to stay in cache between the forward and backward products (measured fastest).
ROW_BLOCK = 128
# Columns per matrix product. Every product of the batched engine is exactly this wide
# (fewer columns are padded with zeros), so that a column's numbers are the same whatever
# trains beside it: BLAS kernels pick their code path by the shape, and a different width
# can change the last bits. 32 columns run at 1.1-1.4x the cache-hot rate of 16, but
# multiplying two groups' panels in one product made the engine only 0-6% faster (README,
# "Against this machine's floor"), so it is not done.
PANEL = 16
# A stretch of rows gathered once for several groups (train_groups) is at most this large:
# measured, 11.8 MB of float64 rows shared by two groups ran at 83% of the cache-hot rate
# against 70% for each gathering its own blocks, 59 MB at 65%.
SHARED_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Curves:
    """Learning curves of K columns, one row per epoch trained (``epochs``): the running
    mean of the epoch's minibatch fMSE (each taken before its step), and the validation
    fMSE and MAE after the epoch. NaN once a column has diverged."""

    epochs: np.ndarray  # (T,) int
    train: np.ndarray  # (T, K)
    val_fmse: np.ndarray  # (T, K)
    val_mae: np.ndarray  # (T, K)


@dataclass(frozen=True)
class GroupResult:
    """Losses of a group: ``losses[i, k, j]`` is fMSE ``engine.LOSS_NAMES[j]`` of column ``k``
    after ``epochs[i]`` epochs (NaN where diverged), ``mae`` likewise, ``val_se[i, k]``
    the standard errors of the validation (fMSE, MAE); ``diverged[i, k]``;
    ``best_epoch[i, k]`` the epoch up to ``epochs[i]`` with the lowest validation fMSE
    (0 when curves were not recorded)."""

    epochs: tuple[int, ...]
    losses: np.ndarray  # (E, K, 3) float64
    diverged: np.ndarray  # (E, K) bool
    state: State | None = None
    val_se: np.ndarray | None = None  # (E, K, 2)
    mae: np.ndarray | None = None  # (E, K, 3)
    best_epoch: np.ndarray | None = None  # (E, K) int
    curves: Curves | None = None
    snapshots: dict[tuple[int, int], Fit] | None = None  # (column, epoch) -> its Fit
    weights: np.ndarray | None = None  # (E, K, D) engine dtype, NaN where diverged
    bias: np.ndarray | None = None  # (E, K)


@dataclass(frozen=True)
class State:
    """Parameters of K columns after ``epoch`` epochs, in the engine's dtype, to continue
    training from (successive halving's rungs). Non-finite columns have diverged."""

    epoch: int
    W: np.ndarray  # (D, K)
    b: np.ndarray  # (K,)
    best_val: np.ndarray | None = None  # (K,) lowest validation fMSE so far (curves)
    best_epoch: np.ndarray | None = None  # (K,) its epoch


def column_fit(arrays: Arrays, w: np.ndarray, b: np.generic) -> Fit:
    """A column's figures from its parameters (engine dtype), computed as
    :func:`train_group` computes them, in a panel of :data:`PANEL` (the other slots zero;
    a column's numbers do not depend on its neighbours): the search's figures, bit for
    bit, for the parameters it kept."""
    W, bias = _pack(np.asarray(w)[None, :]), _pack_vec(np.asarray([b], dtype=w.dtype), 0)
    sc = _panel_scores(arrays, W, bias, 1)
    L, A, SE = (getattr(sc, f)[:, 0].tolist() for f in ("fmse", "mae", "se"))
    return Fit(w.astype(np.float64), float(b), (L[0], L[1], L[2]), False, (SE[0], SE[1]),
               (A[0], A[1], A[2]))


def block_rows(batch_size: int, n: int) -> int:
    """The rows of each block a minibatch of ``batch_size`` (of ``n`` training rows) is
    split into: near-equal blocks of at most :data:`ROW_BLOCK` rows."""
    rows = min(batch_size, n)
    return -(-rows // -(-rows // ROW_BLOCK))


def _unpack(M: np.ndarray) -> np.ndarray:
    """``(P, X, PANEL)`` panels -> ``(P * PANEL, X)`` slots (a copy)."""
    P, X, _ = M.shape
    return M.transpose(0, 2, 1).reshape(P * PANEL, X)


def _pack(S: np.ndarray) -> np.ndarray:
    """``(n, X)`` slots -> ``(ceil(n / PANEL), X, PANEL)`` contiguous panels, zero padded."""
    n, X = S.shape
    P = -(-n // PANEL)
    out = np.zeros((P * PANEL, X), dtype=S.dtype)
    out[:n] = S
    return np.ascontiguousarray(out.reshape(P, PANEL, X).transpose(0, 2, 1))


def _pack_vec(v: np.ndarray, fill: float) -> np.ndarray:
    """``(n,)`` -> ``(ceil(n / PANEL), PANEL)``, padded with ``fill``."""
    P = -(-len(v) // PANEL)
    out = np.full(P * PANEL, fill, dtype=v.dtype)
    out[: len(v)] = v
    return out.reshape(P, PANEL)


class _Recorder:
    """The figures of K columns at the recorded epoch counts (index ``i`` of ``epochs``),
    filled in as training passes each one, and the (column, epoch) snapshots wanted."""

    def __init__(self, E: int, K: int, wanted: list[tuple[int, int]],
                 keep: tuple[int, np.dtype] | None = None) -> None:
        # keep = (D, dtype): every column's parameters at every recorded epoch
        self.W = None if keep is None else np.full((E, K, keep[0]), np.nan, dtype=keep[1])
        self.B = None if keep is None else np.full((E, K), np.nan, dtype=keep[1])
        self.losses = np.full((E, K, 3), np.nan)
        self.mae = np.full((E, K, 3), np.nan)
        self.val_se = np.full((E, K, 2), np.nan)
        self.best_epoch = np.zeros((E, K), dtype=np.int64)
        self.diverged = np.ones((E, K), dtype=bool)
        self.wanted = wanted
        self.kept: dict[tuple[int, int], Fit] = {}

    def record(self, i: int, epoch: int, alive: np.ndarray, scores: Scores, Wk: np.ndarray,
               b: np.ndarray, best_at: np.ndarray, limit: float) -> None:
        """Record the ``k = len(alive)`` surviving columns after ``epoch``: their figures
        ``scores`` (fMSE and MAE (3, k), standard errors (2, k)), weights ``Wk`` (k, D) and
        biases ``b`` (k,). A column with a non-finite figure or weight, or a training fMSE
        above ``limit``, stays diverged."""
        L, A, SE = scores.fmse, scores.mae, scores.se
        finite = (np.isfinite(L).all(axis=0) & np.isfinite(Wk).all(axis=1)
                  & (L[0] <= limit))
        self.losses[i, alive[finite]] = L[:, finite].T
        self.mae[i, alive[finite]] = A[:, finite].T
        self.val_se[i, alive[finite]] = SE[:, finite].T
        self.best_epoch[i, alive[finite]] = best_at[alive[finite]]
        self.diverged[i, alive[finite]] = False
        if self.W is not None and self.B is not None:
            self.W[i, alive[finite]] = Wk[finite]
            self.B[i, alive[finite]] = b[finite]
        for col, ep in self.wanted:
            if ep != epoch:
                continue
            where = np.flatnonzero(alive == col)
            if where.size and finite[where[0]]:
                j = where[0]
                self.kept[(col, ep)] = Fit(
                    Wk[j].astype(np.float64), float(b[j]),
                    (float(L[0, j]), float(L[1, j]), float(L[2, j])), False,
                    (float(SE[0, j]), float(SE[1, j])),
                    (float(A[0, j]), float(A[1, j]), float(A[2, j])))


def _panel_scores(arrays: Arrays, W: np.ndarray, b: np.ndarray, k: int) -> Scores:
    """Every figure of the first ``k`` slots of the panels ``W`` (P, D, PANEL), ``b``."""
    scores = [scores_of(arrays, W[p], b[p]) for p in range(len(W))]

    def joined(field: str) -> np.ndarray:
        return np.concatenate([getattr(sc, field) for sc in scores], axis=1)[:, :k]

    return Scores(fmse=joined("fmse"), mae=joined("mae"), se=joined("se"))


@dataclass(frozen=True)
class GroupSpec:
    """One group for :func:`train_groups`: the arguments of :func:`train_group` that follow
    ``arrays`` and ``seed``, with the same meaning."""

    batch_size: int
    lrs: Sequence[float]
    l2s: Sequence[float]
    epochs: Sequence[int]
    start: State | None = None
    loss: str = "squared"
    curves: bool = False
    on_epoch: Callable[[int], None] | None = None
    snapshots: Sequence[tuple[int, int]] = ()
    weights: bool = False


def train_group(
    arrays: Arrays,
    seed: int,
    batch_size: int,
    lrs: Sequence[float],
    l2s: Sequence[float],
    epochs: Sequence[int],
    start: State | None = None,
    loss: str = "squared",
    curves: bool = False,
    on_epoch: Callable[[int], None] | None = None,
    snapshots: Sequence[tuple[int, int]] = (),
    weights: bool = False,
) -> GroupResult:
    """Train K = len(lrs) columns of one batch size and loss together and record every
    epoch count.

    Columns are laid out in panels of :data:`PANEL`; every matrix product has exactly that
    width, so a column's numbers do not depend on its neighbours, its position, or how many
    columns train with it (tested). A column that diverges is dropped at once and the
    survivors are packed into fewer panels.

    ``start`` continues from a saved :class:`State` (epoch ``start.epoch``, columns in the
    order of ``lrs``; non-finite columns count as diverged); the result's ``state`` holds
    the parameters after the last epoch. ``snapshots`` lists (column, epoch) pairs whose
    parameters and figures to return (``result.snapshots``). ``curves`` records the validation
    fMSE and MAE after every epoch (one more product with the validation rows per epoch)
    and the running mean of each epoch's minibatch fMSE (free), and each recorded trial's
    best epoch. ``weights`` returns every column's parameters at every recorded epoch
    (``result.weights`` and ``result.bias``, in the engine's dtype, NaN where diverged):
    the search keeps them so that ``eval`` need not train again.
    """
    spec = GroupSpec(batch_size, lrs, l2s, epochs, start, loss, curves, on_epoch, snapshots,
                     weights)
    (res,) = train_groups(arrays, seed, [spec])
    if isinstance(res, Exception):
        raise res
    return res


def train_groups(arrays: Arrays, seed: int, specs: Sequence[GroupSpec]
                 ) -> list[GroupResult | Exception]:
    """Train several groups on the same rows, seed and start epoch in one pass: each
    stretch of an epoch's rows is gathered once for all of them (at most
    :data:`SHARED_BYTES`, a whole number of every group's minibatches) and every group then
    takes its steps in it, so the training data is read once instead of once per group.

    Each group's numbers are those of :func:`train_group` alone, bit for bit (tested): its
    minibatches hold the same rows in the same order, split into the same blocks. A group
    that raises is dropped and its exception takes its place in the result; the others go
    on. With one group, or stretches too large for the cache, each group gathers its own
    blocks as it goes.
    """
    out: list[GroupResult | Exception | None] = [None] * len(specs)
    trainers: dict[int, _Trainer] = {}
    for i, spec in enumerate(specs):
        try:
            trainers[i] = _Trainer(arrays, spec)
        except Exception as exc:  # the group's failure is its result
            out[i] = exc
    firsts = {t.first for t in trainers.values()}
    if len(firsts) > 1:
        raise ValueError(f"groups trained together start at one epoch, not {sorted(firsts)}")

    def attempt(i: int, step: Callable[[], object]) -> None:
        if out[i] is None:
            try:
                step()
            except Exception as exc:  # drop this group, keep the others
                out[i] = exc

    X, n = arrays.X_fit, arrays.n_fit
    row_bytes = X.shape[1] * X.dtype.itemsize
    last = max((t.last for t in trainers.values()), default=0)
    shared: np.ndarray | None = None  # the gathered stretch, allocated once
    with np.errstate(all="ignore"):  # overflow is expected when a column diverges
        for epoch in range(min(firsts, default=0) + 1, last + 1):
            active = [i for i, t in trainers.items() if out[i] is None and t.wants(epoch)]
            if not active:
                break
            order = epoch_order(seed, epoch, n)
            if arrays.fit_rows is not None:
                order = arrays.fit_rows[order]  # the fold's rows in the pool
            for i in active:
                attempt(i, functools.partial(trainers[i].begin, order))
            span = math.lcm(*(trainers[i].rows_per_step for i in active))
            if len(active) > 1 and span * row_bytes <= SHARED_BYTES:
                if shared is None or len(shared) < span:
                    shared = np.empty((span, X.shape[1]), dtype=X.dtype)
                for lo in range(0, n, span):
                    hi = min(lo + span, n)
                    np.take(X, order[lo:hi], axis=0, out=shared[: hi - lo], mode="clip")
                    for i in active:
                        attempt(i, functools.partial(trainers[i].steps, lo, hi,
                                                     shared[: hi - lo]))
            else:
                for i in active:
                    attempt(i, functools.partial(trainers[i].steps, 0, n, None))
            for i in active:
                attempt(i, functools.partial(trainers[i].end, epoch))
    for i, t in trainers.items():
        if out[i] is None:
            out[i] = t.result()
    return [r for r in out if r is not None]


class _Trainer:
    """One group of :func:`train_groups` between epochs: its panels, its recorder and its
    curves. ``begin`` an epoch with its row order, take the ``steps`` that start in a
    stretch of it, ``end`` it; ``result`` after the last."""

    def __init__(self, arrays: Arrays, spec: GroupSpec) -> None:
        self.arrays, self.X = arrays, arrays.X_fit
        dtype = self.X.dtype
        n, d = arrays.n_fit, self.X.shape[1]
        K = len(spec.lrs)
        self.epochs = epochs = tuple(sorted(spec.epochs))
        start = spec.start
        self.first = first = 0 if start is None else start.epoch
        if not epochs or epochs[0] <= first:
            raise ValueError(f"epochs {epochs} must all come after the start epoch {first}")
        derivative(spec.loss, np.zeros(1))  # an unknown loss fails here, before any work
        self.last = epochs[-1]
        self.spec, self.n, self.d, self.K, self.dtype = spec, n, d, K, dtype
        self.record_at = {e: i for i, e in enumerate(epochs)}
        T = epochs[-1] - first
        self.rec = _Recorder(len(epochs), K, list(spec.snapshots),
                             (d, dtype) if spec.weights else None)
        shape = (T, K) if spec.curves else (0, K)  # T can be large: only when recorded
        self.curve = (np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan))
        self.best_val = np.full(K, np.inf) if start is None or start.best_val is None else \
            np.array(start.best_val, dtype=np.float64)
        self.best_at = np.zeros(K, dtype=np.int64) if start is None or \
            start.best_epoch is None else np.array(start.best_epoch, dtype=np.int64)

        lr_all = np.asarray(spec.lrs, dtype=dtype)  # (K,)
        # w *= 1 - lr * l2
        decay_all = (1 - lr_all * np.asarray(spec.l2s, dtype=dtype)).astype(dtype)
        if start is None:
            W0, b0 = np.zeros((K, d), dtype=dtype), np.zeros(K, dtype=dtype)
        else:
            W0 = np.asarray(start.W, dtype=dtype).T  # (K, D)
            b0 = np.asarray(start.b, dtype=dtype)
        self.alive = np.flatnonzero(np.isfinite(W0).all(axis=1) & np.isfinite(b0))  # (k,)
        # Panels: W (P, D, PANEL), b / lr / decay (P, PANEL). Padding slots have
        # W = b = lr = 0 and decay = 1, so they stay exactly zero and never diverge.
        self.W, self.b = _pack(W0[self.alive]), _pack_vec(b0[self.alive], 0)
        self.lr = _pack_vec(lr_all[self.alive], 0)
        self.decay = _pack_vec(decay_all[self.alive], 1)
        self.y_cast = arrays.y_fit.astype(dtype)
        # Split each minibatch into near-equal blocks of at most ROW_BLOCK rows (160 ->
        # 2 x 80 rather than 128 + 32, whose thin remainder wastes the products).
        # A minibatch never holds more than the n training rows: a batch size beyond n is
        # one full batch per epoch, and the buffers are sized by the rows, not the setting.
        self.rows_per_step = min(spec.batch_size, n)
        self.block = block_rows(spec.batch_size, n)
        self.limit = explode_limit(arrays.y_train())
        self.X_S = np.empty((self.block, d), dtype=dtype)  # buffers reused by every step
        self.G_part = np.empty((d, PANEL), dtype=dtype)
        self.squared = spec.loss == "squared"
        self.R, self.G, self.Dr = self._buffers(len(self.W))

    def _buffers(self, P: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Residuals, gradients and the loss's derivative of the residuals, for P panels."""
        R = np.empty((P, self.rows_per_step, PANEL), dtype=self.dtype)
        return R, np.empty((P, self.d, PANEL), self.dtype), \
            R if self.squared else np.empty_like(R)

    def wants(self, epoch: int) -> bool:
        return epoch <= self.last and len(self.alive) > 0

    def begin(self, order: np.ndarray) -> None:
        """Start an epoch whose rows come in ``order``."""
        self.order = order
        self.y_order = self.y_cast[order][:, None]  # (n, 1): the labels in this order
        self.running = np.zeros(len(self.W) * PANEL)  # sum of the minibatch fMSE, per slot
        self.n_steps = 0

    def steps(self, lo: int, hi: int, rows: np.ndarray | None) -> None:
        """Take the minibatch steps that start in ``order[lo:hi]`` (a whole number of
        minibatches, or up to the end of the epoch). ``rows`` holds those rows, already
        gathered; None: gather each block here."""
        X, y_order, order, n, m_max = self.X, self.y_order, self.order, self.n, \
            self.spec.batch_size
        loss, block = self.spec.loss, self.block
        for start_row in range(lo, hi, m_max):
            if len(self.alive) == 0:
                return
            m, P = min(m_max, n - start_row), len(self.W)
            W, b, R, G, Dr = self.W, self.b, self.R, self.G, self.Dr
            # The minibatch is processed in blocks of ROW_BLOCK rows, so that each
            # gathered block is still in cache when the backward products read it.
            for at in range(0, m, block):
                a, z = start_row + at, min(start_row + at + block, start_row + m)
                if rows is None:
                    xs = self.X_S[: z - a]
                    # mode="clip": indices come from a permutation, and the default mode
                    # ("raise") copies through a temporary buffer on every call
                    np.take(X, order[a:z], axis=0, out=xs, mode="clip")  # (s, D)
                else:
                    xs = rows[a - lo : z - lo]
                ys = y_order[a:z]  # (s, 1)
                for p in range(P):
                    rs = R[p, at : at + z - a]
                    np.matmul(xs, W[p], out=rs)  # (s, D) @ (D, PANEL) -> (s, PANEL)
                    rs += b[p]
                    rs -= ys
                    ds = derivative(loss, rs, Dr[p, at : at + z - a])
                    if at == 0:
                        np.matmul(xs.T, ds, out=G[p])  # (D, s) @ (s, PANEL) -> (D, PANEL)
                    else:
                        np.matmul(xs.T, ds, out=self.G_part)
                        G[p] += self.G_part
            self._update(m)

    def _update(self, m: int) -> None:
        """The step of a minibatch of ``m`` rows whose residuals and gradients are in
        ``R`` and ``G``: drop the columns that diverged, then move the others."""
        r, dr = self.R[:, :m], self.Dr[:, :m]  # (P, m, PANEL)
        # every column's minibatch fMSE against the limit, as sum(r^2) <= 2 m limit; NaN
        # compares false, so non-finite residuals fail it too
        sq = np.einsum("pmk,pmk->pk", r, r)  # (P, m, PANEL) -> (P, PANEL)
        ok = (sq <= 2 * m * self.limit).reshape(-1)[: len(self.alive)]  # (k,)
        if self.spec.curves:  # the epoch's running training loss: only for the curves
            self.running += sq.reshape(-1) / (2 * m)
            self.n_steps += 1
        if not ok.all():
            self.alive = self.alive[ok]
            if len(self.alive) == 0:
                return
            self.W, self.G, r = (_pack(_unpack(M)[: len(ok)][ok]) for M in (self.W, self.G, r))
            dr = r if self.squared else _pack(_unpack(dr)[: len(ok)][ok])
            self.b, self.lr, self.decay = (
                _pack_vec(v.reshape(-1)[: len(ok)][ok], fill)
                for v, fill in ((self.b, 0), (self.lr, 0), (self.decay, 1)))
            if self.spec.curves:
                self.running = _pack_vec(self.running[: len(ok)][ok], 0).reshape(-1)
            self.R, _, self.Dr = self._buffers(len(self.W))
        lr, dtype = self.lr, self.dtype
        # the bias's step, every panel at once: lr * mean(d) (as ndarray.mean: a sum
        # divided by m), (P, m, PANEL) -> (P, PANEL)
        self.b -= lr * (np.add.reduce(dr, axis=1) / m)
        self.G *= (lr / dtype.type(m))[:, None, :]
        self.W *= self.decay[:, None, :]
        self.W -= self.G

    def end(self, epoch: int) -> None:
        """Close ``epoch``: report it, record its figures and its curves."""
        if len(self.alive) == 0:
            return
        if self.spec.on_epoch is not None:
            self.spec.on_epoch(epoch)
        arrays, W, b, alive = self.arrays, self.W, self.b, self.alive
        k = len(alive)
        t = epoch - self.first - 1
        i = self.record_at.get(epoch)
        if i is not None:  # every figure of every column, at a recorded epoch count
            figures = _panel_scores(arrays, W, b, k)
            val_f, val_a = figures.fmse[1], figures.mae[1]
        elif self.spec.curves:
            vs = [val_scores_of(arrays, W[p], b[p]) for p in range(len(W))]
            val_f = np.concatenate([v[0] for v in vs])[:k]
            val_a = np.concatenate([v[1] for v in vs])[:k]
        if self.spec.curves:
            self.curve[0][t, alive] = self.running[:k] / self.n_steps
            self.curve[1][t, alive] = val_f
            self.curve[2][t, alive] = val_a
            better = val_f < self.best_val[alive]  # NaN never improves
            self.best_val[alive[better]] = val_f[better]
            self.best_at[alive[better]] = epoch
        if i is not None:
            self.rec.record(i, epoch, alive, figures, _unpack(W)[:k], b.reshape(-1)[:k],
                            self.best_at, self.limit)

    def result(self) -> GroupResult:
        end_W = np.full((self.d, self.K), np.nan, dtype=self.dtype)
        end_b = np.full(self.K, np.nan, dtype=self.dtype)
        if len(self.alive):
            k = len(self.alive)
            end_W[:, self.alive] = _unpack(self.W)[:k].T
            end_b[self.alive] = self.b.reshape(-1)[:k]
        curves = self.spec.curves
        state = State(self.last, end_W, end_b, self.best_val if curves else None,
                      self.best_at if curves else None)
        rec = self.rec
        recorded = Curves(np.arange(self.first + 1, self.last + 1), *self.curve) \
            if curves else None
        return GroupResult(self.epochs, rec.losses, rec.diverged, state, rec.val_se, rec.mae,
                           rec.best_epoch, recorded, rec.kept, rec.W, rec.B)
