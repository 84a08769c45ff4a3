"""The dask backend against a real 2-worker LocalCluster on loopback.

Cluster tests are skipped where the ``dask`` extra is not installed (CI installs it);
the missing-extra and stub tests run everywhere.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agereg import __version__, cluster
from agereg.config import ExecutionConfig, apply_overrides, load_config
from agereg.errors import RunError
from agereg.launcher import ArraysRef, launch
from agereg.pipeline import resume_search, start_search
from agereg.plan import plan_groups
from agereg.synth import write_synthetic

from tests_helpers import latest_run, read_results, run, search, without_seconds

# Four groups of one to two seconds each on one core: long enough to kill a worker while
# it trains, short enough for the whole module to take well under a minute.
SLOW_CONFIG = """\
name: slow
seed: 3
n_jobs: 2
data: {{dir: {data}}}
grid:
  batch_size: [8, 16]
  learning_rate: [1.0e-6, 1.0e-5, 1.0e-4, 3.0e-4]
  epochs: [5, 200]
  l2: [0.0, 1.0e-4, 1.0e-3, 1.0e-2]
"""


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[tuple[object, object]]:
    """A 2-worker LocalCluster (one process, one thread each) and a client to it."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as lc, distributed.Client(lc, set_as_default=False) as client:  # fmt: skip
        yield lc, client


@pytest.fixture(scope="module")
def slow_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = write_synthetic(tmp_path_factory.mktemp("slow") / "data", seed=0, n_train=1000,
                           n_test=500, side=16)
    path = data.parent / "slow.yaml"
    path.write_text(SLOW_CONFIG.format(data=data))
    return path


