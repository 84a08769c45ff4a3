"""Known answers for the evaluation core: metrics, bootstrap, ridge optimum, noise model."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agereg import evaluate as ev
from agereg.engine import Arrays, Fit, fmse, objective


def test_regression_metrics_by_hand():
    y = np.array([1.0, 2.0, 3.0])
    m = ev.regression_metrics(y, np.array([1.0, 2.0, 5.0]))  # residuals 0, 0, 2
    assert m["fmse"] == pytest.approx(2 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["r2"] == pytest.approx(1 - 4 / 2)
    assert ev.mean_baseline(np.array([0.0, 4.0]), y)["fmse"] == pytest.approx(
        0.5 * np.mean((y - 2.0) ** 2))


# ---------------------------------------------------------------- bootstrap


def test_percentile_interval_by_hand():
    assert ev.percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert ev.percentile_interval(np.arange(101.0), level=0.5) == pytest.approx((25.0, 75.0))


def test_bootstrap_means_equal_a_plain_loop_over_the_same_indices():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 2))
    B = 300
    draws = ev.bootstrap_means(values, B, seed=11)
    assert B * 40 <= ev._CHUNK_ENTRIES  # a single chunk: the indices below are the same
    idx = np.random.default_rng(11).integers(0, 40, size=(B, 40))
    expected = np.array([values[i].mean(axis=0) for i in idx])
    # a product sums in another order than a mean: equal to rounding (means near 0 too)
    np.testing.assert_allclose(draws.means, expected, rtol=1e-12, atol=1e-15)
    left_out = np.mean([1 - len(set(i.tolist())) / 40 for i in idx])
    assert draws.left_out_share == pytest.approx(left_out, rel=1e-12)


def test_bootstrap_in_chunks_equals_a_loop_over_the_same_chunks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ev, "_CHUNK_ENTRIES", 7 * 30 + 5)  # 7 resamples per chunk, 43 in all
    values = np.random.default_rng(1).normal(size=(30, 1))
    draws = ev.bootstrap_means(values, 43, seed=2)
    rng = np.random.default_rng(2)
    idx = np.concatenate([rng.integers(0, 30, size=(min(7, 43 - lo), 30))
                          for lo in range(0, 43, 7)])  # (43, 30), drawn chunk by chunk
    np.testing.assert_allclose(draws.means[:, 0], [values[i, 0].mean() for i in idx],
                               rtol=1e-12, atol=1e-15)
    left_out = np.mean([1 - len(set(i.tolist())) / 30 for i in idx])
    assert draws.left_out_share == pytest.approx(left_out, rel=1e-12)


def test_bootstrap_ci_covers_the_true_fmse_at_the_nominal_rate():
    """Residuals ~ N(0, s^2): the population fMSE is s^2 / 2. Over 200 independent test
    sets the 95% interval must cover it about 95% of the time, and a 50% one about half."""
    s, m, reps = 3.0, 100, 200
    truth = s * s / 2
    covered95 = covered50 = 0
    for rep in range(reps):
        resid = np.random.default_rng([7, rep]).normal(0.0, s, size=m)
        y = np.zeros(m)
        r95 = ev.bootstrap_test(y, resid, None, 1000, seed=rep)
        r50 = ev.bootstrap_test(y, resid, None, 1000, seed=rep, level=0.5)
        covered95 += r95.fmse_ci[0] <= truth <= r95.fmse_ci[1]
        covered50 += r50.fmse_ci[0] <= truth <= r50.fmse_ci[1]
        assert r95.fmse == pytest.approx(0.5 * np.mean(resid**2))
        assert r95.fmse_ci[0] <= r95.fmse <= r95.fmse_ci[1]
    assert 0.90 <= covered95 / reps <= 0.98
    assert 0.35 <= covered50 / reps <= 0.65


def test_left_out_share_is_close_to_one_over_e():
    m = 1000
    res = ev.bootstrap_test(np.zeros(m), np.ones(m), None, 1000, seed=0)
    assert res.left_out_share == pytest.approx((1 - 1 / m) ** m, abs=0.002)
    assert res.left_out_share == pytest.approx(1 / math.e, abs=0.003)


def test_paired_bootstrap_of_a_model_against_itself_is_exactly_zero():
    rng = np.random.default_rng(1)
    y, pred = rng.normal(40, 10, size=200), rng.normal(40, 10, size=200)
    res = ev.bootstrap_test(y, pred, pred.copy(), 500, seed=3)
    assert res.paired is not None
    assert res.paired.observed_difference == 0.0
    assert res.paired.mean_difference == 0.0
    assert res.paired.difference_ci == (0.0, 0.0)
    assert res.paired.share_better == 0.0  # a tie is not "better"


def test_paired_bootstrap_sees_a_clearly_better_model():
    rng = np.random.default_rng(4)
    y = rng.normal(40, 10, size=300)
    good, bad = y + rng.normal(0, 1, size=300), y + rng.normal(0, 5, size=300)
    res = ev.bootstrap_test(y, good, bad, 1000, seed=0)
    p = res.paired
    assert p is not None
    expected = ev.regression_metrics(y, good)["fmse"] - ev.regression_metrics(y, bad)["fmse"]
    assert p.observed_difference == pytest.approx(expected, rel=1e-12)
    assert p.mean_difference == pytest.approx(expected, rel=0.05)
    assert p.difference_ci[1] < 0 and p.share_better == 1.0
    # the winner's own interval is the one computed without a partner: same resamples
    alone = ev.bootstrap_test(y, good, None, 1000, seed=0)
    assert alone.fmse_ci == pytest.approx(res.fmse_ci, rel=1e-12)


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(5)
    y, pred = rng.normal(size=50), rng.normal(size=50)
    a = ev.bootstrap_test(y, pred, None, 200, seed=9)
    assert a == ev.bootstrap_test(y, pred, None, 200, seed=9)
    assert a.fmse_ci != ev.bootstrap_test(y, pred, None, 200, seed=10).fmse_ci


# ---------------------------------------------------------------- ridge optimum


def _arrays(n: int, d: int, seed: int = 0) -> Arrays:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + 20, d)) + 2.0
    y = X @ rng.normal(size=d) + 30 + rng.normal(size=n + 20)
    Xte, yte = rng.normal(size=(15, d)) + 2.0, rng.normal(30, 5, size=15)
    return Arrays(X[:n], y[:n], X[n:], y[n:], Xte, yte)


def test_ridge_optimum_equals_the_normal_equations_with_unregularised_bias():
    a = _arrays(n=50, d=6)
    l2 = 0.3
    sgd = Fit(np.zeros(6), 30.0, (0.0, 0.0, 0.0), False)
    opt = ev.ridge_optimum(a, l2, sgd)
    n = len(a.y_fit)
    A = np.c_[a.X_fit, np.ones(n)]  # (n, D + 1): the bias is the last column
    P = np.diag([n * l2] * 6 + [0.0])  # no penalty on the bias
    direct = np.linalg.solve(A.T @ A + P, A.T @ a.y_fit)
    np.testing.assert_allclose(np.r_[opt.fit.w, opt.fit.b], direct, rtol=1e-10)
    for X, y, got in zip((a.X_fit, a.X_val, a.X_te), (a.y_fit, a.y_val, a.y_te),
                         opt.fit.losses, strict=True):
        assert got == pytest.approx(float(fmse(X, y, direct[:6], direct[6])), rel=1e-10)
    assert opt.objective_ridge == pytest.approx(
        objective(a.X_fit, a.y_fit, direct[:6], direct[6], l2), rel=1e-12)
    assert opt.objective_sgd == pytest.approx(objective(a.X_fit, a.y_fit, sgd.w, sgd.b, l2))
    assert opt.objective_sgd > opt.objective_ridge  # the optimum is optimal


def test_ridge_optimum_at_l2_zero_is_the_min_norm_interpolant():
    a = _arrays(n=10, d=25)  # more features than rows: least squares interpolates
    opt = ev.ridge_optimum(a, 0.0, Fit(np.zeros(25), 0.0, (0.0, 0.0, 0.0), False))
    Xc = a.X_fit - a.X_fit.mean(axis=0)
    w = np.linalg.pinv(Xc) @ (a.y_fit - a.y_fit.mean())
    np.testing.assert_allclose(opt.fit.w, w, rtol=1e-8, atol=1e-10)
    assert opt.fit.losses[0] < 1e-20 < opt.fit.losses[1]  # overfits, as expected


def test_ridge_optimum_accepts_float32_inputs():
    a = _arrays(n=40, d=5)
    a32 = Arrays(*(x.astype(np.float32) if i % 2 == 0 else x
                   for i, x in enumerate((a.X_fit, a.y_fit, a.X_val, a.y_val, a.X_te, a.y_te))))
    fit = Fit(np.zeros(5), 0.0, (0.0, 0.0, 0.0), False)
    opt = ev.ridge_optimum(a32, 0.1, fit)
    assert opt.fit.w.dtype == np.float64
    ref = ev.ridge_optimum(Arrays(*(np.asarray(x, np.float64) for x in (
        a32.X_fit, a32.y_fit, a32.X_val, a32.y_val, a32.X_te, a32.y_te))), 0.1, fit)
    np.testing.assert_array_equal(opt.fit.w, ref.fit.w)


# ---------------------------------------------------------------- noise model


def test_gaussian_noise_mle_variance_and_test_loglik():
    rng = np.random.default_rng(6)
    y_tr, p_tr = rng.normal(40, 10, size=80), rng.normal(40, 10, size=80)
    y_te, p_te = rng.normal(40, 10, size=30), rng.normal(40, 10, size=30)
    g = ev.gaussian_noise(y_tr, p_tr, y_te, p_te)
    assert g.sigma2 == pytest.approx(np.mean((p_tr - y_tr) ** 2), rel=1e-14)
    assert g.sigma2 == pytest.approx(2 * ev.regression_metrics(y_tr, p_tr)["fmse"], rel=1e-14)
    r = p_te - y_te
    by_hand = np.mean([-0.5 * math.log(2 * math.pi * g.sigma2) - v * v / (2 * g.sigma2)
                       for v in r])
    assert g.test_avg_loglik == pytest.approx(by_hand, rel=1e-12)


def test_gaussian_noise_on_its_own_training_set_and_the_mle_property():
    rng = np.random.default_rng(7)
    y, pred = rng.normal(size=60), rng.normal(size=60)
    g = ev.gaussian_noise(y, pred, y, pred)
    # scored on the rows it was fitted on, the average log-likelihood is closed-form
    assert g.test_avg_loglik == pytest.approx(-0.5 * math.log(2 * math.pi * g.sigma2) - 0.5)
    r2 = (pred - y) ** 2

    def loglik(s2: float) -> float:
        return float(np.mean(-0.5 * np.log(2 * np.pi * s2) - r2 / (2 * s2)))

    for factor in (0.8, 0.95, 1.05, 1.25):  # sigma2 maximises the training likelihood
        assert loglik(g.sigma2) > loglik(g.sigma2 * factor)


def test_gaussian_noise_of_a_perfect_fit_has_no_loglik():
    y = np.arange(5.0)
    g = ev.gaussian_noise(y, y.copy(), y, y + 1)
    assert g.sigma2 == 0.0 and math.isnan(g.test_avg_loglik)


# ---------------------------------------------------------------- the ridge path


@pytest.mark.parametrize("n, d", [(40, 6), (10, 25)])  # primal and dual
def test_ridge_basis_equals_the_closed_form_for_every_l2(n: int, d: int):
    from agereg.engine import ridge_closed_form
    from agereg.evaluate import RidgeBasis

    rng = np.random.default_rng(n)
    X, y = rng.normal(size=(n, d)), rng.normal(size=n)
    basis = RidgeBasis.of(X, y)
    l2s = [0.0, 1e-4, 0.3, 10.0]
    W, b = basis.solve(l2s)
    for j, l2 in enumerate(l2s):
        w0, b0 = ridge_closed_form(X, y, l2)  # lstsq / dual solve: independent
        np.testing.assert_allclose(W[:, j], w0, atol=1e-10)
        assert b[j] == pytest.approx(b0, abs=1e-10)


def test_ridge_path_picks_the_l2_with_the_lowest_validation_loss():
    from agereg.engine import Arrays, fmse, ridge_closed_form
    from agereg.evaluate import RidgeBasis, path_l2s, ridge_path

    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 12))
    y = X @ rng.normal(size=12) + rng.normal(size=90) * 3
    a = Arrays(X[:40], y[:40], X[40:70], y[40:70], X[70:], y[70:])
    l2s = path_l2s([0.0, 1e-3, 1e-1])
    assert l2s[0] == 0.0 and 1e-5 in l2s and 10.0 in l2s  # searched range +- 2 decades
    path = ridge_path(RidgeBasis.of(a.X_fit, a.y_fit), a, l2s)
    direct = [float(fmse(a.X_val, a.y_val, *ridge_closed_form(a.X_fit, a.y_fit, l2)))
              for l2 in l2s]
    np.testing.assert_allclose(path.val_fmse, direct, rtol=1e-9)
    assert path.best == int(np.argmin(direct))


def test_a_ridge_path_whose_best_is_at_an_end_goes_on_past_it():
    from agereg.engine import Arrays, fmse, ridge_closed_form
    from agereg.evaluate import RidgeBasis, extended_ridge_path, ridge_path

    rng = np.random.default_rng(3)
    # a weak signal, small rows: heavy l2 wins, beyond the first path's end (1e-1)
    X = rng.normal(size=(60, 30))
    y = 0.05 * X[:, 0] + rng.normal(size=60)
    a = Arrays(X[:20], y[:20], X[20:45], y[20:45], X[45:], y[45:])
    basis = RidgeBasis.of(a.X_fit, a.y_fit)
    short = [1e-3, 1e-2, 1e-1]
    assert ridge_path(basis, a, short).best == 2  # at the end
    path = extended_ridge_path(basis, a, short)
    assert max(path.l2) > 1e-1 and 0 < path.best < len(path.l2) - 1  # found inside
    direct = [float(fmse(a.X_val, a.y_val, *ridge_closed_form(a.X_fit, a.y_fit, l2)))
              for l2 in path.l2]
    np.testing.assert_allclose(path.val_fmse, direct, rtol=1e-8)
    assert path.best == int(np.argmin(direct))
    # an interior best is left as it is; l2 = 0 is an end that cannot be passed
    inner = [1e-3, float(path.l2[path.best]), 1e9]
    assert extended_ridge_path(basis, a, inner).l2 == ridge_path(basis, a, inner).l2
    assert extended_ridge_path(basis, a, [0.0]).l2 == (0.0,)


def test_the_ridge_basis_is_cached_and_a_damaged_cache_is_recomputed(tmp_path: Path):
    from agereg.basis import ridge_basis_beside
    from agereg.engine import Arrays
    from agereg.evaluate import RidgeBasis

    def ridge_basis(run_dir: Path, rows: Arrays, kind: str, log: Callable[[str], None]
                    ) -> RidgeBasis:
        with ridge_basis_beside(run_dir, rows, kind, log) as basis:
            return basis()

    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(30, 5)), rng.normal(size=30)
    rows = Arrays(X, y, X, y, X, y)
    said: list[str] = []
    first = ridge_basis(tmp_path, rows, "train", said.append)
    assert len(said) == 1 and (tmp_path / "ridge_basis_train.npz").is_file()
    again = ridge_basis(tmp_path, rows, "train", said.append)
    assert len(said) == 1 and np.array_equal(again.M, first.M)  # from the cache
    other = Arrays(X, y + 1, X, y, X, y)  # other labels: the cache does not match
    ridge_basis(tmp_path, other, "train", said.append)
    assert len(said) == 2
    cache = tmp_path / "ridge_basis_train.npz"
    cache.write_bytes(b"not an npz")
    ridge_basis(tmp_path, rows, "train", said.append)
    assert len(said) == 3
    cache.write_bytes(cache.read_bytes()[:200])  # a zip cut short
    ridge_basis(tmp_path, rows, "train", said.append)
    assert len(said) == 4
    cache.unlink()
    os.mkfifo(cache)  # never opened for reading: no hang; replaced by a real cache
    again = ridge_basis(tmp_path, rows, "train", said.append)
    assert len(said) == 5 and cache.is_file() and np.array_equal(again.M, first.M)
