"""The numerical core: minibatch SGD for linear regression. numpy only.

Training contract (the README states it in full):

* model ``y_hat = X w + b``; ``w`` and ``b`` start at zero;
* on minibatch S, with ``r = y_hat_S - y_S`` and the loss's derivative ``d(r)`` (squared
  loss: ``d = r``; absolute loss: ``d = sign(r)``, numpy's, so ``sign(0) = 0``):
  ``g_w = X_S^T d / |S| + l2 * w``, ``g_b = mean(d)``; the bias is not regularised;
  ``w -= lr * g_w``, ``b -= lr * g_b``;
* epoch ``e`` (1-based) visits the training rows in the order
  ``np.random.default_rng([seed, e]).permutation(n_train)``, in consecutive minibatches of
  ``batch_size`` (the last may be smaller); the order does not depend on lr or l2;
* losses are ``fMSE = 0.5 * mean((y_hat - y) ** 2)`` and ``MAE = mean(|y_hat - y|)``,
  unregularised, whatever loss trained the model;
* a trial is *diverged* when a residual, parameter or loss becomes non-finite, or when it
  explodes: a minibatch's fMSE (before its step), or the training fMSE at the end, exceeds
  :data:`EXPLODE` times the training fMSE at the start (``w = 0, b = 0``). Both engines
  and both precisions apply the same rule, and a diverged column costs nothing from then on.

Two engines implement it. :func:`train_reference`, here, trains one trial with a plain
loop and is the readable oracle. :func:`agereg.batched.train_group` trains many (lr, l2)
columns of one batch size at once and records every requested epoch count in a single
pass; :func:`agereg.batched.train_groups` trains several such groups over one shared
gathering of each epoch's rows, to the same bits. This module also holds what both share:
the inputs, the records of a fit, the epoch order, the figures and the divergence rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LOSS_NAMES = ("train", "val", "test")
# A trial has exploded when a minibatch fMSE exceeds this many times the training fMSE at
# w = 0, b = 0. Caught at ~1e5 rather than at 1e38 (float32) or 1e308 (float64), the two
# precisions agree on which trials diverged, and a diverged column stops costing time.
EXPLODE = 1000.0


@dataclass(frozen=True)
class Arrays:
    """The engine's inputs, already split: ``X_fit`` are the training rows in the split's
    stored order. All X arrays share one dtype (float64 or float32); y are float64.

    A cross-validation fold instead names its rows in one shared pool (never a copy per
    fold): ``X_fit``/``y_fit`` and ``X_val``/``y_val`` are then the same pool of every
    training row, ``fit_rows`` the fold's training rows in order and ``val_rows`` its
    validation rows.
    """

    X_fit: np.ndarray  # (N, D), or the (P, D) pool with fit_rows
    y_fit: np.ndarray  # (N,)
    X_val: np.ndarray  # (V, D), or the pool with val_rows
    y_val: np.ndarray  # (V,)
    X_te: np.ndarray  # (M, D)
    y_te: np.ndarray  # (M,)
    fit_rows: np.ndarray | None = None  # (N,) rows of the pool that train
    val_rows: np.ndarray | None = None  # (V,) rows of the pool that validate

    @property
    def n_fit(self) -> int:
        return len(self.y_fit) if self.fit_rows is None else len(self.fit_rows)

    def y_train(self) -> np.ndarray:
        """The training labels, in training order: (N,)."""
        return self.y_fit if self.fit_rows is None else self.y_fit[self.fit_rows]


LOSSES = ("squared", "absolute")
NAN3 = (float("nan"),) * 3


def derivative(loss: str, r: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The loss's derivative with respect to the residual: the seam between losses.
    squared (``0.5 r^2``): ``r`` itself (no copy); absolute (``|r|``): ``sign(r)``,
    with numpy's ``sign(0) = 0``."""
    if loss == "squared":
        return r
    if loss == "absolute":
        return np.sign(r, out=out)
    raise ValueError(f"unknown loss {loss!r}; use one of {LOSSES}")


