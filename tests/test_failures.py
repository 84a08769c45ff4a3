"""Failures are loud: a trial that raises is saved as failed, the search exits 3 with a
one-line summary of the first error, ``on_error: stop`` stops at once, and ``--resume``
trains failed trials again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agereg.records import Status
from agereg.runs import read_log

from tests_helpers import latest_run, read_results, run, search, without_seconds

CONFIG = """\
name: f
seed: 3
n_jobs: 1
data: {{dir: {data}}}
split: {{seed: 1, val_fraction: 0.25}}
{extra}
grid:
  batch_size: [8, 32]
  learning_rate: [1.0e-3, 1.0e-2]
  epochs: [1, 3]
  l2: [0.0, 1.0e-2]
"""


def write(tmp_path: Path, data: Path, extra: str = "", name: str = "f.yaml") -> Path:
    path = tmp_path / name
    path.write_text(CONFIG.format(data=data, extra=extra))
    return path


@pytest.fixture
def broken_batch_8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of batch size 8 raise inside the engine, in their first minibatch steps (n_jobs 1
    runs in this process, where such a group trains beside a healthy one)."""
    from agereg.batched import _Trainer

    real = _Trainer.steps

    def steps(self, lo, hi, rows):  # type: ignore[no-untyped-def]
        if self.spec.batch_size == 8:
            raise RuntimeError("injected fault")
        return real(self, lo, hi, rows)

    monkeypatch.setattr(_Trainer, "steps", steps)


def test_failed_trials_exit_3_and_resume_trains_them(tmp_path: Path, data_copy: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     broken_batch_8: None):
    runs = tmp_path / "runs"
    code, _, err = run(["search", str(write(tmp_path, data_copy)), "--runs-dir", str(runs),
                          "--quiet"])
    assert code == 3, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: 8 trials failed, the first (batch_size 8,")
    assert "RuntimeError: injected fault" in line and "agereg search --resume" in line
    run_dir = latest_run(runs)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and info["trials_done"] == 16
    statuses = [r.status for r in read_log(run_dir)]
    assert statuses.count(Status.FAILED) == 8 and statuses.count(Status.OK) == 8

    monkeypatch.undo()  # the cause is fixed
    code, _, err = run(["search", "--resume", str(run_dir), "--runs-dir", str(runs), "--quiet"])
    assert code == 0, err
    assert "8 trained now" in err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert all(r.status is Status.OK for r in read_log(run_dir))
    clean = search(write(tmp_path, data_copy, name="clean.yaml"), runs)
    assert without_seconds(read_results(run_dir)) == without_seconds(read_results(clean))


def test_on_error_stop_stops_at_the_first_failed_group(tmp_path: Path, data_copy: Path,
                                                       broken_batch_8: None):
    runs = tmp_path / "runs"
    path = write(tmp_path, data_copy, "on_error: stop")
    path.write_text(path.read_text().replace("[8, 32]", "[8, 32, 64, 128]"))
    code, _, err = run(["search", str(path), "--runs-dir", str(runs), "--quiet"])
    assert code == 3, err
    assert err.strip().splitlines()[-1].startswith("error: 8 trials failed")
    run_dir = latest_run(runs)
    # tasks run in order (n_jobs 1): batch 8 trained beside batch 32 (kept: finished work
    # is never lost) and failed; the task of batches 64 and 128 never started
    log = read_log(run_dir)
    assert {r.batch_size for r in log} == {8, 32}
    assert {r.status for r in log if r.batch_size == 32} == {Status.OK}
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert (run_dir / "results.csv").exists()


def test_on_error_must_be_record_or_stop(tmp_path: Path, data_copy: Path):
    code, _, err = run(["search", str(write(tmp_path, data_copy, "on_error: ignore")),
                        "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    assert "on_error" in err and "'record', 'stop'" in err
