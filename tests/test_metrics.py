"""The metrics of age estimation: the absolute loss (by hand, finite differences, both
engines, and better MAE under Laplace noise), MAE for every trial, CS(theta) and error by
decade against direct numpy, and learning curves that agree with results.csv."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from agereg.batched import train_group
from agereg.engine import Arrays, derivative, gradient, train_reference
from agereg.evaluate import cumulative_score, error_by_decade, median_baseline
from agereg.records import TrialRecord, trial_id
from agereg.runs import CURVES_NAME, read_curves, read_log

from tests_helpers import latest_run, read_results, run, search

# ---------------------------------------------------------------- the absolute loss


def test_absolute_loss_step_by_hand_with_a_zero_residual():
    X = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 1.0]])
    y = np.array([4.0, 2.0, 0.0])  # the third residual is exactly 0 at w = 0, b = 0
    a = Arrays(X, y, X, y, X, y)
    # r = (-4, -2, 0), sign(r) = (-1, -1, 0): g_w = X^T sign / 3 = (-4/3, -1/3),
    # g_b = mean(sign) = -2/3; lr 0.3 -> w = (0.4, 0.1), b = 0.2
    fit = train_reference(a, seed=0, batch_size=3, lr=0.3, l2=0.5, epochs=1, loss="absolute")
    np.testing.assert_allclose(fit.w, [0.4, 0.1], rtol=0, atol=1e-15)
    assert fit.b == pytest.approx(0.2, abs=1e-15)
    # second step by hand: r = (0.4 + 0.2 + 0.2 - 4, 1.2 - 0.1 + 0.2 - 2, 0.1 + 0.2 - 0)
    # = (-3.2, -0.7, 0.3): sign (-1, -1, 1); g_w = ((-1 - 3 + 0) / 3, (-2 + 1 + 1) / 3)
    # + 0.5 * (0.4, 0.1) = (-4/3 + 0.2, 0 + 0.05); g_b = -1/3
    fit2 = train_reference(a, 0, 3, 0.3, 0.5, 2, "absolute")
    np.testing.assert_allclose(fit2.w, [0.4 - 0.3 * (-4 / 3 + 0.2), 0.1 - 0.3 * 0.05],
                               atol=1e-14)
    assert fit2.b == pytest.approx(0.2 + 0.1, abs=1e-14)
    res = train_group(a, 0, 3, [0.3], [0.5], [1, 2], snapshots=[(0, 2)], loss="absolute")
    assert res.snapshots is not None and (0, 2) in res.snapshots
    np.testing.assert_allclose(res.snapshots[(0, 2)].w, fit2.w, atol=1e-14)
    assert derivative("absolute", np.array([-2.0, 0.0, 3.0])).tolist() == [-1.0, 0.0, 1.0]


def test_absolute_subgradient_matches_finite_differences_away_from_kinks():
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(9, 4)), rng.normal(size=9)
    w, b, l2 = rng.normal(size=4), 0.2, 0.3

    def objective(w: np.ndarray, b: float) -> float:
        return float(np.mean(np.abs(X @ w + b - y)) + 0.5 * l2 * w @ w)

    r = X @ w + b - y
    assert np.abs(r).min() > 1e-3  # no residual near the kink at 0
    g_w, g_b = gradient(X, derivative("absolute", r), w, l2)
    h = 1e-6
    num_w = [(objective(w + h * e, b) - objective(w - h * e, b)) / (2 * h) for e in np.eye(4)]
    np.testing.assert_allclose(g_w, num_w, rtol=1e-7, atol=1e-9)
    assert g_b == pytest.approx((objective(w, b + h) - objective(w, b - h)) / (2 * h), rel=1e-7)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batched_absolute_loss_equals_the_reference(dtype):
    rng = np.random.default_rng(1)
    X = rng.random((80, 6)).astype(dtype) * 2
    y = rng.normal(40, 15, 80)
    a = Arrays(X[:50], y[:50], X[50:65], y[50:65], X[65:], y[65:])
    lrs, l2s = [1e-3, 1e-2, 0.1, 3.0], [0.0, 0.01, 0.1, 0.0]
    res = train_group(a, 2, 7, lrs, l2s, [2, 5], loss="absolute")
    for k, (lr, l2) in enumerate(zip(lrs, l2s, strict=True)):
        for i, ep in enumerate((2, 5)):
            ref = train_reference(a, 2, 7, lr, l2, ep, "absolute")
            assert bool(res.diverged[i, k]) == ref.diverged
            if not ref.diverged:
                tol = 1e-9 if dtype == np.float64 else 1e-4
                np.testing.assert_allclose(res.losses[i, k], ref.losses, rtol=tol)
                np.testing.assert_allclose(res.mae[i, k], ref.mae, rtol=tol)


def test_absolute_loss_beats_squared_loss_in_mae_under_laplace_noise():
    # Laplace noise: the median (absolute loss) is the efficient estimator, the mean is
    # not. Twelve small problems (40 rows, 10 features), the same SGD budget for both.
    diffs = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(4040, 10))
        y = X @ rng.normal(size=10) + 3 + rng.laplace(scale=3.0, size=4040)
        a = Arrays(X[:40], y[:40], X[40:2040], y[40:2040], X[2040:], y[2040:])
        sq = train_reference(a, 0, 1, 0.005, 0.0, 100, "squared")
        ab = train_reference(a, 0, 1, 0.005, 0.0, 100, "absolute")
        diffs.append(ab.mae[2] - sq.mae[2])  # test MAE, absolute minus squared
    assert np.mean(diffs) < -0.1 and sum(d < 0 for d in diffs) >= 10


def test_squared_trials_keep_their_ids_and_absolute_ones_differ():
    text = "160|0.003|48|1e-07"
    assert trial_id((160, 0.003, 48, 1e-07, "squared")) == \
        hashlib.sha1(text.encode()).hexdigest()[:12]
    assert trial_id((160, 0.003, 48, 1e-07, "absolute")) == \
        hashlib.sha1((text + "|absolute").encode()).hexdigest()[:12]


# ---------------------------------------------------------------- evaluation metrics


def test_cumulative_score_and_error_by_decade_against_direct_numpy():
    y = np.array([3.0, 8.0, 15.0, 19.0, 25.0, 61.0, 64.0, 69.9, -1.0])
    pred = np.array([5.0, 8.0, 25.0, 10.0, 25.5, 50.0, 70.0, 69.9, 2.0])
    err = np.abs(pred - y)  # (2, 0, 10, 9, 0.5, 11, 6, 0, 3)
    cs = cumulative_score(y, pred, range(21))
    assert cs == [float(np.mean(err <= t)) for t in range(21)]
    assert cs[0] == 2 / 9 and cs[5] == 5 / 9 and cs[10] == 8 / 9 and cs[11] == 1.0
    rows = error_by_decade(y, pred)
    assert [r["decade"] for r in rows] == ["0-9", "10-19", "20-29", "60-69"]
    assert [r["count"] for r in rows] == [3, 2, 1, 3]  # the age -1 joins 0-9
    assert rows[0]["mae"] == pytest.approx((2 + 0 + 3) / 3)
    assert rows[1]["mean_signed_error"] == pytest.approx((10 - 9) / 2)
    assert rows[3]["mae"] == pytest.approx((11 + 6 + 0) / 3)
    assert rows[3]["mean_signed_error"] == pytest.approx((-11 + 6 + 0) / 3)


def test_median_baseline_predicts_the_training_median():
    out = median_baseline(np.array([1.0, 2.0, 10.0]), np.array([2.0, 4.0]))
    assert out["mae"] == pytest.approx(1.0) and out["fmse"] == pytest.approx(0.5 * 2)


# ---------------------------------------------------------------- every trial, end to end

CONFIG = """\
name: m
seed: 3
n_jobs: 2
data: {{dir: {data}}}
split: {{seed: 1, val_fraction: 0.25}}
{extra}
grid:
  batch_size: [8, 32]
  learning_rate: [1.0e-3, 1.0e-2, 0.3]
  epochs: [2, 5]
  l2: [0.0, 1.0e-2]
  loss: [squared, absolute]
