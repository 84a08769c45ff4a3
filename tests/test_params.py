"""The parameters the search keeps (params/*.npz): they are the retrained ones bit for bit,
eval uses them, and a missing or damaged file is never trusted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from agereg.assessment import open_run, retrain
from agereg.batched import column_fit, train_group
from agereg.launcher import in_memory
from agereg.params import PARAMS_DIR, load_params
from agereg.records import rank

from tests_helpers import run, search

CONFIG = """\
name: {name}
seed: 5
n_jobs: {n_jobs}
data: {{dir: {data}}}
split: {{seed: 1, {split}}}
execution: {{precision: {precision}}}
search: {search}
grid:
  batch_size: [8, 30]
  learning_rate: [1.0e-3, 1.0e-2, 1.0e+30]
  epochs: [1, 3, 9]
  l2: [0.0, 1.0e-2]
  loss: {loss}
"""


def write(tmp_path: Path, data: Path, precision: str = "float64", search_: str = "{}",
          split: str = "val_fraction: 0.25", n_jobs: int = 2, name: str = "p",
          loss: str = "squared") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(CONFIG.format(name=name, data=data, precision=precision, search=search_,
                                  split=split, n_jobs=n_jobs, loss=loss))
    return path


def test_the_engine_returns_every_columns_parameters_at_every_recorded_epoch():
    from test_engine import make_arrays

    arrays = make_arrays(n=50, d=7)
    res = train_group(arrays, 2, 4, [1e-3, 1e-2, 1e9], [0.0, 0.1, 0.0], (1, 4),
                      snapshots=[(k, e) for k in range(3) for e in (1, 4)], weights=True)
    assert res.weights is not None and res.bias is not None and res.snapshots is not None
    assert res.weights.shape == (2, 3, 7) and res.bias.shape == (2, 3)
    for k in range(2):
        for i, e in enumerate((1, 4)):
            fit = res.snapshots[(k, e)]
            assert np.array_equal(res.weights[i, k], fit.w) and res.bias[i, k] == fit.b
            again = column_fit(arrays, res.weights[i, k], res.bias[i, k])
            assert again.losses == fit.losses and again.mae == fit.mae  # bit for bit
            assert again.val_se == fit.val_se
    assert np.isnan(res.weights[:, 2]).all()  # the diverged column keeps none


@pytest.mark.parametrize("precision, search_, loss", [
    ("float64", "{}", "squared"), ("float32", "{}", "squared"),
    ("float64", "{strategy: halving, eta: 3}", "squared"),
    ("float32", "{}", "[squared, absolute]")])
def test_kept_parameters_are_the_retrained_ones_bit_for_bit(tmp_path: Path, data_copy: Path,
                                                            precision: str, search_: str,
                                                            loss: str):
    run_dir = search(write(tmp_path, data_copy, precision, search_, loss=loss),
                     tmp_path / "runs")
    ctx = open_run(run_dir, tmp_path / "runs")
    arrays = in_memory(ctx.dataset, ctx.split, precision)
    groups = [g for stage in ctx.plan.values() for g in stage]
    finished = [r for r in rank(ctx.records) if r.status.has_losses()]
    assert len(finished) >= 10
    assert ("absolute" in loss) == any(r.loss == "absolute" for r in finished)
    for r in finished:
        got = load_params(run_dir, groups, r, arrays.X_fit.shape[1])
        assert not isinstance(got, str), (r.key(), got)
        w, b = got
        assert w.dtype == np.dtype(precision)
        fit = retrain(ctx, arrays, [r])[0]
        assert np.array_equal(w.astype(np.float64), fit.w) and float(b) == fit.b, r.key()
        kept = column_fit(arrays, w, b)
        assert (kept.losses[0], kept.losses[1], kept.losses[2]) == (
            r.train_loss, r.val_loss, r.test_loss), r.key()


def test_eval_uses_the_kept_parameters_and_retrain_gives_the_same_model(tmp_path: Path,
                                                                         data_copy: Path):
    run_dir = search(write(tmp_path, data_copy), tmp_path / "runs")
    args = ["eval", "--run", str(run_dir), "--no-plots", "--json"]
    code, out, err = run(args)
    assert code == 0, err
    kept = json.loads(out)
    assert kept["parameters"] == "kept by the search" and kept["reproduced"] is True
    assert "using the parameters the search kept" in err and "trial again" not in err
    folder = run_dir / kept["folder"]
    w_kept = np.load(folder / "weights.npy")
    code, out, err = run([*args, "--force", "--retrain"])
    assert code == 0, err
    again = json.loads(out)
    assert again["parameters"] == "trained again" and again["reproduced"] is True
    assert np.array_equal(np.load(folder / "weights.npy"), w_kept)
    for key in ("test", "train_fmse", "val_fmse", "bootstrap", "ridge", "noise"):
        assert again[key] == kept[key], key


def _damage(how: str, run_dir: Path) -> None:
    files = sorted((run_dir / PARAMS_DIR).iterdir())
    contents = [f.read_bytes() for f in files]
    if how == "missing folder":  # a run written before agereg kept parameters
        shutil.rmtree(run_dir / PARAMS_DIR)
    for f in files if how != "missing folder" else []:
        if how == "truncated":
            f.write_bytes(f.read_bytes()[:300])
        elif how == "other values":  # a valid file whose numbers are not the search's
            with np.load(f) as z:
                parts = {k: z[k] for k in z.files}
            parts["W"] = parts["W"] * 1.001
            np.savez(f.with_suffix(""), **parts)  # writes f again (adds .npz)
        elif how == "fifo":
            f.unlink()
            os.mkfifo(f)
        elif how == "compressed bomb":  # a small file whose arrays unpack to 40 MB
            with np.load(f) as z:
                parts = {k: z[k] for k in z.files}
            parts["W"] = np.zeros(5_000_000)
            np.savez_compressed(f.with_suffix(""), **parts)
    if how == "other group":  # each a real parameters file, of another group
        for f, data in zip(files, contents[1:] + contents[:1], strict=True):
            f.write_bytes(data)


@pytest.mark.parametrize("how", ["missing folder", "truncated", "other values", "fifo",
                                 "other group", "compressed bomb"])
def test_missing_or_damaged_parameters_are_never_trusted(tmp_path: Path, data_copy: Path,
                                                         how: str):
    run_dir = search(write(tmp_path, data_copy), tmp_path / "runs")
    code, out, err = run(["eval", "--run", str(run_dir), "--no-plots", "--json"])
    assert code == 0, err
    good = json.loads(out)
    _damage(how, run_dir)
    code, out, err = run(["eval", "--run", str(run_dir), "--no-plots", "--json", "--force"])
    assert code == 0 and "Traceback" not in err, err
    res = json.loads(out)
    assert res["parameters"] == "trained again" and res["reproduced"] is True
    assert any(n.startswith("trial ") and "was trained again" in n for n in res["notes"]), res
    assert res["test"] == good["test"]  # the same model either way
    if how == "compressed bomb":  # refused before unpacking, not found wrong after
        assert any("would unpack to 40,00" in n for n in res["notes"]), res["notes"]


def test_a_cross_validated_run_keeps_no_parameters(tmp_path: Path, data_copy: Path):
    run_dir = search(write(tmp_path, data_copy, split="folds: 3"), tmp_path / "runs")
    assert not (run_dir / PARAMS_DIR).exists()
    code, out, err = run(["eval", "--run", str(run_dir), "--no-plots", "--json"])
    assert code == 0, err
    assert json.loads(out)["parameters"] == "trained again"


def test_a_params_folder_that_is_a_link_is_refused_and_its_target_untouched(tmp_path: Path):
    from agereg.errors import RunError
    from agereg.params import save_params
    from agereg.plan import Group

    outside = tmp_path / "outside"
    outside.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / PARAMS_DIR).symlink_to(outside)
    group = Group(0, 8, ((1e-3, 0.0),), (1,))
    with pytest.raises(RunError, match="is a symbolic link"):
        save_params(run_dir, group, np.zeros((1, 1, 4)), np.zeros((1, 1)))
    assert list(outside.iterdir()) == []


def test_retraining_beside_the_first_eigendecomposition_reproduces_the_search(
        tmp_path: Path, data_copy: Path):
    # the first evaluation decomposes the ridge basis in a thread (BLAS on one thread)
    # while the trial trains again: the same numbers as the search's
    run_dir = search(write(tmp_path, data_copy, precision="float32"), tmp_path / "runs")
    code, out, err = run(["eval", "--run", str(run_dir), "--no-plots", "--json", "--retrain"])
    assert code == 0, err
    assert "eigendecomposition" in err and "training the trial and the runner-up" in err
    res = json.loads(out)
    assert res["parameters"] == "trained again" and res["reproduced"] is True