@pytest.fixture(scope="module")
def slow_loky(slow_config: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The slow config's results with the default (loky) backend."""
    return without_seconds(read_results(search(slow_config, tmp_path_factory.mktemp("loky"))))


@pytest.fixture
def watchdog() -> Iterator[None]:
    """Interrupt a test that hangs (as joblib's dask backend did on KilledWorker) rather
    than let it stall CI for hours."""
    timer = threading.Timer(60, _thread.interrupt_main)
    timer.start()
    yield
    timer.cancel()


def _dask(cfg_path: Path, address: str):
    return apply_overrides(load_config(cfg_path), backend="dask", scheduler=address)


def _one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


# ---------------------------------------------------------------- same numbers


@pytest.mark.parametrize("where", ["cli", "config"])
def test_dask_results_equal_loky(where, dask_cluster, tiny_config: Path, tmp_path: Path):
    lc, _ = dask_cluster
    local = search(tiny_config, tmp_path / "loky")
    if where == "cli":
        remote = search(tiny_config, tmp_path / "dask", "--backend", "dask", "--scheduler",
                        lc.scheduler_address)
    else:
        text = tiny_config.read_text() + (
            f"execution: {{backend: dask, scheduler: '{lc.scheduler_address}'}}\n")
        cfg = tmp_path / "dask.yaml"
        cfg.write_text(text)
        remote = search(cfg, tmp_path / "dask")
    # to the last digit: the same task, the same memory-mapped arrays, one BLAS thread
    assert without_seconds(read_results(remote)) == without_seconds(read_results(local))
    assert "backend: dask" in (remote / "config.yaml").read_text()
    assert not (remote / ".work").exists()


def test_dask_cross_validation_equals_loky(dask_cluster, tiny_config: Path, tmp_path: Path):
    lc, _ = dask_cluster
    cv = tmp_path / "cv.yaml"
    cv.write_text(tiny_config.read_text().replace("val_fraction: 0.25", "folds: 3"))
    local = search(cv, tmp_path / "loky", "--n-jobs", "2")
    remote = search(cv, tmp_path / "dask", "--backend", "dask", "--scheduler",
                    lc.scheduler_address)
    assert without_seconds(read_results(remote)) == without_seconds(read_results(local))
    assert (remote / "folds.jsonl").read_text().count("\n") == 24 * 3


# ---------------------------------------------------------------- lost workers


def _kill_a_busy_worker(client, killed: list[int]):
    """A progress callback: after the first group lands, SIGKILL a worker mid-task."""

    def progress(done: float, total: int, note: str = "") -> None:
        # the main thread reports when a group's records land; the polling thread's
        # reports (epochs of running groups) are not landings
        if done == 0 or killed or threading.current_thread() is not threading.main_thread():
            return
        busy = [w for w, keys in client.processing().items() if keys]
        assert busy, "no worker is training: make SLOW_CONFIG slower"
        pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    return progress


def _alive_pids(client) -> set[int]:
    client.wait_for_workers(2, timeout=30)  # the nanny restarts a killed worker
    return set(client.run(os.getpid).values())


def test_killed_worker_task_is_retried(dask_cluster, slow_config, slow_loky, tmp_path: Path,
                                       watchdog):
    lc, client = dask_cluster
    killed: list[int] = []
    outcome = start_search(_dask(slow_config, lc.scheduler_address), tmp_path / "runs",
                           progress=_kill_a_busy_worker(client, killed))
    assert killed and killed[0] not in _alive_pids(client)
    assert outcome.computed == outcome.summary.n_planned == 64
    assert without_seconds(read_results(outcome.run_dir)) == slow_loky


def test_worker_deaths_beyond_allowed_failures_then_resume(
    dask_cluster, slow_config, slow_loky, tmp_path: Path, watchdog
):
    lc, client = dask_cluster
    allowed = lc.scheduler.allowed_failures
    lc.scheduler.allowed_failures = 0  # the first death of a task's worker is fatal
    killed: list[int] = []
    runs = tmp_path / "runs"
    try:
        with pytest.raises(RunError, match="dask gave up on a group") as info:
            start_search(_dask(slow_config, lc.scheduler_address), runs,
                         progress=_kill_a_busy_worker(client, killed))
    finally:
        lc.scheduler.allowed_failures = allowed
    run_dir = latest_run(runs)
    assert f"`agereg search --resume {run_dir.resolve()}`" in str(info.value), info.value
    assert "\n" not in str(info.value)
    assert killed and killed[0] not in _alive_pids(client)
    partial = read_results(run_dir)
    assert 16 <= sum(r["status"] == "ok" for r in partial) < 64
    outcome = resume_search(run_dir, runs, overrides=lambda c: apply_overrides(
        c, backend="dask", scheduler=lc.scheduler_address))
    assert 0 < outcome.computed < 64
    assert without_seconds(read_results(run_dir)) == slow_loky


# ---------------------------------------------------------------- errors


def test_without_the_extra_one_line_error(tiny_config: Path, tmp_path: Path):
    # In a fresh process, so that hiding distributed cannot disturb the running cluster.
    code = (
        "import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
        "from agereg.cli import main\n"
        f"sys.exit(main(['search', {str(tiny_config)!r}, '--runs-dir', "
        f"{str(tmp_path / 'runs')!r}, '--backend', 'dask', '--scheduler', "
        "'tcp://127.0.0.1:8786']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)
    _one_line_error(proc.returncode, proc.stderr,
                    "the dask backend (--backend dask or execution.backend: dask) needs "
                    "the dask extra: pip install 'agereg[dask]'")
    assert not (tmp_path / "runs").exists()


def test_unreachable_scheduler_one_line_error(monkeypatch, tiny_config: Path, tmp_path: Path):
    pytest.importorskip("distributed")
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1.0)
    code, _, err = run(["search", str(tiny_config), "--runs-dir", str(tmp_path / "runs"),
                        "--backend", "dask", "--scheduler", "tcp://127.0.0.1:1"])
    _one_line_error(code, err, "cannot reach the dask scheduler at tcp://127.0.0.1:1 within 1 s")
    assert not (tmp_path / "runs").exists()


def test_an_address_that_is_not_a_scheduler_says_so(monkeypatch, tiny_config: Path,
                                                    tmp_path: Path):
    # a web server (or dask's dashboard, the port next to the scheduler's) answers in
    # another protocol; dask read its bytes as a message of exabytes (MemoryError)
    import socket

    pytest.importorskip("distributed")
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 5.0)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        code, _, err = run(["search", str(tiny_config), "--runs-dir", str(tmp_path / "runs"),
                            "--backend", "dask", "--scheduler", f"tcp://127.0.0.1:{port}"])
    finally:
        server.close()
    _one_line_error(code, err, f"something answered at tcp://127.0.0.1:{port}, but not a "
                               "dask scheduler")
    assert not (tmp_path / "runs").exists()


