"""Test-set metrics of a trained linear model, their uncertainty and reference points.

numpy only: no I/O, no printing. Everything here takes arrays and returns numbers or
frozen dataclasses, so the known answers in ``tests/test_evaluate.py`` can pin it down.

* :func:`regression_metrics`, :func:`mean_baseline`, :func:`median_baseline`: fMSE,
  RMSE, MAE, R^2;
* :func:`cumulative_score`, :func:`error_by_decade`: the figures of age estimation;
* :func:`bootstrap_test`: a seeded, vectorised percentile bootstrap of the test fMSE and,
  on the same resamples, of the paired difference against a second model;
* :func:`ridge_optimum`: the exact minimiser of the SGD objective (closed-form ridge);
* :func:`gaussian_noise`: the maximum-likelihood Gaussian noise model of the residuals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agereg.engine import Arrays, Fit, fmse, objective, ridge_closed_form

# Bound on the (resamples x images) entries gathered at once: 2^20 float64 values per
# column are 8 MB, so a chunk stays small whatever the test set size.
_CHUNK_ENTRIES = 1 << 20


def predict(X: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """``X w + b`` in float64: ``(N, D) @ (D,) -> (N,)``."""
    return np.asarray(X @ np.asarray(w, dtype=X.dtype), dtype=np.float64) + b


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """fMSE (half the mean squared error), RMSE and MAE in years, and R^2."""
    r = pred - y
    mse = float(np.mean(r * r))
    total = float(np.sum((y - y.mean()) ** 2))
    return {
        "fmse": 0.5 * mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(r))),
        "r2": float(1.0 - np.sum(r * r) / total) if total > 0 else float("nan"),
    }


def mean_baseline(y_train: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Metrics of predicting the training mean for every test image."""
    return regression_metrics(y_test, np.full_like(y_test, float(np.mean(y_train))))