@dataclass(frozen=True)
class Fit:
    """One trained trial: parameters (float64), its three fMSE ``losses`` and three
    ``mae`` (train, val, test; NaN if diverged); ``val_se`` holds the standard errors of
    the validation fMSE and MAE over the validation images,
    ``std(0.5 r_i^2, ddof=1) / sqrt(V)`` and ``std(|r_i|, ddof=1) / sqrt(V)``."""

    w: np.ndarray  # (D,)
    b: float
    losses: tuple[float, float, float]
    diverged: bool
    val_se: tuple[float, float] = (float("nan"), float("nan"))
    mae: tuple[float, float, float] = NAN3


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """Row order of 1-based ``epoch``: independent of every hyperparameter but the seed."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _residuals(X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray | float
               ) -> np.ndarray:
    r = (X @ W + b).astype(np.float64, copy=False)  # (N, D) @ (D, K) -> (N, K)
    r -= y if r.ndim == 1 else y[:, None]
    return r


def fmse(X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """Half mean squared error of ``X W + b`` against ``y``, per column, in float64.

    ``W`` is ``(D,)`` or ``(D, K)``; the result is a scalar array or ``(K,)``.
    """
    r = _residuals(X, y, W, b)
    return 0.5 * np.mean(r * r, axis=0)


def explode_limit(y_fit: np.ndarray) -> float:
    """The fMSE above which a trial has exploded: :data:`EXPLODE` times the training fMSE
    of the zero model, ``0.5 * mean(y ** 2)`` (infinite when every label is 0, so that
    only non-finite numbers count)."""
    start = 0.5 * float(np.mean(np.square(np.asarray(y_fit, dtype=np.float64))))
    return EXPLODE * start if start > 0 else float("inf")


@dataclass(frozen=True)
class Scores:
    """fMSE and MAE on the training, validation and test sets, ``(3,)`` or ``(3, K)``,
    and the standard errors of the validation fMSE and MAE over its images, ``(2,)`` or
    ``(2, K)``."""

    fmse: np.ndarray
    mae: np.ndarray
    se: np.ndarray


def _se(values: np.ndarray) -> np.ndarray:
    v = len(values)
    return (np.std(values, axis=0, ddof=1) / np.sqrt(v) if v > 1
            else np.full(values.shape[1:], np.nan))


def scores_of(arrays: Arrays, W: np.ndarray, b: np.ndarray | float) -> Scores:
    """Every figure of a model on the three sets. A fold's residuals are computed once
    over the shared pool, then its training and validation rows are picked out."""
    if arrays.fit_rows is None:
        r_fit = _residuals(arrays.X_fit, arrays.y_fit, W, b)
        r_val = _residuals(arrays.X_val, arrays.y_val, W, b)
    else:
        r = _residuals(arrays.X_fit, arrays.y_fit, W, b)  # (P, K) over the pool
        r_fit, r_val = r[arrays.fit_rows], r[arrays.val_rows]
    r_te = _residuals(arrays.X_te, arrays.y_te, W, b)
    sets = (r_fit, r_val, r_te)
    fmse_ = np.stack([0.5 * np.mean(r * r, axis=0) for r in sets])
    mae = np.stack([np.mean(np.abs(r), axis=0) for r in sets])
    se = np.stack([_se(0.5 * r_val * r_val), _se(np.abs(r_val))])
    return Scores(fmse_, mae, se)


def val_scores_of(arrays: Arrays, W: np.ndarray, b: np.ndarray | float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Validation fMSE and MAE only (learning curves between recorded epochs)."""
    if arrays.val_rows is None:
        r = _residuals(arrays.X_val, arrays.y_val, W, b)
    else:
        r = _residuals(arrays.X_val[arrays.val_rows], arrays.y_val[arrays.val_rows], W, b)
    return 0.5 * np.mean(r * r, axis=0), np.mean(np.abs(r), axis=0)


def objective(X_S: np.ndarray, y_S: np.ndarray, w: np.ndarray, b: float, l2: float) -> float:
    """The minibatch objective ``(1/(2|S|)) sum (X_S w + b - y_S)^2 + (l2/2) ||w||^2``."""
    r = X_S @ w + b - y_S
    return float(0.5 * np.mean(r * r) + 0.5 * l2 * np.dot(w, w))


