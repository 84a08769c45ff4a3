"""The work of `agereg search` and `agereg split`, without any terminal.

The CLI parses options and prints; everything here is plain Python that reports through
callbacks, so it is easy to test and to call from a notebook.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agereg.cluster import check_backend
from agereg.config import Config, config_to_dict, dump_config, load_config
from agereg.data import Dataset, DatasetInfo, load_dataset
from agereg.errors import ConfigError, RunError
from agereg.fileio import atomic_write_text
from agereg.plan import ParameterGrid, plan_groups
from agereg.runs import (
    CONFIG_NAME,
    RunLock,
    append_records,
    create_run_dir,
    read_json,
    read_log,
    resolve_run,
    set_latest,
    write_json,
    write_run_info,
    write_summaries,
)
from agereg.search import TrialRecord, execute, prepare_arrays
from agereg.split import SPLIT_NAME, Split, load_split, make_split, save_split

Log = Callable[[str], None]
Progress = Callable[[int, int], None]  # (trials done, trials planned)


def quiet(_: str) -> None:
    """A :data:`Log` that drops every message."""


@dataclass(frozen=True)
class SearchOutcome:
    run_dir: Path
    ranked: list[TrialRecord]
    n_planned: int
    computed: int  # trials trained by this invocation (the rest came from the log)
    seconds: float


# ---------------------------------------------------------------- split


def split_for(cfg: Config, dataset: Dataset, log: Log) -> tuple[Split, Config]:
    """The split a new search uses: ``<data>/split.json`` if present, else a new one from
    the config (saved there for later runs). Returns the config with the split section
    set to what was really used, so the resolved config tells the truth."""
    info = dataset.info
    path = Path(cfg.data.dir) / SPLIT_NAME
    ytr_sha = info.sha256["ytr"]
    if path.exists():
        split = load_split(path, info.n_train, ytr_sha)
        if (split.seed, split.val_fraction) != (cfg.split.seed, cfg.split.val_fraction):
            log(f"using {path} (seed {split.seed}, val_fraction {split.val_fraction}); "
                "it takes precedence over the config's split section")
    else:
        split = make_split(info.n_train, cfg.split.seed, cfg.split.val_fraction, ytr_sha)
        try:
            save_split(split, path)
            log(f"no {path} yet: created it from split.seed {split.seed} "
                f"(val_fraction {split.val_fraction})")
        except RunError:
            log(f"no {path} and the data folder is not writable: the split "
                f"(seed {split.seed}) is kept in the run folder only")
    resolved = dataclasses.replace(
        cfg, split=dataclasses.replace(cfg.split, seed=split.seed, val_fraction=split.val_fraction)
    )
    return split, resolved


def write_split(data_dir: Path, seed: int, val_fraction: float) -> tuple[Path, Split]:
    dataset = load_dataset(data_dir)
    split = make_split(dataset.info.n_train, seed, val_fraction, dataset.info.sha256["ytr"])
    path = data_dir / SPLIT_NAME
    save_split(split, path)
    return path, split


# ---------------------------------------------------------------- search


# Keys that change the numbers: a resumed run must agree on all of them.
def result_defining(cfg: Config) -> dict:
    d = config_to_dict(cfg)
    return {
        "grid": d["grid"],
        "seed": d["seed"],
        "split": d["split"],
        "execution.engine": d["execution"]["engine"],
        "execution.precision": d["execution"]["precision"],
    }


def start_search(
    cfg: Config,
    runs_dir: Path,
    log: Log = quiet,
    progress: Progress | None = None,
    on_start: Callable[[Path], None] | None = None,
) -> SearchOutcome:
    """Validate everything, create a run folder and run every trial of the grid."""
    dataset = load_dataset(cfg.data.dir)
    check_backend(cfg.execution, runs_dir, log)  # an unreachable cluster writes nothing
    split, cfg = split_for(cfg, dataset, log)
    run_dir = create_run_dir(runs_dir, cfg.name)
    with RunLock(run_dir):
        # The resolved config and the inputs' records go down before any training.
        atomic_write_text(run_dir / CONFIG_NAME, dump_config(cfg))
        write_json(run_dir / "dataset.json", dataset.info.to_dict())
        save_split(split, run_dir / SPLIT_NAME)
        write_run_info(run_dir, "running", trials_planned=len(cfg.grid))
        set_latest(runs_dir, run_dir)
        if on_start:
            on_start(run_dir)
        return _run(cfg, dataset, split, run_dir, [], log, progress)


def resume_search(
    run: str | Path | None,
    runs_dir: Path,
    cfg_path: str | Path | None = None,
    overrides: Callable[[Config], Config] | None = None,
    log: Log = quiet,
    progress: Progress | None = None,
    on_start: Callable[[Path], None] | None = None,
) -> SearchOutcome:
    """Continue an interrupted run: trials in its log are kept, the rest are trained."""
    run_dir = resolve_run(run, runs_dir)
    stored = stored_config(run_dir)
    cfg = stored
    if cfg_path is not None:
        given = load_config(cfg_path)
        if (Path(given.data.dir) / SPLIT_NAME).exists():
            # as at the start, a split file takes precedence over the split section
            given = dataclasses.replace(given, split=stored.split)
        _check_same(stored, given, run_dir)
        cfg = given
    if overrides is not None:
        cfg = overrides(cfg)
        _check_same(stored, cfg, run_dir)
    with RunLock(run_dir):
        check_backend(cfg.execution, run_dir, log)
        dataset = load_dataset(cfg.data.dir)
        check_dataset(run_dir, dataset.info)
        split = load_split(run_dir / SPLIT_NAME, dataset.info.n_train, dataset.info.sha256["ytr"])
        done = read_log(run_dir, repair=True)
        write_run_info(run_dir, "running", trials_planned=len(cfg.grid), resumed=True)
        set_latest(runs_dir, run_dir)
        if on_start:
            on_start(run_dir)
        return _run(cfg, dataset, split, run_dir, done, log, progress)


def stored_config(run_dir: Path) -> Config:
    path = run_dir / CONFIG_NAME
    try:
        return load_config(path)
    except ConfigError as exc:
        raise RunError(f"{run_dir}: its {CONFIG_NAME} is not valid ({exc}); "
                       "this run cannot be resumed, start a new one") from None


def _check_same(stored: Config, given: Config, run_dir: Path) -> None:
    a, b = result_defining(stored), result_defining(given)
    diff = [k for k in a if a[k] != b[k]]
    if diff:
        k = diff[0]
        raise RunError(f"{run_dir}: the config differs from the run's in {k} "
                       f"({b[k]!r} vs stored {a[k]!r}); resume without a config to use the "
                       "stored one, or start a new search")


def check_dataset(run_dir: Path, info: DatasetInfo) -> None:
    stored = read_json(run_dir / "dataset.json", "this run folder is damaged")
    if stored.get("sha256") != info.sha256:
        raise RunError(f"{run_dir}: the files in {info.path} differ from the data this run "
                       f"used ({stored.get('path')}); point data.dir at the original files")


def _run(
    cfg: Config,
    dataset: Dataset,
    split: Split,
    run_dir: Path,
    done: list[TrialRecord],
    log: Log,
    progress: Progress | None,
) -> SearchOutcome:
    n_planned = len(cfg.grid)
    planned_keys = {t.key() for t in ParameterGrid(cfg.grid)}
    records = {r.key(): r for r in done if r.key() in planned_keys}
    groups = [g for g in plan_groups(cfg.grid) if any(t.key() not in records
                                                       for t in g.trials())]
    if records:
        log(f"resuming: {len(records)} of {n_planned} trials already done")
    t0 = time.perf_counter()
    computed = 0
    if progress:
        progress(len(records), n_planned)
    work = run_dir / ".work"
    status = "interrupted"
    try:
        if groups:
            ref = prepare_arrays(dataset, split, cfg.execution.precision, work)
            ex = cfg.execution
            stream = execute(ref, groups, cfg.seed, ex.engine, cfg.n_jobs, ex.backend,
                             ex.scheduler)
            # closing() stops the workers at once if anything (Ctrl-C, SIGTERM, a full
            # disk) interrupts the loop, rather than whenever the generator is collected.
            with contextlib.closing(stream):
                for group_records in stream:
                    new = [r for r in group_records if r.key() not in records]
                    append_records(run_dir, new)  # durable before it counts as done
                    for r in new:
                        records[r.key()] = r
                    computed += len(new)
                    if progress:
                        progress(len(records), n_planned)
        status = "finished"
    finally:
        shutil.rmtree(work, ignore_errors=True)
        try:
            # From the durable log, not from memory: an interrupt can land between a
            # group's append and its bookkeeping, and the log is the truth either way.
            logged = [r for r in read_log(run_dir) if r.key() in planned_keys]
            ranked = write_summaries(run_dir, logged, n_planned)
            write_run_info(run_dir, status, trials_planned=n_planned, trials_done=len(logged))
        except RunError:
            if status == "finished":
                raise
            # Already unwinding an interrupt or error: the durable trial log is the truth,
            # and --resume rebuilds the summaries from it.
    return SearchOutcome(run_dir, ranked, n_planned, computed, time.perf_counter() - t0)