def median_baseline(y_train: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Metrics of predicting the training median for every test image: the constant with
    the lowest MAE on the training labels, as the mean has the lowest fMSE."""
    return regression_metrics(y_test, np.full_like(y_test, float(np.median(y_train))))


CS_THETAS = tuple(range(21))  # years


def cumulative_score(y: np.ndarray, pred: np.ndarray,
                     thetas: Sequence[int] = CS_THETAS) -> list[float]:
    """CS(theta): the share of images whose absolute error is at most ``theta`` years
    (Geng, Zhou & Smith-Miles, TPAMI 2007), for each theta."""
    err = np.abs(np.asarray(pred, dtype=np.float64) - y)  # (M,)
    return [float(np.mean(err <= t)) for t in thetas]


def error_by_decade(y: np.ndarray, pred: np.ndarray) -> list[dict[str, float | int | str]]:
    """Per decade of true age (0-9, 10-19, ...; a negative age joins 0-9): the count, the
    MAE and the mean signed error (prediction minus truth: positive means too old)."""
    y = np.asarray(y, dtype=np.float64)
    r = np.asarray(pred, dtype=np.float64) - y
    decade = np.maximum(np.floor(y / 10), 0).astype(np.int64)  # (M,)
    out: list[dict[str, float | int | str]] = []
    for dec in np.unique(decade):
        sel = decade == dec
        out.append({"decade": f"{10 * dec}-{10 * dec + 9}", "count": int(sel.sum()),
                    "mae": float(np.mean(np.abs(r[sel]))),
                    "mean_signed_error": float(np.mean(r[sel]))})
    return out


# ---------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapDraws:
    """Column means of ``n`` resamples: ``means[i, k]`` is the mean of column ``k`` over
    resample ``i``; ``left_out_share`` is the average share of rows a resample misses."""

    means: np.ndarray  # (B, K)
    left_out_share: float


def bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> BootstrapDraws:
    """Means of the columns of ``values`` (M, K) over ``n_boot`` resamples of its rows.

    Resample ``i`` draws M row indices with replacement; all columns share it, which makes
    a bootstrap of column differences *paired*. Indices come from
    ``np.random.default_rng(seed)`` as a ``(B, M)`` matrix, generated and used in chunks of
    at most ``_CHUNK_ENTRIES`` entries (a function of M only, so results are deterministic).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    m = values.shape[0]
    if n_boot < 1 or m < 1:
        raise ValueError(f"need n_boot >= 1 and at least one row, got {n_boot} and {m}")
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ENTRIES // m)
    means = np.empty((n_boot, values.shape[1]))
    missed = 0
    for lo in range(0, n_boot, rows):
        n = min(rows, n_boot - lo)
        idx = rng.integers(0, m, size=(n, m))  # (b, M) row indices
        # how often each resample drew each row: its mean is a product, (b, M) @ (M, K)
        counts = np.bincount((np.arange(n)[:, None] * m + idx).ravel(),
                             minlength=n * m).reshape(n, m)
        means[lo : lo + n] = (counts @ values) / m
        missed += int(np.count_nonzero(counts == 0))
    return BootstrapDraws(means, missed / (m * n_boot))


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap draws (linear interpolation)."""
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(draws, [tail, 100.0 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PairedBootstrap:
    """Bootstrap of ``fMSE(a) - fMSE(b)`` on shared resamples of the same test images.

    Negative differences favour ``a``; ``share_better`` is the share of resamples in
    which ``a`` has the strictly lower fMSE."""

    observed_difference: float
    mean_difference: float
    difference_ci: tuple[float, float]
    share_better: float


@dataclass(frozen=True)
class BootstrapResult:
    """Percentile bootstrap of the test fMSE of model ``a`` (and, optionally, of its paired
    difference to model ``b``)."""

    n_resamples: int
    seed: int
    level: float
    fmse: float
    fmse_ci: tuple[float, float]
    left_out_share: float
    paired: PairedBootstrap | None


def bootstrap_test(
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray | None,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> BootstrapResult:
    """Bootstrap the test fMSE of ``pred_a`` and, if ``pred_b`` is given, the difference
    ``fMSE(a) - fMSE(b)`` on the very same resamples (a paired bootstrap)."""
    sq_a = 0.5 * (pred_a - y) ** 2  # (M,) per-image fMSE contributions
    cols = [sq_a]
    if pred_b is not None:
        cols.append(sq_a - 0.5 * (pred_b - y) ** 2)  # exactly 0 where the models agree
    draws = bootstrap_means(np.stack(cols, axis=1), n_boot, seed)  # (B, 1 or 2)
    paired = None
    if pred_b is not None:
        diff = draws.means[:, 1]
        paired = PairedBootstrap(
            observed_difference=float(np.mean(cols[1])),
            mean_difference=float(np.mean(diff)),
            difference_ci=percentile_interval(diff, level),
            share_better=float(np.mean(diff < 0)),
        )
    return BootstrapResult(
        n_resamples=n_boot,
        seed=seed,
        level=level,
        fmse=float(np.mean(sq_a)),
        fmse_ci=percentile_interval(draws.means[:, 0], level),
        left_out_share=draws.left_out_share,
        paired=paired,
    )


# ---------------------------------------------------------------- reference optimum


@dataclass(frozen=True)
class RidgeOptimum:
    """The exact minimiser of the SGD objective for one l2, next to an SGD fit of it.

    ``fit`` holds the closed-form parameters and their (train, val, test) fMSE in float64;
    ``objective_*`` are the training objective ``fMSE + (l2/2) ||w||^2`` at each solution,
    so ``objective_sgd - objective_ridge >= 0`` up to rounding."""

    l2: float
    fit: Fit
    objective_ridge: float
    objective_sgd: float


@dataclass(frozen=True)
class RidgeBasis:
    """One eigendecomposition of the centred training matrix ``A = X - mean(X)`` that
    gives the exact ridge solution for every l2 at the cost of a matrix-vector product:

    * primal (n >= D): ``A^T A = V diag(s) V^T``, ``c = V^T A^T yc``, and
      ``w(l2) = V (c / (s + n l2))``;
    * dual (D > n): ``A A^T = U diag(s) U^T``, ``c = U^T yc``, ``B = A^T U``, and
      ``w(l2) = B (c / (s + n l2))``;

    with ``b = mean(y) - mean(X) w``. For ``l2 = 0`` the directions with ``s`` below
    ``1e-10 * s.max()`` are dropped: the minimum-norm least-squares solution."""

    M: np.ndarray  # (D, r): V (primal) or A^T U (dual)
    s: np.ndarray  # (r,) eigenvalues
    c: np.ndarray  # (r,)
    x_mean: np.ndarray  # (D,)
    y_mean: float
    n: int

    @classmethod
    def of(cls, X: np.ndarray, y: np.ndarray) -> RidgeBasis:
        return cls.decompose(gram(X, y))

    @classmethod
    def decompose(cls, g: Gram) -> RidgeBasis:
        """The eigendecomposition of ``g.G``: the expensive step."""
        n, d = g.A.shape
        s, V = np.linalg.eigh(g.G)  # V (D, D) primal, U (n, n) dual
        if n >= d:
            return cls(V, s, V.T @ (g.A.T @ g.t), g.x_mean, g.y_mean, n)
        return cls(g.A.T @ V, s, V.T @ g.t, g.x_mean, g.y_mean, n)

    def solve(self, l2s: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Weights ``(D, L)`` and biases ``(L,)`` for each l2."""
        l2 = np.asarray(l2s, dtype=np.float64)
        s = np.clip(self.s, 0.0, None)[:, None]  # (r, 1): rounding can make 0 negative
        denom = s + self.n * l2[None, :]  # (r, L)
        keep = denom > 1e-10 * max(float(s.max()), 1e-300)
        coef = np.where(keep, self.c[:, None] / np.where(keep, denom, 1.0), 0.0)
        W = self.M @ coef  # (D, r) @ (r, L) -> (D, L)
        return W, self.y_mean - self.x_mean @ W


@dataclass(frozen=True)
class Gram:
    """The centred training matrix ``A``, labels ``t`` and the Gram matrix ``G`` that
    :class:`RidgeBasis` decomposes: ``A^T A`` (n >= D) or ``A A^T``."""

    A: np.ndarray
    t: np.ndarray
    G: np.ndarray
    x_mean: np.ndarray
    y_mean: float


def gram(X: np.ndarray, y: np.ndarray) -> Gram:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x_mean, y_mean = X.mean(axis=0), float(y.mean())
    A, t = X - x_mean, y - y_mean
    return Gram(A, t, A.T @ A if A.shape[0] >= A.shape[1] else A @ A.T, x_mean, y_mean)


@dataclass(frozen=True)
class RidgePath:
    """Validation and test fMSE of the exact ridge solution over a range of l2."""

    l2: tuple[float, ...]
    val_fmse: tuple[float, ...]
    test_fmse: tuple[float, ...]

    @property
    def best(self) -> int:
        """Index of the l2 with the lowest validation fMSE."""
        return int(np.nanargmin(self.val_fmse))


def ridge_path(basis: RidgeBasis, arrays: Arrays, l2s: Sequence[float]) -> RidgePath:
    W, b = basis.solve(l2s)
    val = fmse(np.asarray(arrays.X_val, dtype=np.float64), arrays.y_val, W, b)
    test = fmse(np.asarray(arrays.X_te, dtype=np.float64), arrays.y_te, W, b)
    return RidgePath(tuple(float(v) for v in l2s), tuple(float(v) for v in val),
                     tuple(float(v) for v in test))


PER_DECADE = 4  # l2 values a decade on a ridge path


def _log_spaced(a: float, b: float, per_decade: int = PER_DECADE) -> list[float]:
    """l2 values from ``10^a`` to ``10^b`` (either way round), ``per_decade`` a decade,
    rounded to 6 significant digits."""
    grid = np.logspace(a, b, round(abs(b - a) * per_decade) + 1)
    return [float(f"{v:.6g}") for v in grid]


def path_l2s(searched: Sequence[float], per_decade: int = PER_DECADE, beyond: float = 2.0
             ) -> list[float]:
    """l2 values for a ridge path: log-spaced over the searched positive range extended
    ``beyond`` decades each side (1e-6 ... 1e2 without any), every searched value, and 0
    when it was searched."""
    pos = [v for v in searched if v > 0]
    lo, hi = (min(pos), max(pos)) if pos else (1e-6, 1e2)
    a, b = np.log10(lo) - beyond, np.log10(hi) + beyond
    return sorted(set(_log_spaced(a, b, per_decade)) | {float(v) for v in searched})


def extended_ridge_path(basis: RidgeBasis, arrays: Arrays, l2s: Sequence[float],
                        extensions: int = 3, decades: int = 2) -> RidgePath:
    """:func:`ridge_path` over ``l2s``, extended past an end while the lowest validation
    fMSE lies at that end (a best l2 at an end says little): ``decades`` more decades,
    spaced as :func:`path_l2s`, at most ``extensions`` times. Each l2 costs one product
    with the basis. l2 = 0 is an end that cannot be passed."""
    values = sorted(float(v) for v in l2s)
    path = ridge_path(basis, arrays, values)
    for _ in range(extensions):
        i, positive = path.best, [v for v in values if v > 0]
        if 0 < i < len(values) - 1 or not positive or values[i] == 0.0:
            break
        up = i == len(values) - 1
        a = float(np.log10(positive[-1] if up else positive[0]))
        more = _log_spaced(a, a + decades if up else a - decades)[1:]  # past the end
        values = sorted(set(values) | set(more))
        path = ridge_path(basis, arrays, values)
    return path


def ridge_optimum(arrays: Arrays, l2: float, sgd: Fit,
                  basis: RidgeBasis | None = None) -> RidgeOptimum:
    """Closed-form ridge on ``arrays.X_fit`` (float64, bias unregularised) for ``l2``,
    from ``basis`` when given (the same solution, without another solve).

    With ``l2 = 0`` this is the minimum-norm least-squares solution, which may overfit.
    """
    X = np.asarray(arrays.X_fit, dtype=np.float64)
    if basis is None:
        w, b = ridge_closed_form(X, arrays.y_fit, l2)
    else:
        W, bs = basis.solve([l2])
        w, b = W[:, 0], float(bs[0])
    losses = (
        float(fmse(X, arrays.y_fit, w, b)),
        float(fmse(np.asarray(arrays.X_val, dtype=np.float64), arrays.y_val, w, b)),
        float(fmse(np.asarray(arrays.X_te, dtype=np.float64), arrays.y_te, w, b)),
    )
    return RidgeOptimum(
        l2=l2,
        fit=Fit(w, b, losses, False),
        objective_ridge=objective(X, arrays.y_fit, w, b, l2),
        objective_sgd=objective(X, arrays.y_fit, sgd.w, sgd.b, l2),
    )


# ---------------------------------------------------------------- noise model


@dataclass(frozen=True)
class GaussianNoise:
    """``y ~ N(y_hat, sigma2)`` with the maximum-likelihood ``sigma2`` of the training
    residuals (``= 2 * train fMSE``) and the average test log-likelihood per image."""

    sigma2: float
    test_avg_loglik: float


def gaussian_noise(
    y_train: np.ndarray, pred_train: np.ndarray, y_test: np.ndarray, pred_test: np.ndarray
) -> GaussianNoise:
    """Fit ``sigma2 = mean(r_train^2)`` and score the test set:
    ``mean(-0.5 log(2 pi sigma2) - r_test^2 / (2 sigma2))``. NaN if ``sigma2`` is 0."""
    r_train = pred_train - y_train
    r_test = pred_test - y_test
    sigma2 = float(np.mean(r_train * r_train))
    if not (np.isfinite(sigma2) and sigma2 > 0):
        return GaussianNoise(sigma2, float("nan"))
    loglik = -0.5 * np.log(2 * np.pi * sigma2) - r_test * r_test / (2 * sigma2)  # (M,)
    return GaussianNoise(sigma2, float(np.mean(loglik)))
