"""`agereg analyze` against known answers: a constructed spectrum, per-example gradients by
hand, the minibatch variance law by exhaustive enumeration and by sampling, B_simple
against direct numpy, and the scaling-rule verdicts."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from agereg.analysis import (
    gradient_noise,
    noise_law,
    range_top,
    row_curvature,
    scaling_rules,
    suggest_learning_rates,
    top_eigenvalue,
)
from agereg.records import TrialRecord
from agereg.synth import write_synthetic

from tests_helpers import run, search


def per_example_gradients(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float,
                          l2: float = 0.0) -> np.ndarray:
    """The reference, from the definition: ``(N, D + 1)``, the gradient of each
    example's objective ``0.5 r_i^2 + (l2/2)|w|^2`` at (w, b): ``[x_i r_i + l2 w, r_i]``
    (gradient_noise never builds this matrix with l2 in it)."""
    r = X @ w + b - y  # (N,)
    g = np.empty((len(y), X.shape[1] + 1))
    g[:, :-1] = X * r[:, None] + l2 * w
    g[:, -1] = r
    return g


def test_top_eigenvalue_of_a_constructed_spectrum():
    # columns orthogonal to each other and to the bias column of ones: the Hessian
    # X~^T X~ / n + l2 diag(1, 1, 0) is diag(a^2 + l2, c^2 + l2, 1)
    a, c, l2 = 3.0, 0.5, 0.2
    X = np.array([[a, c], [-a, c], [a, -c], [-a, -c]])
    eig = top_eigenvalue(X, l2)
    assert eig.lambda_max == pytest.approx(a * a + l2, rel=1e-9)
    assert eig.lr_limit == pytest.approx(2 / (a * a + l2), rel=1e-9)
    assert eig.residual < 1e-6
    small = top_eigenvalue(X / 10, 0.0)  # now the bias direction (eigenvalue 1) is largest
    assert small.lambda_max == pytest.approx(1.0, rel=1e-9)


def test_top_eigenvalue_matches_a_dense_eigensolver():
    rng = np.random.default_rng(2)
    X = rng.random((50, 8)) * 3
    Xt = np.hstack([X, np.ones((50, 1))])
    H = Xt.T @ Xt / 50 + np.diag([0.3] * 8 + [0.0])
    eig = top_eigenvalue(X, 0.3)
    assert eig.lambda_max == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-8)


def test_top_eigenvalue_of_float32_images_is_good_to_the_check_s_tolerance():
    """The search's check multiplies float32 images as they are (no float64 copy)."""
    rng = np.random.default_rng(5)
    X = rng.random((400, 144), dtype=np.float32)  # pixels in [0, 1], like images
    Xt = np.hstack([X.astype(np.float64), np.ones((400, 1))])
    exact = np.linalg.eigvalsh(Xt.T @ Xt / 400)[-1]
    eig = top_eigenvalue(X, tol=1e-4)
    assert eig.residual <= 1e-4
    assert eig.lambda_max == pytest.approx(exact, rel=1e-4)
    assert top_eigenvalue(X.astype(np.float64), tol=1e-4).lambda_max == pytest.approx(
        eig.lambda_max, rel=1e-5)


def test_per_example_gradients_by_hand():
    X = np.array([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]])
    y = np.array([1.0, 2.0, 0.0])
    w, b, l2 = np.array([0.5, -1.0]), 0.25, 0.1
    # r = Xw + b - y = (0.5 - 2 + 0.25 - 1, 1 + 0.25 - 2, 1.5 - 1 + 0.25 - 0)
    #   = (-2.25, -0.75, 0.75); g_i = [x_i r_i + l2 w, r_i]
    g = per_example_gradients(X, y, w, b, l2)
    expected = np.array([[-2.25 + 0.05, -4.5 - 0.1, -2.25],
                         [0.0 + 0.05, 0.75 - 0.1, -0.75],
                         [2.25 + 0.05, 0.75 - 0.1, 0.75]])
    np.testing.assert_allclose(g, expected, atol=1e-15)


