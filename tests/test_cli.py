"""The CLI end to end with CliRunner on a tiny synthetic dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agereg.cli import cli
from agereg.runs import CSV_COLUMNS

from tests_helpers import latest_run, printed, read_results, run, search, without_seconds


def test_search_then_eval(tiny_config: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    code, out, err = run(["search", str(tiny_config), "--runs-dir", str(runs)])
    assert code == 0, err
    assert "best trials" in out and "results in" in err
    run_dir = latest_run(runs)
    for name in ("config.yaml", "results.csv", "trials.jsonl", "best.json", "dataset.json",
                 "split.json", "run.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / ".work").exists()
    rows = read_results(run_dir)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 24 and [r["rank"] for r in rows] == [str(i) for i in range(1, 25)]
    ok = [r for r in rows if r["status"] == "ok"]
    assert [float(r["val_loss"]) for r in ok] == sorted(float(r["val_loss"]) for r in ok)
    # lr 1e30 diverges: ranked after every finished trial, losses empty
    div = [r for r in rows if r["status"] == "diverged"]
    assert div and all(r["learning_rate"] == "1e+30" and r["val_loss"] == "" for r in div)
    assert rows.index(div[0]) == len(ok)
    dataset = json.loads((run_dir / "dataset.json").read_text())
    assert dataset["kind"] == "synthetic"
    best = json.loads((run_dir / "best.json").read_text())["best"]
    assert best["val_loss"] == float(rows[0]["val_loss"])
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"

    code, out, err = run(["eval", "--best", "--runs-dir", str(runs), "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["reproduced"] is True and res["val_fmse"] == best["val_loss"]
    assert res["test"]["fmse"] == pytest.approx(best["test_loss"], rel=1e-12)
    assert res["test"]["rmse"] == pytest.approx(np.sqrt(2 * res["test"]["fmse"]))
    assert res["folder"] == f"evals/{best['trial_id']}"
    assert (run_dir / res["folder"] / "eval.json").is_file()

    code, out, err = run(["eval", "--best", "--refit", "--runs-dir", str(runs)])
    assert code == 0, err
    assert "refit on train+validation (120 rows)" in out


def test_results_identical_for_n_jobs_1_and_2(tiny_config: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch):
    from agereg import launcher

    tasks: list[int] = []  # groups per task
    real = launcher.run_groups
    monkeypatch.setattr(launcher, "run_groups", lambda ref, groups, *args: (
        tasks.append(len(groups)), real(ref, groups, *args))[1])
    a = search(tiny_config, tmp_path / "r1", "--n-jobs", "1")
    assert tasks == [2]  # one worker: batch sizes 8 and 32 train together
    b = search(tiny_config, tmp_path / "r2", "--n-jobs", "2")
    tasks.clear()
    c = search(tiny_config, tmp_path / "r3", "--n-jobs", "2", "--backend", "threading")
    assert tasks == [1, 1]  # two workers: each group alone
    assert without_seconds(read_results(a)) == without_seconds(read_results(b))
    assert without_seconds(read_results(a)) == without_seconds(read_results(c))


def test_reference_engine_agrees_with_batched(tiny_config: Path, tmp_path: Path):
    a = read_results(search(tiny_config, tmp_path / "r1"))
    b = read_results(search(tiny_config, tmp_path / "r2", "--engine", "reference"))
    key = lambda r: (r["batch_size"], r["learning_rate"], r["epochs"], r["l2"])  # noqa: E731
    ref = {key(r): r for r in b}
    for r in a:
        s = ref[key(r)]
        assert r["status"] == s["status"]
        for col in ("train_loss", "val_loss", "test_loss"):
            if r[col]:
                assert float(r[col]) == pytest.approx(float(s[col]), rel=1e-9)


def test_split_command_and_search_uses_it(tiny_config: Path, data_copy: Path, tmp_path: Path):
    code, _, err = run(["split", "--seed", "9", "--data", str(data_copy)])
    assert code == 0 and "96 training and 24 validation" in err
    doc = json.loads((data_copy / "split.json").read_text())
    assert doc["seed"] == 9 and doc["n"] == 120 and len(doc["val"]) == 24
    code, _, err = run(["search", str(tiny_config), "--runs-dir", str(tmp_path / "r"),
                        "--quiet"])
    assert code == 0 and "takes precedence" in err
    run_dir = latest_run(tmp_path / "r")
    assert json.loads((run_dir / "split.json").read_text())["seed"] == 9
    assert "seed: 9" in (run_dir / "config.yaml").read_text()


def test_search_creates_split_when_absent(tiny_config: Path, data_copy: Path, tmp_path: Path):
    code, _, err = run(["search", str(tiny_config), "--runs-dir", str(tmp_path), "--quiet"])
    assert code == 0 and "created it from split.seed 1" in err
    assert json.loads((data_copy / "split.json").read_text())["seed"] == 1


def test_synth_command(tmp_path: Path):
    out = tmp_path / "d"
    code, _, err = run(["synth", "--out", str(out), "--n-train", "30", "--n-test", "10",
                        "--side", "4", "--seed", "2"])
    assert code == 0 and "not real faces" in err
    assert np.load(out / "age_regression_Xtr.npy").shape == (30, 4, 4)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["search", "{tmp}/missing.yaml"], "missing.yaml"),
        (["eval", "--best", "--runs-dir", "{tmp}/empty"], "no runs yet"),
        (["eval", "--best", "--run", "{tmp}"], "not an agereg run folder"),
        (["split", "--seed", "1", "--data", "{tmp}/nodata"], "dataset folder not found; give "
         "the folder holding the four .npy files (data.dir in the config, or --data), or make "
         "a stand-in with `agereg synth --out "),
        (["search", "{config}", "--n-jobs", "0"], "--n-jobs"),
        (["search", "--resume", "--runs-dir", "{tmp}/empty"], "no runs yet"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, fragment, tmp_path: Path, tiny_config: Path):
    args = [a.format(tmp=tmp_path, config=tiny_config) for a in args]
    code, _out, err = run(args)
    assert code == 2, err
    assert fragment in err and "Traceback" not in err
    assert err.startswith("error:") and err.count("\n") == 1  # one line, nothing else


def test_bad_data_in_config_exits_2(tiny_config: Path, data_copy: Path, tmp_path: Path):
    (data_copy / "age_regression_yte.npy").write_bytes(b"garbage")
    code, _, err = run(["search", str(tiny_config), "--runs-dir", str(tmp_path / "r")])
    assert code == 2 and "age_regression_yte.npy" in err
    assert not (tmp_path / "r").exists()  # nothing written for a bad input


def test_usage_errors_exit_2(tmp_path: Path):
    code, _, err = run(["search"])
    assert code == 2 and "CONFIG" in err
    code, _, err = run(["eval", "--best", "--rank", "2"])
    assert code == 2 and "not both" in err


def test_debug_shows_traceback(tmp_path: Path):
    code, _, err = run(["--debug", "search", str(tmp_path / "missing.yaml")])
    assert code == 2 and "Traceback" in err and "missing.yaml" in err


def test_help_lists_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("search", "eval", "split", "synth"):
        assert name in result.output


def test_python_dash_m(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "agereg", "--version"], capture_output=True,
                          text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0 and "agereg" in proc.stdout


def test_debug_after_the_subcommand_shows_the_traceback_and_still_exits_2(tmp_path: Path):
    code, _, err = run(["eval", "--run", str(tmp_path / "nowhere"), "--debug"])
    assert code == 2
    assert "Traceback" in err and "RunError" in err
    assert err.strip().splitlines()[-1].startswith("error: ")


def test_ranking_numbers_tell_ranks_apart_in_one_format():
    from agereg.report import column_texts

    vals = [88.85888851, 88.85930041, 88.85930449, 88.86875, None]
    texts = column_texts(vals, distinguish=True)
    assert len(set(texts[:4])) == 4 and texts[4] == "-"
    assert len({len(t.split(".")[1]) for t in texts[:4]}) == 1  # one format: same decimals
    assert column_texts([88.86, 120.5]) == ["88.86", "120.50"]
    assert column_texts([1234.5, 88.86]) == ["1234", "89"]
    assert column_texts([0.05, 0.0123]) == ["0.05000", "0.01230"]
    assert column_texts([3.0e5, 2.0]) == ["3.000e5", "2.000e0"]


def test_the_ranking_table_fits_80_columns_and_never_cuts_an_exponent():

    from agereg import cli
    from agereg.records import TrialRecord

    recs = [TrialRecord(640, 3e-08, 64, 1e-07, 3.456789e5 + i * 0.37, 3.456789e5 + i * 0.0123,
                        2.1e6 + i, "ok", 0.1, val_mae=123.456 + i) for i in range(3)]
    text = printed(80, lambda: cli._print_ranking(recs, 3))
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text and "3.4567890e5" in text and "2.100e6" in text


@pytest.mark.parametrize("by", ["fmse", "mae"])
def test_a_narrow_terminal_leaves_out_figures_the_ranking_does_not_need(by: str):

    from agereg import cli
    from agereg.records import Status, TrialRecord

    recs = [TrialRecord(16, 4.136e-09 * (i + 1), 20, 1e-07, 318.17 + i, 335.13 + i,
                        324.84 + i, Status.OK, 0.1, val_mae=22.7 + i) for i in range(3)]

    def shown(width: int) -> tuple[list[str], str]:
        text = printed(width, lambda: cli._print_ranking(recs, 3, by))
        assert all(len(line) <= width for line in text.splitlines())
        header = next(line for line in text.splitlines() if line.split()[:2] == ["#", "batch"])
        return header.split(), " ".join(text.split())

    header, text = shown(80)  # everything fits: nothing left out
    assert header == ["#", "batch", "lr", "epochs", "l2", "train", "val", "test", "MAE",
                      "status"] and "left out" not in text
    header, text = shown(56)
    ranked_by = "MAE" if by == "mae" else "val"
    assert header == ["#", "batch", "lr", "epochs", "l2", ranked_by, "status"]
    left_out = "train, val and test" if by == "mae" else "train, test and MAE"
    assert (f"({left_out} left out at 56 columns; the run's results.csv has every "
            "figure)") in text
    # no number folds onto a second line: every row's figures stay whole
    assert "4.136e-09" in text and "1.241e-08" in text
    assert ("335.13" in text) == (by == "fmse") and ("22.70" in text) == (by == "mae")


def _closed_reader(args: list[str], stream: str, cwd: Path, until: bytes = b""
                   ) -> subprocess.CompletedProcess:
    """Run agereg with its ``stream`` ("stdout" or "stderr") a pipe whose reader goes away
    (as in ``agereg report | head -1``) at once, or after a line starting ``until``."""
    other = "stderr" if stream == "stdout" else "stdout"
    proc = subprocess.Popen([sys.executable, "-m", "agereg", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = getattr(proc, stream)
    lines = []
    while until and not (lines and lines[-1].startswith(until)):
        lines.append(reader.readline())
        assert lines[-1], f"no line starting {until!r}"
    reader.close()
    kept = proc.communicate(timeout=120)[0 if other == "stdout" else 1]
    return subprocess.CompletedProcess(args, proc.returncode, lines, kept)


def test_a_reader_that_goes_away_ends_agereg_quietly_with_141(tiny_config: Path,
                                                              tmp_path: Path):
    # 141 is what a shell reports for a tool that SIGPIPE ended; 1 would say "a bug"
    runs = str(tmp_path / "runs")
    stopped = _closed_reader(["search", str(tiny_config), "--runs-dir", runs], "stderr",
                             tmp_path, until=b"run folder: ")
    assert stopped.returncode == 141 and stopped.stderr == b""
    run_dir = latest_run(Path(runs))
    # stopped as on Ctrl-C: saved and resumable
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    code, _, err = run(["search", "--resume", str(run_dir), "--runs-dir", runs, "--quiet"])
    assert code == 0, err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    for args in (["report", "--runs-dir", runs], ["runs", "--runs-dir", runs, "--json"],
                 ["eval", "--runs-dir", runs, "--bootstrap", "0", "--no-plots"]):
        done = _closed_reader(args, "stdout", tmp_path)
        assert done.returncode == 141, args
        assert b"error" not in done.stderr and b"Traceback" not in done.stderr, args
    # the evaluation was saved before its result was printed
    assert len(list((run_dir / "evals").glob("*/eval.json"))) == 1


def test_a_stream_that_cannot_show_a_character_gets_a_question_mark(tiny_config: Path,
                                                                    tmp_path: Path):
    # the report's "R²" on an ASCII stdout was an internal error after the work was done
    import os

    runs = str(tmp_path / "runs")
    assert run(["search", str(tiny_config), "--runs-dir", runs, "--quiet"])[0] == 0
    assert run(["eval", "--runs-dir", runs, "--bootstrap", "0", "--no-plots"])[0] == 0
    proc = subprocess.run([sys.executable, "-m", "agereg", "report", "--runs-dir", runs],
                          capture_output=True, cwd=tmp_path, check=False,
                          env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr
    assert b"test R? " in proc.stdout


def test_a_run_finds_its_data_from_another_folder(tmp_path: Path, tiny_data: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    import shutil

    home = tmp_path / "project"
    shutil.copytree(tiny_data, home / "data")
    (home / "c.yaml").write_text("name: c\nn_jobs: 1\ndata: {dir: data}\ngrid: {batch_size: "
                                 "[8], learning_rate: [0.01], epochs: [1, 2], l2: [0.0]}\n")
    monkeypatch.chdir(home)
    assert run(["search", "c.yaml", "--quiet"])[0] == 0
    run_dir = str(latest_run(home / "runs"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # data.dir "data" does not exist here: the folder where the search read the files
    code, _, err = run(["eval", "--run", run_dir, "--bootstrap", "0", "--no-plots"])
    assert code == 0, err
    assert f"data: {home / 'data'}, where the search read this run's files (data.dir 'data' " \
           "does not exist here)" in err
    # "data" here holds other files: the same, said so
    from agereg.synth import write_synthetic

    write_synthetic(elsewhere / "data", seed=9, n_train=50, n_test=20, side=6)
    code, _, err = run(["search", "--resume", run_dir, "--quiet"])
    assert code == 0 and "(data.dir 'data' holds other files here)" in err, err
    # a config given with --resume is taken at its word
    (elsewhere / "c.yaml").write_text((home / "c.yaml").read_text())
    code, _, err = run(["search", "--resume", run_dir, "--quiet", "c.yaml"])
    assert code == 2 and "differ from the data this run used" in err, err
    # the files gone from both places: one line saying where they were
    shutil.rmtree(elsewhere / "data")
    (home / "data").rename(home / "moved")
    code, _, err = run(["predict", str(home / "moved" / "age_regression_Xte.npy"), "--run",
                        run_dir])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"its data folder 'data' does not exist here, and {home / 'data'}, where the " \
           "search read its files, does not exist either" in err
    # the config names the recorded folder itself, gone
    (elsewhere / "data").mkdir()
    code, _, err = run(["eval", "--run", run_dir])
    assert code == 2 and "holds other files now" not in err, err  # an empty folder: its error
    assert "age_regression_Xtr.npy" in err, err


def test_a_run_whose_absolute_data_folder_is_gone_says_so(tiny_config: Path, data_copy: Path,
                                                          tmp_path: Path):
    runs = str(tmp_path / "runs")
    assert run(["search", str(tiny_config), "--runs-dir", runs, "--quiet"])[0] == 0
    data_copy.rename(tmp_path / "moved")
    code, _, err = run(["eval", "--runs-dir", runs])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"its data folder {data_copy} does not exist any more; put the run's four files " \
           "back there" in err


def test_more_workers_than_cores_is_noted(tiny_config: Path, tmp_path: Path):
    from joblib import cpu_count

    runs = str(tmp_path / "runs")
    many = str(cpu_count() + 1)
    code, _, err = run(["search", str(tiny_config), "--runs-dir", runs, "--quiet",
                        "--n-jobs", many])
    assert code == 0 and f"note: n_jobs {many} on {cpu_count()} cores" in err, err
    code, _, err = run(["search", str(tiny_config), "--runs-dir", runs, "--quiet",
                        "--n-jobs", str(cpu_count())])
    assert code == 0 and "n_jobs" not in err, err


def test_a_config_given_to_resume_says_where_it_goes(tiny_config: Path, tmp_path: Path):
    code, _, err = run(["search", "--resume", str(tiny_config), "--runs-dir",
                        str(tmp_path / "runs")])
    assert code == 2 and "a config file, not a run folder;" in err, err
    assert "--resume and --extend take one, after the config: `agereg search CONFIG " \
           "--resume RUN`" in err, err
    # the other commands say the same in one line (click refused a file before)
    for args in (["report", str(tiny_config)], ["eval", "--run", str(tiny_config)],
                 ["compare", str(tiny_config), str(tiny_config)],
                 ["predict", str(tiny_config), "--run", str(tiny_config)],
                 ["analyze", "--run", str(tiny_config)],
                 ["export", str(tiny_config), "--mlflow"]):
        code, _, err = run(args)
        assert code == 2 and "a config file, not a run folder;" in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def test_the_edge_notice_suggests_learning_rates_up_to_the_measured_limit(
        data_copy: Path, tmp_path: Path):
    config = tmp_path / "edge.yaml"
    config.write_text(f"name: edge\ndata: {{dir: {data_copy}}}\nn_jobs: 1\ngrid:\n"
                      "  batch_size: [8]\n  learning_rate: [1.0e-3, 1.0e-2]\n"
                      "  epochs: [3]\n  l2: [0.0]\n")
    runs = tmp_path / "runs"
    run_dir = search(config, runs)
    # the search's limit against numpy: 2 / the top eigenvalue of [X, 1]^T [X, 1] / n
    # over the run's training rows
    info = json.loads((run_dir / "run.json").read_text())
    train = json.loads((run_dir / "split.json").read_text())["train"]
    X = np.load(data_copy / "age_regression_Xtr.npy").reshape(120, -1).astype(np.float64)
    Xb = np.hstack([X[train], np.ones((len(train), 1))])
    limit = 2 / np.linalg.eigvalsh(Xb.T @ Xb / len(train))[-1]
    assert info["lr_limit"] == pytest.approx(limit, rel=1e-6)
    assert limit < 0.01 * 30  # so the notice caps its range at the limit
    notices = json.loads((run_dir / "best.json").read_text())["notices"]
    said = [n for n in notices if n.startswith("best learning_rate 0.01")]
    assert said and said[0].endswith(f"up to the full-batch limit 2 / lambda_max = "
                                     f"{limit:.3g}; try learning_rate: {{log_uniform: "
                                     f"[0.00333, {limit:.3g}]}}"), notices
    code, out, err = run(["report", str(run_dir), "--json"])
    assert code == 0 and json.loads(out)["notices"] == notices, err
    # a resume keeps the limit in run.json, and measures it for a run made before
    code, _, err = run(["search", "--resume", str(run_dir), "--quiet"])
    assert code == 0, err
    assert json.loads((run_dir / "run.json").read_text())["lr_limit"] == info["lr_limit"]
    older = {k: v for k, v in info.items() if k != "lr_limit"}
    (run_dir / "run.json").write_text(json.dumps({**older, "status": "interrupted"}))
    code, _, err = run(["search", "--resume", str(run_dir), "--quiet"])
    assert code == 0, err
    assert json.loads((run_dir / "run.json").read_text())["lr_limit"] == info["lr_limit"]


def test_a_search_where_every_trial_diverged_says_which_learning_rates_to_try(
        data_copy: Path, tmp_path: Path):
    import re

    def text(name: str, lrs: str) -> str:
        return (f"name: {name}\ndata: {{dir: {data_copy}}}\nn_jobs: 1\ngrid:\n"
                f"  batch_size: [8]\n  learning_rate: [{lrs}]\n  epochs: [3]\n  l2: [0.0]\n")

    config = tmp_path / "wild.yaml"
    config.write_text(text("wild", "1.0, 10.0"))
    code, out, err = run(["search", str(config), "--runs-dir", str(tmp_path / "runs"),
                          "--quiet"])
    assert code == 0 and "0 finished, 2 diverged" in err, err
    run_dir = latest_run(tmp_path / "runs")
    (said,) = json.loads((run_dir / "best.json").read_text())["notices"]
    assert said.startswith("every trial diverged, down to the smallest learning rate "
                           "tried, 1 (the full-batch limit 2 / lambda_max is ")
    assert said in " ".join(out.split()), out
    # the suggested range trains: its top, as the next search would try it
    top = re.fullmatch(r".*try learning_rate: \{log_uniform: \[(\S+), (\S+)\]\}", said)
    assert top is not None
    config.write_text(text("tame", top.group(2)))
    code, _, err = run(["search", str(config), "--runs-dir", str(tmp_path / "runs"),
                        "--quiet"])
    assert code == 0 and "1 finished, 0 diverged" in err, err


def test_the_eval_table_fits_80_columns_and_never_cuts_a_number():

    from agereg import cli
    from agereg.report import EvalText

    # the widest figures: a long ridge l2 in the header, a small negative R², a wide CI
    rows = [["test MAE (years)", "10.5", "11.98", "11.98", "10.46"],
            ["test RMSE (years)", "13.31", "15.23", "15.25", "13.26"],
            ["fMSE 95% CI", "[1.234e+04, 1.567e+04]", "", "", ""],
            ["test R²", "0.2359", "-0.0006315", "-0.002915", "0.2419"]]
    text = EvalText("trial #1", "batch_size 10, learning_rate 0.00204388, epochs 128, l2 "
                    "0.215443", False, "batched, float64", "the training split", "synthetic",
                    None, ["metric", "this trial", "mean", "median", "ridge l2=0.215443"], rows,
                    [], [], [])
    shown = printed(80, lambda: cli._print_eval(text))
    assert all(len(line) <= 80 for line in shown.splitlines())
    assert "…" not in shown, shown
    # whole, though the interval may wrap at its space
    for figure in ("-0.0006315", "-0.002915", "[1.234e+04,", "1.567e+04]", "test RMSE (years)"):
        assert figure in shown, shown
    assert "left out" not in shown and "mean, median: the constant predictors" in shown
    # narrower: the constant predictors' columns go first, and a line says so
    narrow = " ".join(printed(60, lambda: cli._print_eval(text)).split())
    assert "(mean and median left out at 60 columns; eval.json and `--json` have them)" \
        in narrow, narrow
    assert "constant predictor" not in narrow and "-0.0006315" not in narrow
    assert "0.2359" in narrow and "0.2419" in narrow  # this trial and ridge, whole
