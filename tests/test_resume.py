"""Never lose a finished trial: resume, torn logs, kill -9, SIGINT/SIGTERM, locks,
unwritable folders and a full disk."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agereg import fileio
from agereg.runs import LOG_NAME, RunLock, create_run_dir, read_log
from agereg.synth import write_synthetic

from tests_helpers import (
    curve_lines,
    latest_run,
    read_results,
    run,
    search,
    without_seconds,
)

# A grid of 8 groups (one per batch size) that takes a few seconds with n_jobs=1, so a
# signal can land between groups.
SLOW_CONFIG = """\
name: slow
seed: 5
n_jobs: {n_jobs}
data: {{dir: {data}}}
grid:
  batch_size: [2, 3, 4, 5, 6, 7, 8, 9]
  learning_rate: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]
  epochs: [20, 40]
  l2: [0.0, 1.0e-4, 1.0e-3, 1.0e-2]
"""


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("slow") / "data", seed=1, n_train=600,
                           n_test=100, side=10)


def slow_config(tmp_path: Path, data: Path, n_jobs: int = 1) -> Path:
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW_CONFIG.format(data=data, n_jobs=n_jobs))
    return path


def start(config: Path, runs: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agereg", "search", str(config), "--runs-dir", str(runs),
         "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_log_lines(runs: Path, proc: subprocess.Popen, timeout: float = 60) -> int:
    """Wait until the run's trial log holds at least one record; return the count."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (runs / "latest").exists():
            log = latest_run(runs) / LOG_NAME
            if log.exists() and log.stat().st_size > 0:
                return log.read_bytes().count(b"\n")
        assert proc.poll() is None, "the search ended before the first group finished"
        time.sleep(0.01)
    raise AssertionError("no trial finished in time")


def children(pid: int) -> list[int]:
    ps = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                        text=True, check=False)
    return [int(p) for p in ps.stdout.split()]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, already dead but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_gone(pids: list[int], timeout: float = 10) -> None:
    """Every process in ``pids`` ends within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if alive(pid)]


_IDLE_WORKERS = """
import os, sys, time
from joblib import Parallel, delayed
from agereg.launcher import _backend

with _backend("loky", 2, None, None):  # the workers agereg's searches use
    pids = Parallel(n_jobs=2)(delayed(os.getpid)() for _ in range(8))
