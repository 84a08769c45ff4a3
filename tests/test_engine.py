"""The numerical core against independent references: hand-computed steps, finite
differences, closed-form ridge, and the per-trial loop against the batched engine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agereg.batched import train_group
from agereg.engine import (
    EXPLODE,
    Arrays,
    epoch_order,
    explode_limit,
    fmse,
    gradient,
    objective,
    ridge_closed_form,
    train_reference,
)


def make_arrays(n=60, d=5, seed=0, noise=0.1, dtype=np.float64) -> Arrays:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + 30, d))
    y = X @ rng.normal(size=d) + 2.0 + noise * rng.normal(size=n + 30)
    X = X.astype(dtype)
    return Arrays(X[:n], y[:n], X[n : n + 15], y[n : n + 15], X[n + 15 :], y[n + 15 :])


def test_one_step_by_hand():
    # Two rows, one minibatch holding both (order is irrelevant for a full batch).
    X = np.array([[1.0, 2.0], [3.0, -1.0]])
    y = np.array([4.0, 2.0])
    a = Arrays(X, y, X, y, X, y)
    lr, l2 = 0.1, 0.5
    # From w = 0, b = 0: r = -y = (-4, -2); g_w = X^T r / 2 = ((-4 - 6)/2, (-8 + 2)/2)
    # = (-5, -3) (+ l2 * 0); g_b = mean(r) = -3. So w = (0.5, 0.3), b = 0.3.
    fit = train_reference(a, seed=0, batch_size=2, lr=lr, l2=l2, epochs=1)
    np.testing.assert_allclose(fit.w, [0.5, 0.3], rtol=0, atol=1e-15)
    assert fit.b == pytest.approx(0.3, abs=1e-15)
    # predictions (1*0.5 + 2*0.3 + 0.3, 3*0.5 - 0.3 + 0.3) = (1.4, 1.5); fMSE by hand:
    expected = 0.5 * ((1.4 - 4) ** 2 + (1.5 - 2) ** 2) / 2
    assert fit.losses[0] == pytest.approx(expected, rel=1e-14)
    # second step by hand: r = (1.4 - 4, 1.5 - 2) = (-2.6, -0.5)
    # g_w = ((-2.6 - 1.5)/2, (-5.2 + 0.5)/2) + 0.5 * (0.5, 0.3) = (-1.8, -2.2)
    # g_b = -1.55 -> w = (0.68, 0.52), b = 0.455
    fit2 = train_reference(a, seed=0, batch_size=2, lr=lr, l2=l2, epochs=2)
    np.testing.assert_allclose(fit2.w, [0.68, 0.52], atol=1e-14)
    assert fit2.b == pytest.approx(0.455, abs=1e-14)
    res = train_group(a, 0, 2, [lr], [l2], [1, 2], snapshots=[(0, 2)])
    assert res.snapshots is not None and (0, 2) in res.snapshots
    np.testing.assert_allclose(res.snapshots[(0, 2)].w, [0.68, 0.52], atol=1e-14)
    assert res.losses[0, 0, 0] == pytest.approx(expected, rel=1e-14)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(7, 4)), rng.normal(size=7)
    w, b, l2 = rng.normal(size=4), 0.3, 0.7
    g_w, g_b = gradient(X, X @ w + b - y, w, l2)
    h = 1e-6
    for j in range(4):
        e = np.zeros(4)
        e[j] = h
        fd = (objective(X, y, w + e, b, l2) - objective(X, y, w - e, b, l2)) / (2 * h)
        assert g_w[j] == pytest.approx(fd, rel=1e-7, abs=1e-9)
    fd_b = (objective(X, y, w, b + h, l2) - objective(X, y, w, b - h, l2)) / (2 * h)
    assert g_b == pytest.approx(fd_b, rel=1e-7)


def test_closed_form_xor():
    X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    w, b = ridge_closed_form(X, y, 0.0)
    np.testing.assert_allclose(w, [0.0, 0.0], atol=1e-12)
    assert b == pytest.approx(0.5, abs=1e-12)


def test_closed_form_is_stationary_for_the_sgd_objective():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(30, 6)) + 3.0, rng.normal(size=30) * 5 + 40
    w, b = ridge_closed_form(X, y, 0.4)
    g_w, g_b = gradient(X, X @ w + b - y, w, 0.4)
    assert np.abs(g_w).max() < 1e-10 and abs(g_b) < 1e-10
    # bias is not regularised: a direct solve of the normal equations agrees
    n = len(y)
    A = np.c_[X, np.ones(n)]
    P = np.diag([0.4 * n] * 6 + [0.0])
    direct = np.linalg.solve(A.T @ A + P, A.T @ y)
    np.testing.assert_allclose(np.r_[w, b], direct, rtol=1e-9)


def test_full_batch_sgd_converges_to_closed_form_ridge():
    a = make_arrays(n=40, d=3, noise=1.0)
    l2 = 0.2
    fit = train_reference(a, seed=0, batch_size=40, lr=0.3, l2=l2, epochs=600)
    w, b = ridge_closed_form(a.X_fit, a.y_fit, l2)
    np.testing.assert_allclose(fit.w, w, rtol=1e-8, atol=1e-10)
    assert fit.b == pytest.approx(b, rel=1e-8)


def test_minibatch_sgd_reaches_exact_fit_without_noise():
    a = make_arrays(n=48, d=3, noise=0.0)
    fit = train_reference(a, seed=3, batch_size=8, lr=0.1, l2=0.0, epochs=300)
    w, _b = ridge_closed_form(a.X_fit, a.y_fit, 0.0)
    np.testing.assert_allclose(fit.w, w, atol=1e-9)
    assert fit.losses[0] < 1e-18


def test_epoch_order_depends_only_on_seed_and_epoch():
    a, b = epoch_order(7, 3, 50), epoch_order(7, 3, 50)
    assert np.array_equal(a, b) and sorted(a) == list(range(50))
    assert not np.array_equal(epoch_order(7, 3, 50), epoch_order(7, 4, 50))
    assert not np.array_equal(epoch_order(7, 3, 50), epoch_order(8, 3, 50))


def test_fmse_is_half_the_mse():
    X = np.array([[1.0], [2.0]])
    assert float(fmse(X, np.array([0.0, 0.0]), np.array([1.0]), 0.0)) == pytest.approx(1.25)


def test_divergence_is_detected_and_does_not_poison_other_columns():
    a = make_arrays()
    with np.errstate(all="raise"):  # the engine must silence its own overflow
        res = train_group(a, 0, 10, [0.01, 1e3, 0.02], [0.0, 0.0, 0.1], [20, 30])
    assert res.diverged[:, 1].all() and not res.diverged[:, [0, 2]].any()
    assert np.isnan(res.losses[:, 1]).all() and np.isfinite(res.losses[:, [0, 2]]).all()
    for k, (lr, l2) in enumerate([(0.01, 0.0), (0.02, 0.1)]):
        ref = train_reference(a, 0, 10, lr, l2, 30)
        np.testing.assert_allclose(res.losses[1, [0, 2][k]], ref.losses, rtol=1e-12)
    assert train_reference(a, 0, 10, 1e3, 0.0, 20).diverged


def test_explode_limit_is_a_thousand_times_the_zero_model():
    y = np.array([3.0, -4.0, 12.0])
    # the zero model's training fMSE by hand: 0.5 * (9 + 16 + 144) / 3 = 28.1666...
    assert EXPLODE == 1000.0
    assert explode_limit(y) == pytest.approx(1000 * 0.5 * 169 / 3, rel=1e-15)
    assert explode_limit(np.zeros(4)) == float("inf")  # then only non-finite counts


def _plain_explosion_check(a: Arrays, seed: int, bs: int, lr: float, l2: float, epochs: int):
    """An independent statement of the rule: a plain float64 loop that tracks the largest
    minibatch fMSE seen before each step; exploded when it (or the final training fMSE)
    passes 1000 x 0.5 * mean(y^2), or anything is non-finite."""
    X, y = a.X_fit.astype(np.float64), a.y_fit
    limit = 1000 * 0.5 * np.mean(y**2)
    w, b = np.zeros(X.shape[1]), 0.0
    with np.errstate(all="ignore"):
        for e in range(1, epochs + 1):
            order = np.random.default_rng([seed, e]).permutation(len(y))
            for s in range(0, len(y), bs):
                rows = order[s:s + bs]
                r = X[rows] @ w + b - y[rows]
                if not 0.5 * np.mean(r**2) <= limit:
                    return True
                w, b = w - lr * (X[rows].T @ r / len(rows) + l2 * w), b - lr * r.mean()
        train = 0.5 * np.mean((X @ w + b - y) ** 2)
    return not train <= limit


def test_exploding_trials_are_diverged_though_still_finite():
    # lr 0.3 on this data grows the loss far past 1000x the start long before float64
    # overflows: under the old rule (non-finite only) it was "ok" with a loss ~1e40
    a = make_arrays(n=40, d=3)
    with np.errstate(all="ignore"):
        X, y, w, b = a.X_fit, a.y_fit, np.zeros(3), 0.0
        for _ in range(20):  # full-batch steps, by hand: finite, but enormous
            r = X @ w + b - y
            w, b = w - 3.0 * X.T @ r / len(y), b - 3.0 * r.mean()
        assert np.isfinite(w).all() and 0.5 * np.mean((X @ w + b - y) ** 2) > 1e10
    assert train_reference(a, 0, 40, 3.0, 0.0, 20).diverged
    assert train_group(a, 0, 40, [3.0, 0.01], [0.0, 0.0], [20]).diverged[0].tolist() == [
        True, False]


def test_float32_and_float64_and_both_engines_agree_on_the_diverged_set():
    lrs = [10.0 ** p for p in np.arange(-4, 1.01, 0.25)]  # across the stability edge
    found = {}
    for dtype in (np.float64, np.float32):
        a = make_arrays(n=64, d=6, seed=2, dtype=dtype)
        for bs in (1, 7, 64):
            res = train_group(a, 4, bs, lrs, [0.0] * len(lrs), [1, 3, 6])
            for k, lr in enumerate(lrs):
                for i, ep in enumerate((1, 3, 6)):
                    ref = train_reference(a, 4, bs, lr, 0.0, ep).diverged
                    assert bool(res.diverged[i, k]) == ref, (dtype, bs, lr, ep)
                    found[(dtype, bs, lr, ep)] = ref
    a64 = make_arrays(n=64, d=6, seed=2)
    for (_dtype, bs, lr, ep), div in found.items():
        assert div == found[(np.float64, bs, lr, ep)], (bs, lr, ep)
        assert div == _plain_explosion_check(a64, 4, bs, lr, 0.0, ep), (bs, lr, ep)
    assert 0 < sum(found.values()) < len(found)  # both kinds present


def test_all_columns_diverged_returns_cleanly():
    a = make_arrays()
    res = train_group(a, 0, 7, [1e3, 1e4], [0.0, 0.0], [30])
    assert res.diverged.all() and np.isnan(res.losses).all()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(6, 40),
    d=st.integers(1, 6),
    data_seed=st.integers(0, 10_000),
    seed=st.integers(0, 10_000),
    batch_size=st.integers(1, 50),
    lrs=st.lists(st.sampled_from([1e-4, 1e-3, 1e-2, 0.1, 0.5, 3.0, 30.0]), min_size=1,
                 max_size=4),
    l2=st.sampled_from([0.0, 1e-3, 0.1, 1.0]),
    epochs=st.sets(st.integers(1, 6), min_size=1, max_size=3),
)
def test_batched_engine_equals_reference(n, d, data_seed, seed, batch_size, lrs, l2, epochs):
    rng = np.random.default_rng(data_seed)
    X = rng.random((n + 10, d)) * 2
    y = rng.normal(40, 15, n + 10)
    a = Arrays(X[:n], y[:n], X[n:n + 5], y[n:n + 5], X[n + 5:], y[n + 5:])
    l2s = [l2] * len(lrs)
    res = train_group(a, seed, batch_size, lrs, l2s, sorted(epochs))
    for k, lr in enumerate(lrs):
        for i, ep in enumerate(sorted(epochs)):
            ref = train_reference(a, seed, batch_size, lr, l2, ep)
            assert bool(res.diverged[i, k]) == ref.diverged
            if not ref.diverged:
                np.testing.assert_allclose(res.losses[i, k], ref.losses, rtol=1e-9, atol=0)


def test_row_blocks_inside_large_minibatches_match_reference():
    # batch sizes above ROW_BLOCK take the blocked path
    rng = np.random.default_rng(5)
    X, y = rng.random((700, 12)), rng.normal(40, 15, 700)
    a = Arrays(X[:500], y[:500], X[500:600], y[500:600], X[600:], y[600:])
    res = train_group(a, 1, 300, [1e-3, 1e-2], [0.0, 0.01], [2])
    for k, (lr, l2) in enumerate([(1e-3, 0.0), (1e-2, 0.01)]):
        ref = train_reference(a, 1, 300, lr, l2, 2)
        np.testing.assert_allclose(res.losses[0, k], ref.losses, rtol=1e-12)


def test_float32_is_close_to_float64():
    a64 = make_arrays(n=200, d=20, noise=1.0)
    a32 = Arrays(a64.X_fit.astype(np.float32), a64.y_fit, a64.X_val.astype(np.float32),
                 a64.y_val, a64.X_te.astype(np.float32), a64.y_te)
    r64 = train_group(a64, 0, 16, [1e-3, 1e-2], [0.0, 1e-3], [5])
    r32 = train_group(a32, 0, 16, [1e-3, 1e-2], [0.0, 1e-3], [5])
    np.testing.assert_allclose(r32.losses, r64.losses, rtol=1e-4)


def test_results_do_not_depend_on_column_chunking():
    rng = np.random.default_rng(9)
    X, y = rng.random((400, 30)), rng.normal(40, 15, 400)
    a = Arrays(X[:300], y[:300], X[300:350], y[300:350], X[350:], y[350:])
    lrs, l2s = [1e-4, 1e-3, 1e-2, 3e-2, 5e-2, 1e-1], [0.0, 1e-3, 0.1, 0.0, 1e-2, 1e-3]
    whole = train_group(a, 2, 20, lrs, l2s, [2, 5]).losses
    parts = np.concatenate([train_group(a, 2, 20, lrs[i:i + 2], l2s[i:i + 2], [2, 5]).losses
                            for i in (0, 2, 4)], axis=1)
    singles = np.concatenate([train_group(a, 2, 20, [lr], [l2], [2, 5]).losses
                              for lr, l2 in zip(lrs, l2s, strict=True)], axis=1)
    np.testing.assert_allclose(parts, whole, rtol=1e-12)
    np.testing.assert_allclose(singles, whole, rtol=1e-12)


def test_ridge_with_more_features_than_rows_uses_the_dual_and_agrees_with_the_primal():
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(12, 40)), rng.normal(size=12)
    for l2 in (1e-3, 0.5):
        w, b = ridge_closed_form(X, y, l2)  # the dual: a (12, 12) system
        n, d = X.shape
        A, t = X - X.mean(axis=0), y - y.mean()
        primal = np.linalg.solve(A.T @ A + n * l2 * np.eye(d), A.T @ t)  # (40, 40)
        np.testing.assert_allclose(w, primal, rtol=1e-9, atol=1e-12)
        assert b == pytest.approx(y.mean() - X.mean(axis=0) @ primal, abs=1e-10)


# ---------------------------------------------------- groups trained together (shared rows)
def _same_result(a, b) -> None:
    """Every number of two GroupResults, bit for bit (NaN equal to NaN)."""
    for field in ("losses", "diverged", "val_se", "mae", "best_epoch", "weights", "bias"):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field
    assert np.array_equal(a.state.W, b.state.W, equal_nan=True)
    assert np.array_equal(a.state.b, b.state.b, equal_nan=True)
    for field in ("train", "val_fmse", "val_mae"):
        assert np.array_equal(getattr(a.curves, field), getattr(b.curves, field),
                              equal_nan=True), field
    assert a.snapshots.keys() == b.snapshots.keys()
    for key, fit in a.snapshots.items():
        assert np.array_equal(fit.w, b.snapshots[key].w) and fit.losses == b.snapshots[key].losses


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_groups_trained_together_equal_each_trained_alone_bit_for_bit(
        dtype, monkeypatch: pytest.MonkeyPatch):
    from agereg import batched

    shared = []
    real = batched._Trainer.steps
    monkeypatch.setattr(batched._Trainer, "steps", lambda self, lo, hi, rows: (
        shared.append(rows is not None), real(self, lo, hi, rows))[1])
    a = make_arrays(n=301, d=7, seed=4, dtype=dtype)
    # many columns over two panels, a diverging column, the absolute loss, a batch size
    # beyond n (one minibatch of all rows), minibatches split into row blocks (300 > 128),
    # and groups that stop at different epochs (the first trains its sixth epoch alone)
    specs = [
        batched.GroupSpec(6, [1e-3, 1e-2, 1e9] + [3e-3] * 15, [0.0, 0.1, 0.0] + [1e-2] * 15,
                         (2, 6), curves=True, snapshots=[(1, 6)], weights=True),
        batched.GroupSpec(4, [1e-2, 2e-2], [0.0, 0.5], (1, 3), loss="absolute", curves=True,
                         weights=True),
        batched.GroupSpec(12, [5e-3], [0.0], (4,), curves=True, weights=True),
        batched.GroupSpec(400, [1e-2], [0.0], (5,), curves=True, weights=True),
        batched.GroupSpec(300, [1e-2, 1e-3], [0.0, 0.0], (2, 4), curves=True, weights=True),
    ]
    together = batched.train_groups(a, 7, specs)
    assert any(shared) and not all(shared)  # the rows were shared, then each went alone
    for spec, res in zip(specs, together, strict=True):
        shared.clear()
        alone = train_group(a, 7, spec.batch_size, spec.lrs, spec.l2s, spec.epochs,
                            loss=spec.loss, curves=True, snapshots=spec.snapshots,
                            weights=True)
        assert not any(shared)
        assert isinstance(res, batched.GroupResult)
        _same_result(alone, res)
    assert together[0].diverged[:, 2].all() and not together[0].diverged[:, :2].any()
    assert list(together[0].snapshots) == [(1, 6)]


def test_groups_continue_together_from_saved_states_on_a_fold():
    from agereg import batched

    pool = make_arrays(n=200, d=6, seed=5)
    rng = np.random.default_rng(0)
    rows = rng.permutation(200)
    fold = Arrays(pool.X_fit, pool.y_fit, pool.X_fit, pool.y_fit, pool.X_te, pool.y_te,
                  fit_rows=rows[:150], val_rows=rows[150:])
    lrs, l2s = [1e-2, 3e-3], [0.0, 0.1]
    firsts = [train_group(fold, 1, bs, lrs, l2s, [2], curves=True) for bs in (10, 25)]
    specs = [batched.GroupSpec(bs, lrs, l2s, [3, 6], start=f.state, curves=True, weights=True)
             for bs, f in zip((10, 25), firsts, strict=True)]
    together = batched.train_groups(fold, 1, specs)
    for spec, res in zip(specs, together, strict=True):
        _same_result(train_group(fold, 1, spec.batch_size, lrs, l2s, [3, 6], start=spec.start,
                                 curves=True, weights=True), res)
    with pytest.raises(ValueError, match="start at one epoch"):
        batched.train_groups(fold, 1, [specs[0], batched.GroupSpec(10, lrs, l2s, [3])])


def test_a_group_that_raises_is_dropped_and_the_others_go_on():
    from agereg import batched

    a = make_arrays(n=120, d=5, seed=6)

    def fail_at_2(epoch: int) -> None:
        if epoch == 2:
            raise RuntimeError("disk on fire")

    specs = [batched.GroupSpec(8, [1e-2], [0.0], (1, 4), on_epoch=fail_at_2),
             batched.GroupSpec(24, [1e-2, 3e-2], [0.0, 0.0], (1, 4), curves=True),
             batched.GroupSpec(8, [1e-2], [0.0], (0,))]  # refused before training
    broken, fine, refused = batched.train_groups(a, 2, specs)
    assert isinstance(broken, RuntimeError) and "disk on fire" in str(broken)
    assert isinstance(refused, ValueError) and "start epoch" in str(refused)
    alone = train_group(a, 2, 24, [1e-2, 3e-2], [0.0, 0.0], (1, 4), curves=True)
    assert isinstance(fine, batched.GroupResult)
    assert np.array_equal(fine.losses, alone.losses) and np.array_equal(fine.state.W,
                                                                          alone.state.W)


def test_memory_does_not_grow_with_the_epochs_without_curves():
    """Without curves nothing is sized by the epoch count: a group asked for 10^12 epochs
    starts training (and is stopped here after its first epoch); with curves, its (T, K)
    curves could not even be allocated."""
    from agereg import batched

    a = make_arrays(n=60, d=4, seed=2)

    class Stop(Exception):
        pass

    def stop(epoch: int) -> None:
        raise Stop(epoch)

    def trained(curves: bool) -> object:
        spec = batched.GroupSpec(8, [1e-2] * 16, [0.0] * 16, (10**12,), curves=curves,
                                 on_epoch=stop)
        (res,) = batched.train_groups(a, 0, [spec])
        return res

    stopped = trained(curves=False)
    assert isinstance(stopped, Stop) and stopped.args == (1,)
    assert isinstance(trained(curves=True), MemoryError)
