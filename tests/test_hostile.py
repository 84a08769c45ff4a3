"""Hostile input and faults, round 2: one table of cases. Each case damages a copy of a
finished run (or its data, or the command line) and expects exactly one line on stderr
naming the problem, exit code 2, and nothing written that a later command would trust.
Adding a case is one line in CASES (plus a small damage function when none fits)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agereg import interrupts
from agereg.runs import RunLock

from tests_helpers import interrupt_at_call, run

CONFIG = """\
name: h
seed: 3
n_jobs: 1
data: {{dir: {data}}}
split: {{seed: 1, val_fraction: 0.25}}
grid:
  batch_size: [8, 32]
  learning_rate: [1.0e-3, 1.0e-2]
  epochs: [1, 3]
  l2: [0.0]
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A finished run (runs/<run>) with its own data folder, made once."""
    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(tiny_data, root / "data")
    (root / "h.yaml").write_text(CONFIG.format(data=root / "data"))
    code, _, err = run(["search", str(root / "h.yaml"), "--runs-dir", str(root / "runs"),
                        "--quiet"])
    assert code == 0, err
    return root


@dataclass(frozen=True)
class World:
    root: Path  # holds data/, runs/, h.yaml
    run_dir: Path

    @property
    def runs(self) -> str:
        return str(self.root / "runs")


# ---------------------------------------------------------------- damage


def append_log_line(**change: object) -> Callable[[World], None]:
    def damage(w: World) -> None:
        first = json.loads((w.run_dir / "trials.jsonl").read_text().splitlines()[0])
        first.update(change)
        first.pop("trial_id")
        with open(w.run_dir / "trials.jsonl", "a") as f:
            f.write(json.dumps(first).replace('"__NEGINF__"', "-Infinity") + "\n")
    return damage


def write_file(rel: str, data: bytes) -> Callable[[World], None]:
    def damage(w: World) -> None:
        path = w.run_dir / rel if not rel.startswith("/") else w.root / rel[1:]
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.write_bytes(data)
    return damage


def replace_with(rel: str, make: Callable[[Path], None]) -> Callable[[World], None]:
    def damage(w: World) -> None:
        path = w.run_dir / rel
        path.unlink(missing_ok=True)
        make(path)
    return damage


def fifo(path: Path) -> None:
    os.mkfifo(path)


def link_to(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def npz_as_npy(w: World) -> None:
    path = w.root / "data" / "age_regression_ytr.npy"
    np.savez(w.root / "x.npz", a=np.zeros(3))
    os.replace(w.root / "x.npz", path)


def negative_dimension(w: World) -> None:
    path = w.root / "data" / "age_regression_ytr.npy"
    data = path.read_bytes()
    assert b"(120," in data
    path.write_bytes(data.replace(b"(120,", b"(-12,", 1))  # the header's length unchanged


def nothing(w: World) -> None:
    pass


def edit_config(old: str, new: str) -> Callable[[World], None]:
    def damage(w: World) -> None:
        text = (w.run_dir / "config.yaml").read_text()
        assert old in text
        (w.run_dir / "config.yaml").write_text(text.replace(old, new, 1))
    return damage


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    name: str
    damage: Callable[[World], None]
    args: Callable[[World], list[str]]
    fragment: str
    code: int = 2


def report(w: World) -> list[str]:
    return ["report", str(w.run_dir)]


def report_latest(w: World) -> list[str]:
    return ["report", "--runs-dir", w.runs]


def evaluate(w: World) -> list[str]:
    return ["eval", "--run", str(w.run_dir), "--no-plots", "--bootstrap", "0"]


def resume(w: World) -> list[str]:
    return ["search", "--resume", str(w.run_dir), "--runs-dir", w.runs, "--quiet"]


def split_data(w: World) -> list[str]:
    return ["split", "--seed", "1", "--data", str(w.root / "data")]


def big_config(w: World) -> list[str]:
    text = CONFIG.format(data=w.root / "data") + "junk: [" + "1, " * 600_000 + "1]\n"
    (w.root / "big.yaml").write_text(text)
    return ["search", str(w.root / "big.yaml"), "--runs-dir", w.runs]


def escaped_config(w: World) -> list[str]:
    (w.root / "esc.yaml").write_text(CONFIG.format(data="da\\nta\\x1b]0;title\\x07")
                                     .replace("dir: da", 'dir: "da').replace("\\x07}", '\\x07"}'))
    return ["search", str(w.root / "esc.yaml"), "--runs-dir", w.runs]


CASES = [
    Case("log: 400-digit integer", append_log_line(batch_size=int("9" * 400)), report,
         "corrupt trial record"),
    Case("log: -Infinity loss", append_log_line(val_loss="__NEGINF__"), report,
         "corrupt trial record"),
    Case("log: markup as status", append_log_line(status="[/x]"), report,
         "corrupt trial record"),
    Case("log: a string as seconds", append_log_line(seconds="slow"), resume,
         "corrupt trial record"),
    Case("plan: not JSON", write_file("plan.jsonl", b"{oops\n"), evaluate,
         "corrupt plan record"),
    Case("curves: bad row", write_file("curves.csv", b"batch_size,learning_rate,l2,loss,fold,"
                                                     b"epoch,train_running,val_fmse,val_mae\n"
                                                     b"8,x,0,squared,,1,1,1,1\n"), report,
         "corrupt curve row"),
    Case("eval.json: {}", write_file("evals/abc/eval.json", b"{}"), report,
         "not an agereg evaluation"),
    Case("eval.json: wrong types", write_file("evals/abc/eval.json", json.dumps(
        {"trial": {"rank": 1, "batch_size": 8, "learning_rate": 0.01, "epochs": 1, "l2": 0},
         "test": {"fmse": "high"}, "baseline_test": {}, "train_fmse": 1,
         "val_fmse": 1}).encode()), report, "not an agereg evaluation"),
    Case("latest: invalid UTF-8", write_file("/runs/latest", b"\xff\xfe\n"), report_latest,
         "does not name a run folder"),
    Case("latest: a path outside", write_file("/runs/latest", b"../../etc\n"), report_latest,
         "does not name a run folder"),
    Case("config.yaml: seed edited, then resume", edit_config("seed: 3", "seed: 4"), resume,
         "config.yaml: changed since the run started"),
    Case("config.yaml: grid edited, then eval", edit_config("epochs: [1, 3]", "epochs: [1, 4]"),
         evaluate, "config.yaml: changed since the run started"),
    Case("split.json: a FIFO", replace_with("split.json", fifo), evaluate,
         "not a regular file"),
    Case("split.json: link to /dev/zero", replace_with("split.json", link_to("/dev/zero")),
         evaluate, "not a regular file"),
    Case("run.json: link to /dev/zero", replace_with("run.json", link_to("/dev/zero")),
         report, "not a regular file"),
    Case("config.yaml: a FIFO", replace_with("config.yaml", fifo), report,
         "config.yaml: not a regular file"),
    Case("split.json: a 400-digit index", write_file("split.json", json.dumps(
        {"seed": 1, "val_fraction": 0.25, "n": 120, "ytr_sha256": "x",
         "train": [int("9" * 400)], "val": [1]}).encode()), evaluate, "index too large"),
    Case("split.json: made for other data", write_file("split.json", json.dumps(
        {"seed": 1, "val_fraction": 0.25, "n": 120, "ytr_sha256": "0" * 64,
         "train": list(range(1, 120)), "val": [0]}).encode()), evaluate,
         "made for other data (n=120, ytr sha256 000000000000...) but the training labels "
         "have n=120"),
    Case("split.json: a 30-digit seed", write_file("/data/split.json", json.dumps(
        {"seed": 10**30, "val_fraction": 0.25, "n": 120, "ytr_sha256": "x",
         "train": list(range(1, 120)), "val": [0]}).encode()),
         lambda w: ["search", str(w.root / "h.yaml"), "--runs-dir", w.runs],
         "'seed' must be an integer from 0 to 2^63 - 1"),
    Case("data: .npz under an .npy name", npz_as_npy, split_data, "is an .npz archive"),
    Case("data: a negative dimension", negative_dimension, split_data,
         "negative dimensions are not allowed"),
    Case("config of several MB", nothing, big_config, "more than the 1,048,576 bytes"),
    Case("control characters in a message", nothing, escaped_config,
         "da\\nta\\x1b]0;title\\x07"),
    Case("split --seed 10^30", nothing,
         lambda w: ["split", "--seed", str(10**30), "--data", str(w.root / "data")],
         "is not in the range 0<=x<=9223372036854775807"),
    Case("eval --bootstrap 10^7", nothing, lambda w: [*evaluate(w)[:-1], str(10**7)],
         "is not in the range 0<=x<=1000000"),
    Case("synth beyond memory", nothing,
         lambda w: ["synth", "--out", str(w.root / "s"), "--n-train", str(10**9)],
         "would need about"),
    Case("dask address tcp://[::1", nothing,
         lambda w: ["search", str(w.root / "h.yaml"), "--runs-dir", w.runs, "--backend",
                    "dask", "--scheduler", "tcp://[::1"], "not a HOST:PORT address"),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root (links not followed) with its size and mtime; .lock aside."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.name == ".lock" or p.is_symlink() or not p.is_file():
                continue
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_writes_nothing(case: Case, base: Path,
                                                             tmp_path: Path):
    root = tmp_path / "w"
    shutil.copytree(base, root, symlinks=True)
    (root / "h.yaml").write_text(CONFIG.format(data=root / "data"))
    run_dir = next((root / "runs").glob("*-h"))
    (root / "runs" / "latest").unlink()
    (root / "runs" / "latest").write_text(run_dir.name + "\n")  # the text-file form
    world = World(root, run_dir)
    case.damage(world)
    args = case.args(world)
    before = snapshot(root)
    code, _, err = run(args)
    lines = err.strip().splitlines()
    assert code == case.code, err
    assert len(lines) == 1 and case.fragment in lines[0], err
    assert "Traceback" not in err and "\x1b" not in err and "internal error" not in err
    if case.name.startswith("split.json") and "/data/" not in case.name and \
            args[0] != "search":  # the run's own split: no data-folder advice
        assert "the run folder is damaged" in lines[0] and "agereg split" not in lines[0], err
    after = snapshot(root)
    written = {k for k in after if after[k] != before.get(k)}
    assert written <= {"big.yaml", "esc.yaml"}, written  # the case's own input only


def test_an_edit_that_changes_no_number_is_accepted_and_old_runs_are_not_checked(
        base: Path, tmp_path: Path):
    root = tmp_path / "w"
    shutil.copytree(base, root, symlinks=True)
    run_dir = next((root / "runs").glob("*-h"))
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("n_jobs: 1", "n_jobs: 2") + "# mine\n")
    assert run(report(World(root, run_dir)))[0] == 0
    # a run made before run.json recorded the digest: the stored config is taken as it is
    config.write_text(config.read_text().replace("seed: 3", "seed: 4"))
    info = json.loads((run_dir / "run.json").read_text())
    del info["config_digest"]
    (run_dir / "run.json").write_text(json.dumps(info))
    assert run(report(World(root, run_dir)))[0] == 0


# ---------------------------------------------------------------- links are never followed


def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(base: Path,
                                                                   tmp_path: Path):
    root = tmp_path / "w"
    shutil.copytree(base, root, symlinks=True)
    run_dir = next((root / "runs").glob("*-h"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run_dir / ".lock").unlink(missing_ok=True)
    (run_dir / ".lock").symlink_to(victim)
    code, _, err = run(evaluate(World(root, run_dir)))
    assert code == 2 and "is a symbolic link" in err, err
    assert victim.read_text() == "precious\n"


def test_a_log_that_is_a_link_is_never_appended_to(base: Path, tmp_path: Path):
    root = tmp_path / "w"
    shutil.copytree(base, root, symlinks=True)
    (root / "h.yaml").write_text(CONFIG.format(data=root / "data"))
    run_dir = next((root / "runs").glob("*-h"))
    outside = tmp_path / "outside.jsonl"
    lines = (run_dir / "trials.jsonl").read_text().splitlines(keepends=True)
    outside.write_text("".join(lines[:3]))  # a partial log elsewhere, linked in
    (run_dir / "trials.jsonl").unlink()
    (run_dir / "trials.jsonl").symlink_to(outside)
    code, _, err = run(resume(World(root, run_dir)))
    assert code == 2 and "is a symbolic link" in err, err
    assert outside.read_text() == "".join(lines[:3])


# ---------------------------------------------------------------- concurrency and timing


def test_eval_of_a_run_being_written_says_so(base: Path, tmp_path: Path):
    root = tmp_path / "w"
    shutil.copytree(base, root, symlinks=True)
    run_dir = next((root / "runs").glob("*-h"))
    with RunLock(run_dir):
        code, _, err = run(evaluate(World(root, run_dir)))
    assert code == 2 and "another agereg process" in err


def test_eval_of_a_trial_that_now_diverges_says_so_in_one_line(
        base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import agereg.assessment as assessment
    from agereg.engine import diverged_fit

    root = tmp_path / "w"
    shutil.copytree(base, root, symlinks=True)
    run_dir = next((root / "runs").glob("*-h"))
    monkeypatch.setattr(assessment, "_train_columns",
                        lambda cfg, arrays, recs: [diverged_fit(64) for _ in recs])
    code, _, err = run([*evaluate(World(root, run_dir)), "--retrain"])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "diverged when trained again (as in the search)" in errors[0]
    assert "numerical libraries changed" in err
    assert not (run_dir / "evals").exists() or not any((run_dir / "evals").iterdir())


def test_a_second_interrupt_waits_for_the_summaries(tmp_path: Path, data_copy: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    import agereg.pipeline as pipeline

    (tmp_path / "h.yaml").write_text(CONFIG.format(data=data_copy))
    real_summaries = pipeline.write_summaries
    # the first Ctrl-C, after one group is logged
    interrupt_at_call(monkeypatch, pipeline, "append_records", 2)

    def second_interrupt(*args, **kwargs):  # type: ignore[no-untyped-def]
        interrupts.deliver(KeyboardInterrupt())  # the second, while summaries are written
        return real_summaries(*args, **kwargs)

    monkeypatch.setattr(pipeline, "write_summaries", second_interrupt)
    code, _, err = run(["search", str(tmp_path / "h.yaml"), "--runs-dir",
                        str(tmp_path / "runs"), "--quiet"])
    assert code == 130, err
    run_dir = next((tmp_path / "runs").glob("*-h"))
    assert (run_dir / "results.csv").is_file()  # written although Ctrl-C came twice
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"


# A search interrupted while its loky workers train, in a process of its own (the hang
# was at that process's exit). loky's teardown is made to fail as it does without
# psutil when the process group's Ctrl-C kills its pgrep: the manager thread dies after
# dropping a worker from its books, and the workers left idle on.
_TEARDOWN_FAILS = """\
import os, signal, sys, threading
import agereg.pipeline as pipeline
from joblib.externals.loky import process_executor
from agereg.cli import main

