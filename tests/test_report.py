"""Pictures, report.html and the eval/report commands end to end on tiny data."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from agereg import plots
from agereg.evaluate import error_by_decade
from agereg.records import TrialRecord
from agereg.report import (
    GRID_PICTURES,
    NO_EVAL,
    draw_eval_pictures,
    grid_cells,
    top_curves,
)

from tests_helpers import latest_run, lock_held_elsewhere, run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED_SIZES = {  # pixels at plots.DPI = 100
    "weights.png": (500, 400),
    "worst_test.png": (1000, 250),
    "pred_vs_true.png": (500, 500),
    "cumulative_score.png": (500, 400),
    "error_by_age.png": (700, 400),
    "ridge_path.png": (600, 400),
    "heatmap_val.png": (900, 400),  # two batch sizes: 2 x 4 in + 1 in for the colorbar
    "val_vs_epochs.png": (700, 400),
}
EVAL_KEYS = {
    "run", "dataset", "trial", "refit", "trained_on", "engine", "precision", "train_fmse",
    "val_fmse", "search_val_fmse", "reproduced", "test", "baseline_test", "bootstrap",
    "ridge", "noise", "files", "notes", "folder", "selected_by", "baseline_median_test",
    "cumulative_score", "by_decade", "ridge_path", "parameters",
}

CONFIG = """\
name: {name}
seed: 3
n_jobs: 1
data: {{dir: '{data}'}}
split: {{seed: 1, val_fraction: 0.25}}
grid:
{grid}
"""
GRID = """\
  batch_size: [8, 32]
  learning_rate: [1.0e-3, 1.0e-2, 1.0e+30]
  epochs: [1, 3]
  l2: [0.0, 1.0e-2]
"""
ONE_TRIAL = """\
  batch_size: [8]
  learning_rate: [1.0e-2]
  epochs: [2]
  l2: [0.0]
