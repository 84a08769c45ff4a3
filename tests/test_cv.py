"""Selection you can trust: K-fold cross-validation against K holdout runs, the pinned
fold formula, the one-standard-error rule, resume of a cross-validated run, and eval of
every rank reproducing the search's validation loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agereg.assessment import open_run, retrain
from agereg.engine import train_reference
from agereg.errors import SplitError
from agereg.launcher import in_memory
from agereg.records import REGULARISATION_ORDER, Status, TrialRecord, rank, select
from agereg.runs import FOLD_LOG_NAME, read_log
from agereg.split import load_split, make_folds
from agereg.synth import write_synthetic

from tests_helpers import (
    interrupt_at_call,
    latest_run,
    read_results,
    run,
    search,
    without_seconds,
)

CONFIG = """\
name: {name}
seed: 3
n_jobs: {n_jobs}
data: {{dir: {data}}}
split: {split}
{extra}
grid:
  batch_size: [8, 32]
  learning_rate: [1.0e-3, 1.0e-2, 3.0e-2]
  epochs: [1, 3]
  l2: [0.0, 1.0e-2]
"""


def write(tmp_path: Path, data: Path, split: str = "{seed: 1, folds: 4}", extra: str = "",
          name: str = "cv", n_jobs: int = 1) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(CONFIG.format(name=name, data=data, split=split, extra=extra,
                                  n_jobs=n_jobs))
    return path


# ---------------------------------------------------------------- the folds


def test_folds_follow_the_pinned_formula(data_copy: Path):
    code, _, err = run(["split", "--seed", "7", "--folds", "4", "--data", str(data_copy)])
    assert code == 0, err
    assert "4 folds of 30 rows (seed 7)" in err
    raw = json.loads((data_copy / "split.json").read_text())
    perm = np.random.default_rng(7).permutation(120)
    expected = np.array_split(perm, 4)
    assert [np.asarray(f).tolist() for f in raw["folds"]] == [f.tolist() for f in expected]
    split = load_split(data_copy / "split.json", 120, raw["ytr_sha256"])
    train, val = split.fold(2)
    assert val.tolist() == expected[2].tolist()
    assert train.tolist() == np.concatenate([expected[0], expected[1], expected[3]]).tolist()
    uneven = make_folds(10, 0, 3, "x")  # array_split: the first folds take the remainder
    assert [len(f) for f in uneven.folds] == [4, 3, 3]
    assert [len(f) for f in make_folds(4, 0, 2, "x").folds] == [2, 2]  # the smallest
    for n in (2, 3):  # no number of folds works: said so, not "2 <= folds <= 1"
        with pytest.raises(SplitError, match="needs at least 4 training images"):
            make_folds(n, 0, 2, "x")


@pytest.mark.parametrize("args, fragment", [
    (["--folds", "1"], "1 is not in the range x>=2"),
    (["--folds", "3", "--val-fraction", "0.3"], "--folds and --val-fraction exclude"),
    (["--folds", "61"], "61 folds of 120 rows: give 2 <= folds <= 60"),
])  # fmt: skip
def test_split_folds_errors(data_copy: Path, args: list[str], fragment: str):
    code, _, err = run(["split", "--seed", "1", *args, "--data", str(data_copy)])
    assert code == 2 and fragment in err, err
    assert not (data_copy / "split.json").exists()


@pytest.mark.parametrize("split, fragment", [
    ("{folds: 1}", "split.folds = 1 must be at least 2"),
    ("{folds: 3, val_fraction: 0.3}", "split.folds and split.val_fraction exclude"),
    ("{folds: 2.5}", "split.folds"),
])  # fmt: skip
def test_config_folds_errors(tmp_path: Path, data_copy: Path, split: str, fragment: str):
    code, _, err = run(["search", str(write(tmp_path, data_copy, split)), "--runs-dir",
                        str(tmp_path / "runs")])
    assert code == 2 and fragment in err, err


# ---------------------------------------------------------------- CV = K holdout runs


def test_cross_validation_equals_k_holdout_runs(tmp_path: Path, data_copy: Path):
    runs = tmp_path / "runs"
    cv = search(write(tmp_path, data_copy, n_jobs=2), runs)
    fold_records = read_log(cv, name=FOLD_LOG_NAME)
    assert len(fold_records) == 24 * 4 and {r.fold for r in fold_records} == {0, 1, 2, 3}
    split = load_split(cv / "split.json", 120, json.loads(
        (cv / "dataset.json").read_text())["sha256"]["ytr"])
    assert split.k == 4
    for i in range(4):
        # a holdout split.json holding exactly fold i's training and validation rows
        train, val = split.fold(i)
        holdout = tmp_path / f"data{i}"
        holdout.mkdir()
        for f in data_copy.iterdir():
            (holdout / f.name).symlink_to(f)
        (holdout / "split.json").write_text(json.dumps({
            "seed": 1, "val_fraction": 0.25, "n": 120, "ytr_sha256": split.ytr_sha256,
            "train": train.tolist(), "val": val.tolist()}))
        one = search(write(tmp_path, holdout, "{seed: 1, val_fraction: 0.25}",
                           name=f"h{i}"), runs)
        mine = {r.key(): r for r in read_log(one)}
        for r in (r for r in fold_records if r.fold == i):
            h = mine[r.key()]
            assert r.status == h.status
            # bit for bit: the same rows in the same order, one pool or contiguous copies
            assert (r.train_loss, r.val_loss, r.test_loss) == (h.train_loss, h.val_loss,
                                                                h.test_loss), (i, r.key())


def test_a_trial_is_the_mean_over_its_folds(tmp_path: Path, data_copy: Path):
    cv = search(write(tmp_path, data_copy), tmp_path / "runs")
    folds = {(r.key(), r.fold): r for r in read_log(cv, name=FOLD_LOG_NAME)}
    rows = read_results(cv)
    assert list(rows[0])[:10] == ["rank", "batch_size", "learning_rate", "epochs", "l2",
                                  "train_loss", "val_loss", "test_loss", "status", "seconds"]
    trials = read_log(cv)
    assert len(trials) == 24
    for t in trials:
        per = [folds[(t.key(), f)] for f in range(4)]
        assert t.folds == tuple((p.train_loss, p.val_loss, p.test_loss) for p in per)
        if t.status is not Status.OK:
            assert any(p.status is t.status for p in per) and t.val_loss is None
            continue
        val = np.array([p.val_loss for p in per])
        assert t.val_loss == pytest.approx(val.mean(), rel=1e-14)
        assert t.train_loss == pytest.approx(np.mean([p.train_loss for p in per]), rel=1e-14)
        assert t.test_loss == pytest.approx(np.mean([p.test_loss for p in per]), rel=1e-14)
        assert t.val_sd == pytest.approx(val.std(ddof=1), rel=1e-12)
        assert t.val_se == pytest.approx(val.std(ddof=1) / 2, rel=1e-12)
    by_rank = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert by_rank == sorted(by_rank)  # ranked by the mean
    assert rows[0]["val_sd"] and float(rows[0]["val_se"]) == pytest.approx(
        float(rows[0]["val_sd"]) / 2)


def test_a_k_fold_trials_best_epoch_is_that_of_the_mean_curve(tmp_path: Path,
                                                              data_copy: Path):
    from agereg.runs import read_curves

    cv = search(write(tmp_path, data_copy), tmp_path / "runs")
    curves = read_curves(cv)
    checked = 0
    for t in read_log(cv):
        if t.status is not Status.OK:
            continue
        mean = {e: np.mean([curves[(*t.column()[:3], t.loss, f)][e][1] for f in range(4)])
                for e in range(1, t.epochs + 1)}
        assert t.best_epoch == min(mean, key=lambda e: (mean[e], e))
        checked += 1
    assert checked > 10


def test_holdout_standard_error_is_over_the_validation_images(tmp_path: Path,
                                                              data_copy: Path):
    one = search(write(tmp_path, data_copy, "{seed: 1, val_fraction: 0.25}"), tmp_path / "r")
    ctx = open_run(one, tmp_path / "r")
    arrays = in_memory(ctx.dataset, ctx.split, "float64")
    best = rank(ctx.records)[0]
    fit = train_reference(arrays, 3, best.batch_size, best.learning_rate, best.l2, best.epochs)
    per_image = 0.5 * (arrays.X_val @ fit.w + fit.b - arrays.y_val) ** 2  # (V,)
    assert best.val_se == pytest.approx(per_image.std(ddof=1) / math.sqrt(30), rel=1e-9)
    assert best.val_sd is None and best.folds is None


# ---------------------------------------------------------------- one standard error


def rec(bs: int, lr: float, ep: int, l2: float, val: float, se: float | None = 2.0,
        status: Status = Status.OK) -> TrialRecord:
    return TrialRecord(bs, lr, ep, l2, val, val, val, status, 0.0, val_se=se)


def test_one_se_picks_the_most_regularised_within_one_standard_error():
    records = [
        rec(16, 1e-2, 20, 1e-3, 10.0),  # lowest: threshold 10 + 2 = 12
        rec(16, 1e-2, 10, 1e-3, 11.5),  # fewer epochs: more regularised
        rec(64, 1e-3, 10, 1e-1, 11.9),  # same epochs, larger l2: the pick
        rec(64, 1e-3, 10, 1e-2, 11.0),
        rec(16, 1e-3, 5, 1.0, 12.5),  # fewest epochs, but outside one SE
        rec(8, 1e-1, 1, 0.0, 0.0, None, Status.DIVERGED),  # no losses: never a candidate
    ]
    ranked = rank(records)
    sel = select(ranked, "one_se")
    assert sel.trial == records[2] and sel.rank == 4
    assert sel.lowest == records[0] and sel.threshold == 12.0 and sel.n_within == 4
    assert select(ranked, "best").trial == records[0]
    # ties on epochs and l2: the smaller learning rate, then the larger batch
    tie = rank([rec(16, 1e-2, 5, 0.1, 10.0), rec(16, 1e-3, 5, 0.1, 10.5),
                rec(64, 1e-3, 5, 0.1, 11.0)])
    assert select(tie, "one_se").trial == tie[2]
    assert REGULARISATION_ORDER.startswith("fewer epochs, then larger l2")


def test_one_se_says_so_when_no_other_trial_is_within_one_standard_error():
    from agereg.report import selection_text

    ranked = rank([rec(16, 1e-2, 20, 1e-3, 10.0, 0.5), rec(16, 1e-2, 1, 1e-3, 11.0)])
    sel = select(ranked, "one_se")
    assert sel.trial == ranked[0] and sel.n_within == 1
    assert selection_text(sel) == (
        "selected by one_se: #1 (batch_size 16, learning_rate 0.01, epochs 20, l2 0.001), "
        "validation 10: no other trial lies within one standard error (0.5) of it, so the "
        "lowest is selected")
    ranked = rank([rec(16, 1e-2, 20, 1e-3, 10.0, 2.0), rec(16, 1e-2, 1, 1e-3, 11.0)])
    assert selection_text(select(ranked, "one_se")) == (
        "selected by one_se: #2 (batch_size 16, learning_rate 0.01, epochs 1, l2 0.001), "
        "validation 11: the most regularised of the 2 trials within one standard error (2) "
        "of the lowest, 10")


def test_one_se_without_a_standard_error_keeps_the_lowest():
    ranked = rank([rec(16, 1e-2, 20, 1e-3, 10.0, None), rec(16, 1e-2, 1, 1e-3, 10.1)])
    sel = select(ranked, "one_se")
    assert sel.trial == ranked[0] and sel.note and "no standard error" in sel.note


def test_one_se_run_selects_for_best_json_eval_and_report(tmp_path: Path, data_copy: Path):
    runs = tmp_path / "runs"
    cv = search(write(tmp_path, data_copy, extra="select: one_se"), runs)
    best = json.loads((cv / "best.json").read_text())
    sel = best["selection"]
    assert sel["rule"] == "one_se" and best["best"]["rank"] == sel["rank"]
    ranked = rank(read_log(cv))
    lowest = ranked[0]
    assert sel["lowest"] == lowest.val_loss
    assert sel["standard_error"] == lowest.val_se
    within = [r for r in ranked if r.val_loss is not None
              and r.val_loss <= lowest.val_loss + lowest.val_se]  # type: ignore[operator]
    chosen = min(within, key=lambda r: (r.epochs, -r.l2, r.learning_rate, -r.batch_size))
    assert best["best"]["trial_id"] == chosen.trial_id
    code, out, err = run(["eval", "--best", "--run", str(cv), "--bootstrap", "0",
                          "--no-plots", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["trial"]["rank"] == sel["rank"] and res["selected_by"] == "one_se"
    # a cross-validated run is refit on every training row, and says so
    assert res["refit"] is True and res["reproduced"] is None
    assert res["trained_on"] == "all 120 training rows (4-fold run)"
    assert res["folder"] == f"evals/{chosen.trial_id}-refit"
    assert any("cross-validated run (4 folds)" in n for n in res["notes"])
    assert res["ridge_path"]["best_l2"] is None and res["ridge_path"]["note"].startswith(
        "refit on all training rows, which the 4 folds validated on:")
    code, out, _ = run(["report", str(cv)])
    assert code == 0 and "selected by one_se: #" in out


# ---------------------------------------------------------------- resume and failures


def test_a_diverged_fold_gives_its_trial_no_best_epoch_fresh_or_resumed(tmp_path: Path,
                                                                         data_copy: Path):
    config = write(tmp_path, data_copy)
    config.write_text(config.read_text().replace("3.0e-2]", "3.0e-2, 1.0e+30]"))
    fresh = search(config, tmp_path / "fresh")
    diverged = [r for r in read_log(fresh) if r.status is Status.DIVERGED]
    assert diverged and all(r.best_epoch is None for r in diverged)  # as with a holdout
    assert all(r.best_epoch is not None for r in read_log(fresh) if r.status is Status.OK)
    # killed after every fold was logged, before the trials were: the resume completes
    # them from folds.jsonl and curves.csv, to the same records
    (fresh / "trials.jsonl").write_text("")
    info = json.loads((fresh / "run.json").read_text())
    (fresh / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    before = {r.key(): r.best_epoch for r in rank(read_log(search(config, tmp_path / "ref")))}
    code, _, err = run(["search", "--resume", str(fresh), "--runs-dir", str(tmp_path), "--quiet"])
    assert code == 0, err
    assert {r.key(): r.best_epoch for r in read_log(fresh)} == before


@pytest.mark.parametrize("cut", [1, 3])
def test_interrupted_cross_validation_resumes_to_the_same_numbers(
        tmp_path: Path, data_copy: Path, monkeypatch: pytest.MonkeyPatch, cut: int):
    import agereg.pipeline as pipeline

    config = write(tmp_path, data_copy, extra="search: {strategy: halving, eta: 2}")
    whole = search(config, tmp_path / "whole")
    calls = interrupt_at_call(monkeypatch, pipeline, "append_fold_records", cut + 1)
    code, _, _ = run(["search", str(config), "--runs-dir", str(tmp_path / "cut"), "--quiet"])
    assert code == 130
    monkeypatch.setattr(pipeline, "append_fold_records", calls["real"])
    code, _, err = run(["search", "--resume", "--runs-dir", str(tmp_path / "cut"), "--quiet"])
    assert code == 0, err
    resumed = latest_run(tmp_path / "cut")
    assert without_seconds(read_results(resumed)) == without_seconds(read_results(whole))


def test_a_failed_fold_fails_its_trial_and_resume_retrains_only_it(
        tmp_path: Path, data_copy: Path, monkeypatch: pytest.MonkeyPatch):
    from agereg.batched import _Trainer

    real = _Trainer.steps
    fold2 = make_folds(120, 1, 4, "x").folds[2]

    def broken(self, lo, hi, rows):  # type: ignore[no-untyped-def]
        val_rows = self.arrays.val_rows
        if self.spec.batch_size == 32 and val_rows is not None and \
                val_rows.tolist() == fold2.tolist():
            raise RuntimeError("fold 2 is cursed")
        return real(self, lo, hi, rows)

    monkeypatch.setattr(_Trainer, "steps", broken)
    runs = tmp_path / "runs"
    code, _, err = run(["search", str(write(tmp_path, data_copy)), "--runs-dir", str(runs),
                        "--quiet"])
    assert code == 3, err
    assert "12 trials failed, the first (batch_size 32," in err and "fold 2 is cursed" in err
    run_dir = latest_run(runs)
    trials = read_log(run_dir)
    assert sorted(r.batch_size for r in trials if r.status is Status.FAILED) == [32] * 12
    folds_before = read_log(run_dir, name=FOLD_LOG_NAME)
    assert sum(r.status is Status.FAILED for r in folds_before) == 12
    monkeypatch.undo()
    code, _, err = run(["search", "--resume", "--runs-dir", str(runs), "--quiet"])
    assert code == 0, err
    assert "12 trained now" in err
    lines = (run_dir / FOLD_LOG_NAME).read_text().splitlines()
    assert len(lines) == len(folds_before) + 12  # only fold 2 of batch 32 trained again
    assert all('"fold": 2' in line and '"batch_size": 32' in line for line in lines[-12:])
    clean = search(write(tmp_path, data_copy, name="clean"), tmp_path / "clean")
    assert without_seconds(read_results(run_dir)) == without_seconds(read_results(clean))


# ---------------------------------------------------------------- bit for bit, every rank


def test_every_trial_of_a_grid_with_several_batch_sizes_is_reproduced(tmp_path: Path,
                                                                        data_copy: Path):
    config = tmp_path / "many.yaml"
    config.write_text(f"""\