print(*sorted(set(pids)), flush=True)
time.sleep(60)  # killed with SIGKILL here, its workers idle
"""


def test_workers_that_outlive_a_kill_9_exit_even_when_idle():
    # loky keeps idle workers for 300 s; a worker watching its parent only from its first
    # task could also miss a parent killed before it took one, then block for ever on a
    # result nobody reads
    proc = subprocess.Popen([sys.executable, "-c", _IDLE_WORKERS], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert workers and proc.pid not in workers
    proc.kill()
    proc.wait()
    assert_gone(workers, timeout=5)


def test_kill_9_then_resume_equals_uninterrupted(tmp_path: Path, slow_data: Path):
    config = slow_config(tmp_path, slow_data)
    reference = search(config, tmp_path / "ref")
    runs = tmp_path / "runs"
    proc = start(config, runs)
    done = wait_for_log_lines(runs, proc)
    workers = children(proc.pid)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    assert_gone(workers)  # the workers notice and exit rather than idle on as orphans
    run_dir = latest_run(runs)
    assert 0 < done < 256
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    code, _out, err = run(["search", "--resume", "--runs-dir", str(runs), "--quiet"])
    assert code == 0, err
    assert "resuming" in err and "already done" in err
    assert without_seconds(read_results(run_dir)) == without_seconds(read_results(reference))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("n_jobs", [2, 1])  # 1: the groups train in the search's process
@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGINT, 130, "Ctrl-C"),
                                                   (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_saves_partial_results(tmp_path: Path, slow_data: Path, sig, code, name,
                                      n_jobs):
    config = slow_config(tmp_path, slow_data, n_jobs=n_jobs)
    runs = tmp_path / "runs"
    proc = start(config, runs)
    seen = wait_for_log_lines(runs, proc)
    workers = children(proc.pid)
    assert workers or n_jobs == 1  # the loky worker processes (and its resource tracker)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    run_dir = latest_run(runs)
    assert f"interrupted ({name})" in err and f"agereg search --resume {run_dir}" in err
    assert "Traceback" not in err
    rows = read_results(run_dir)
    logged = read_log(run_dir)
    assert 0 < len(rows) == len(logged) < 256, (seen, err, (run_dir / LOG_NAME).read_bytes()[:300])
    assert {r.status for r in logged} <= {"ok", "diverged"}  # no trial failed by the signal
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert not (run_dir / ".work").exists()
    assert_gone(workers)  # no orphaned workers


def test_torn_last_line_is_ignored_and_redone(tiny_config: Path, tmp_path: Path):
    reference = search(tiny_config, tmp_path / "ref")
    runs = tmp_path / "runs"
    run_dir = search(tiny_config, runs)
    log = run_dir / LOG_NAME
    lines = log.read_bytes().splitlines(keepends=True)
    # keep the first 5 records and half of the 6th, as a kill mid-write would
    log.write_bytes(b"".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    assert len(read_log(run_dir)) == 5
    code, _, err = run(["search", "--resume", str(run_dir), "--runs-dir", str(runs),
                        "--quiet"])
    assert code == 0, err
    assert without_seconds(read_results(run_dir)) == without_seconds(read_results(reference))
    assert all(line.endswith(b"}\n") for line in log.read_bytes().splitlines(keepends=True))


def test_a_torn_curves_row_is_cut_and_each_point_written_once(tiny_config: Path,
                                                               tmp_path: Path):
    reference = search(tiny_config, tmp_path / "ref")
    runs = tmp_path / "runs"
    run_dir = search(tiny_config, runs)
    log, curves = run_dir / LOG_NAME, run_dir / "curves.csv"
    # a kill while the curves of a group were being appended: its records never came,
    # and the last row is cut halfway
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:4]))
    rows = curves.read_bytes()
    curves.write_bytes(rows[: len(rows) // 2 + 7])
    code, _, err = run(["search", "--resume", str(run_dir), "--runs-dir", str(runs),
                        "--quiet"])
    assert code == 0, err
    # the torn row was cut before the new rows came, and the trials trained again did
    # not append the rows already there: the file is a fresh search's, row for row
    assert curve_lines(run_dir) == curve_lines(reference)
    code, _, err = run(["report", str(run_dir), "--runs-dir", str(runs)])
    assert code == 0, err


def test_corrupt_middle_line_is_an_error(tiny_config: Path, tmp_path: Path):
    run_dir = search(tiny_config, tmp_path)
    log = run_dir / LOG_NAME
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2]) + "garbage\n" + "".join(lines[2:]))
    code, _, err = run(["search", "--resume", str(run_dir), "--runs-dir", str(tmp_path)])
    assert code == 2 and f"{LOG_NAME}:3: corrupt trial record" in err


def test_resume_with_a_different_config_is_refused(tiny_config: Path, tmp_path: Path):
    run_dir = search(tiny_config, tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(tiny_config.read_text().replace("seed: 3", "seed: 4"))
    code, _, err = run(["search", str(other), "--resume", str(run_dir), "--runs-dir",
                        str(tmp_path)])
    assert code == 2 and "differs from the run's in seed" in err
    code, _, err = run(["search", "--resume", str(run_dir), "--runs-dir", str(tmp_path),
                        "--precision", "float32"])
    assert code == 2 and "execution.precision" in err
    # the same config (or none) resumes fine; n_jobs may change
    code, _, err = run(["search", str(tiny_config), "--resume", str(run_dir), "--runs-dir",
                        str(tmp_path), "--n-jobs", "2", "--quiet"])
    assert code == 0, err


def test_resume_refuses_data_that_changed(tiny_config: Path, data_copy: Path, tmp_path: Path):
    import numpy as np

    run_dir = search(tiny_config, tmp_path)
    y = np.load(data_copy / "age_regression_yte.npy")
    np.save(data_copy / "age_regression_yte.npy", y + 1)
    for args in (["search", "--resume", str(run_dir)], ["eval", "--run", str(run_dir)]):
        code, _, err = run([*args, "--runs-dir", str(tmp_path)])
        assert code == 2 and "differ from the data this run used" in err


def test_locked_run_cannot_be_resumed(tiny_config: Path, tmp_path: Path):
    run_dir = search(tiny_config, tmp_path)
    with RunLock(run_dir):
        code, _, err = run(["search", "--resume", str(run_dir), "--runs-dir", str(tmp_path)])
    assert code == 2 and "another agereg process" in err and str(os.getpid()) in err


def test_two_runs_in_the_same_second_get_different_folders(tmp_path: Path):
    a, b = create_run_dir(tmp_path, "x"), create_run_dir(tmp_path, "x")
    assert a != b and a.is_dir() and b.is_dir()


def test_not_a_run_folder(tmp_path: Path):
    (tmp_path / "junk").mkdir()
    for args in (["search", "--resume", str(tmp_path / "junk")],
                 ["eval", "--best", "--run", str(tmp_path / "junk")]):
        code, _, err = run(args)
        assert code == 2 and "not an agereg run folder" in err


def test_runs_dir_not_writable(tiny_config: Path, tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(["search", str(tiny_config), "--runs-dir", str(blocker / "runs")])
    assert code == 2 and "cannot create a run folder" in err and "--runs-dir" in err


def test_disk_full_while_logging_keeps_finished_trials(tiny_config: Path, tmp_path: Path,
                                                       monkeypatch):
    real = fileio.append_durable
    calls = {"n": 0}

    def flaky(path, text):
        calls["n"] += Path(path).name == LOG_NAME
        if calls["n"] == 2:  # the first group's trials are in, the second's fail
            with monkeypatch.context() as m:  # the OS refuses the append
                m.setattr(fileio, "open_no_follow", raise_enospc)
                return real(path, text)
        return real(path, text)

    monkeypatch.setattr("agereg.runs.append_durable", flaky)
    code, _, err = run(["search", str(tiny_config), "--runs-dir", str(tmp_path), "--quiet"])
    run_dir = latest_run(tmp_path)
    assert code == 2 and "No space left on device" in err, err
    assert f"then resume with `agereg search --resume {run_dir}`" in err, err
    logged = read_log(run_dir)
    assert 0 < len(logged) < 24
    assert len(read_results(run_dir)) == len(logged)  # summaries match the durable log
    monkeypatch.setattr("agereg.runs.append_durable", real)
    code, _, err = run(["search", "--resume", "--runs-dir", str(tmp_path), "--quiet"])
    assert code == 0, err
    assert len(read_results(run_dir)) == 24


def test_a_full_disk_with_worker_processes_is_one_line(tiny_config: Path, tmp_path: Path,
                                                       monkeypatch, recwarn):
    import agereg.pipeline as pipeline

    real = fileio.append_durable

    def full(path, text):  # the OS refuses the first append of the trial log
        if Path(path).name == LOG_NAME:
            with monkeypatch.context() as m:
                m.setattr(fileio, "open_no_follow", raise_enospc)
                return real(path, text)
        return real(path, text)

    monkeypatch.setattr("agereg.runs.append_durable", full)
    monkeypatch.setattr(pipeline, "IN_PROCESS_SECONDS", 0.0)  # loky's workers, not in-process
    code, _, err = run(["search", str(tiny_config), "--runs-dir", str(tmp_path), "--quiet",
                        "--n-jobs", "2"])
    assert code == 2 and "No space left on device" in err, err
    # joblib's warning that the tasks still running were cancelled is not printed
    assert not [w for w in recwarn if "tasks" in str(w.message)], [str(w.message)
                                                                  for w in recwarn]


def test_a_search_failing_after_its_last_task_leaves_the_workers_to_the_next(
        tiny_config: Path, tmp_path: Path, monkeypatch):
    import agereg.pipeline as pipeline

    real = fileio.append_durable
    calls = {"n": 0}

    def full_at_the_end(path, text):  # every task has finished: joblib keeps its executor
        calls["n"] += Path(path).name == LOG_NAME
        if calls["n"] == 2:
            raise fileio.RunError("no space left (simulated)")
        return real(path, text)

    monkeypatch.setattr("agereg.runs.append_durable", full_at_the_end)
    monkeypatch.setattr(pipeline, "IN_PROCESS_SECONDS", 0.0)  # loky's workers
    args = ["search", str(tiny_config), "--runs-dir", str(tmp_path), "--quiet", "--n-jobs", "2"]
    code, _, err = run(args)
    assert code == 2 and "simulated" in err, err
    monkeypatch.setattr("agereg.runs.append_durable", real)
    code, _, err = run(args)  # at once, in the same process, with the same executor
    assert code == 0, err


def raise_enospc(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "results.csv"
    target.write_text("old\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", no_space)
    with pytest.raises(fileio.RunError, match="No space left on device"):
        fileio.atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temp file left


def test_small_searches_train_in_process(tiny_config: Path, tmp_path: Path, monkeypatch):
    import agereg.pipeline as pipeline

    seen = []
    real = pipeline.launch

    def spy(ref, groups, seed, engine, n_jobs, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(n_jobs)
        return real(ref, groups, seed, engine, n_jobs, *args, **kwargs)

    monkeypatch.setattr(pipeline, "launch", spy)
    search(tiny_config, tmp_path / "runs", "--n-jobs", "2")
    assert seen == [1]  # 120 rows of 36 pixels: worker start-up would cost more than this
    monkeypatch.setattr(pipeline, "IN_PROCESS_SECONDS", 0.0)
    search(tiny_config, tmp_path / "runs", "--n-jobs", "2")
    assert seen == [1, 2]


def _cut_after_the_first_group(config: Path, runs: Path,
                               monkeypatch: pytest.MonkeyPatch) -> Path:
    """A search interrupted (Ctrl-C) once its first group is in the log: its run."""
    import agereg.pipeline as pipeline

    from tests_helpers import interrupt_at_call

    calls = interrupt_at_call(monkeypatch, pipeline, "append_records", 2)
    code, _, _ = run(["search", str(config), "--runs-dir", str(runs), "--quiet"])
    assert code == 130
    monkeypatch.setattr(pipeline, "append_records", calls["real"])
    return latest_run(runs)


def test_evaluating_an_unfinished_run_says_its_ranking_may_change(tiny_config: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch):
    runs = tmp_path / "runs"
    cut = _cut_after_the_first_group(tiny_config, runs, monkeypatch)
    logged = len(read_log(cut))
    planned = json.loads((cut / "run.json").read_text())["trials_planned"]
    assert 0 < logged < planned
    code, out, err = run(["eval", "--run", str(cut), "--bootstrap", "0", "--no-plots",
                          "--json"])
    assert code == 0, err
    assert (f"the search was interrupted: its log holds {logged} of {planned} planned "
            f"trials, so the ranking may change when `agereg search --resume {cut}` "
            "completes it") in json.loads(out)["notes"]
    code, _, err = run(["search", "--resume", str(cut), "--runs-dir", str(runs), "--quiet"])
    assert code == 0, err
    code, out, err = run(["eval", "--run", str(cut), "--bootstrap", "0", "--no-plots",
                          "--json", "--force"])
    assert code == 0, err
    assert not any("did not finish" in n or "ranking may change" in n
                   for n in json.loads(out)["notes"])


def test_an_evaluation_made_before_a_resume_is_labelled_with_its_rank_of_now(
        tiny_config: Path, tmp_path: Path, monkeypatch):
    runs = tmp_path / "runs"
    cut = _cut_after_the_first_group(tiny_config, runs, monkeypatch)
    first = {r.trial_id for r in read_log(cut)}  # the trials of the first group
    args = ["eval", "--run", str(cut), "--bootstrap", "0", "--no-plots"]
    code, out, err = run([*args, "--rank", "5", "--json"])  # after the first group only
    assert code == 0, err
    evaluated = json.loads(out)["folder"].split("/")[-1]
    assert evaluated in first and json.loads(out)["trial"]["rank"] == 5
    assert run(["report", str(cut)])[0] == 0  # a report.html of the partial run
    code, _, err = run(["search", "--resume", str(cut), "--runs-dir", str(runs), "--quiet"])
    assert code == 0, err
    said = (f"note: {cut / 'report.html'} shows the run before these trials; `agereg "
            f"report {cut}` rewrites it")
    assert "".join(said.split()) in "".join(err.split()), err  # a long path may fold
    ranked = [r for r in read_results(cut) if r["status"] == "ok"]
    now = next(k for k, r in enumerate(ranked, 1) if r["trial_id"] == evaluated)
    assert now > 5  # the other group's trials rank above it now: the setting this tests
    note = (f"evaluated when this trial ranked #5; the search has trained more trials "
            f"since, so what compares it with other trials (the paired bootstrap, the ridge "
            f"path's SGD figures) is as of then: `agereg eval --rank {now} --force` brings "
            "it up to date")
    # the report and the stored evaluation, shown again, say the rank of now, and why
    code, out, err = run(["report", str(cut)])
    assert code == 0, err
    assert f"trial #{now}: " in out and note in " ".join(out.split()), out
    page = (cut / "report.html").read_text()
    assert f"<h3>trial #{now}: " in page and "evaluated when this trial ranked #5" in page
    code, out, err = run([*args, "--rank", str(now), "--json"])
    assert code == 0 and "already evaluated" in err, err
    shown = json.loads(out)
    assert shown["trial"]["rank"] == now and shown["notes"][0] == note
    stored = json.loads((cut / "evals" / evaluated / "eval.json").read_text())
    assert stored["trial"]["rank"] == 5  # the file itself is left as it was


def test_a_resume_keeps_the_run_s_learning_curve_setting(tiny_config: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    runs = tmp_path / "runs"
    cut = _cut_after_the_first_group(tiny_config, runs, monkeypatch)  # curves on
    before = (cut / "curves.csv").read_bytes()
    code, _, err = run(["search", "--resume", str(cut), "--no-curves", "--quiet"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (f"{cut}: started with learning curves on; --no-curves (or execution.curves) "
            "would record them for only some of its trials") in err
    assert (cut / "curves.csv").read_bytes() == before  # nothing trained
    code, _, err = run(["search", "--resume", str(cut), "--quiet"])
    assert code == 0, err
    trained = {(r.batch_size, r.learning_rate, r.l2) for r in read_log(cut)
               if r.status.has_losses()}
    with open(cut / "curves.csv") as f:  # every configuration that trained has its curve
        curved = {(int(r["batch_size"]), float(r["learning_rate"]), float(r["l2"]))
                  for r in csv.DictReader(f)}
    assert trained <= curved and len(trained) == 8