pipeline.IN_PROCESS_SECONDS = 0.0  # real worker processes, even for tiny data
real_launch = pipeline.launch

def launch(*args, **kwargs):  # Ctrl-C while the workers train
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    return real_launch(*args, **kwargs)

def kill_process_tree(process, *args, **kwargs):  # loky's fallback once pgrep is killed
    raise AttributeError("'Popen' object has no attribute 'kill'")

pipeline.launch, process_executor.kill_process_tree = launch, kill_process_tree
sys.exit(main(["search", sys.argv[1], "--runs-dir", sys.argv[2], "--quiet"]))
"""


def test_an_interrupt_whose_worker_teardown_fails_still_exits(tmp_path: Path,
                                                              data_copy: Path):
    import subprocess
    import sys

    config = tmp_path / "long.yaml"  # 100,000 epochs: the workers train well past the
    config.write_text(CONFIG.format(data=data_copy).replace(  # Ctrl-C, 1 s in
        "n_jobs: 1", "n_jobs: 2").replace("epochs: [1, 3]", "epochs: [100000]"))
    (tmp_path / "drive.py").write_text(_TEARDOWN_FAILS)
    try:
        proc = subprocess.run([sys.executable, str(tmp_path / "drive.py"), str(config),
                               str(tmp_path / "runs")], capture_output=True, text=True,
                              timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the interrupted search never exited: its exit waited for a worker")
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    run_dir = next((tmp_path / "runs").glob("*-h"))
    assert (f"interrupted (Ctrl-C); no trial had finished in {run_dir}/: `agereg search "
            f"--resume {run_dir}` trains them all") in proc.stderr, proc.stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"


_SLOW_IMPORT = """
import importlib.abc, os, signal, sys, threading, time
from agereg import entry

