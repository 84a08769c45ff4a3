"""`agereg export RUN --mlflow` against a local MLflow tracking URI (an SQLite file in a
temporary folder): the parent run, one child per configuration with its losses at every
recorded epoch count, report.html as an artifact, and no second export without --force.
CI installs the mlflow extra and sets AGEREG_REQUIRE_MLFLOW, so there it cannot skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agereg.runs import read_log

from tests_helpers import run, search

if os.environ.get("AGEREG_REQUIRE_MLFLOW"):
    import mlflow
else:
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


@pytest.mark.slow
def test_export_to_a_local_tracking_uri(tiny_config: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # nothing may land in the current folder
    runs = tmp_path / "runs"
    run_dir = search(tiny_config, runs)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, _, err = run(["export", str(run_dir), "--mlflow", "--tracking-uri", uri,
                        "--experiment", "tiny"])
    assert code == 0, err
    assert "parent run" in err and "with 12 child runs" in err
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    found = client.search_runs([exp.experiment_id])
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 12  # 2 x 3 x 2 (bs, lr, l2) columns
    parent = parents[0]
    assert parent.data.params["grid.batch_size"] == "[8, 32]"
    assert parent.data.tags["agereg.run"] == str(run_dir.resolve())
    assert parent.data.tags["count.diverged"] == "8"
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "report.html" in artifacts
    assert list(work.iterdir()) == []  # no ./mlruns: artifacts live next to the database
    assert list((tmp_path / "mlartifacts").rglob("report.html"))
    records = {(r.batch_size, r.learning_rate, r.l2, r.epochs): r for r in read_log(run_dir)}
    checked = 0
    for child in children:
        p = child.data.params
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        key = (int(p["batch_size"]), float(p["learning_rate"]), float(p["l2"]))
        history = client.get_metric_history(child.info.run_id, "val_loss")
        for m in history:  # the step is the epoch count
            assert m.value == records[(*key, m.step)].val_loss
            checked += 1
        for ep in (1, 3):
            status = child.data.tags[f"status.epochs_{ep}"]
            assert status == records[(*key, ep)].status.value
    assert checked == 16  # the finished trials
    code, _, err = run(["export", str(run_dir), "--mlflow", "--tracking-uri", uri,
                        "--experiment", "tiny"])
    assert code == 2 and "already exported" in err and "--force" in err
    assert "changed since" not in err
    # the log changed after the export (here: cut to its first group, as a run that is
    # then resumed grows): the refusal says so
    log = run_dir / "trials.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:12]))
    code, _, err = run(["export", str(run_dir), "--mlflow", "--tracking-uri", uri,
                        "--experiment", "tiny"])
    assert code == 2 and "the run has changed since (24 trials then, 12 now)" in err, err
    log.write_text("".join(lines))
    code, _, err = run(["export", str(run_dir), "--mlflow", "--tracking-uri", uri,
                        "--experiment", "tiny", "--force"])
    assert code == 0, err


@pytest.mark.slow
def test_an_export_that_fails_halfway_is_marked_failed_and_not_counted(
        tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    run_dir = search(tiny_config, tmp_path / "runs")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["export", str(run_dir), "--mlflow", "--tracking-uri", uri, "--experiment", "t"]
    real = MlflowClient.log_artifact

    def refused(self, *a, **k):  # the server goes away after the parent run was created
        raise ConnectionError("server went away")

    monkeypatch.setattr(MlflowClient, "log_artifact", refused)
    code, _, err = run(args)
    assert code == 2 and "refused the export (ConnectionError: server went away)" in err
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name("t").experiment_id
    (first,) = client.search_runs([exp_id])
    assert first.info.status == "FAILED"
    monkeypatch.setattr(MlflowClient, "log_artifact", real)
    code, _, err = run(args)  # the failed one does not count: no --force needed
    assert code == 0, err
    code, _, err = run(args)  # a finished one does
    assert code == 2 and "already exported" in err


def test_a_refused_export_to_a_folder_suggests_a_database_file(
        tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    run_dir = search(tiny_config, tmp_path / "runs")

    def refused(self, *a, **k):  # as MLflow 3 refuses its file store, at length
        raise RuntimeError("The filesystem tracking backend is in maintenance mode " * 5)

    monkeypatch.setattr(MlflowClient, "create_run", refused)
    monkeypatch.setattr(MlflowClient, "create_experiment", refused)
    for uri, hinted in ((f"file://{tmp_path / 'mlruns'}", True),
                        (str(tmp_path / "mlruns"), True),
                        (f"sqlite:///{tmp_path / 'mlflow.db'}", False)):
        code, _, err = run(["export", str(run_dir), "--mlflow", "--tracking-uri", uri])
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert ("give a database file, e.g. sqlite:///mlflow.db" in err) is hinted, err
        assert " ...)" in err  # a long message is cut at a word, and says so


def test_a_run_whose_search_is_still_running_is_not_exported(tiny_config: Path,
                                                              tmp_path: Path):
    from tests_helpers import lock_held_elsewhere

    run_dir = search(tiny_config, tmp_path / "runs")
    db = tmp_path / "mlflow.db"
    with lock_held_elsewhere(run_dir):  # as its search holds it while it trains
        code, _, err = run(["export", str(run_dir), "--mlflow", "--tracking-uri",
                            f"sqlite:///{db}"])
    assert code == 2 and "another agereg process (pid" in err, err
    assert not db.exists()  # nothing exported, not even an empty experiment