def test_resume_with_unreachable_scheduler_changes_nothing(
    monkeypatch, tiny_config: Path, tmp_path: Path
):
    pytest.importorskip("distributed")
    run_dir = search(tiny_config, tmp_path / "runs")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1.0)
    code, _, err = run(["search", "--resume", str(run_dir), "--runs-dir", str(tmp_path / "runs"),
                        "--backend", "dask", "--scheduler", "tcp://127.0.0.1:1"])
    _one_line_error(code, err, "tcp://127.0.0.1:1")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_scheduler_without_workers(monkeypatch, tiny_config: Path, tmp_path: Path):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(cluster, "WORKERS_TIMEOUT", 0.5)
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as lc:
        code, _, err = run(["search", str(tiny_config), "--runs-dir", str(tmp_path / "runs"),
                            "--backend", "dask", "--scheduler", lc.scheduler_address])
    _one_line_error(code, err, "has no workers", f"dask worker {lc.scheduler_address}")
    assert not (tmp_path / "runs").exists()


def test_worker_that_cannot_see_the_arrays_says_why(dask_cluster, tiny_config: Path,
                                                     tmp_path: Path):
    lc, _ = dask_cluster
    groups = plan_groups(load_config(tiny_config).grid)
    ref = ArraysRef(str(tmp_path / "elsewhere" / ".work"), "float64")
    with pytest.raises(RunError, match="visible to every worker at the same path"):
        list(launch(ref, groups, 0, "batched", 1, "dask", lc.scheduler_address))


class _StubClient:
    """Answers ``client.run(_probe, path)`` as workers would, without a cluster."""

    def __init__(self, answer):
        self.answer = answer

    def run(self, fn, path: str, on_error: str):
        assert fn is cluster._probe and on_error == "return"
        token = Path(path).read_text()
        return {w: a(token) if callable(a) else a for w, a in self.answer.items()}


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ({"tcp://a:1": lambda t: (t, __version__, np.__version__),
          "tcp://b:1": (None, __version__, np.__version__)},
         "dask worker tcp://b:1 cannot see"),
        ({"tcp://a:1": lambda t: (t, "0.0.1", np.__version__)}, "run agereg 0.0.1"),
        ({"tcp://a:1": ModuleNotFoundError("No module named 'agereg'")},
         "cannot run agereg (ModuleNotFoundError"),
    ],
)
def test_worker_checks_before_the_run(answer, fragment, tmp_path: Path):
    where = tmp_path / "runs"
    with pytest.raises(RunError, match=fragment.replace("(", r"\(")):
        cluster._check_workers(_StubClient(answer), where, None)
    assert not where.exists()  # the probe and the folder made for it are gone


def test_worker_check_warns_on_other_numpy(tmp_path: Path):
    logged: list[str] = []
    client = _StubClient({"tcp://a:1": lambda t: (t, __version__, "0.0.0")})
    cluster._check_workers(client, tmp_path, logged.append)
    assert logged and "numpy 0.0.0" in logged[0]
    assert list(tmp_path.iterdir()) == []


def test_local_backends_need_no_check(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "distributed", None)  # would fail if it were imported
    for backend in ("loky", "threading"):
        cluster.check_backend(ExecutionConfig(backend=backend), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