class Slow(importlib.abc.MetaPathFinder):  # agereg's imports, made to take 30 s
    def find_spec(self, name, path, target=None):
        if name == "agereg.cli":
            time.sleep(30)

sys.meta_path.insert(0, Slow())
threading.Timer(0.5, os.kill, (os.getpid(), getattr(signal, sys.argv[1]))).start()
sys.argv = ["agereg", "runs"]
entry.run()
"""


@pytest.mark.parametrize(("sig", "code", "name"), [("SIGINT", 130, "Ctrl-C"),
                                                   ("SIGTERM", 143, "SIGTERM")])
def test_a_signal_while_agereg_is_importing_is_one_line(tmp_path: Path, sig: str,
                                                        code: int, name: str):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _SLOW_IMPORT, sig], capture_output=True,
                          text=True, timeout=20, check=False)
    assert (proc.returncode, proc.stderr) == (code, f"interrupted ({name})\n")


def test_deliver_raises_at_once_outside_and_after_the_block_inside():
    with pytest.raises(KeyboardInterrupt):
        interrupts.deliver(KeyboardInterrupt())
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts.shielded():
        interrupts.deliver(KeyboardInterrupt())
        done.append("finished the block")
    assert done == ["finished the block"]


# ---------------------------------------------------------------- valid but unusual


def test_a_batch_larger_than_the_training_set_is_one_full_batch(tmp_path: Path,
                                                               data_copy: Path):
    config = tmp_path / "b.yaml"
    config.write_text(CONFIG.format(data=data_copy).replace("[8, 32]", "[90, 1000000000]"))
    code, _, err = run(["search", str(config), "--runs-dir", str(tmp_path / "runs"),
                        "--quiet"])
    assert code == 0, err
    rows = json.loads((next((tmp_path / "runs").glob("*-h")) / "best.json").read_text())
    assert rows["counts"] == {"ok": 8, "pruned": 0, "diverged": 0, "failed": 0}
    log = (next((tmp_path / "runs").glob("*-h")) / "trials.jsonl").read_text().splitlines()
    by = {}
    for line in log:
        d = json.loads(line)
        by.setdefault((d["learning_rate"], d["epochs"]), []).append(d["val_loss"])
    # 90 training rows: a batch of 90 and a batch of 10^9 are the same single full batch
    assert all(len(v) == 2 and v[0] == v[1] for v in by.values())


def test_pictures_from_a_partial_log_are_redrawn_after_resume(base: Path, tmp_path: Path):
    root = tmp_path / "w"
    shutil.copytree(base, root, symlinks=True)
    run_dir = next((root / "runs").glob("*-h"))
    code, _, err = run(report(World(root, run_dir)))
    assert code == 0, err
    heatmap = run_dir / "heatmap_val.png"
    drawn = heatmap.stat().st_mtime_ns
    code, _, err = run(report(World(root, run_dir)))
    assert "drew" not in err and heatmap.stat().st_mtime_ns == drawn  # fresh: kept
    os.utime(run_dir / "trials.jsonl", ns=(drawn + 10**9, drawn + 10**9))  # the log grew
    code, _, err = run(report(World(root, run_dir)))
    assert code == 0 and "drew heatmap_val.png" in err
    assert heatmap.stat().st_mtime_ns > drawn


def test_eval_of_flat_data_wider_than_the_rows_needs_no_d_by_d_matrix(tmp_path: Path):
    # 40 images of 50,000 pixels: the primal ridge system would be 50,040 x 50,000
    # (20 GB); the dual is 30 x 30.
    data = tmp_path / "flat"
    data.mkdir()
    rng = np.random.default_rng(0)
    for part, n in (("tr", 40), ("te", 10)):
        np.save(data / f"age_regression_X{part}.npy",
                rng.random((n, 50_000), dtype=np.float32))
        np.save(data / f"age_regression_y{part}.npy", rng.uniform(10, 80, n))
    config = tmp_path / "flat.yaml"
    config.write_text(CONFIG.format(data=data).replace("[8, 32]", "[8]").replace(
        "[1.0e-3, 1.0e-2]", "[1.0e-6]").replace("l2: [0.0]", "l2: [0.1]"))
    code, _, err = run(["search", str(config), "--runs-dir", str(tmp_path / "runs"),
                        "--quiet"])
    assert code == 0, err
    code, out, err = run(["eval", "--runs-dir", str(tmp_path / "runs"), "--bootstrap", "0",
                          "--json", "--no-plots"])
    assert code == 0, err
    res = json.loads(out)
    assert res["ridge"]["test_fmse"] is not None and res["reproduced"] is True


def test_a_full_disk_while_preparing_the_arrays_is_one_line(tmp_path: Path, data_copy: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    import errno

    import agereg.launcher as launcher

    real, calls = launcher._save, []

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[0])
        if len(calls) == 3:  # X_fit and y_fit written, X_val not
            raise OSError(errno.ENOSPC, "No space left on device")
        real(*args, **kwargs)

    monkeypatch.setattr(launcher, "_save", full)
    (tmp_path / "h.yaml").write_text(CONFIG.format(data=data_copy))
    code, _, err = run(["search", str(tmp_path / "h.yaml"), "--runs-dir",
                        str(tmp_path / "runs"), "--quiet"])
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert "cannot write the prepared arrays (No space left on device)" in err
    run_dir = next((tmp_path / "runs").glob("*-h"))
    assert not (run_dir / ".work").exists()  # the partial arrays are gone
    assert [p.name for p in calls] == ["X_fit.npy", "y_fit.npy", "X_val.npy"]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"


def test_a_write_refused_by_the_os_while_preparing_the_arrays_is_one_line(tmp_path: Path,
                                                                        data_copy: Path):
    """The prepared arrays are written a block at a time by ndarray.tofile; a real write
    error from the OS (here: a 16 KB file size limit, EFBIG; the training rows take 26 KB)
    is the same one line, and nothing partial is left."""
    import resource
    import subprocess
    import sys

    (tmp_path / "h.yaml").write_text(CONFIG.format(data=data_copy))
    (data_copy / "split.json").unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "agereg", "search", str(tmp_path / "h.yaml"), "--runs-dir",
         str(tmp_path / "runs"), "--quiet"], capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384)))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert "cannot write the prepared arrays (File too large)" in line, proc.stderr
    assert "Traceback" not in proc.stderr
    run_dir = next((tmp_path / "runs").glob("*-h"))
    assert not (run_dir / ".work").exists()
