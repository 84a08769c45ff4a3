"""Measured answers about batch size and learning rate, for linear regression. numpy only.

* :func:`top_eigenvalue`: the largest eigenvalue of the training objective's Hessian
  ``H = X~^T X~ / n + l2 diag(1, ..., 1, 0)`` (``X~ = [X, 1]``: the bias is a column, not
  regularised), by power iteration to a stated tolerance; full-batch gradient descent is
  stable for ``lr < 2 / lambda_max``.
* :func:`gradient_noise`: the per-example gradients' mean ``G`` and covariance trace
  ``tr(Sigma)`` (Sigma over the N examples, 1/N), the measured variance of minibatch
  gradients drawn without replacement against the law
  ``E|g_B - G|^2 = tr(Sigma) / B * (N - B) / (N - 1)``, its log-log slope, and the simple
  noise scale ``B_simple = tr(Sigma) / |G|^2`` (McCandlish et al., 2018).
* :func:`row_curvature`, :func:`range_top`, :func:`suggest_learning_rates`: a log-spaced
  learning-rate range for a batch size, topped by the step at which minibatch SGD
  converges fastest (Ma, Bassily & Belkin, 2018).
* :func:`scaling_rules`: the best learning rate per batch size of a run against the
  linear (lr proportional to B) and square-root rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from agereg.config import Distribution, Grid
from agereg.records import TrialRecord


@dataclass(frozen=True)
class Eigen:
    """``lambda_max`` of H, how many power iterations found it, and the relative
    residual ``|H v - lambda v| / lambda`` of the returned vector (the stated accuracy)."""

    lambda_max: float
    iterations: int
    residual: float

    @property
    def lr_limit(self) -> float:
        """Full-batch gradient descent on the quadratic diverges for ``lr > 2 / lambda``."""
        return 2.0 / self.lambda_max


def _hessian_matvec(X: np.ndarray, l2: float, v: np.ndarray) -> np.ndarray:
    """``H v`` without forming H: ``X~^T (X~ v) / n`` plus ``l2`` on the weights."""
    n, d = X.shape
    u = X @ v[:d].astype(X.dtype, copy=False) + v[d]  # (n, D) @ (D,) -> (n,), float64
    out = np.empty(d + 1)
    out[:d] = X.T @ u.astype(X.dtype, copy=False) / n + l2 * v[:d]
    out[d] = u.sum() / n
    return out


def top_eigenvalue(X: np.ndarray, l2: float = 0.0, tol: float = 1e-8,
                   max_iter: int = 10_000) -> Eigen:
    """The largest eigenvalue of the Hessian of ``fMSE + (l2/2)|w|^2`` on rows ``X``.

    Power iteration from the mean row (with bias 1), plus a seeded random part so that
    no eigenvector is missed (the mean row alone can be exactly another eigenvector): for
    images the top eigenvector is close to the mean row, so a few iterations suffice.
    Stops when the relative residual ``|H v - lambda v| / lambda`` is below ``tol``.
    float32 rows are multiplied as they are, in float32 (good to about 1e-6 relative: for
    ``tol`` of 1e-4 and above, where a float64 copy would cost more than the iterations);
    any other rows in float64.
    """
    X = np.asarray(X)
    if X.dtype != np.float32:
        X = np.asarray(X, dtype=np.float64)
    d = X.shape[1]
    mean = np.concatenate([X.mean(axis=0, dtype=np.float64), [1.0]])
    noise = np.random.default_rng(0).standard_normal(d + 1)
    v = mean + 0.1 * np.linalg.norm(mean) / np.sqrt(d + 1) * noise
    v /= np.linalg.norm(v)
    lam, residual = 0.0, np.inf
    w = _hessian_matvec(X, l2, v)
    for i in range(1, max_iter + 1):
        lam = float(v @ w)
        if lam <= 0:
            return Eigen(0.0, i, 0.0)
        residual = float(np.linalg.norm(w - lam * v) / lam)
        if residual <= tol:
            break
        v = w / np.linalg.norm(w)
        w = _hessian_matvec(X, l2, v)
    return Eigen(lam, i, residual)


def lr_notice(grid: Grid, lr_limit: float) -> str | None:
    """One line naming the learning rates of a grid at or above the full-batch limit, and
    the (learning rate, l2) pairs below it that l2 pushes over: with l2 the Hessian of the
    objective is ``X^T X / n + l2 I``, so full-batch descent diverges once
    ``lr (lambda_max + l2) >= 2`` (the step multiplies the weights by ``1 - lr l2`` on top
    of the data's pull). A grid of the absolute loss alone has no curvature: only
    ``lr l2 >= 2`` is named. None when every trial is below both limits."""
    def values(axis: tuple[float, ...] | Distribution) -> list[float]:
        return [axis.high] if isinstance(axis, Distribution) else list(axis)

    lrs, l2s = values(grid.learning_rate), values(grid.l2)
    if "squared" not in grid.loss:
        # the absolute loss has no curvature (its gradient is bounded): only l2 can make a
        # step overshoot, once lr l2 >= 2
        lr_limit, lam = math.inf, 0.0
    else:
        lam = 2.0 / lr_limit
    over = [lr for lr in lrs if lr >= lr_limit]
    pushed = [(lr, l2) for lr in lrs if lr < lr_limit for l2 in l2s if lr * (lam + l2) >= 2]
    said = []
    if over:
        shown = ", ".join(f"{lr:g}" for lr in over)
        said.append(f"learning rate {shown} >= 2 / lambda_max = {lr_limit:.3g} (the Hessian's "
                    "largest eigenvalue on the training rows): will diverge with full-batch "
                    "descent; minibatches diverge earlier (`agereg analyze` for a range)")
    if pushed:
        shown = ", ".join(f"{lr:g} with l2 {l2:g}" for lr, l2 in pushed[:3]) + (
            f" and {len(pushed) - 3} more" if len(pushed) > 3 else "")
        rule = (f"lr x (lambda_max + l2) >= 2 (lambda_max = {lam:.3g})" if lam else
                "lr x l2 >= 2 (the absolute loss adds no curvature)")
        said.append(f"learning rate {shown}: {rule}, so l2 makes full-batch descent "
                    "diverge; lower the l2 or the learning rate")
    return "; ".join(said) or None


# ---------------------------------------------------------------- gradient noise


@dataclass(frozen=True)
class Noise:
    """Gradient noise at one point: the full gradient's squared norm ``|G|^2``, the
    covariance trace ``tr(Sigma)``, ``B_simple``, and for each batch size the measured
    mean of ``|g_B - G|^2`` over ``draws`` minibatches and the law's value; ``slope`` is
    the fitted log-log slope of the measured variance against B (the law: about -1 while
    B << N)."""

    g_norm2: float
    trace: float
    b_simple: float
    batch_sizes: tuple[int, ...]
    measured: tuple[float, ...]
    law: tuple[float, ...]
    slope: float
    draws: int


def noise_law(trace: float, n: int, batch: int) -> float:
    """``E|g_B - G|^2`` for a minibatch of ``batch`` of ``n`` examples drawn without
    replacement: ``tr(Sigma) / B * (N - B) / (N - 1)``."""
    return trace / batch * (n - batch) / (n - 1)


def gradient_noise(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, l2: float,
                   seed: int, draws: int = 200,
                   batch_sizes: Sequence[int] | None = None,
                   on_draw: Callable[[int], None] | None = None) -> Noise:
    """Measure the minibatch gradient noise at (w, b) against the law.

    The l2 term ``l2 w`` is the same for every example, so it moves G but not the noise:
    ``g_i - G = [x_i r_i - mean(x r), r_i - mean(r)]``, and
    ``tr(Sigma) = mean_i r_i^2 (|x_i|^2 + 1) - |mean(x r)|^2 - mean(r)^2`` needs no
    (N, D) matrix of gradients. Each minibatch is drawn without replacement with
    ``np.random.default_rng(seed)``. ``on_draw(d)`` is told after each draw ``d`` (1, 2,
    ...), for a caller that reports progress.
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(y)
    r = X @ w + b - y  # (N,)
    g_w = X.T @ r / n  # (D,): the data part of G
    g_b = float(r.mean())
    row_norm2 = np.einsum("ij,ij->i", X, X)  # (N,)
    trace = float(np.mean(r * r * (row_norm2 + 1.0)) - g_w @ g_w - g_b * g_b)
    full = g_w + l2 * w
    g2 = float(full @ full + g_b * g_b)
    sizes = tuple(sorted(batch_sizes)) if batch_sizes is not None else tuple(
        2**k for k in range(11) if 2**k < n)
    # Draw d: one random permutation of the rows; its first B rows are the minibatch of
    # size B (without replacement, as the law assumes), for every B at once: the sums of
    # [x_i r_i, r_i] over those rows come from block sums between consecutive sizes.
    P = np.empty((n, X.shape[1] + 1), dtype=np.float32)  # per-example data gradients
    P[:, :-1] = X * r[:, None]
    P[:, -1] = r
    centre = np.concatenate([g_w, [g_b]])
    top = sizes[-1]
    # row s of M averages the first sizes[s] rows: one product gives every minibatch mean
    M = np.zeros((len(sizes), top), dtype=np.float32)
    for i, bsz in enumerate(sizes):
        M[i, :bsz] = 1.0 / bsz
    rng = np.random.default_rng(seed)
    totals = np.zeros(len(sizes))
    for d in range(1, draws + 1):
        rows = rng.permutation(n)[:top]
        means = M @ P[rows]  # (S, B) @ (B, D + 1) -> (S, D + 1), float32 sums
        diff = means.astype(np.float64) - centre
        totals += np.einsum("ij,ij->i", diff, diff)
        if on_draw is not None:
            on_draw(d)
    measured = list(totals / draws)
    law = tuple(noise_law(trace, n, bsz) for bsz in sizes)
    if len(sizes) >= 2 and all(m > 0 for m in measured):
        slope = float(np.polyfit(np.log(sizes), np.log(measured), 1)[0])
    else:
        slope = math.nan
    return Noise(g2, trace, trace / g2 if g2 > 0 else math.inf, sizes, tuple(measured), law,
                 slope, draws)


def row_curvature(X: np.ndarray) -> float:
    """``beta = max_i |x~_i|^2 = max_i (|x_i|^2 + 1)``: the largest curvature of one
    example's loss (its Hessian ``x~ x~^T`` has that one non-zero eigenvalue)."""
    return float(np.einsum("ij,ij->i", X, X).max()) + 1.0


def range_top(lambda_max: float, beta: float, batch_size: int, n: int) -> float:
    """The largest learning rate of the suggested range: ``B / (beta + (B - 1) lambda_max)``,
    the step at which minibatch SGD on least squares converges fastest in Ma, Bassily &
    Belkin's analysis (2018, "The Power of Interpolation"): ``1 / beta`` for single
    examples, rising to ``1 / lambda_max`` as B grows. A batch of all ``n`` rows or more is
    one full batch an epoch, without minibatch noise: ``1 / lambda_max``, half the limit."""
    if batch_size >= n:
        return 1.0 / lambda_max
    return batch_size / (beta + (batch_size - 1) * lambda_max)


def suggest_learning_rates(top: float, points: int = 5, decades: float = 3.0) -> list[float]:
    """``points`` log-spaced learning rates from ``top`` down ``decades`` decades, rounded
    to 2 significant digits."""
    values = np.geomspace(top * 10.0 ** -decades, top, points)
    return [float(f"{v:.2g}") for v in values]


# ---------------------------------------------------------------- scaling rules


@dataclass(frozen=True)
class Scaling:
    """Per batch size of a run, the best learning rate; the exponent ``alpha`` of a fit
    ``lr ~ B^alpha`` (1: the linear rule, 0.5: the square-root rule), and the verdict."""

    batch_sizes: tuple[int, ...]
    best_lr: tuple[float, ...]
    alpha: float | None
    verdict: str


def scaling_rules(records: Sequence[TrialRecord], by: str = "fmse") -> Scaling:
    """Compare the run's best learning rate per batch size with the two rules. "cannot
    tell" when the learning rates tried are too coarse: their log spacing at a batch size
    is wider than the gap between what the two rules predict across the batch sizes."""
    from agereg.records import rank

    best: dict[int, TrialRecord] = {}
    for r in rank(list(records), by):
        if r.status.has_losses() and r.batch_size not in best:
            best[r.batch_size] = r
    sizes = tuple(sorted(best))
    lrs = tuple(best[bs].learning_rate for bs in sizes)
    if len(sizes) < 2:
        return Scaling(sizes, lrs, None, "cannot tell: the run has finished trials at fewer "
                                         "than two batch sizes")
    alpha = float(np.polyfit(np.log(sizes), np.log(lrs), 1)[0])
    # how far apart the two rules are over the batch sizes tried, in log lr
    rules_gap = 0.5 * math.log(sizes[-1] / sizes[0])
    tried = sorted({r.learning_rate for r in records if r.learning_rate > 0})
    logs = np.diff(np.log(tried)) if len(tried) > 1 else np.array([math.inf])
    spacing = float(np.median(logs))
    if spacing > rules_gap:
        apart = spacing / math.log(10)
        verdict = (f"cannot tell: the learning rates tried are {apart:.2g} "
                   f"decade{'s' * (f'{apart:.2g}' != '1')} apart, wider than the "
                   f"{rules_gap / math.log(10):.2g} decades "
                   "between the linear and square-root rules over these batch sizes; try "
                   "learning rates closer together")
    elif alpha < 0.25:  # nearer a constant than either rule
        verdict = (f"neither rule: the best lr barely grows with B (as B^{alpha:.2f}), as "
                   "when the curvature, not the gradient noise, bounds it (the fastest step "
                   "B / (beta + (B - 1) lambda_max) levels off at 1 / lambda_max)")
    else:
        closer = "linear" if abs(alpha - 1.0) < abs(alpha - 0.5) else "square-root"
        verdict = f"closer to the {closer} rule (best lr grows as B^{alpha:.2f})"
    return Scaling(sizes, lrs, alpha, verdict)