def test_the_variance_law_holds_exactly_over_every_minibatch():
    # N = 6: average |g_B - G|^2 over all C(6, B) minibatches against tr(Sigma)/B (N-B)/(N-1)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 3)), rng.normal(size=6)
    w, b = rng.normal(size=3), 0.3
    g = per_example_gradients(X, y, w, b, 0.2)
    G = g.mean(axis=0)
    trace = float(np.mean(np.sum((g - G) ** 2, axis=1)))  # Sigma with 1/N
    for B in range(1, 6):
        exact = np.mean([np.sum((g[list(S)].mean(axis=0) - G) ** 2)
                         for S in itertools.combinations(range(6), B)])
        assert exact == pytest.approx(noise_law(trace, 6, B), rel=1e-12)
    noise = gradient_noise(X, y, w, b, 0.2, seed=0, draws=10, batch_sizes=[1, 2])
    assert noise.trace == pytest.approx(trace, rel=1e-10)


def test_measured_noise_follows_the_law_with_slope_minus_one():
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(3000, 20)), rng.normal(3.0, 2.0, 3000)
    noise = gradient_noise(X, y, np.zeros(20), 0.0, 0.0, seed=1, draws=300)
    assert noise.batch_sizes == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    assert noise.slope == pytest.approx(-1.0, abs=0.1)
    for m, law in zip(noise.measured, noise.law, strict=True):
        assert m == pytest.approx(law, rel=0.2)


def test_b_simple_against_direct_numpy():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(40, 4)), rng.normal(1.0, 1.0, 40)
    w, b, l2 = rng.normal(size=4), -0.2, 0.5
    g = per_example_gradients(X, y, w, b, l2)
    G = g.mean(axis=0)
    sigma = np.cov(g.T, bias=True)  # (D+1, D+1), 1/N
    noise = gradient_noise(X, y, w, b, l2, seed=0, draws=5)
    assert noise.g_norm2 == pytest.approx(G @ G, rel=1e-10)
    assert noise.trace == pytest.approx(np.trace(sigma), rel=1e-10)
    assert noise.b_simple == pytest.approx(np.trace(sigma) / (G @ G), rel=1e-10)


def test_range_top_against_a_plain_loop():
    rng = np.random.default_rng(8)
    X = rng.uniform(0.0, 1.0, size=(50, 7))
    beta = max(sum(v * v for v in row) + 1.0 for row in X.tolist())  # |[x, 1]|^2
    assert row_curvature(X) == pytest.approx(beta, rel=1e-12)
    lam = top_eigenvalue(X).lambda_max
    assert beta >= lam  # the largest row's curvature bounds the mean's
    assert range_top(lam, beta, 1, 50) == pytest.approx(1 / beta, rel=1e-12)
    assert range_top(lam, beta, 10, 50) == pytest.approx(10 / (beta + 9 * lam), rel=1e-12)
    tops = [range_top(lam, beta, b, 50) for b in range(1, 50)]
    assert tops == sorted(tops) and tops[-1] < 1 / lam  # rising towards 1 / lambda_max
    assert range_top(lam, beta, 50, 50) == range_top(lam, beta, 900, 50) == 1 / lam
    values = suggest_learning_rates(0.01)
    assert len(values) == 5 and values == sorted(values)
    assert values[-1] == 0.01 and values[0] == pytest.approx(1e-5, rel=0.05)


def test_sgd_at_the_top_of_the_range_trains():
    # one example at a time at 1 / beta, the range's top for B = 1, in a plain loop: the
    # training loss falls and stays finite (at 3 / beta this data diverges)
    rng = np.random.default_rng(2)
    X = rng.uniform(0.0, 1.0, size=(200, 30))
    y = X @ rng.normal(size=30) + rng.normal(0.0, 0.1, 200)
    top = range_top(top_eigenvalue(X).lambda_max, row_curvature(X), 1, 200)

    def final_loss(lr: float, epochs: int = 20) -> float:
        w, b = np.zeros(30), 0.0
        for e in range(epochs):
            for i in np.random.default_rng([0, e]).permutation(200):
                r = X[i] @ w + b - y[i]
                w, b = w - lr * r * X[i], b - lr * r
        return float(0.5 * np.mean((X @ w + b - y) ** 2))

    start = float(0.5 * np.mean(y**2))
    assert final_loss(top) < 0.1 * start
    assert not final_loss(3 * top) < start  # past the top's margin: no longer trains