"""


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def make_run(root: Path, data: Path, grid: str = GRID, name: str = "tiny") -> Path:
    """Copy the data (a search writes split.json into it) and run a search on it."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / f"{name}.yaml"
    config.write_text(CONFIG.format(name=name, data=data, grid=grid))
    code, _, err = run(["search", str(config), "--runs-dir", str(root / "runs"), "--quiet"])
    assert code == 0, err
    return latest_run(root / "runs")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> dict:
    """A searched and evaluated run; its data folder name needs HTML escaping."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data<&>"
    shutil.copytree(tiny_data, data)
    run_dir = make_run(root, data)
    code, out, err = run(["eval", "--best", "--runs-dir", str(root / "runs")])
    assert code == 0, err
    best = json.loads((run_dir / "best.json").read_text())["best"]
    folder = run_dir / "evals" / best["trial_id"]
    return {"root": root, "run_dir": run_dir, "out": out, "err": err, "folder": folder,
            "eval": json.loads((folder / "eval.json").read_text())}


# ---------------------------------------------------------------- pictures


def test_each_picture_is_a_png_of_the_expected_size():
    rng = np.random.default_rng(0)
    y, pred = rng.uniform(0, 90, 40), rng.uniform(0, 90, 40)
    X = rng.normal(size=(40, 48))
    recs = [TrialRecord(bs, lr, ep, l2, 1.0, v, 1.0, "ok", 0.1)
            for bs in (8, 32) for lr in (1e-3, 1e-2) for ep in (1, 2) for l2 in (0.0, 0.1)
            for v in [float(rng.uniform(50, 500))]]
    pictures = {
        "weights.png": plots.weights_image(rng.normal(size=48), (6, 8)),
        "worst_test.png": plots.worst_test(X, y, pred, (6, 8)),
        "pred_vs_true.png": plots.pred_vs_true(y, pred),
        "heatmap_val.png": plots.heatmap_val(grid_cells(recs)),
        "val_vs_epochs.png": plots.val_vs_epochs(top_curves(recs)),
        "cumulative_score.png": plots.cumulative_score(range(21), np.linspace(0, 1, 21)),
        "error_by_age.png": plots.error_by_age(error_by_decade(y, pred)),
        "ridge_path.png": plots.ridge_path({"l2": [0.0, 1e-3, 1e-1], "val_fmse": [3, 2, 1],
                                            "test_fmse": [3, 2, 2], "best_l2": 0.1,
                                            "sgd_val_by_l2": [[1e-3, 2.5]]}),
    }
    assert set(pictures) == set(EXPECTED_SIZES)
    for name, data in pictures.items():
        assert png_size(data) == EXPECTED_SIZES[name], name


@pytest.mark.parametrize(("n_bs", "size"), [(1, (500, 400)), (3, (1300, 400)),
                                            (5, (1700, 800))])
def test_heatmap_grows_with_the_batch_sizes(n_bs: int, size: tuple[int, int]):
    recs = [TrialRecord(2**i, 0.1, 1, 0.0, 1.0, 10.0 + i, 1.0, "ok", 0.1) for i in range(n_bs)]
    data = plots.heatmap_val(grid_cells(recs))
    assert png_size(data) == size
    assert plots.heatmap_size(n_bs) == (size[0] / plots.DPI, size[1] / plots.DPI)
    # the title fits: nothing drawn in the outermost columns of its rows (a title wider
    # than a one-panel picture ran off both sides)
    import io

    import matplotlib.image

    top = matplotlib.image.imread(io.BytesIO(data))[:40, :, :3]  # (40, W, 3) in [0, 1]
    assert (top[:, :3] > 0.99).all() and (top[:, -3:] > 0.99).all()


def test_the_halving_picture_is_drawn_for_the_survivors():
    # 8 configurations go on from rung 1 to rung 2, 7 survive it; 20 stop at rung 1, one
    # of them at ten times the best (it used to flatten every line that went on)
    def rec(lr: float, ep: int, v: float) -> TrialRecord:
        return TrialRecord(16, lr, ep, 0.0, 1.0, v, 1.0, "ok" if ep == 4 else "pruned", 0.1)

    recs = [rec(1e-4 * (k + 1), 1, 900.0 if k == 0 else 100.0 + k) for k in range(20)]
    recs += [rec(0.1 + k, 1, 95.0 + k) for k in range(8)]
    recs += [rec(0.1 + k, 4, 90.0 - k) for k in range(7)]
    view = plots.rung_view(recs)
    assert view.last == 4 and view.survivors == 7
    # the five best survivors by their last value: the largest learning rates here
    assert {c[1] for c in view.colour} == {0.1 + k for k in range(2, 7)}
    went_on = [95.0 + k for k in range(8)]  # every point of a line that goes on is seen
    assert view.top is not None and max(went_on) < view.top < 900.0
    assert view.above == sum(r.val_loss > view.top for r in recs) >= 1
    assert plots.halving_rungs(recs).startswith(b"\x89PNG")


def test_the_ridge_path_shows_trials_at_l2_zero():
    # a grid with l2: [0] has its SGD trials there; a log axis had no place for them
    path = {"l2": [0.0, 1e-3, 1e-1], "val_fmse": [3, 2, 1], "test_fmse": [3, 2, 2],
            "best_l2": 0.1}
    alone = plots.ridge_path({**path, "sgd_val_by_l2": []})
    with_trials = plots.ridge_path({**path, "sgd_val_by_l2": [[0.0, 2.5]]})
    assert with_trials != alone
    assert png_size(with_trials) == EXPECTED_SIZES["ridge_path.png"]


def test_pictures_close_their_figures():
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plots.pred_vs_true(np.arange(5.0), np.arange(5.0))
    with pytest.raises(ValueError):
        plots.weights_image(np.zeros(10), (3, 3))  # wrong shape: the figure is still closed
    assert len(plt.get_fignums()) == before


def test_grid_cells_take_the_min_over_epochs_and_mark_failures():
    recs = [
        TrialRecord(8, 0.1, 1, 0.0, 1.0, 3.0, 1.0, "ok", 0.1),  # the min is not the last
        TrialRecord(8, 0.1, 2, 0.0, 1.0, 5.0, 1.0, "ok", 0.1),
        TrialRecord(8, 0.1, 3, 0.0, None, None, None, "diverged", 0.1),
        TrialRecord(8, 9.0, 1, 0.0, None, None, None, "diverged", 0.1),
        TrialRecord(8, 9.0, 1, 0.5, None, None, None, "failed", 0.1),
        TrialRecord(16, 0.1, 1, 0.5, 1.0, 7.0, 1.0, "ok", 0.1),
    ]
    c = grid_cells(recs)
    assert (c.batch_sizes, c.learning_rates, c.l2s) == ((8, 16), (0.1, 9.0), (0.0, 0.5))
    assert c.values[0, 0, 0] == 3.0 and c.values[1, 0, 1] == 7.0
    assert c.bad[0, 1, 0] and c.bad[0, 1, 1] and not c.bad[0, 0, 0]
    assert math.isnan(c.values[0, 0, 1]) and not c.bad[0, 0, 1]  # not run: neither
    curves = top_curves(recs)
    assert [cv.label for cv in curves] == ["batch 8, lr 0.1, l2 0", "batch 16, lr 0.1, l2 0.5"]
    assert curves[0].epochs == (1, 2, 3) and curves[0].val[:2] == (3.0, 5.0)
    assert math.isnan(curves[0].val[2])


def test_flat_data_skip_the_image_pictures(tmp_path: Path):
    rng = np.random.default_rng(1)
    y = rng.uniform(0, 90, 20)
    written, notes = draw_eval_pictures(tmp_path, rng.normal(size=9), None,
                                        rng.normal(size=(20, 9)), y, y + 1, "t")
    assert written == ["pred_vs_true.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred_vs_true.png"]
    assert "flat" in notes[0]


# ---------------------------------------------------------------- eval end to end


def test_eval_writes_the_metrics_parameters_and_pictures(evaluated: dict):
    res, run_dir, folder = evaluated["eval"], evaluated["run_dir"], evaluated["folder"]
    assert set(res) == EVAL_KEYS
    assert res["reproduced"] is True and res["trial"]["rank"] == 1
    # the saved parameters reproduce the test metrics
    w, b = np.load(folder / "weights.npy"), np.load(folder / "bias.npy")
    assert w.dtype == np.float64 and w.shape == (36,) and b.dtype == np.float64 and b.ndim == 0
    Xte = np.load(Path(json.loads((run_dir / "dataset.json").read_text())["path"])
                  / "age_regression_Xte.npy").reshape(60, -1)
    yte = np.load(run_dir.parent.parent / "data<&>" / "age_regression_yte.npy")
    assert 0.5 * np.mean((Xte @ w + b - yte) ** 2) == pytest.approx(res["test"]["fmse"],
                                                                    rel=1e-6)
    assert res["files"] == {"weights": "weights.npy", "bias": "bias.npy", "model": "model.json",
                            "pictures": list(EXPECTED_SIZES)[:6]}
    for name, size in EXPECTED_SIZES.items():  # the grid's pictures in the run folder
        where = run_dir if name in GRID_PICTURES else folder
        assert png_size((where / name).read_bytes()) == size, name
    boot = res["bootstrap"]
    assert boot["resamples"] == 1000 and boot["seed"] == 3 and boot["n_images"] == 60
    lo, hi = boot["test_fmse_ci"]
    assert lo < res["test"]["fmse"] < hi
    assert boot["left_out_share"] == pytest.approx((1 - 1 / 60) ** 60, abs=0.01)
    paired = boot["paired"]
    assert paired["versus"]["rank"] == 2 and 0.0 <= paired["share_better"] <= 1.0
    assert paired["observed_difference"] == pytest.approx(
        res["test"]["fmse"] - paired["versus_test_fmse"], abs=1e-9)
    assert paired["difference_ci"][0] <= paired["mean_difference"] <= paired["difference_ci"][1]
    ridge = res["ridge"]
    assert ridge["l2"] == res["trial"]["l2"]
    assert ridge["gap_val_fmse"] == pytest.approx(res["val_fmse"] - ridge["val_fmse"])
    assert ridge["gap_test_fmse"] == pytest.approx(res["test"]["fmse"] - ridge["test_fmse"])
    assert ridge["objective_gap"] >= 0
    assert res["noise"]["sigma2"] == pytest.approx(2 * res["train_fmse"], rel=1e-9)
    assert res["noise"]["test_avg_loglik"] < 0


def test_eval_prints_the_new_findings(evaluated: dict):
    out, err = evaluated["out"], evaluated["err"]
    for fragment in ("test R²", "fMSE 95% CI", "winner better in", "mean difference",
                     "ridge l2=", "median", "cumulative score: ",
                     "error by age: the largest MAE", "SGD gap", "sigma²", "log-likelihood",
                     "leaves out"):
        assert fragment in out, fragment
    assert "wrote eval.json, weights.npy, bias.npy, weights.png" in err
    assert "test error by decade of true age" in out


@pytest.mark.parametrize(("count", "signed", "text"), [
    (1, 35.88, "35.88 years over 1 image (mean signed error +35.88: predicted too old)"),
    (7, -2.5, "over 7 images (mean signed error -2.5: predicted too young)"),
    (2, 0.0, "over 2 images (mean signed error +0)"),
])
def test_the_worst_decade_line_reads_right(evaluated: dict, count: int, signed: float,
                                           text: str):
    from agereg.report import eval_lines

    res = dict(evaluated["eval"], by_decade=[
        {"decade": "0-9", "count": count, "mae": 35.88, "mean_signed_error": signed},
        {"decade": "10-19", "count": 9, "mae": 1.0, "mean_signed_error": 0.5}])
    (line,) = [x for x in eval_lines(res) if x.startswith("error by age")]
    assert text in line, line


@pytest.mark.parametrize(("best", "said"), [
    (1e4, "still falls at the path's largest l2: here the more regularised the better"),
    (1e-8, "it is the path's smallest positive l2, so ridge's optimum may lie below it"),
    (0.1, None), (0.0, None)])
def test_a_ridge_optimum_on_the_path_s_edge_is_said(evaluated: dict, best: float,
                                                    said: str | None):
    from agereg.report import eval_lines

    path = dict(evaluated["eval"]["ridge_path"], l2=[0.0, 1e-8, 0.1, 1e4], best_l2=best)
    (line,) = [x for x in eval_lines(dict(evaluated["eval"], ridge_path=path))
               if x.startswith("exact ridge path")]
    assert (said in line) if said else "path's" not in line, line


def test_report_writes_a_self_contained_page(evaluated: dict):
    run_dir, root = evaluated["run_dir"], evaluated["root"]
    code, out, err = run(["report", str(run_dir), "--runs-dir", str(root / "runs"), "--top",
                          "3"])
    assert code == 0, err
    assert "best trials" in out and "8 diverged, 0 failed" in out
    assert "fMSE 95% CI" in out and "SGD gap" in out
    page = (run_dir / "report.html").read_text()
    assert not re.search(r"<(script|link|iframe)\b", page, re.I)
    assert not re.search(r"\bhref\s*=", page, re.I)
    srcs = re.findall(r"\bsrc\s*=\s*\"([^\"]*)\"", page, re.I)
    assert len(srcs) == 8 and all(s.startswith("data:image/png;base64,") for s in srcs)
    sizes = [png_size(base64.b64decode(src.split(",", 1)[1])) for src in srcs]
    assert sizes == [EXPECTED_SIZES[n] for n in (*GRID_PICTURES, *list(EXPECTED_SIZES)[:6])]
    t = evaluated["eval"]["trial"]
    assert (f"best trial: <strong>batch_size {t['batch_size']}, learning_rate "
            f"{t['learning_rate']:g}, epochs {t['epochs']}, l2 {t['l2']:g}</strong>") in page
    assert "data&lt;&amp;&gt;" in page and "data<&>" not in page  # escaped
    assert str(root) not in page and str(run_dir) not in page  # no absolute path in it
    assert "…/data&lt;&amp;&gt;" in page  # only the last component
    assert page.count("<tr>") >= 3 + 1 + 8  # ranking rows, dataset rows, eval rows
    assert "by validation fMSE, the lowest first: 16 finished, 8 diverged, 0 failed." in page


def test_eval_json_without_bootstrap_or_plots_and_refit(evaluated: dict):
    runs = str(evaluated["root"] / "runs")
    code, out, err = run(["eval", "--rank", "2", "--runs-dir", runs, "--bootstrap", "0",
                          "--no-plots", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["bootstrap"] is None and res["files"]["pictures"] == []
    assert "bootstrap disabled (--bootstrap 0)" in res["notes"]
    run_dir = evaluated["run_dir"]
    second = run_dir / res["folder"]
    code, out, err = run(["eval", "--best", "--refit", "--runs-dir", runs, "--bootstrap",
                          "200", "--no-plots", "--json"])
    assert code == 0, err
    res = json.loads(out)
    refit = run_dir / res["folder"]
    assert refit.name == evaluated["folder"].name + "-refit"
    assert (refit / "weights.npy").is_file() and (refit / "bias.npy").is_file()
    assert res["ridge"]["val_fmse"] is None and res["ridge"]["trained_on"].startswith("train+")
    assert res["bootstrap"]["paired"]["versus"]["rank"] == 2
    # every evaluation kept its own folder; the first one's files are untouched
    assert sorted(p.name for p in (run_dir / "evals").iterdir()) == sorted(
        [evaluated["folder"].name, second.name, refit.name])
    assert json.loads((evaluated["folder"] / "eval.json").read_text()) == evaluated["eval"]
    assert (evaluated["folder"] / "weights.png").is_file()
    assert not (second / "weights.png").exists()  # drawn by no one: --no-plots
    # the report shows all three: the grid's two pictures and the first eval's three
    code, out, err = run(["report", str(run_dir)])
    assert code == 0, err
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png") == 2 + 6 and page.count("<h3>trial #") == 3
    assert out.count("files in ") == 3


def test_eval_of_an_evaluated_trial_shows_it_and_force_recomputes(tmp_path: Path,
                                                                  tiny_data: Path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_dir = make_run(tmp_path, data)
    args = ["eval", "--run", str(run_dir), "--bootstrap", "50", "--no-plots"]
    code, first, err = run(args)
    assert code == 0 and "wrote eval.json" in err, err
    (folder,) = (run_dir / "evals").iterdir()
    stamp = (folder / "eval.json").stat().st_mtime_ns
    code, again, err = run(args)
    assert code == 0 and again == first
    assert f"already evaluated: shown from {folder}/" in err and "--force" in err
    assert (folder / "eval.json").stat().st_mtime_ns == stamp
    code, _, err = run([*args, "--force"])
    assert code == 0 and "wrote eval.json" in err, err
    assert (folder / "eval.json").stat().st_mtime_ns != stamp
    assert [p.name for p in (run_dir / "evals").iterdir()] == [folder.name]  # no leftovers


def test_an_interrupted_eval_leaves_nothing_a_report_shows(tmp_path: Path, tiny_data: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    from agereg import assessment

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_dir = make_run(tmp_path, data)

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(assessment, "gaussian_noise", interrupted, raising=False)
    monkeypatch.setattr("agereg.evaluate.gaussian_noise", interrupted)
    code, _, err = run(["eval", "--run", str(run_dir), "--no-plots", "--bootstrap", "0"])
    assert code == 130, err
    assert list((run_dir / "evals").iterdir()) == []  # the staging folder was removed
    assert not list(run_dir.glob("*.npy"))


def test_a_run_where_every_trial_diverged_gets_advice_that_works(tmp_path: Path,
                                                                 tiny_data: Path):
    grid = "  batch_size: [8]\n  learning_rate: [1.0e+20]\n  epochs: [1, 2]\n  l2: [0.0]\n"
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)  # a search writes split.json into its data folder
    run_dir = make_run(tmp_path, data, grid=grid, name="div")
    code, out, err = run(["report", str(run_dir)])
    assert code == 0 and "no finished trial to evaluate: every trial diverged" in out, err
    assert "run `agereg eval --best`" not in out  # it would fail
    page = (run_dir / "report.html").read_text()
    assert "every trial diverged" in page
    # the page says what to try, says "no finished trial" without a "yet" (the search
    # ended), and draws no empty learning-curve picture
    assert "<p class=\"notice\">every trial diverged, down to the smallest learning rate " \
        "tried, 1e+20" in page
    assert "<p>no finished trial.</p>" in page
    assert (run_dir / "heatmap_val.png").is_file()
    assert not (run_dir / "val_vs_epochs.png").exists() and "val_vs_epochs" not in page
    np.save(tmp_path / "new.npy", np.load(data / "age_regression_Xte.npy")[:2])
    other = make_run(tmp_path, data, name="other")
    for args in (["eval", "--run", str(run_dir)],
                 ["predict", str(tmp_path / "new.npy"), "--run", str(run_dir)],
                 ["compare", str(run_dir), str(other)]):
        code, _, err = run(args)
        assert code == 2 and "search again with other learning rates" in err, (args, err)
        assert "resume the search" not in err  # it finished
    # a run that has trained nothing yet is resumed, by its own folder
    (run_dir / "trials.jsonl").write_text("")
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    code, _, err = run(["predict", str(tmp_path / "new.npy"), "--run", str(run_dir)])
    assert code == 2 and f"`agereg search --resume {run_dir}`" in err, err
    resume = (f"no finished trial yet: the search was interrupted; resume it: "
              f"`agereg search --resume {run_dir}`")
    code, out, err = run(["report", str(run_dir)])
    flat = "".join(out.split())  # rich breaks the long path across lines
    assert code == 0 and "".join(resume.split()) in flat, out
    assert "every trial diverged" not in out
    page = (run_dir / "report.html").read_text()  # absolute paths shortened to …/name
    assert f"resume it: `agereg search --resume …/{run_dir.name}`" in page
    # still running (another process holds the lock): wait for it
    (run_dir / "run.json").write_text(json.dumps({**info, "status": "running"}))
    with lock_held_elsewhere(run_dir):
        code, out, err = run(["report", str(run_dir)])
    assert code == 0 and "no finished trial yet: the search is still running" in out, out
    code, out, err = run(["analyze", "--run", str(run_dir), "--draws", "5"])
    assert code == 0 and "scaling rules: cannot tell" in out, err


def test_a_report_during_a_search_says_to_evaluate_once_it_ends(tmp_path: Path,
                                                                tiny_data: Path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_dir = make_run(tmp_path, data)
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "status": "running"}))
    with lock_held_elsewhere(run_dir):  # as the search itself holds it
        code, out, err = run(["report", str(run_dir)])
    assert code == 0, err
    assert "the search is still running: run `agereg eval --best` once it ends" in out, out


def test_a_run_folder_that_cannot_be_written_still_prints_its_ranking(
        tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch):
    import os

    from agereg import report as report_module

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_dir = make_run(tmp_path, data)
    before = sorted(p.name for p in run_dir.iterdir())
    real = os.access
    monkeypatch.setattr(report_module.os, "access",  # as on a read-only mount
                        lambda path, mode: False if mode == os.W_OK else real(path, mode))
    code, out, err = run(["report", str(run_dir)])
    assert code == 2 and "best trials by validation fMSE" in out, err
    assert f"{run_dir}: cannot write report.html there (the folder is not writable)" in (
        " ".join(err.split())), err
    code, out, err = run(["report", str(run_dir), "--json"])
    assert code == 2 and json.loads(out)["report"] is None, err
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing drawn or written


def test_the_ridge_path_spans_the_l2_values_that_trained(tmp_path: Path, tiny_data: Path):
    # l2 1e300 diverges; it stretched the path to 1e302 (and matplotlib overflowed)
    grid = ("  batch_size: [8]\n  learning_rate: [1.0e-2]\n  epochs: [2]\n"
            "  l2: [1.0, 1.0e+300]\n")
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_dir = make_run(tmp_path, data, grid=grid, name="wide")
    code, out, err = run(["eval", "--run", str(run_dir), "--bootstrap", "0", "--json"])
    assert code == 0 and "Warning" not in err, err
    l2s = json.loads(out)["ridge_path"]["l2"]
    assert 1.0 in l2s and max(l2s) <= 1e8  # two decades past 1.0, and at most 6 more


def test_single_trial_run_has_no_paired_comparison(tmp_path: Path, tiny_data: Path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_dir = make_run(tmp_path, data, grid=ONE_TRIAL, name="one")
    code, out, err = run(["eval", "--best", "--run", str(run_dir), "--no-plots"])
    assert code == 0, err
    assert "no runner-up" in out
    (folder,) = (run_dir / "evals").iterdir()
    res = json.loads((folder / "eval.json").read_text())
    assert res["bootstrap"]["paired"] is None and res["bootstrap"]["test_fmse_ci"]


def test_a_single_test_image_gets_no_bootstrap(tmp_path: Path):
    from agereg.synth import write_synthetic

    data = write_synthetic(tmp_path / "data", seed=0, n_train=40, n_test=1, side=4)
    run_dir = make_run(tmp_path, data)
    code, out, err = run(["eval", "--best", "--run", str(run_dir), "--no-plots"])
    assert code == 0, err
    assert "no bootstrap: the test set holds a single image" in out
    (folder,) = (run_dir / "evals").iterdir()
    assert json.loads((folder / "eval.json").read_text())["bootstrap"] is None
    assert run(["report", str(run_dir)])[0] == 0
    other = make_run(tmp_path, data, name="other")
    assert run(["eval", "--run", str(other), "--no-plots"])[0] == 0
    code, out, err = run(["compare", str(run_dir), str(other)])
    assert code == 0 and "test set holds a single image" in out, err


def test_eval_on_flat_data_says_weights_png_was_skipped(tmp_path: Path, tiny_data: Path):
    data = tmp_path / "flat"
    shutil.copytree(tiny_data, data)
    for name in ("age_regression_Xtr.npy", "age_regression_Xte.npy"):
        X = np.load(data / name)
        np.save(data / name, X.reshape(len(X), -1))
    run_dir = make_run(tmp_path, data, grid=ONE_TRIAL, name="flat")
    code, out, err = run(["eval", "--best", "--run", str(run_dir), "--bootstrap", "100"])
    assert code == 0, err
    assert "weights.png and worst_test.png skipped" in out
    (folder,) = (run_dir / "evals").iterdir()
    assert not (folder / "weights.png").exists() and (folder / "pred_vs_true.png").is_file()


# ---------------------------------------------------------------- report


def test_report_without_eval_draws_the_grid_pictures(tmp_path: Path, tiny_data: Path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_dir = make_run(tmp_path, data)
    assert not (run_dir / "heatmap_val.png").exists()
    code, out, err = run(["report", "--runs-dir", str(tmp_path / "runs")])  # the latest run
    assert code == 0, err
    assert NO_EVAL in out and "drew heatmap_val.png, val_vs_epochs.png" in err
    for name in ("heatmap_val.png", "val_vs_epochs.png"):
        assert png_size((run_dir / name).read_bytes()) == EXPECTED_SIZES[name]
    page = (run_dir / "report.html").read_text()
    assert "agereg eval --best" in page and page.count("data:image/png") == 2


def test_report_on_a_folder_that_is_not_a_run_exits_2(tmp_path: Path):
    code, _, err = run(["report", str(tmp_path)])
    assert code == 2
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    assert "not an agereg run folder" in err and "Traceback" not in err


def test_eval_waits_for_no_one_a_search_holds_the_run(tmp_path: Path, tiny_data: Path):
    from agereg.runs import RunLock

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_dir = make_run(tmp_path, data)
    with RunLock(run_dir):  # a search still writing this run
        code, _, err = run(["eval", "--run", str(run_dir), "--no-plots"])
    assert code == 2 and "another agereg process" in err and len(err.strip().splitlines()) == 1
    assert not (run_dir / "evals").exists()


@pytest.mark.parametrize("text", ["{}", '{"trial": {"rank": "1"}}', "[]"])
def test_a_damaged_eval_json_is_one_line(tmp_path: Path, tiny_data: Path, text: str):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_dir = make_run(tmp_path, data)
    (run_dir / "evals" / "abc").mkdir(parents=True)
    (run_dir / "evals" / "abc" / "eval.json").write_text(text)
    code, _, err = run(["report", str(run_dir)])
    assert code == 2, err
    assert err.strip().startswith(f"error: {run_dir}/evals/abc/eval.json: not ")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("n", "title"), [
    (1, "validation fMSE of the best configuration"),
    (2, "validation fMSE of the best 2 configurations"),
    (0, "validation fMSE: no finished trial"),
])  # fmt: skip
def test_the_learning_curve_title_counts_its_configurations(monkeypatch, n: int, title: str):
    seen = []
    real = plots._finish

    def spy(ax, xlabel, ylabel, title, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(title)
        return real(ax, xlabel, ylabel, title, **kwargs)

    monkeypatch.setattr(plots, "_finish", spy)
    plots.val_vs_epochs([plots.Curve(f"batch 8, lr {k}", (1, 2), (3.0, 2.0))
                         for k in range(n)])
    assert seen == [title]
