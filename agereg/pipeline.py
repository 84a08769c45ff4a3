"""The work of `agereg search` and `agereg split`, without any terminal.

The CLI parses options and prints; everything here is plain Python that reports through
callbacks, so it is easy to test and to call from a notebook.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agereg import interrupts
from agereg.advice import edge_notices
from agereg.batched import PANEL, State
from agereg.cluster import check_backend
from agereg.config import (
    Config,
    Distribution,
    config_digest,
    curve_rows,
    dump_config,
    load_config,
    result_defining,
    search_budget,
)
from agereg.data import Dataset, DatasetInfo, load_dataset
from agereg.errors import ConfigError, DataError, RunError, SplitError, TrialsFailed
from agereg.fileio import atomic_write_text
from agereg.launcher import ArraysRef, GroupOutcome, launch, prepare_arrays, read_progress
from agereg.params import save_params
from agereg.plan import Group, for_folds, group_columns
from agereg.records import Config3, RunSummary, Status, TrialKey, TrialRecord, combine_folds
from agereg.runs import (
    CONFIG_NAME,
    CURVE_ROWS,
    DATASET_NAME,
    FOLD_LOG_NAME,
    RUN_NAME,
    CurveKey,
    CurvePoint,
    RunLock,
    append_curve_points,
    append_fold_records,
    append_plan,
    append_records,
    create_run_dir,
    curve_points,
    mean_curve,
    read_curves,
    read_json,
    read_log,
    read_plan,
    resolve_run,
    set_latest,
    stored_config,
    stored_lr_limit,
    write_json,
    write_run_info,
    write_summaries,
)
from agereg.split import (
    SPLIT_NAME,
    Split,
    load_split,
    make_folds,
    make_split,
    parse_split,
    save_split,
)
from agereg.strategies import Proposal, Strategy, make_strategy
from agereg.words import counted

# A search whose groups need less than this on one core runs in this process: starting
# worker processes (about 0.4 s) would cost more than two cores save.
IN_PROCESS_SECONDS = 0.5
CHECK_ROWS = 20_000  # rows the stability check before a search looks at
ENGINE_FLOPS = 2e10  # one core, the batched engine's 16-wide products (measured 17-20e9)
STEP_SECONDS = 3e-5  # the fixed cost of one minibatch step of one panel (numpy calls)

Log = Callable[[str], None]
# (trials done, fractional while groups train; trials planned; "2 diverged, best 88.86")
Progress = Callable[[float, int, str], None]


def quiet(_: str) -> None:
    """A :data:`Log` that drops every message."""


@dataclass(frozen=True)
class SearchOutcome:
    run_dir: Path
    summary: RunSummary
    computed: int  # trials trained by this invocation (the rest came from the log)
    reused: int  # trials taken from the run given to --extend
    seconds: float

    @property
    def ranked(self) -> list[TrialRecord]:
        return self.summary.ranked

    def failure(self) -> TrialsFailed | None:
        """The one-line error of a search that saved failed trials (None if none did)."""
        return failure(self.summary.ranked, self.run_dir)


def failure(records: list[TrialRecord], run_dir: Path) -> TrialsFailed | None:
    # one per trial (a K-fold trial's folds fail together or one by one)
    failed = list({r.key(): r for r in records if r.status is Status.FAILED}.values())
    if not failed:
        return None
    first = failed[0]
    error = " ".join(str(first.error).split())[:200]  # a stored message: bounded, one line
    return TrialsFailed(
        f"{len(failed)} trial{'s' if len(failed) > 1 else ''} failed, the first "
        f"(batch_size {first.batch_size}, learning_rate {first.learning_rate:g}, epochs "
        f"{first.epochs}, l2 {first.l2:g}) with {error}; they are saved as failed in "
        f"{run_dir}/: fix the cause, then `agereg search --resume {run_dir}` trains them again")


# ---------------------------------------------------------------- split


def split_for(cfg: Config, dataset: Dataset, log: Log) -> tuple[Split, Config]:
    """The split a new search uses: ``<data>/split.json`` if present and of the kind the
    config asks for (a holdout, or as many folds), else a new one from the config (saved
    there when there was none). Returns the config with the split section set to what was
    really used, so the resolved config tells the truth."""
    info = dataset.info
    path = Path(cfg.data.dir) / SPLIT_NAME
    ytr_sha = info.sha256["ytr"]
    want = cfg.split.folds or 0
    wanted = f"{want} folds" if want else "a holdout split"
    existing = load_split(path, info.n_train, ytr_sha) if path.exists() else None
    if existing is not None and existing.k == want:
        split = existing
        if split.seed != cfg.split.seed or (not want and
                                           split.val_fraction != cfg.split.val_fraction):
            log(f"using {path} ({split.describe()}); it takes precedence over the config's "
                "split section")
    else:
        split = (make_folds(info.n_train, cfg.split.seed, want, ytr_sha) if want else
                 make_split(info.n_train, cfg.split.seed, cfg.split.val_fraction, ytr_sha))
        if existing is not None:
            log(f"{path} holds {existing.describe()} but the config asks for {wanted}: "
                f"made {split.describe()} for this run (kept in the run folder; "
                "`agereg split` writes one to the data folder)")
        else:
            try:
                save_split(split, path)
                kind = f"{split.k} folds" if split.k else f"val_fraction {split.val_fraction}"
                log(f"no {path} yet: created it from split.seed {split.seed} ({kind})")
            except RunError:
                log(f"no {path} and the data folder is not writable: the split "
                    f"({split.describe()}) is kept in the run folder only")
    section = (dataclasses.replace(cfg.split, seed=split.seed, folds=split.k) if split.k else
               dataclasses.replace(cfg.split, seed=split.seed,
                                   val_fraction=split.val_fraction or cfg.split.val_fraction,
                                   folds=None))
    return split, dataclasses.replace(cfg, split=section)


def _check_curves(cfg: Config) -> None:
    """Refuse, before any work, a search whose learning curves could outgrow what a run
    folder keeps (a worker would also hold a group's curves in memory)."""
    rows = curve_rows(cfg.search, cfg.grid) * (cfg.split.folds or 1)
    if cfg.execution.curves and rows > CURVE_ROWS:
        raise ConfigError(
            f"grid.epochs: learning curves could take up to {rows:,} rows of curves.csv (one "
            f"per configuration, fold and epoch trained; the largest epoch count is "
            f"{max(cfg.grid.epochs):,}), more than the {CURVE_ROWS:,} a run keeps; lower "
            "the epochs, or turn the curves off (--no-curves, or execution.curves: false)")


def _note_jobs(cfg: Config, log: Log) -> None:
    """Say so when more local workers are asked for than this machine has cores: they
    take turns, and the engine's pairs of groups are split up (the homework grid with 4
    workers on 2 cores: 1.11 x the time of -1, README)."""
    from joblib import cpu_count

    cores = cpu_count()
    if cfg.execution.backend != "dask" and cfg.n_jobs > cores:
        log(f"note: n_jobs {cfg.n_jobs} on {cores} cores: the workers take turns on them, "
            "which is slower than n_jobs -1 (all cores, no more)")


def _check_learning_rates(cfg: Config, dataset: Dataset, split: Split, log: Log) -> float:
    """Say in one line which learning rates exceed the full-batch stability limit
    2 / lambda_max of the training rows (a few power iterations); never refuse to run.
    Returns the limit, which the edge notices cap their learning rates at."""
    from agereg.analysis import lr_notice

    lr_limit = _lr_limit(dataset, split)
    notice = lr_notice(cfg.grid, lr_limit)
    if notice:
        log(f"note: {notice}")
    return lr_limit


def _lr_limit(dataset: Dataset, split: Split) -> float:
    """The full-batch stability limit 2 / lambda_max of the split's training rows."""
    from agereg.analysis import top_eigenvalue

    # At most CHECK_ROWS training rows (the split's order is random): lambda_max of an
    # average of x x^T is estimated well by a sample, and 200,000 rows in float64 would
    # be 3.7 GB for a one-line note.
    rows = split.train[:CHECK_ROWS]
    X = np.asarray(dataset.Xtr[np.sort(rows)])  # (n, D); float32 images stay float32
    return top_eigenvalue(X, tol=1e-4).lr_limit


def write_split(data_dir: Path, seed: int, val_fraction: float,
                folds: int | None = None, force: bool = False) -> tuple[Path, Split]:
    """Write DATA/split.json; an existing, different split is replaced only with
    ``force`` (runs made with it keep their own copy, but later searches would change)."""
    dataset = load_dataset(data_dir)
    n, sha = dataset.info.n_train, dataset.info.sha256["ytr"]
    split = make_folds(n, seed, folds, sha) if folds else make_split(n, seed, val_fraction, sha)
    path = data_dir / SPLIT_NAME
    if path.exists() and not force:
        try:
            held = load_split(path, n, sha)
            same = held.to_dict() == split.to_dict()
            why = f"holds another split ({held.describe()}; this one {split.describe()})"
        except SplitError:
            same = False  # damaged or for other data: still the user's file
            why = "was made for other files (or is damaged)"
        if not same:
            raise SplitError(f"{path}: exists and {why}; agereg split never replaces it "
                             "silently: pass --force to replace it")
    save_split(split, path)
    return path, split


# ---------------------------------------------------------------- search


def start_search(
    cfg: Config,
    runs_dir: Path,
    log: Log = quiet,
    progress: Progress | None = None,
    on_start: Callable[[Path], None] | None = None,
    extend: str | Path | None = None,
) -> SearchOutcome:
    """Validate everything, create a run folder and run the search. With ``extend`` (a
    finished or interrupted run), trials logged there are reused, not trained again."""
    _check_curves(cfg)
    dataset = load_dataset(cfg.data.dir)
    base = None if extend is None else Extension.open(extend, runs_dir, cfg, dataset.info)
    check_backend(cfg.execution, runs_dir, log)  # an unreachable cluster writes nothing
    _note_jobs(cfg, log)
    split, cfg = split_for(cfg, dataset, log)
    if base is not None:
        base.check_split(split)
    lr_limit = _check_learning_rates(cfg, dataset, split, log)
    run_dir = create_run_dir(runs_dir, cfg.name)
    with RunLock(run_dir):
        # The resolved config and the inputs' records go down before any training.
        atomic_write_text(run_dir / CONFIG_NAME, dump_config(cfg))
        write_json(run_dir / DATASET_NAME, dataset.info.to_dict())
        save_split(split, run_dir / SPLIT_NAME)
        write_run_info(run_dir, "running", trials_planned=search_budget(cfg.search, cfg.grid),
                       **_kept(cfg, lr_limit, base))
        set_latest(runs_dir, run_dir)
        if on_start:
            on_start(run_dir)
        return _run(cfg, dataset, split, run_dir, [], log, progress, base, lr_limit)


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
    if cfg.execution.curves != stored.execution.curves:
        # the run's curves.csv must cover every trial or none
        was, flag = ("on", "--no-curves") if stored.execution.curves else ("off", "--curves")
        raise ConfigError(f"{run_dir}: started with learning curves {was}; {flag} (or "
                          "execution.curves) would record them for only some of its trials: "
                          "resume without it, or start a new search")
    with RunLock(run_dir):
        check_backend(cfg.execution, run_dir, log)
        _note_jobs(cfg, log)
        if cfg_path is None:
            dataset = load_run_dataset(run_dir, cfg, log)
        else:  # the data.dir the user gave, and no other
            dataset = load_dataset(cfg.data.dir)
            check_dataset(run_dir, dataset.info)
        split = load_run_split(run_dir, dataset.info)
        _check_curves(cfg)
        done = read_log(run_dir, repair=True)
        read_plan(run_dir, repair=True)
        info = read_json(run_dir / RUN_NAME, "this run folder is damaged")
        extends = info.get("extends")
        base = None
        if isinstance(extends, str):
            base = Extension.open(extends, runs_dir, cfg, dataset.info)
            base.check_split(split)
        # measured now for a run made before the search kept it
        lr_limit = stored_lr_limit(info) or _lr_limit(dataset, split)
        write_run_info(run_dir, "running", trials_planned=search_budget(cfg.search, cfg.grid),
                       resumed=True, **_kept(cfg, lr_limit, base))
        # runs/latest stays on the newest created run: resuming an older one does not move it
        if on_start:
            on_start(run_dir)
        return _run(cfg, dataset, split, run_dir, done, log, progress, base, lr_limit)


def _kept(cfg: Config, lr_limit: float | None, base: Extension | None) -> dict[str, object]:
    """What every write of run.json keeps (it is written whole each time): the digest of
    the config that sets the numbers, the measured stability limit and the extended run."""
    return {"config_digest": config_digest(cfg), "lr_limit": lr_limit,
            **Extension.run_info(base)}


def _check_same(stored: Config, given: Config, run_dir: Path) -> None:
    a, b = result_defining(stored), result_defining(given)
    diff = [k for k in a if a[k] != b[k]]
    if diff:
        k = diff[0]
        raise RunError(f"{run_dir}: the config differs from the run's in {k} "
                       f"({b[k]!r} vs stored {a[k]!r}); resume without a config to use the "
                       "stored one, or start a new search")


def check_dataset(run_dir: Path, info: DatasetInfo, stored: dict | None = None) -> None:
    """The run's data files are these (SHA-256); ``stored``: its dataset.json, when read."""
    if stored is None:
        stored = read_json(run_dir / DATASET_NAME, "this run folder is damaged")
    if stored.get("sha256") != info.sha256:
        raise RunError(f"{run_dir}: the files in {info.path} differ from the data this run "
                       f"used ({stored.get('path')}); point data.dir at the original files")


def load_run_split(run_dir: Path, info: DatasetInfo) -> Split:
    """The split a run's search used, kept in the run folder. Damage there is damage to the
    run, not to a data folder's split: said so, without the advice to write a new one."""
    try:
        return load_split(run_dir / SPLIT_NAME, info.n_train, info.sha256["ytr"])
    except SplitError as exc:  # a data folder's fix (remake it) does not apply here
        raise RunError(f"{exc.problem}; the run folder is damaged: restore the split.json "
                       "its search used, or start a new search") from None


def load_run_dataset(run_dir: Path, cfg: Config, log: Log = quiet) -> Dataset:
    """The data of a run, as its stored config names it: ``data.dir``, relative to the
    current directory. When that folder is missing or holds other files, the folder where
    the search read them (``dataset.json``'s absolute ``path``), if it still holds the
    run's files (checked by SHA-256), and a line saying so."""
    given = Path(cfg.data.dir)
    stored = read_json(run_dir / DATASET_NAME, "this run folder is damaged")
    try:
        dataset = load_dataset(given)
        check_dataset(run_dir, dataset.info, stored)
        return dataset
    except (DataError, RunError) as exc:
        problem = exc
    recorded = stored.get("path")
    if not isinstance(recorded, str) or not Path(recorded).is_absolute():
        raise problem
    elsewhere = Path(recorded).resolve() != given.resolve()
    if elsewhere and Path(recorded).is_dir():
        try:
            dataset = load_dataset(recorded)
            check_dataset(run_dir, dataset.info, stored)
            here = "holds other files" if given.is_dir() else "does not exist"
            log(f"data: {recorded}, where the search read this run's files (data.dir "
                f"{str(given)!r} {here} here)")
            return dataset
        except (DataError, RunError):
            pass
    if given.is_dir():
        raise problem
    if not elsewhere:
        raise RunError(f"{run_dir}: its data folder {recorded} does not exist any more; put "
                       "the run's four files back there")
    state = "holds other files now" if Path(recorded).is_dir() else "does not exist either"
    raise RunError(f"{run_dir}: its data folder {str(given)!r} does not exist here, and "
                   f"{recorded}, where the search read its files, {state}: run agereg from "
                   "the folder the search ran in, or put the run's four files back there")


@dataclass(frozen=True)
class Extension:
    """A run whose logged trials a new search reuses (``agereg search --extend RUN``)."""

    run_dir: Path
    split_path: Path
    records: list[TrialRecord]

    @classmethod
    def open(cls, run: str | Path, runs_dir: Path, cfg: Config, info: DatasetInfo) -> Extension:
        run_dir = resolve_run(run, runs_dir)
        stored = stored_config(run_dir)
        check_dataset(run_dir, info)
        a, b = result_defining(stored), result_defining(cfg)
        for key in ("seed", "execution.engine", "execution.precision"):
            if a[key] != b[key]:
                raise RunError(f"--extend {run_dir}: the config differs from that run's in "
                               f"{key} ({b[key]!r} vs {a[key]!r}); its trials would not be "
                               "the same numbers, so they cannot be reused")
        for axis in ("batch_size", "learning_rate", "epochs", "l2", "loss"):
            old, new = getattr(stored.grid, axis), getattr(cfg.grid, axis)
            if not _covers(new, old):
                raise RunError(f"--extend {run_dir}: grid.{axis} must contain that run's "
                               f"({_axis_text(old)}), but is {_axis_text(new)}; widen it")
        with RunLock(run_dir):  # a search still writing it: one line, as for eval
            records = read_log(run_dir)
        return cls(run_dir, run_dir / SPLIT_NAME, records)

    @staticmethod
    def run_info(base: Extension | None) -> dict[str, str]:
        """What run.json says of the extended run (nothing without one)."""
        return {} if base is None else {"extends": str(base.run_dir)}

    def check_split(self, split: Split) -> None:
        info = read_json(self.split_path, "the run folder to extend is damaged")
        mine = split.to_dict()
        if any(info.get(key) != mine.get(key) for key in ("train", "val", "folds")):
            try:  # described as any split is, when its file is a valid one
                theirs = parse_split(info, self.split_path).describe()
            except SplitError:
                theirs = None
            which = (f"{theirs}, this search {split.describe()}"
                     if theirs not in (None, split.describe()) else
                     "another train/validation split")
            raise RunError(f"--extend {self.run_dir}: that run used {which}; extend it with "
                           "the same split (the same split section, or copy "
                           f"{self.split_path} to the data folder)")

    def curves(self) -> dict[CurveKey, dict[int, CurvePoint]]:
        """Its learning curves (none when it recorded none)."""
        return read_curves(self.run_dir)

    def cache(self) -> dict[TrialKey, TrialRecord]:
        """Its trials that have losses or diverged (a failed trial is trained again), as
        reused records that name where they came from."""
        origin = str(self.run_dir)
        return {r.key(): dataclasses.replace(r, origin=r.origin or origin,
                                             status=Status.OK if r.status is Status.PRUNED
                                             else r.status)
                for r in self.records if r.status is not Status.FAILED}


def _covers(new: object, old: object) -> bool:
    if isinstance(new, Distribution) and isinstance(old, Distribution):
        return new.kind == old.kind and new.low <= old.low and old.high <= new.high
    if isinstance(new, tuple) and isinstance(old, tuple):
        return set(old) <= set(new)
    return False


def _axis_text(axis: object) -> str:
    if isinstance(axis, Distribution):
        return f"{axis.kind} [{axis.low:g}, {axis.high:g}]"
    return "[" + ", ".join(v if isinstance(v, str) else f"{v:g}"
                           for v in axis) + "]"  # type: ignore[attr-defined]


class _Sweep:
    """The one loop that connects a strategy and the launcher:

        while (proposal := strategy.propose(results)) is not None:
            for outcome in launcher.launch(groups of proposal):
                log.append(outcome.records); results.update(outcome.records)

    Every proposal's groups are stored (plan.jsonl) before they train; a resumed run
    trains the stored groups of a stage, not a fresh grouping. With K folds every group
    runs once per fold; each fold's records go to folds.jsonl, and a trial enters the
    results (and trials.jsonl) when its last fold is in.
    """

    def __init__(self, cfg: Config, dataset: Dataset, split: Split, run_dir: Path,
                 done: list[TrialRecord], log: Log, progress: Progress | None,
                 base: Extension | None) -> None:
        self.cfg, self.dataset, self.split, self.run_dir = cfg, dataset, split, run_dir
        self.log, self.progress = log, progress
        self.cache = {} if base is None else base.cache()
        # the extended run's learning curves, carried along with its reused trials
        self.base_curves = {} if base is None or not cfg.execution.curves else base.curves()
        self.lock = threading.Lock()
        # a failed trial is not done: a resumed search trains it again
        self.results: dict[TrialKey, TrialRecord] = {
            r.key(): r for r in done if r.status is not Status.FAILED}
        self.folds: dict[tuple[TrialKey, int], TrialRecord] = {}
        if split.k:
            self.folds = {(r.key(), r.fold): r
                          for r in read_log(run_dir, repair=True, name=FOLD_LOG_NAME)
                          if r.fold is not None and r.status is not Status.FAILED}
        # a torn last row (a kill mid-append) is cut off before anything is appended
        on_file = read_curves(run_dir, repair=True)
        # validation fMSE by epoch of each (column, fold): the best epoch of a K-fold trial
        self.curves = on_file if split.k else {}
        # the last epoch of each (column, fold)'s curve on file: a group that trains a
        # column again from its start (resumed after a kill between its curves and its
        # records, a halving rung resumed without the parameters of the rung before, a
        # longer trial beside an extended run's) appends only the epochs after it
        self.curves_upto = {key: max(points) for key, points in on_file.items() if points}
        self.plan = read_plan(run_dir)
        # (fold, column) -> (epoch, w (D,), b, best val fMSE, its epoch): halving's
        # parameters at the last rung
        self.states: dict[tuple[int | None, Config3],
                          tuple[int, np.ndarray, np.generic, float, int]] = {}
        self.ref: ArraysRef | None = None
        self.computed = self.reused = 0
        self.n_planned = search_budget(cfg.search, cfg.grid)
        # a kill between a trial's last fold and its trial record: complete it now
        self._complete({key for key, _ in self.folds})

    def _append_curves(self, curves: dict[CurveKey, dict[int, CurvePoint]]) -> None:
        """Append the points after each (column, fold)'s last epoch on file, so that the
        file holds each point once."""
        append_curve_points(self.run_dir, {
            key: {e: p for e, p in points.items() if e > self.curves_upto.get(key, 0)}
            for key, points in curves.items()})
        for key, points in curves.items():
            if points:
                self.curves_upto[key] = max(self.curves_upto.get(key, 0), max(points))

    def run(self, strategy: Strategy) -> None:
        seen: set[tuple[str, int]] = set()
        while (proposal := strategy.propose(self.results)) is not None:
            if not seen:
                self._note_fewer(proposal)
            marker = (proposal.stage, len(self.results))
            if marker in seen:  # a strategy must make progress: never spin
                raise RuntimeError(f"strategy {strategy.name} repeated {proposal.stage}")
            seen.add(marker)
            self._prune(proposal)
            if proposal.columns:
                self._train(proposal, strategy.continues)

    def _note_fewer(self, first: Proposal) -> None:
        """Say so when the first proposal holds fewer configurations than n_trials asks
        (a finite grid with fewer: all of it is drawn)."""
        n, got = self.cfg.search.n_trials, len(first.columns)
        if n is not None and got < n:
            self.log(f"note: search.n_trials = {n} configurations, but the grid holds only "
                     f"{got}: each of them is trained")

    def _append(self, records: list[TrialRecord]) -> None:
        append_records(self.run_dir, records)  # durable before it counts as done
        with self.lock:  # the progress thread reads results
            for r in records:
                self.results[r.key()] = r
        self._report(0.0)

    def _report(self, partial: float) -> None:
        """Tell the progress callback: trials done (plus ``partial``, the trials' share of
        the epochs the running groups have trained), diverged so far, best so far."""
        if not self.progress:
            return
        with self.lock:
            finished = list(self.results.values())
        done = len(finished)
        diverged = sum(r.status is Status.DIVERGED for r in finished)
        vals = [r.val_loss for r in finished if r.val_loss is not None]
        note = f"{diverged} diverged" + (f", best val {min(vals):.6g}" if vals else "")
        self.progress(done + partial, max(self.n_planned, done), note)

    def _complete(self, keys: set[TrialKey]) -> int:
        """Combine the trials whose every fold is in; returns how many."""
        k = self.split.k
        ready = [key for key in sorted(keys) if key not in self.results
                 and all((key, f) in self.folds for f in range(k))]
        if not ready:
            return 0
        self._append([dataclasses.replace(
            combine_folds([self.folds[(key, f)] for f in range(k)]),
            best_epoch=self._best_epoch(key)) for key in ready])
        return len(ready)

    def _best_epoch(self, key: TrialKey) -> int | None:
        """A K-fold trial's best epoch: the lowest mean over folds of the validation fMSE
        among epochs 1 ... its epochs (None without curves)."""
        bs, lr, ep, l2, loss = key
        mean = mean_curve(self.curves, (bs, lr, l2, loss), range(self.split.k))
        if any(e not in mean for e in range(1, ep + 1)):
            return None  # curves off, or a fold diverged on the way
        return min(range(1, ep + 1), key=lambda e: (mean[e], e))

    def _prune(self, proposal: Proposal) -> None:
        pruned = [self.results[k].with_status(Status.PRUNED) for k in proposal.prune
                  if self.results[k].status is Status.OK]
        if pruned:
            self._append(pruned)

    def _pending(self, group: Group) -> list[TrialKey]:
        return [k for k in group.trial_keys() if k not in self.results
                and (group.fold is None or (k, group.fold) not in self.folds)]

    def _train(self, proposal: Proposal, continues: bool) -> None:
        k = self.split.k
        wanted = {(key, f) for key in proposal.trial_keys() for f in (range(k) if k else [None])}
        groups = self.plan.get(proposal.stage)
        if groups is None or {(key, g.fold) for g in groups for key in g.trial_keys()} != wanted:
            groups = for_folds(group_columns(proposal.columns, proposal.epochs,
                                             proposal.start_epoch), k)
            append_plan(self.run_dir, proposal.stage, groups)
            self.plan[proposal.stage] = groups
        reuse = [self.cache[key] for key in proposal.trial_keys()
                 if key not in self.results and key in self.cache]
        if reuse:
            if self.cfg.execution.curves and not self.base_curves and not self.reused:
                self.log("note: the extended run recorded no learning curves: its reused "
                         "trials have none here")
            configs = {(r.batch_size, r.learning_rate, r.l2, r.loss) for r in reuse}
            carried = {key: self.base_curves.pop(key) for key in list(self.base_curves)
                       if key[:4] in configs}  # each configuration's curve once
            with interrupts.shielded():  # the curves with their records, or neither
                if carried:  # before the records that they explain
                    self._append_curves(carried)
                self._append(reuse)
                self.reused += len(reuse)
        todo = [g for g in groups if self._pending(g)]
        if not todo:
            return
        n_trials = len({key for g in todo for key in self._pending(g)})
        folds = f" x {k} folds" if k else ""
        self.log(f"{proposal.title or proposal.stage}: training "
                 f"{counted(n_trials, 'trial')}{folds} in {counted(len(todo), 'group')}")
        if self.ref is None:
            self.ref = prepare_arrays(self.dataset, self.split, self.cfg.execution.precision,
                                      self.run_dir / ".work")
        ex = self.cfg.execution
        files = self._progress_files(todo)
        n_jobs = self.cfg.n_jobs
        if ex.backend == "loky" and self._estimated_seconds(todo) < IN_PROCESS_SECONDS:
            # starting worker processes would cost more than the work: train here (the
            # numbers are the same for any n_jobs)
            n_jobs = 1
        stream = launch(self.ref, todo, self.cfg.seed, ex.engine, n_jobs, ex.backend,
                        ex.scheduler, [self._start(g) for g in todo], keep_state=continues,
                        curves=ex.curves, progress_files=files)
        # closing() stops the workers at once if anything (Ctrl-C, SIGTERM, a full disk)
        # interrupts the loop, rather than whenever the generator is collected.
        with contextlib.closing(stream), self._polling(todo, files):  # type: ignore[type-var]
            for outcome in stream:
                self._take(outcome)

    def _take(self, outcome: GroupOutcome) -> None:
        """Make a trained group's outcome durable, in this order: its learning curves and
        its parameters, then its records (a fold's in folds.jsonl, a trial's once its
        every fold is in), then the state halving continues from. Ctrl-C and SIGTERM wait
        until all of it is written: the group is saved whole, not trained again."""
        with interrupts.shielded():
            k, g = self.split.k, outcome.group
            if outcome.curves is not None:  # before the records that they explain
                points = curve_points(g, outcome.curves)
                self._append_curves(points)
                if k:  # the folds' best epochs read them, as a resume reads them back
                    for key, column in points.items():
                        self.curves.setdefault(key, {}).update(column)
            if outcome.weights is not None and outcome.bias is not None:
                # before the records: a logged trial has its parameters for eval
                save_params(self.run_dir, g, outcome.weights, outcome.bias)
            # a fold's record is kept even when another fold failed its trial, so a resume
            # trains only the failed fold
            new = [r for r in outcome.records if (r.key(), r.fold) not in self.folds]
            if k:
                append_fold_records(self.run_dir, new)  # durable before it counts
                self.folds.update({(r.key(), r.fold): r for r in new  # type: ignore[misc]
                                   if r.status is not Status.FAILED})
                self.computed += self._complete({r.key() for r in new})
                failed_now = [r for r in new if r.status is Status.FAILED]
                if failed_now:  # a failed fold fails its trial now: record it
                    self._append([combine_folds([r]) for r in failed_now
                                  if r.key() not in self.results])
            else:
                new = [r for r in new if r.key() not in self.results]
                self._append(new)
                self.computed += len(new)
            if self.cfg.on_error == "stop" and (stop := failure(new, self.run_dir)):
                raise stop  # on_error: stop
            if outcome.state is not None:
                self._keep(g, outcome.state)

    def _estimated_seconds(self, groups: list[Group]) -> float:
        """A rough single-core time for the groups: two (rows, D) x (D, 16) products per
        panel and epoch at ENGINE_FLOPS, plus STEP_SECONDS of numpy calls per panel and
        minibatch step."""
        d = self.dataset.info.n_features
        n = self.split.n - len(self.split.folds[0]) if self.split.k else len(self.split.train)
        seconds = 0.0
        for g in groups:
            panels = -(-len(g.columns) // PANEL)
            epochs = g.epochs[-1] - g.start_epoch
            steps = epochs * -(-n // g.batch_size)  # small batches: many numpy calls
            seconds += (4.0 * n * d * PANEL * panels * epochs / ENGINE_FLOPS
                        + steps * panels * STEP_SECONDS)
        return seconds

    def _progress_files(self, groups: list[Group]) -> list[str | None]:
        """Where each group records its epochs (in .work, which workers see)."""
        if not self.progress or self.ref is None:
            return [None] * len(groups)
        folder = Path(self.ref.folder) / "progress"
        folder.mkdir(exist_ok=True)
        names = [folder / f"g{g.index}-f{g.fold}-{id(g)}.txt" for g in groups]
        for n in names:
            n.unlink(missing_ok=True)
        return [str(n.resolve()) for n in names]

    @contextlib.contextmanager
    def _polling(self, groups: list[Group], files: list[str | None]) -> Iterator[None]:
        """While groups train, report the epochs they have trained to the progress callback
        ten times a second from a background thread (the bar moves within a group, epoch
        by epoch, not only when a group ends)."""
        if not self.progress or not any(files):
            yield
            return
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.1):  # rich redraws 10 times a second
                partial = 0.0
                for g, f in zip(groups, files, strict=True):
                    with self.lock:
                        pending = self._pending(g)
                    if f is not None and pending:
                        k = len(pending) if g.fold is None else len(pending) / self.split.k
                        partial += read_progress(Path(f)) * k
                self._report(partial)

        thread = threading.Thread(target=poll, name="agereg-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _start(self, group: Group) -> State | None:
        """The saved parameters a group continues from; None (train from zero, the same
        numbers) unless every column has them."""
        if group.start_epoch == 0:
            return None
        cols = [(group.fold, c) for c in group.column_keys()]
        saved = [self.states.get(c) for c in cols]
        have = [s for s in saved if s is not None and s[0] == group.start_epoch]
        if len(have) < len(saved):
            return None
        W = np.stack([s[1] for s in have], axis=1)  # (D, k)
        b = np.array([s[2] for s in have], dtype=W.dtype)  # (k,)
        best_val = np.array([s[3] for s in have])
        best_epoch = np.array([s[4] for s in have], dtype=np.int64)
        return State(group.start_epoch, W, b, best_val, best_epoch)

    def _keep(self, group: Group, state: State) -> None:
        for k, column in enumerate(group.column_keys()):
            best = (np.inf, 0) if state.best_val is None or state.best_epoch is None else (
                float(state.best_val[k]), int(state.best_epoch[k]))
            self.states[(group.fold, column)] = (
                state.epoch, state.W[:, k], state.b[k], *best)


def _run(
    cfg: Config,
    dataset: Dataset,
    split: Split,
    run_dir: Path,
    done: list[TrialRecord],
    log: Log,
    progress: Progress | None,
    base: Extension | None = None,
    lr_limit: float | None = None,
) -> SearchOutcome:
    sweep = _Sweep(cfg, dataset, split, run_dir, done, log, progress, base)
    if sweep.results:
        n = len(sweep.results)
        log(f"resuming: {counted(n, 'trial')} already done")
    t0 = time.perf_counter()
    sweep._report(0.0)
    status = "interrupted"
    summary: RunSummary | None = None
    try:
        sweep.run(make_strategy(cfg))
        status = "finished"
    except TrialsFailed:
        status = "failed"
        raise
    finally:
        # a second Ctrl-C must not stop the summaries halfway: it is raised afterwards
        with interrupts.shielded():
            summary = _finish(cfg, run_dir, sweep, status, base, lr_limit)
    assert summary is not None
    return SearchOutcome(run_dir, summary, sweep.computed, sweep.reused,
                         time.perf_counter() - t0)


def _finish(cfg: Config, run_dir: Path, sweep: _Sweep, status: str,
            base: Extension | None, lr_limit: float | None) -> RunSummary | None:
    """Summaries and run.json from the durable log, after the sweep ended in any way."""
    shutil.rmtree(run_dir / ".work", ignore_errors=True)
    try:
        # From the durable log, not from memory: an interrupt can land between a group's
        # append and its bookkeeping, and the log is the truth either way.
        logged = read_log(run_dir)
        # a finished adaptive search planned exactly what it trained
        planned = len(logged) if status == "finished" else sweep.n_planned
        notices = edge_notices(logged, cfg.select_by, cfg.select, lr_limit)
        summary = write_summaries(run_dir, logged, planned, notices, cfg.select,
                                  cfg.select_by)
        shown = status
        if status == "finished" and summary.counts[Status.FAILED.value]:
            shown = "failed"  # on_error: record; --resume trains them again
        write_run_info(run_dir, shown, trials_planned=planned, trials_done=len(logged),
                       strategy=cfg.search.strategy, **_kept(cfg, lr_limit, base))
    except RunError:
        if status == "finished":
            raise
        # Already unwinding an interrupt or error: the durable trial log is the truth,
        # and --resume rebuilds the summaries from it.
        return None
    return summary
