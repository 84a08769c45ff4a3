"""Helpers shared by the CLI tests (imported as a plain module from tests/)."""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Iterator
from pathlib import Path

from click.testing import CliRunner

from agereg.cli import main


def run(args: list[str]) -> tuple[int, str, str]:
    """Run the CLI through :func:`agereg.cli.main` (where errors become exit codes)."""
    with CliRunner().isolation() as (out, err, *_):
        code = main(args)
        return code, out.getvalue().decode(), err.getvalue().decode()


def latest_run(runs: Path) -> Path:
    """The run runs/latest names (a symbolic link, or a text file without links)."""
    import os

    latest = runs / "latest"
    return runs / (os.readlink(latest) if latest.is_symlink() else latest.read_text().strip())


def search(config: Path, runs: Path, *extra: str) -> Path:
    code, _, err = run(["search", str(config), "--runs-dir", str(runs), "--quiet", *extra])
    assert code == 0, err
    return latest_run(runs)


def read_results(run_dir: Path) -> list[dict]:
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def curve_lines(run_dir: Path) -> list[str]:
    """The rows of a run's curves.csv as written, sorted (groups finish in any order)."""
    return sorted((run_dir / "curves.csv").read_text().splitlines()[1:])


def interrupt_at_call(monkeypatch, module, name: str, call: int) -> dict:  # type: ignore[no-untyped-def]
    """Make the ``call``-th call of ``module.name`` raise KeyboardInterrupt, as a Ctrl-C
    landing there; earlier calls go through. Returns ``{"n": calls so far, "real": the
    function}`` so the test can put it back."""
    real = getattr(module, name)
    calls = {"n": 0, "real": real}

    def interrupting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupting)
    return calls


@contextlib.contextmanager
def lock_held_elsewhere(run_dir: Path) -> Iterator[None]:
    """Another process takes ``run_dir``'s RunLock, as a live search does, for the block;
    then it is killed with SIGKILL (nothing written on the way out), as by the OOM killer."""
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from agereg.runs import RunLock; lock = RunLock(Path(sys.argv[1])).__enter__(); "
         "print('locked', flush=True); time.sleep(60)", str(run_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def printed(width: int, show: Callable[[], object]) -> str:
    """What ``show()`` prints on agereg's stdout console at ``width`` columns."""
    from rich.console import Console

    from agereg import cli

    console = Console(width=width, record=True)
    saved, cli.out = cli.out, console
    try:
        show()
    finally:
        cli.out = saved
    return console.export_text()
