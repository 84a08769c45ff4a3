"""Helpers shared by the CLI tests (imported as a plain module from tests/)."""

from __future__ import annotations

import csv
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