seed: 4
n_jobs: 2
data: {{dir: {data_copy}}}
split: {{seed: 2, val_fraction: 0.25}}
grid:
  batch_size: [1, 3, 7, 16, 40, 90, 200]
  learning_rate: [1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2, 0.1]
  epochs: [1, 2, 5]
  l2: [0.0, 1.0e-3, 1.0e-1]
""")
    run_dir = search(config, tmp_path / "runs")
    ctx = open_run(run_dir, tmp_path / "runs")
    arrays = in_memory(ctx.dataset, ctx.split, "float64")
    finished = [r for r in rank(ctx.records) if r.status.has_losses()]
    assert len(finished) > 200
    for r in finished:
        fit = retrain(ctx, arrays, [r])[0]
        assert fit.losses[1] == r.val_loss, r.key()


@pytest.mark.slow
def test_homework_grid_ranks_1_to_12_reproduce_on_smaller_data(tmp_path: Path):
    data = write_synthetic(tmp_path / "data", seed=2, n_train=900, n_test=100, side=16)
    config = tmp_path / "homework.yaml"
    text = (Path(__file__).parent.parent / "configs" / "grid.yaml").read_text()
    config.write_text(text.replace("dir: data", f"dir: {data}"))
    runs = tmp_path / "runs"
    run_dir = search(config, runs)
    for k in range(1, 13):
        code, out, err = run(["eval", "--rank", str(k), "--run", str(run_dir), "--bootstrap",
                              "0", "--no-plots", "--json"])
        assert code == 0, err
        res = json.loads(out)
        assert res["reproduced"] is True, (k, res["val_fmse"], res["search_val_fmse"])
        assert res["val_fmse"] == res["search_val_fmse"]
    assert len(list((run_dir / "evals").iterdir())) == 12  # every evaluation kept


def test_trials_trained_together_get_exactly_their_own_numbers(tmp_path: Path,
                                                               data_copy: Path):
    from agereg.assessment import _train_columns

    run_dir = search(write(tmp_path, data_copy, "{seed: 1, val_fraction: 0.25}"),
                     tmp_path / "runs")
    ctx = open_run(run_dir, tmp_path / "runs")
    arrays = in_memory(ctx.dataset, ctx.split, "float64")
    finished = [r for r in rank(ctx.records) if r.status is Status.OK]
    pair = [r for r in finished if r.batch_size == finished[0].batch_size][:2]
    assert len(pair) == 2 and pair[0].key() != pair[1].key()
    together = _train_columns(ctx.cfg, arrays, pair)
    for rec, fit in zip(pair, together, strict=True):
        (alone,) = _train_columns(ctx.cfg, arrays, [rec])
        assert fit.losses == alone.losses == (rec.train_loss, rec.val_loss, rec.test_loss)
        assert np.array_equal(fit.w, alone.w) and fit.b == alone.b


@pytest.mark.parametrize("folds", [0, 3])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_prepared_arrays_are_in_memorys_arrays_written_by_np_save(tmp_path: Path, folds: int,
                                                                  precision: str,
                                                                  monkeypatch):
    """The workers' files, written a block of rows at a time (three rows a block here),
    hold byte for byte what np.save writes of the arrays made in one go: in_memory's, and
    for K folds the training files' rows in their own order (the pool the folds index)."""
    import agereg.launcher as launcher
    from agereg.data import load_dataset
    from agereg.split import make_split

    data = write_synthetic(tmp_path / "d", seed=4, n_train=50, n_test=20, side=5)
    ds = load_dataset(data)
    sha = ds.info.sha256["ytr"]
    split = make_folds(50, 2, folds, sha) if folds else make_split(50, 2, 0.3, sha)
    monkeypatch.setattr(launcher, "WRITE_BYTES", 3 * 25 * np.dtype(precision).itemsize)
    ref = launcher.prepare_arrays(ds, split, precision, tmp_path / "work")
    arrays = in_memory(ds, split, precision)
    expected = {"X_fit": arrays.X_fit, "y_fit": arrays.y_fit, "X_te": arrays.X_te,
                "y_te": arrays.y_te}
    if folds:
        expected.update(X_fit=np.ascontiguousarray(ds.Xtr, dtype=precision),
                        y_fit=np.asarray(ds.ytr, dtype=np.float64))
        expected.update({f"fold{i}_{part}": rows for i in range(folds)
                         for part, rows in zip(("train", "val"), split.fold(i), strict=True)})
    else:
        expected.update({"X_val": arrays.X_val, "y_val": arrays.y_val})
    assert sorted(p.stem for p in (tmp_path / "work").iterdir()) == sorted(expected)
    for name, array in expected.items():
        np.save(tmp_path / "np_save.npy", array)
        assert (tmp_path / "work" / f"{name}.npy").read_bytes() == \
            (tmp_path / "np_save.npy").read_bytes(), name
    assert ref.folds == folds