def records(best: dict[int, float], lrs: list[float]) -> list[TrialRecord]:
    """Trials whose validation loss is lowest at ``best[bs]`` for each batch size."""
    return [TrialRecord(bs, lr, 5, 0.0, 1.0, 1.0 + abs(np.log(lr / best[bs])), 1.0, "ok", 0.1)
            for bs in best for lr in lrs]


def test_scaling_rules_verdicts():
    fine = [float(v) for v in np.geomspace(1e-4, 1e-1, 31)]  # 0.1 decades apart
    linear = records({16: fine[10], 64: fine[16], 256: fine[22]}, fine)  # x4 B: +0.6 dec
    sc = scaling_rules(linear)
    assert sc.alpha == pytest.approx(1.0, abs=0.02) and "linear rule" in sc.verdict
    sqrt = records({16: fine[10], 64: fine[13], 256: fine[16]}, fine)  # x4 B: +0.3 dec
    assert "square-root rule" in scaling_rules(sqrt).verdict
    flat = records({16: fine[10], 64: fine[10], 256: fine[11]}, fine)  # B^0.04
    assert scaling_rules(flat).verdict.startswith("neither rule: the best lr barely grows")
    coarse = [1e-5, 1e-3, 1e-1]
    assert scaling_rules(records({16: 1e-3, 64: 1e-3}, coarse)).verdict.startswith(
        "cannot tell")
    assert scaling_rules(records({16: 1e-3}, fine)).verdict.startswith("cannot tell")
    assert "tried are 2 decades apart" in scaling_rules(records({16: 1e-3, 64: 1e-3},
                                                                coarse)).verdict
    assert "tried are 1 decade apart" in scaling_rules(records(
        {16: 1e-3, 64: 1e-3}, [1e-4, 1e-3, 1e-2])).verdict


def test_a_batch_of_every_row_gets_the_noise_free_range(data_copy: Path):
    args = ["analyze", "--data", str(data_copy), "--json", "--draws", "20"]
    code, out, err = run([*args, "--batch-size", "1000000"])  # 96 training rows
    assert code == 0, err
    res = json.loads(out)
    assert res["lr_range"]["rule"].startswith("B >= the 96 training rows: one full batch")
    assert res["lr_range"]["top"] == pytest.approx(0.5 * res["lr_limit"], rel=1e-12)
    assert res["lr_range"]["values"][-1] == float(f"{0.5 * res['lr_limit']:.2g}")
    res = json.loads(run([*args, "--batch-size", "8"])[1])  # minibatches: a lower top
    # beta from the files themselves: the largest |[x, 1]|^2 over the training rows of
    # the documented split (seed 0: the permutation's last 96 rows)
    X = np.load(data_copy / "age_regression_Xtr.npy").reshape(120, -1).astype(np.float64)
    train = np.random.default_rng(0).permutation(120)[24:]
    beta = max(float(X[i] @ X[i]) + 1.0 for i in train)
    assert res["row_curvature_max"] == pytest.approx(beta, rel=1e-12)
    top = 8 / (res["row_curvature_max"] + 7 * res["lambda_max"])
    assert res["lr_range"]["top"] == pytest.approx(top, rel=1e-12)
    assert res["lr_range"]["values"] == suggest_learning_rates(top)
    assert "Ma, Bassily & Belkin" in res["lr_range"]["rule"]


