"""``agereg runs``: one line per run folder of a runs directory, read-only.

A damaged run is listed with what is wrong instead of stopping the listing: the point is
to find runs, including the ones that need attention.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from agereg.errors import AgeregError, RunError
from agereg.runs import (
    BEST_NAME,
    CONFIG_NAME,
    DATASET_NAME,
    EVAL_NAME,
    RUN_NAME,
    evaluations,
    read_json,
    resolve_run,
    run_status,
    stored_config,
)

_STAMP = re.compile(r"(\d{8}-\d{6})-(.+)")


@dataclass(frozen=True)
class RunRow:
    folder: str
    name: str
    started: str | None  # ISO time from the folder name
    data: str | None  # dataset kind: course, synthetic, user
    strategy: str | None
    status: str  # running / killed / interrupted / failed / finished, or "damaged"
    trials_done: int | None
    trials_planned: int | None
    best_val_loss: float | None
    evaluated: int  # evaluations kept in evals/
    latest: bool
    problem: str | None = None  # why the run is listed as damaged

    def to_dict(self) -> dict:
        return asdict(self)


def list_runs(runs_dir: Path) -> list[RunRow]:
    """Every agereg run folder in ``runs_dir``, oldest first."""
    if not runs_dir.is_dir():
        raise RunError(f"{runs_dir}: no runs folder here; start a search with `agereg search "
                       "CONFIG` or give --runs-dir")
    try:
        latest: Path | None = resolve_run(None, runs_dir)
    except AgeregError:
        latest = None
    rows = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.is_symlink()):
        if not (folder / CONFIG_NAME).exists() and not (folder / RUN_NAME).exists():
            continue  # not a run folder
        rows.append(_row(folder, latest))
    return rows


def _row(folder: Path, latest: Path | None) -> RunRow:
    m = _STAMP.fullmatch(folder.name)
    started = name = None
    if m:
        try:
            started = dt.datetime.strptime(m.group(1), "%Y%m%d-%H%M%S").isoformat()
            name = m.group(2)
        except ValueError:
            pass
    is_latest = latest is not None and latest.resolve() == folder.resolve()
    try:
        info = read_json(folder / RUN_NAME, "this run folder is damaged")
        dataset = read_json(folder / DATASET_NAME, "this run folder is damaged")
        best = read_json(folder / BEST_NAME, "resume the run to rebuild it") \
            if (folder / BEST_NAME).exists() else {}
        n_evals = len(evaluations(folder)) + int((folder / EVAL_NAME).is_file())
        name = stored_config(folder).name  # the folder's suffix (-2) is not part of it
    except RunError as exc:
        return RunRow(folder.name, name or folder.name, started, None, None, "damaged", None,
                      None, None, 0, is_latest, str(exc))
    trial = best.get("best")
    val = trial.get("val_loss") if isinstance(trial, dict) else None

    def count(v: object) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def text(v: object) -> str | None:
        return v if isinstance(v, str) else None

    return RunRow(
        folder.name, name or folder.name, started, text(dataset.get("kind")),
        text(info.get("strategy")) or "grid", run_status(folder, info) or "?",
        count(info.get("trials_done")), count(info.get("trials_planned")),
        float(val) if isinstance(val, int | float) and not isinstance(val, bool) else None,
        n_evals, is_latest,
    )  # fmt: skip