def gradient(
    X_S: np.ndarray, r: np.ndarray, w: np.ndarray, l2: float
) -> tuple[np.ndarray, float]:
    """Gradient of :func:`objective` given residuals ``r = X_S w + b - y_S`` (or, for
    another loss, its derivative ``d(r)``): ``g_w = X_S^T r / |S| + l2 w`` (D,) and
    ``g_b = mean(r)``; the bias is not regularised."""
    return X_S.T @ r / X_S.dtype.type(len(r)) + l2 * w, r.mean()


def ridge_closed_form(X: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """The exact minimiser of ``(1/(2n)) ||X w + b - y||^2 + (l2/2) ||w||^2`` (bias free).

    Centring removes the bias: ``b = mean(y) - mean(X) w`` and
    ``(Xc^T Xc + n l2 I) w = Xc^T yc``, solved stably as the least-squares problem
    ``[Xc; sqrt(n l2) I] w = [yc; 0]`` (for ``l2 = 0``, the minimum-norm solution), or in
    the dual form when there are more features than rows.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    x_mean, y_mean = X.mean(axis=0), y.mean()
    A, t = X - x_mean, y - y_mean
    if l2 > 0 and d > n:
        # More features than rows: the same minimiser in its dual form,
        # w = Xc^T (Xc Xc^T + n l2 I)^-1 yc, costs an (n, n) system instead of (n + D, D)
        # (32 GiB for 60 images of 65,536 pixels).
        K = A @ A.T  # (n, D) @ (D, n) -> (n, n)
        K[np.diag_indices(n)] += n * l2
        w = A.T @ np.linalg.solve(K, t)
    elif l2 > 0:
        A = np.vstack([A, np.sqrt(n * l2) * np.eye(d)])  # (n + D, D)
        t = np.concatenate([t, np.zeros(d)])
        w = np.linalg.lstsq(A, t, rcond=None)[0]
    else:
        w = np.linalg.lstsq(A, t, rcond=None)[0]
    return w, float(y_mean - x_mean @ w)


def train_reference(
    arrays: Arrays, seed: int, batch_size: int, lr: float, l2: float, epochs: int,
    loss: str = "squared", on_epoch: Callable[[int], None] | None = None,
) -> Fit:
    """Train one trial with a plain per-minibatch loop: the statement of the contract.
    ``on_epoch(e)`` is called after each epoch (progress; it never changes a number)."""
    X, y = arrays.X_fit, arrays.y_fit
    dtype = X.dtype.type
    n, d = arrays.n_fit, X.shape[1]
    w = np.zeros(d, dtype=X.dtype)
    b = dtype(0.0)
    lr_, l2_ = dtype(lr), dtype(l2)
    limit = explode_limit(arrays.y_train())
    with np.errstate(all="ignore"):  # overflow is expected when a trial diverges
        for epoch in range(1, epochs + 1):
            order = epoch_order(seed, epoch, n)
            if arrays.fit_rows is not None:
                order = arrays.fit_rows[order]  # the fold's rows in the pool
            for start in range(0, n, batch_size):
                rows = order[start : start + batch_size]
                X_S = X[rows]  # (B, D)
                r = X_S @ w + b - y[rows].astype(X.dtype)  # (B,)
                # not (a <= b): a NaN compares false, so it counts as exploded too
                if not float(np.dot(r, r)) <= 2 * len(r) * limit:  # 0.5 mean(r^2) <= limit
                    return diverged_fit(d)
                g_w, g_b = gradient(X_S, derivative(loss, r), w, l2_)
                w = w - lr_ * g_w
                b = b - lr_ * g_b
            if on_epoch is not None:
                on_epoch(epoch)
        sc = scores_of(arrays, w, b)
    if not (np.isfinite(sc.fmse).all() and np.isfinite(w).all() and np.isfinite(b)
            and sc.fmse[0] <= limit):
        return diverged_fit(d)
    tr, va, te = (float(v) for v in sc.fmse)
    return Fit(w.astype(np.float64), float(b), (tr, va, te), False,
               (float(sc.se[0]), float(sc.se[1])), (float(sc.mae[0]), float(sc.mae[1]),
                                                    float(sc.mae[2])))


def diverged_fit(d: int) -> Fit:
    """The record of a diverged trial with D weights: everything NaN."""
    return Fit(np.full(d, np.nan), float("nan"), NAN3, True)
