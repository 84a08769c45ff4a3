"""`agereg predict`: the saved model predicts new images exactly as numpy would with its
weights, trains (evaluates) the trial first when nothing saved it, and refuses bad images
and overwrites in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests_helpers import run, search


@pytest.fixture
def searched(tiny_config: Path, tmp_path: Path) -> tuple[Path, Path]:
    return search(tiny_config, tmp_path / "runs"), tmp_path / "runs"


def test_predict_trains_first_then_reuses_the_saved_model(searched, data_copy: Path,
                                                          tmp_path: Path):
    run_dir, runs = searched
    X = np.load(data_copy / "age_regression_Xte.npy")[:7]  # (7, 6, 6)
    np.save(tmp_path / "new.npy", X)
    code, out, err = run(["predict", str(tmp_path / "new.npy"), "--runs-dir", str(runs)])
    assert code == 0, err
    assert "has no saved model yet: evaluating it first" in err
    lines = out.splitlines()
    assert lines[0] == "index,predicted_age" and len(lines) == 8
    (folder,) = (run_dir / "evals").iterdir()
    model = json.loads((folder / "model.json").read_text())
    w, b = np.load(folder / "weights.npy"), float(np.load(folder / "bias.npy"))
    assert model["n_features"] == 36 and model["bias"] == b and model["image_shape"] == [6, 6]
    assert model["trial_id"] == folder.name and model["data_sha256"]["Xtr"]
    expected = X.reshape(7, -1).astype(np.float64) @ w + b  # what model.json says to do
    got = [float(line.split(",")[1]) for line in lines[1:]]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # the second time the saved model is used as it is
    code, out2, err = run(["predict", str(tmp_path / "new.npy"), "--runs-dir", str(runs),
                           "--json"])
    assert code == 0 and "evaluating it first" not in err
    assert json.loads(out2)["predicted_age"] == got


def test_predict_one_image_and_a_named_trial(searched, data_copy: Path, tmp_path: Path):
    run_dir, _ = searched
    X = np.load(data_copy / "age_regression_Xte.npy")
    np.save(tmp_path / "one.npy", X[3])  # a single (6, 6) image
    np.save(tmp_path / "flat.npy", X[3].reshape(-1))  # the same, flat
    outs = []
    for name in ("one.npy", "flat.npy"):
        code, out, err = run(["predict", str(tmp_path / name), "--run", str(run_dir),
                              "--trial", "2"])
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 2


@pytest.mark.parametrize("make, fragment", [
    (lambda X: X[:2, :5, :5], "do not fit the run's data, 36 pixels per image"),
    (lambda X: np.where(np.arange(36).reshape(6, 6) == 7, np.nan, X[:2]), "NaN or inf"),
    (lambda X: X[:2].astype(object), "pickled Python objects"),
    (lambda X: X[:0], "holds no images (shape (0, 6, 6))"),
])  # fmt: skip
def test_bad_images_are_one_line_before_any_training(searched, data_copy: Path,
                                                     tmp_path: Path, make, fragment):
    run_dir, _ = searched
    X = np.load(data_copy / "age_regression_Xte.npy")
    np.save(tmp_path / "bad.npy", make(X), allow_pickle=True)
    code, _, err = run(["predict", str(tmp_path / "bad.npy"), "--run", str(run_dir)])
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (run_dir / "evals").exists()  # nothing was trained for bad input


def test_predict_never_overwrites_an_output_without_force(searched, data_copy: Path,
                                                           tmp_path: Path):
    run_dir, _ = searched
    np.save(tmp_path / "new.npy", np.load(data_copy / "age_regression_Xte.npy")[:3])
    target = tmp_path / "ages.csv"
    target.write_text("mine\n")
    args = ["predict", str(tmp_path / "new.npy"), "--run", str(run_dir), "--out", str(target)]
    code, _, err = run(args)
    assert code == 2 and "exists" in err and target.read_text() == "mine\n"
    code, _, err = run([*args, "--force"])
    assert code == 0 and target.read_text().startswith("index,predicted_age\n")


def test_an_npy_out_gets_the_ages_as_an_array(searched, data_copy: Path, tmp_path: Path):
    run_dir, _ = searched
    X = np.load(data_copy / "age_regression_Xte.npy")[:5]
    np.save(tmp_path / "new.npy", X)
    args = ["predict", str(tmp_path / "new.npy"), "--run", str(run_dir)]
    code, out, err = run(args)
    assert code == 0, err
    csv = [float(line.split(",")[1]) for line in out.splitlines()[1:]]
    code, _, err = run([*args, "--out", str(tmp_path / "ages.npy")])
    assert code == 0 and "wrote" in err, err
    ages = np.load(tmp_path / "ages.npy")  # a plain array: no pickle, no CSV text
    assert ages.dtype == np.float64 and ages.shape == (5,)
    assert ages.tolist() == csv
    # JSON cannot go in an .npy file: refused before any work, the file left alone
    code, _, err = run([*args, "--out", str(tmp_path / "other.npy"), "--json"])
    assert code == 2 and "--json and --out" in err and not (tmp_path / "other.npy").exists()


def test_missing_images_are_one_line_without_data_advice(searched, tmp_path: Path):
    run_dir, _ = searched
    code, _, err = run(["predict", str(tmp_path / "new.npy"), "--run", str(run_dir)])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "new.npy: file not found; give the .npy file of the images to predict" in err
    assert "synth" not in err


def test_predict_into_a_missing_folder_says_so_before_any_work(searched, data_copy: Path,
                                                               tmp_path: Path):
    run_dir, _ = searched
    np.save(tmp_path / "new.npy", np.load(data_copy / "age_regression_Xte.npy")[:3])
    out = tmp_path / "no" / "ages.csv"
    code, _, err = run(["predict", str(tmp_path / "new.npy"), "--run", str(run_dir),
                        "--out", str(out)])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"the folder {out.parent} does not exist; create it first" in err
    assert not (run_dir / "evals").exists()


def test_an_atomic_write_into_a_missing_folder_names_the_folder(tmp_path: Path):
    from agereg.errors import RunError
    from agereg.fileio import atomic_write_text

    with pytest.raises(RunError, match=r"the folder .*/gone does not exist; create it first"):
        atomic_write_text(tmp_path / "gone" / "x.txt", "x")


@pytest.mark.parametrize("damage, fragment", [
    ("fifo", "not a regular file"),  # never opened for reading: no hang
    ("pickle", "not a numpy file"),
    ("npz", "an .npz archive, not an .npy array"),
])
def test_a_damaged_saved_model_is_one_line(searched, data_copy: Path, tmp_path: Path,
                                           damage: str, fragment: str):
    import os

    run_dir, runs = searched
    np.save(tmp_path / "new.npy", np.load(data_copy / "age_regression_Xte.npy")[:2])
    assert run(["predict", str(tmp_path / "new.npy"), "--runs-dir", str(runs)])[0] == 0
    (folder,) = (run_dir / "evals").iterdir()
    weights = folder / "weights.npy"
    weights.unlink()
    if damage == "fifo":
        os.mkfifo(weights)
    elif damage == "pickle":
        weights.write_bytes(b"\x80\x04K\x01.")  # a pickle, not an .npy file
    else:
        np.savez(tmp_path / "w.npz", w=np.zeros(36))
        weights.write_bytes((tmp_path / "w.npz").read_bytes())
    code, _, err = run(["predict", str(tmp_path / "new.npy"), "--runs-dir", str(runs)])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "the saved model is unreadable" in errors[0] and fragment in errors[0], err


def test_images_scaled_unlike_the_training_images_get_a_note(searched, data_copy: Path,
                                                             tmp_path: Path):
    run_dir, _ = searched
    Xtr = np.load(data_copy / "age_regression_Xtr.npy")
    ytr = np.load(data_copy / "age_regression_ytr.npy")
    X = np.load(data_copy / "age_regression_Xte.npy")[:6]
    assert Xtr.min() >= 0 and Xtr.max() <= 1
    np.save(tmp_path / "same.npy", X)
    B = np.round(X * 255).astype(np.uint8)  # the same images, pixels 0-255
    np.save(tmp_path / "bytes.npy", B)
    code, out, err = run(["predict", str(tmp_path / "same.npy"), "--run", str(run_dir),
                          "--json"])
    assert code == 0, err
    doc = json.loads(out)
    ages = np.array(doc["predicted_age"])
    outside = int(np.sum((ages < ytr.min()) | (ages > ytr.max())))  # direct numpy
    assert not any("pixels" in n for n in doc["notes"])
    assert len(doc["notes"]) == (outside > 0)
    code, out, err = run(["predict", str(tmp_path / "bytes.npy"), "--run", str(run_dir),
                          "--json"])
    assert code == 0, err
    pixels, ages_note = json.loads(out)["notes"]
    assert (f"lie in [{B.min():.4g}, {B.max():.4g}], the training "
            f"images' in [{Xtr.min():.4g}, {Xtr.max():.4g}]") in pixels
    assert "dividing by 255 would match" in pixels and "note: the images' pixels" in err
    predicted = np.array(json.loads(out)["predicted_age"])
    assert ages_note.startswith(
        f"{int(np.sum((predicted < ytr.min()) | (predicted > ytr.max())))} of 6 predicted")


def test_a_one_trial_run_counts_its_trial_in_the_singular(data_copy: Path, tmp_path: Path):
    config = tmp_path / "one.yaml"
    config.write_text(f"name: one\nn_jobs: 1\ndata: {{dir: {data_copy}}}\n"
                      "grid: {batch_size: 8, learning_rate: 1.0e-3, epochs: 1, l2: 0.0}\n")
    run_dir = search(config, tmp_path / "runs")
    np.save(tmp_path / "new.npy", np.load(data_copy / "age_regression_Xte.npy")[:2])
    code, _, err = run(["eval", "--run", str(run_dir), "--rank", "2"])
    assert code == 2 and "--rank 2 is out of range: the run has 1 finished trial\n" in err, err
    code, _, err = run(["predict", str(tmp_path / "new.npy"), "--run", str(run_dir),
                        "--trial", "2"])
    assert code == 2 and "--trial 2 is out of range: the run has 1 finished trial\n" in err
    code, _, err = run(["report", str(run_dir)])
    assert code == 0, err
    assert "<h2>Ranking (top 1 of 1 trial, 1 planned)</h2>" in (run_dir / "report.html").read_text()


def test_predict_refit_uses_the_model_retrained_on_training_and_validation_rows(
        searched, data_copy: Path, tmp_path: Path):
    run_dir, _ = searched
    X = np.load(data_copy / "age_regression_Xte.npy")[:4]
    np.save(tmp_path / "new.npy", X)
    args = ["predict", str(tmp_path / "new.npy"), "--run", str(run_dir), "--json"]
    code, out, err = run([*args, "--refit"])
    assert code == 0, err
    assert "no saved refit model yet: evaluating it first, as `agereg eval --rank 1 " \
        "--refit` would" in err
    got = json.loads(out)
    folder = Path(got["model"])
    assert folder.name.endswith("-refit") and (folder / "eval.json").is_file()
    assert json.loads((folder / "eval.json").read_text())["refit"] is True
    w, b = np.load(folder / "weights.npy"), float(np.load(folder / "bias.npy"))
    np.testing.assert_allclose(got["predicted_age"], X.reshape(4, -1) @ w + b, rtol=1e-12)
    # without --refit: the search's own model, another one
    code, out, err = run(args)
    assert code == 0, err
    plain = json.loads(out)
    assert not plain["model"].endswith("-refit")
    assert plain["predicted_age"] != got["predicted_age"]


def test_the_note_on_one_predicted_age_outside_the_training_ages_reads_as_one():
    from agereg.predict import range_notes

    X, ages_train = np.zeros((3, 4)), np.array([20.0, 30.0, 40.0])
    assert range_notes(X[:1], X, np.array([55.0]), ages_train) == (
        "the predicted age lies outside the training ages (20 to 40 years)",)
    assert range_notes(X[:2], X, np.array([55.0, 25.0]), ages_train) == (
        "1 of 2 predicted ages lie outside the training ages (20 to 40 years)",)
    assert range_notes(X[:1], X, np.array([25.0]), ages_train) == ()


def test_eval_takes_the_run_as_an_argument_too(searched):
    run_dir, _ = searched
    code, out, err = run(["eval", str(run_dir), "--bootstrap", "0", "--no-plots", "--json"])
    assert code == 0, err
    assert json.loads(out)["run"] == str(run_dir)
    code, _, err = run(["eval", str(run_dir), "--run", str(run_dir)])
    assert code == 2 and "give the run as RUN_DIR or --run, not both" in err
    # every command that reads one run takes --run too, as the README says
    code, out, err = run(["report", "--run", str(run_dir), "--json"])
    assert code == 0 and json.loads(out)["run"] == str(run_dir), err
    for command in (["report"], ["export", "--mlflow"], ["analyze"]):
        code, _, err = run([*command, str(run_dir), "--run", str(run_dir)])
        assert code == 2 and "give the run as RUN_DIR or --run, not both" in err, err


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 9, 10])
def test_predicting_in_blocks_of_rows_equals_the_whole_product(n: int):
    from agereg.predict import predict_rows

    rng = np.random.default_rng(n)
    X = rng.random((n, 48, 48), dtype=np.float32).reshape(n, -1)  # as predict reads them
    w, b = rng.standard_normal(2304), 37.5
    whole = np.asarray(X, dtype=np.float64) @ w + b
    assert np.array_equal(predict_rows(X, w, b), whole)  # one block
    # blocks of 4 rows (and a last block of 1 to 3): the same numbers, each row's dot
    # product perhaps summed in another order
    np.testing.assert_allclose(predict_rows(X, w, b, rows=4), whole, rtol=1e-13, atol=0)


def test_a_run_folder_that_cannot_be_written_still_predicts_and_shows_its_evaluation(
        searched, data_copy: Path, monkeypatch: pytest.MonkeyPatch):
    import errno
    import os

    import agereg.runs as runs_module

    from tests_helpers import lock_held_elsewhere

    run_dir, _ = searched
    code, _, err = run(["eval", str(run_dir), "--bootstrap", "0", "--no-plots"])
    assert code == 0, err
    real = runs_module.open_no_follow

    def read_only(path, flags, *args):  # type: ignore[no-untyped-def]
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):  # as on a read-only mount
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(path, flags, *args)

    monkeypatch.setattr(runs_module, "open_no_follow", read_only)
    images = str(data_copy / "age_regression_Xte.npy")
    code, out, err = run(["predict", images, "--run", str(run_dir)])
    assert code == 0 and out.startswith("index,predicted_age"), err
    code, out, err = run(["eval", str(run_dir)])
    assert code == 0 and "already evaluated" in err, err
    monkeypatch.setattr(runs_module, "open_no_follow", real)
    with lock_held_elsewhere(run_dir):  # a search writing it: still refused
        monkeypatch.setattr(runs_module, "open_no_follow", read_only)
        code, _, err = run(["predict", images, "--run", str(run_dir)])
    assert code == 2 and "another agereg process (pid" in err, err


def test_work_a_report_written_before_does_not_show_is_said(searched, data_copy: Path):
    run_dir, _ = searched
    assert run(["report", str(run_dir)])[0] == 0

    def said(lacks: str) -> str:
        return "".join(f"note: {run_dir / 'report.html'} {lacks}; `agereg report {run_dir}` "
                       "rewrites it".split())  # a long path may fold

    code, _, err = run(["eval", str(run_dir), "--bootstrap", "0", "--no-plots"])
    assert code == 0 and said("does not show this evaluation") in "".join(err.split()), err
    code, _, err = run(["eval", str(run_dir)])  # shown from before: nothing new
    assert code == 0 and "report.html" not in err, err
    code, _, err = run(["predict", str(data_copy / "age_regression_Xte.npy"), "--run",
                        str(run_dir), "--trial", "2"])  # evaluates rank 2 first
    assert code == 0 and said("does not show this evaluation") in "".join(err.split()), err
    code, _, err = run(["analyze", str(run_dir), "--draws", "5", "--json"])
    assert code == 0 and said("does not show this analysis") in "".join(err.split()), err
    assert run(["report", str(run_dir)])[0] == 0
    code, _, err = run(["predict", str(data_copy / "age_regression_Xte.npy"), "--run",
                        str(run_dir), "--trial", "2"])  # its model is there now
    assert code == 0 and "report.html" not in err, err
