"""Finding runs: `agereg runs`, and runs/latest as a link to the newest created run that a
resume of an older run does not move back."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests_helpers import latest_run, lock_held_elsewhere, printed, run, search


def test_latest_is_a_link_to_the_newest_created_run(tiny_config: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    first = search(tiny_config, runs)
    second = search(tiny_config, runs, "--n-jobs", "2")
    assert (runs / "latest").is_symlink() and os.readlink(runs / "latest") == second.name
    assert (runs / "latest" / "results.csv").is_file()  # `cd runs/latest` works
    # resuming the older run does not move latest back to it
    code, _, err = run(["search", "--resume", str(first), "--runs-dir", str(runs), "--quiet"])
    assert code == 0, err
    assert latest_run(runs) == second


def test_runs_latest_given_as_a_path_names_the_run_it_points_to(tiny_config: Path,
                                                                tmp_path: Path):
    runs = tmp_path / "runs"
    search(tiny_config, runs)
    second = search(tiny_config, runs)
    for form in ("link", "text file"):  # the text file where links are not to be had
        if form == "text file":
            (runs / "latest").unlink()
            (runs / "latest").write_text(second.name + "\n")
        # --runs-dir points elsewhere: the pointer's own folder is the one that counts
        code, _, err = run(["report", str(runs / "latest"), "--runs-dir",
                            str(tmp_path / "other")])
        assert code == 0, (form, err)
        assert f"wrote {second / 'report.html'}" in err and "runs/latest" not in err, err


def test_a_missing_latest_names_the_newest_run_and_a_dangling_one_the_listing(
        tiny_config: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    search(tiny_config, runs)
    second = search(tiny_config, runs)
    (runs / "latest").unlink()  # deleted, or lost in a copy that dropped links
    code, _, err = run(["report", "--runs-dir", str(runs)])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (f"{runs / 'latest'}: missing, but {runs} holds 2 runs (the newest: {second}); "
            "name the run folder (`agereg runs` lists them)") in err
    (runs / "latest").symlink_to("20000101-000000-gone")  # its run deleted
    code, _, err = run(["eval", "--runs-dir", str(runs)])
    assert code == 2 and ("20000101-000000-gone: run folder not found; `agereg runs` lists "
                          "the run folders") in err, err
    code, _, err = run(["report", "--runs-dir", str(tmp_path / "empty")])
    assert code == 2 and "no runs yet; start one with `agereg search CONFIG`" in err


def test_runs_lists_every_run_and_marks_damage(tiny_config: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    a = search(tiny_config, runs)
    b = search(tiny_config, runs)
    code, _, err = run(["eval", "--run", str(b), "--bootstrap", "0", "--no-plots"])
    assert code == 0, err
    (a / "run.json").write_text("{not json")
    (runs / "notes").mkdir()  # not a run folder: not listed
    code, out, err = run(["runs", "--runs-dir", str(runs), "--json"])
    assert code == 0, err
    rows = json.loads(out)
    assert [r["folder"] for r in rows] == [a.name, b.name]
    assert rows[0]["status"] == "damaged" and "run.json" in rows[0]["problem"]
    best = json.loads((b / "best.json").read_text())["best"]
    assert rows[1]["status"] == "finished"
    assert rows[1]["trials_done"] == rows[1]["trials_planned"] == 24
    assert rows[1]["best_val_loss"] == best["val_loss"] and rows[1]["evaluated"] == 1
    assert rows[1]["latest"] is True and rows[1]["data"] == "synthetic"
    assert rows[1]["name"] == "tiny" and rows[1]["started"].startswith("20")
    code, out, err = run(["runs", "--runs-dir", str(runs)])
    assert code == 0 and re.search(rf"^\*\s+{b.name}\s", out, re.M) and "damaged:" in err


def test_runs_in_a_missing_folder_is_one_line(tmp_path: Path):
    code, _, err = run(["runs", "--runs-dir", str(tmp_path / "nowhere")])
    assert code == 2 and "no runs folder here" in err and len(err.strip().splitlines()) == 1


def test_search_and_report_json_agree_with_best_json(tiny_config: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    code, out, err = run(["search", str(tiny_config), "--runs-dir", str(runs), "--quiet",
                          "--json", "--top", "3"])
    assert code == 0, err
    doc = json.loads(out)  # stdout holds the JSON document only
    run_dir = latest_run(runs)
    best = json.loads((run_dir / "best.json").read_text())
    assert doc["run"] == str(run_dir) and doc["best"] == best["best"]
    assert doc["counts"] == best["counts"] and len(doc["top"]) == 3
    assert [t["rank"] for t in doc["top"]] == [1, 2, 3] and doc["computed"] == 24
    code, out, err = run(["report", str(run_dir), "--json"])
    assert code == 0, err
    rep = json.loads(out)
    assert rep["best"] == best["best"] and rep["evaluations"] == [] and rep["analysis"] is None
    assert rep["report"].endswith("report.html")


def test_compare_shows_the_figure_that_selected_each_trial(tiny_config: Path,
                                                            tmp_path: Path):
    runs = tmp_path / "runs"
    a = search(tiny_config, runs)
    other = tmp_path / "other.yaml"
    other.write_text(tiny_config.read_text() + "select_by: mae\n")
    b = search(other, runs)
    code, out, err = run(["compare", str(a), str(b)])
    assert code == 0, err
    line_a, line_b = (x for x in out.replace("\n", " ").split("B: ") if x)
    assert "validation MAE" not in line_a and "validation MAE" in line_b, out


def test_compare_writes_a_distribution_and_a_missing_key_as_a_config_would(
        tiny_config: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    a = search(tiny_config, runs)
    other = tmp_path / "drawn.yaml"
    other.write_text(tiny_config.read_text().replace(
        "learning_rate: [1.0e-3, 1.0e-2, 1.0e+30]", "learning_rate: {log_uniform: "
        "[1.0e-4, 1.0e-2]}") + "search: {strategy: random, n_trials: 3, seed: 5}\n")
    b = search(other, runs)
    code, out, err = run(["compare", str(a), str(b), "--json"])
    assert code == 0, err
    differs = {d["key"]: (d["a"], d["b"]) for d in json.loads(out)["config_differs"]}
    assert differs["grid.learning_rate"] == ([1e-3, 1e-2, 1e30],
                                             {"log_uniform": [1e-4, 1e-2]})
    code, out, err = run(["compare", str(a), str(b)])
    said = " ".join(out.split())
    assert code == 0 and ("grid.learning_rate [0.001, 0.01, 1e+30] vs {log_uniform: "
                          "[0.0001, 0.01]}") in said, out
    assert "search.n_trials unset vs 3" in said and "search.seed unset vs 5" in said


def test_compare_two_runs(tiny_config: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    a = search(tiny_config, runs)
    other = tmp_path / "other.yaml"
    other.write_text(tiny_config.read_text().replace("l2: [0.0, 1.0e-2]", "l2: [0.1]"))
    b = search(other, runs)
    code, out, err = run(["compare", str(a), str(b), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["paired_test"] is None and "neither run is evaluated" in doc["paired_note"]
    assert {d["key"] for d in doc["config_differs"]} == {"grid.l2"}
    for r in (a, b):
        code, _, err = run(["eval", "--run", str(r), "--bootstrap", "0", "--no-plots"])
        assert code == 0, err
        if r == a:  # the note names the one run still to evaluate
            note = json.loads(run(["compare", str(a), str(b), "--json"])[1])["paired_note"]
            assert note.startswith(f"{b} is not evaluated: run `agereg eval --best --run {b}`")
    code, out, err = run(["compare", str(a), str(b), "--json", "--bootstrap", "200"])
    assert code == 0, err
    p = json.loads(out)["paired_test"]
    assert p["n_images"] == 60 and p["resamples"] == 200
    assert p["observed_difference"] == pytest.approx(p["test_fmse"][0] - p["test_fmse"][1])
    lo, hi = p["difference_ci"]
    assert lo <= hi and 0 <= p["share_a_better"] <= 1
    evals = {r: json.loads(next((r / "evals").iterdir()).joinpath("eval.json").read_text())
             for r in (a, b)}
    assert p["test_fmse"] == pytest.approx([evals[a]["test"]["fmse"],
                                            evals[b]["test"]["fmse"]], rel=1e-9)
    code, out, err = run(["compare", str(a), str(b)])
    assert code == 0 and "configs differ in: grid.l2 [0.0, 0.01] vs [0.1]" in out
    assert "A better in" in out and "validated on different rows" not in out
    assert p["identical_predictions"] is False
    # a run and its copy: the same model twice, said as such, not "A better in 0%"
    twin = runs / "twin"
    shutil.copytree(a, twin)
    code, out, err = run(["compare", str(a), str(twin)])
    assert code == 0, err
    assert ("the two selected models predict the same age for every image (test fMSE "
            f"{p['test_fmse'][0]:.4g}): no difference to test") in " ".join(out.split())
    assert "A better in" not in out
    code, _, err = run(["compare", str(a), str(a)])
    assert code == 2 and "two different runs" in err
    # another split: the validation figures are from other rows, and it says so
    folds = tmp_path / "folds.yaml"
    folds.write_text(tiny_config.read_text().replace("split: {seed: 1, val_fraction: 0.25}",
                                                     "split: {seed: 1, folds: 3}"))
    c = search(folds, runs)
    code, out, err = run(["compare", str(a), str(c), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["same_split"] is False and doc["splits"] == ["seed 1, val_fraction 0.25",
                                                           "3 folds (seed 1)"]
    assert json.loads(run(["compare", str(a), str(b), "--json"])[1])["same_split"] is True
    code, out, err = run(["compare", str(a), str(c)])
    assert code == 0 and ("note: the runs validated on different rows (A: seed 1, "
                          "val_fraction 0.25; B: 3 folds (seed 1)): their validation figures "
                          "do not compare, their test figures do") in " ".join(out.split())


def test_a_run_whose_process_died_is_listed_as_killed(tiny_config: Path, tmp_path: Path):
    """run.json says running; a live process holding the run's lock makes it running, the
    same process killed with SIGKILL (nothing written on the way out) makes it killed."""
    import time

    runs = tmp_path / "runs"
    r = search(tiny_config, runs)
    info = json.loads((r / "run.json").read_text())
    (r / "run.json").write_text(json.dumps({**info, "status": "running"}))
    with lock_held_elsewhere(r):
        code, out, err = run(["runs", "--runs-dir", str(runs), "--json"])
        assert code == 0 and json.loads(out)[0]["status"] == "running", err
        code, _, err = run(["report", str(r), "--runs-dir", str(runs)])
        assert code == 0 and "; status running; " in (r / "report.html").read_text(), err
    time.sleep(0.05)
    code, out, err = run(["runs", "--runs-dir", str(runs), "--json"])
    assert code == 0 and json.loads(out)[0]["status"] == "killed", err
    code, out, err = run(["runs", "--runs-dir", str(runs)])
    assert code == 0 and " killed " in out
    assert f"agereg search --resume {r}" in " ".join(err.split())
    code, _, err = run(["report", str(r), "--runs-dir", str(runs)])
    assert code == 0 and "; status killed (no process holds the run any more; " in (
        r / "report.html").read_text(), err
    assert json.loads((r / "run.json").read_text())["status"] == "running"  # only read


def test_a_listing_s_glance_at_the_lock_never_fails_a_search(tmp_path: Path):
    """`agereg runs` holds a shared lock for a moment to see whether a search is alive; a
    search taking the lock just then waits it out instead of failing (a real holder still
    fails it, after about 0.2 s)."""
    import fcntl
    import threading

    from agereg.errors import RunError
    from agereg.runs import RunLock

    (tmp_path / ".lock").write_text("")
    fd = os.open(tmp_path / ".lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # the glance, released 50 ms later
    threading.Timer(0.05, lambda: os.close(fd)).start()
    with RunLock(tmp_path):
        pass
    with RunLock(tmp_path), pytest.raises(RunError, match="another agereg process"), \
            RunLock(tmp_path):
        pass


def test_compare_says_when_a_run_s_search_did_not_finish(tiny_config: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    a, b = search(tiny_config, runs), search(tiny_config, runs)
    code, out, err = run(["compare", str(a), str(b), "--json"])
    assert code == 0 and json.loads(out)["unfinished"] == [None, None], err
    info = json.loads((a / "run.json").read_text())
    (a / "run.json").write_text(json.dumps({**info, "status": "running"}))
    code, out, err = run(["compare", str(a), str(b), "--json"])
    assert code == 0, err
    said = json.loads(out)["unfinished"]
    assert said[0].startswith("the search was killed: its log holds 24 of 24 planned trials")
    assert said[1] is None
    with lock_held_elsewhere(a):  # a live search holds the lock: still running
        code, out, err = run(["compare", str(a), str(b)])
    assert code == 0, err
    assert ("note: A: the search is still running: its log holds 24 of 24 planned trials, "
            "so the ranking may change when it finishes") in " ".join(out.split())


def test_runs_shows_every_column_and_long_folder_names_whole_at_80_columns(tiny_config: Path,
                                                                         tmp_path: Path):
    from agereg import cli

    runs = tmp_path / "runs"
    name = "a-run-name-of-the-longest-kind-that-the-config-accepts-64-chars"
    long = tmp_path / "long.yaml"
    long.write_text(tiny_config.read_text().replace("name: tiny", f"name: {name}"))
    folder = search(long, runs).name
    shown = printed(80, lambda: cli.runs_.callback(str(runs), False))  # type: ignore[misc]
    assert all(len(line) <= 80 for line in shown.splitlines())
    assert "…" not in shown, shown
    # the folder column, read down: the whole name, folded over lines
    rows = shown.splitlines()
    body = rows[next(i for i, r in enumerate(rows) if r.lstrip().startswith("folder")) + 1:]
    assert "".join(r[2:].split(" ")[0] for r in body) == folder, shown
    for column in ("data", "strategy", "status", "trials", "best val", "evals", "synth",
                   "grid", "finished", "24/24"):  # a long name folds; no column goes
        assert column in shown, shown
    assert "left out" not in shown
    # narrower than the table: the columns least needed go, and a line says which
    narrow = printed(56, lambda: cli.runs_.callback(str(runs), False))  # type: ignore[misc]
    header = next(r for r in narrow.splitlines() if r.lstrip().startswith("folder")).split()
    assert header == ["folder", "status", "trials", "best", "val"], narrow
    assert ("(data, strategy and evals left out at 56 columns; `agereg runs --json` has "
            "every column)") in " ".join(narrow.split()), narrow


@pytest.mark.parametrize("value, kept", [(0.0036, 0.0036), (2, 2.0), ("abc", None),
                                         (-1, None), (0, None), (True, None),
                                         (float("inf"), None), (None, None), ([1], None)])
def test_a_stored_lr_limit_is_used_only_when_it_is_a_positive_number(value, kept):
    from agereg.runs import stored_lr_limit

    # it only caps the learning rates the notices suggest: anything else is ignored
    assert stored_lr_limit({"lr_limit": value}) == kept
    assert stored_lr_limit({}) is None