def test_analyze_command_end_to_end(tiny_config: Path, data_copy: Path, tmp_path: Path):
    code, out, err = run(["analyze", "--data", str(data_copy), "--json", "--draws", "20"])
    assert code == 0, err
    res = json.loads(out)
    for key in ("lambda_max", "lr_limit", "b_simple", "noise_at_zero", "lr_range"):
        assert key in res
    assert res["lr_limit"] == pytest.approx(2 / res["lambda_max"])
    assert res["lr_range"]["yaml"].startswith("learning_rate: [")
    # the search says which learning rates are beyond the limit (1e30 is), and runs
    runs = tmp_path / "runs"
    code, _, err = run(["search", str(tiny_config), "--runs-dir", str(runs), "--quiet"])
    assert code == 0 and "learning rate 1e+30 >= 2 / lambda_max" in err
    run_dir = search(tiny_config, runs)
    code, out, err = run(["analyze", str(run_dir), "--draws", "20"])  # as report takes it
    assert code == 0, err
    assert "scaling rules:" in out and "gradient noise at the selected trial" in out
    for both in (["--run", str(run_dir)], ["--data", str(tmp_path)]):
        code, _, err = run(["analyze", str(run_dir), *both])
        assert code == 2 and "not both" in err, err
    saved = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert saved["learning_rates"][-1]["stable_full_batch"] is False  # 1e30
    # the selected trial's parameters are those the search kept: trained again (once
    # they are gone) it gives the same noise to the last bit
    assert "training the selected trial" not in err
    shutil.rmtree(run_dir / "params")
    code, _, err = run(["analyze", "--run", str(run_dir), "--draws", "20"])
    assert code == 0 and "training the selected trial" in err, err
    again = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert again["noise_at_selected"] == saved["noise_at_selected"]
    assert (run_dir / "analysis" / "gradient_noise.png").is_file()
    code, out, err = run(["report", str(run_dir)])
    assert code == 0 and "Batch size and learning rate" in (run_dir / "report.html").read_text()
    assert "analysed before the search trained" not in out
    # a log newer than the analysis (a --resume trained more trials): the report says so
    log = run_dir / "trials.jsonl"
    made = (run_dir / "analysis" / "analysis.json").stat().st_mtime_ns
    os.utime(log, ns=(made + 10**9, made + 10**9))
    code, out, err = run(["report", str(run_dir)])
    assert code == 0, err
    said = (f"analysed before the search trained its latest trials: the figures at the "
            f"selected trial and the scaling rules are as of then; `agereg analyze --run "
            f"{run_dir}` brings them up to date")
    assert "".join(said.split()) in "".join(out.split())  # a long path folds anywhere
    # the page shortens the folder, as it does every path (it is shared)
    assert said.replace(str(run_dir), f"…/{run_dir.name}") in (
        run_dir / "report.html").read_text()


def test_analyze_with_one_training_row_is_one_line(tmp_path: Path):
    data = write_synthetic(tmp_path / "d", seed=0, n_train=2, n_test=1, side=4)
    code, _, err = run(["split", "--seed", "0", "--val-fraction", "0.5", "--data", str(data)])
    assert code == 0, err
    code, _, err = run(["analyze", "--data", str(data)])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "1 training row; gradient noise needs at least 2" in err


def test_the_stability_note_names_the_pairs_l2_pushes_over_the_limit(tmp_path: Path,
                                                                     data_copy: Path):
    from agereg.analysis import lr_notice
    from agereg.config import Grid

    lam = 15.0  # lr_limit = 2 / 15
    grid = Grid((8,), (1e-3, 1e-2), (2,), (0.0, 10.0, 100.0, 1000.0, 1e4))
    note = lr_notice(grid, 2 / lam)
    assert note is not None and "lr x (lambda_max + l2) >= 2" in note
    # exactly the pairs over the limit of the objective's Hessian X^T X / n + l2 I
    pushed = [(lr, l2) for lr in grid.learning_rate for l2 in grid.l2 if lr * (lam + l2) >= 2]
    assert pushed == [(1e-3, 1e4), (1e-2, 1e3), (1e-2, 1e4)]
    assert note.startswith("learning rate 0.001 with l2 10000, 0.01 with l2 1000, 0.01 with "
                           "l2 10000:"), note
    assert lr_notice(Grid((8,), (1e-3,), (2,), (0.0, 10.0)), 2 / lam) is None
    # the absolute loss has no curvature: only lr x l2 >= 2 is named
    absolute = Grid((8,), (1.0, 3.0), (2,), (0.0, 1.0), loss=("absolute",))
    assert lr_notice(absolute, 2 / lam) == (
        "learning rate 3 with l2 1: lr x l2 >= 2 (the absolute loss adds no curvature), so "
        "l2 makes full-batch descent diverge; lower the l2 or the learning rate")
    # the search says so before training
    config = tmp_path / "c.yaml"
    config.write_text(f"name: c\nn_jobs: 1\ndata: {{dir: {data_copy}}}\ngrid: {{batch_size: "
                      "[8], learning_rate: [0.001, 0.01], epochs: [2], l2: [0.0, 10.0, "
                      "100.0, 1000.0, 10000.0]}\n")
    code, _, err = run(["search", str(config), "--runs-dir", str(tmp_path / "runs"),
                        "--quiet"])
    assert code == 0 and "so l2 makes full-batch descent diverge" in err, err