"""


@pytest.fixture
def loss_run(tmp_path: Path, data_copy: Path) -> Path:
    config = tmp_path / "m.yaml"
    config.write_text(CONFIG.format(data=data_copy, extra="select_by: mae"))
    return search(config, tmp_path / "runs")


def test_every_trial_has_mae_and_rmse_and_ranks_by_mae(loss_run: Path):
    rows = read_results(loss_run)
    assert len(rows) == 2 * 3 * 2 * 2 * 2
    assert list(rows[0])[:12] == ["rank", "batch_size", "learning_rate", "epochs", "l2",
                                  "train_loss", "val_loss", "test_loss", "status", "seconds",
                                  "trial_id", "loss"]
    assert {r["loss"] for r in rows} == {"squared", "absolute"}
    finished = [r for r in rows if r["status"] == "ok"]
    maes = [float(r["val_mae"]) for r in finished]
    assert maes == sorted(maes)  # select_by: mae ranks by the validation MAE
    for r in finished:
        assert float(r["val_rmse"]) == pytest.approx(np.sqrt(2 * float(r["val_loss"])))
        assert float(r["val_mae"]) <= float(r["val_rmse"]) + 1e-12  # MAE <= RMSE
    best = json.loads((loss_run / "best.json").read_text())
    assert best["selection"]["by"] == "mae" and best["best"]["trial_id"] == rows[0]["trial_id"]


def test_mae_of_a_trial_equals_direct_numpy_on_its_retrained_model(loss_run: Path):
    from agereg.assessment import open_run, retrain
    from agereg.launcher import in_memory

    ctx = open_run(loss_run, loss_run.parent)
    arrays = in_memory(ctx.dataset, ctx.split, "float64")
    for rec in [r for r in ctx.records if r.status.value == "ok"][:6]:
        fit = retrain(ctx, arrays, [rec])[0]
        assert fit.losses[1] == rec.val_loss  # bit for bit, absolute loss too
        direct = np.mean(np.abs(arrays.X_val @ fit.w + fit.b - arrays.y_val))
        assert rec.val_mae == pytest.approx(direct, rel=1e-12)


def test_curves_agree_with_results_exactly_and_name_the_best_epoch(loss_run: Path):
    curves = read_curves(loss_run)
    trials = [r for r in read_log(loss_run) if r.status.value == "ok"]
    assert trials
    for r in trials:
        points = curves[(r.batch_size, r.learning_rate, r.l2, r.loss, None)]
        assert set(range(1, r.epochs + 1)) <= set(points)
        assert points[r.epochs][1] == r.val_loss and points[r.epochs][2] == r.val_mae
        upto = {e: points[e][1] for e in range(1, r.epochs + 1)}
        assert r.best_epoch == min(upto, key=lambda e: (upto[e], e))
        assert all(points[e][0] is not None and points[e][0] > 0 for e in upto)
    with open(loss_run / CURVES_NAME, newline="") as f:
        header = next(csv.reader(f))
    assert header == ["batch_size", "learning_rate", "l2", "loss", "fold", "epoch",
                      "train_running", "val_fmse", "val_mae"]


def test_running_training_loss_is_the_mean_of_the_minibatch_losses():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(20, 3)), rng.normal(5, 2, 20)
    a = Arrays(X, y, X[:5], y[:5], X[:5], y[:5])
    res = train_group(a, 7, 6, [0.05], [0.0], [2], curves=True)
    assert res.curves is not None
    w, b, seen = np.zeros(3), 0.0, []
    for e in (1, 2):  # the plain loop: minibatch fMSE before each step, then the step
        order = np.random.default_rng([7, e]).permutation(20)
        losses = []
        for s in range(0, 20, 6):
            rows = order[s:s + 6]
            r = X[rows] @ w + b - y[rows]
            losses.append(0.5 * np.mean(r**2))
            w, b = w - 0.05 * X[rows].T @ r / len(rows), b - 0.05 * r.mean()
        seen.append(np.mean(losses))
    np.testing.assert_allclose(res.curves.train[:, 0], seen, rtol=1e-12)


def test_no_curves_records_none_and_changes_no_number(tmp_path: Path, data_copy: Path,
                                                      loss_run: Path):
    config = tmp_path / "n.yaml"
    config.write_text(CONFIG.format(data=data_copy, extra="select_by: mae"))
    code, _, err = run(["search", str(config), "--runs-dir", str(tmp_path / "n"), "--quiet",
                        "--no-curves"])
    assert code == 0, err
    off = latest_run(tmp_path / "n")
    assert not (off / CURVES_NAME).exists()

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("seconds", "best_epoch")}
                for r in rows]

    assert strip(read_results(off)) == strip(read_results(loss_run))
    assert all(r["best_epoch"] == "" for r in read_results(off))


def test_one_se_by_mae_states_the_mae_it_compared(tmp_path: Path, data_copy: Path):
    from agereg.report import fmt

    config = tmp_path / "se.yaml"
    config.write_text(CONFIG.format(data=data_copy, extra="select: one_se\nselect_by: mae"))
    runs = tmp_path / "runs"
    code, out, err = run(["search", str(config), "--runs-dir", str(runs), "--quiet"])
    assert code == 0, err
    sel = json.loads((latest_run(runs) / "best.json").read_text())["selection"]
    rows = read_results(latest_run(runs))
    chosen, lowest = rows[sel["rank"] - 1], rows[0]
    assert sel["lowest"] == float(lowest["val_mae"])
    assert sel["standard_error"] == float(lowest["val_mae_se"])
    said = (f"validation MAE {fmt(float(chosen['val_mae']))}: the most regularised of the "
            f"{sel['n_within']} trials within one standard error "
            f"({fmt(float(lowest['val_mae_se']))}) of the lowest, "
            f"{fmt(float(lowest['val_mae']))}")
    assert said in " ".join(out.split()), out  # not the fMSE beside the MAE's error
    # the page says what ranks its table (its fMSE column comes first)
    code, out, err = run(["report", str(latest_run(runs))])
    page = (latest_run(runs) / "report.html").read_text()
    assert code == 0 and "by validation MAE, the lowest first" in page, err


@pytest.mark.parametrize("loss, fragment", [
    ("[squared, hinge]", "grid.loss[1] = 'hinge' is not one of 'squared', 'absolute'"),
    ("[absolute, absolute]", "grid.loss lists a loss twice"),
    ("absolut", "did you mean 'absolute'?"),
])  # fmt: skip
def test_loss_axis_errors(tmp_path: Path, data_copy: Path, loss: str, fragment: str):
    config = tmp_path / "bad.yaml"
    config.write_text(CONFIG.format(data=data_copy, extra="").replace(
        "loss: [squared, absolute]", f"loss: {loss}"))
    code, _, err = run(["search", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and fragment in err, err


def test_a_record_without_a_loss_is_a_squared_loss_trial():
    from agereg.runs import _parse_record, record_to_json

    rec = TrialRecord(8, 0.01, 2, 0.0, 1.0, 2.0, 3.0, "ok", 0.1)
    text = record_to_json(rec)
    assert '"loss"' not in text  # a 0.1-compatible line
    assert _parse_record(text).loss == "squared"