def test_analyze_says_its_figures_are_the_squared_loss_s(tmp_path: Path, data_copy: Path):
    config = tmp_path / "c.yaml"
    config.write_text(f"name: c\nn_jobs: 1\ndata: {{dir: {data_copy}}}\ngrid: {{batch_size: "
                      "[8], learning_rate: [0.01], epochs: [2], l2: [0.0], loss: "
                      "[squared, absolute]}\n")
    run_dir = search(config, tmp_path / "runs")
    code, out, err = run(["analyze", "--run", str(run_dir), "--draws", "5"])
    assert code == 0 and "note: the run trains with the absolute loss too" in out, err
    saved = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert saved["notes"] and "squared loss's" in saved["notes"][0]


def test_a_best_learning_rate_above_the_range_is_said(tmp_path: Path):
    # on 800 images of 16x16 the best of these rates at batch size 16 is 0.03, 2.1 x the
    # range's top: the range must not read as a ceiling the best trial broke
    data = write_synthetic(tmp_path / "data", seed=2, n_train=800, n_test=200, side=16)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: c\nn_jobs: 1\ndata: {{dir: {data}}}\ngrid: {{batch_size: [16], "
                      "learning_rate: [0.003, 0.01, 0.02, 0.03], epochs: [5], l2: [0.0]}\n")
    run_dir = search(config, tmp_path / "runs")
    code, out, err = run(["analyze", str(run_dir), "--draws", "5", "--json"])
    assert code == 0, err
    res = json.loads(out)
    best, top = res["noise_at_selected"]["trial"]["learning_rate"], res["lr_range"]["top"]
    assert best == 0.03 and best > top
    assert res["notes"] == [
        f"the selected trial's learning rate 0.03 lies above this range ({best / top:.2g} x "
        f"its top) and trained best at batch size 16: the top is the fastest step in "
        f"theory, not a limit (full-batch descent is stable up to 2 / lambda_max = "
        f"{res['lr_limit']:.3g}); search around 0.03 rather than below it"]
    # at another batch size than the selected trial's, nothing is said
    code, out, err = run(["analyze", str(run_dir), "--draws", "5", "--json",
                          "--batch-size", "64"])
    assert code == 0 and "notes" not in json.loads(out), err


def test_long_noise_measurements_say_how_long_they_take():
    from agereg.analyze import _estimate

    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(40, 5)), rng.normal(size=40)
    seen: list[int] = []
    with_calls = gradient_noise(X, y, np.zeros(5), 0.0, 0.0, seed=2, draws=7,
                                on_draw=seen.append)
    assert seen == list(range(1, 8))  # told after every draw, in order
    assert with_calls == gradient_noise(X, y, np.zeros(5), 0.0, 0.0, seed=2, draws=7)
    said: list[str] = []
    on_draw = _estimate(100, said.append, after=0.0)
    for d in (1, 2, 50, 100):
        on_draw(d)
    assert len(said) == 1 and said[0].startswith("  1 of 100 draws in ") and (
        said[0].endswith(" s more"))  # once, and not after the last draw
    quiet_end: list[str] = []
    on_draw = _estimate(1, quiet_end.append, after=0.0)
    on_draw(1)
    assert quiet_end == []  # nothing left to wait for
