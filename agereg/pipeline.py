"""The commands' work, without any terminal: search, resume, split and eval.

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

import numpy as np

from agereg.cluster import check_backend
from agereg.config import Config, config_to_dict, dump_config, load_config
from agereg.data import Dataset, DatasetInfo, load_dataset
from agereg.engine import Arrays, Fit, train_group, train_reference
from agereg.errors import ConfigError, RunError
from agereg.evaluate import mean_baseline, predict, regression_metrics
from agereg.fileio import atomic_write_text
from agereg.plan import Group, ParameterGrid, plan_groups
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
from agereg.runs import (
    rank as rank_records,
)
from agereg.search import TrialRecord, execute, in_memory, prepare_arrays
from agereg.split import SPLIT_NAME, Split, load_split, make_split, save_split

Log = Callable[[str], None]
Progress = Callable[[int, int], None]  # (trials done, trials planned)


def _quiet(_: str) -> None:
    pass


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
    log: Log = _quiet,
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
    log: Log = _quiet,
    progress: Progress | None = None,
    on_start: Callable[[Path], None] | None = None,
) -> SearchOutcome:
    """Continue an interrupted run: trials in its log are kept, the rest are trained."""
    run_dir = resolve_run(run, runs_dir)
    stored = _stored_config(run_dir)
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
        _check_dataset(run_dir, dataset.info)
        split = load_split(run_dir / SPLIT_NAME, dataset.info.n_train, dataset.info.sha256["ytr"])
        done = read_log(run_dir, repair=True)
        write_run_info(run_dir, "running", trials_planned=len(cfg.grid), resumed=True)
        set_latest(runs_dir, run_dir)
        if on_start:
            on_start(run_dir)
        return _run(cfg, dataset, split, run_dir, done, log, progress)


def _stored_config(run_dir: Path) -> Config:
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


def _check_dataset(run_dir: Path, info: DatasetInfo) -> None:
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


# ---------------------------------------------------------------- eval


@dataclass(frozen=True)
class RunContext:
    """A finished or interrupted run, loaded and checked against its data."""

    run_dir: Path
    cfg: Config
    dataset: Dataset
    split: Split
    records: list[TrialRecord]


def open_run(run: str | Path | None, runs_dir: Path) -> RunContext:
    run_dir = resolve_run(run, runs_dir)
    cfg = _stored_config(run_dir)
    dataset = load_dataset(cfg.data.dir)
    _check_dataset(run_dir, dataset.info)
    split = load_split(run_dir / SPLIT_NAME, dataset.info.n_train, dataset.info.sha256["ytr"])
    return RunContext(run_dir, cfg, dataset, split, read_log(run_dir))


def group_of(cfg: Config, rec: TrialRecord) -> tuple[Group, int]:
    """The group that trained ``rec`` in the search and its column inside it."""
    for g in plan_groups(cfg.grid):
        if g.batch_size == rec.batch_size and (rec.learning_rate, rec.l2) in g.columns:
            return g, g.columns.index((rec.learning_rate, rec.l2))
    raise RunError(f"trial {rec.key()} is not in the run's grid; the run folder is damaged")


def retrain(cfg: Config, arrays: Arrays, rec: TrialRecord) -> Fit:
    """Train ``rec`` again by exactly the operations the search used, so its losses are
    bit-for-bit those in the log: the same engine, precision and column group."""
    if cfg.execution.engine == "reference":
        return train_reference(arrays, cfg.seed, rec.batch_size, rec.learning_rate, rec.l2,
                               rec.epochs)
    group, k = group_of(cfg, rec)
    res = train_group(arrays, cfg.seed, group.batch_size, [c[0] for c in group.columns],
                      [c[1] for c in group.columns], (rec.epochs,), snapshot=(k, rec.epochs))
    if res.snapshot is None:
        raise RunError(f"trial {rec.key()} diverged when trained again; the data or the "
                       "numerical libraries changed since the search")
    return res.snapshot


def refit_arrays(arrays: Arrays) -> Arrays:
    """Training rows followed by validation rows, for a refit on both."""
    X = np.concatenate([arrays.X_fit, arrays.X_val])
    y = np.concatenate([arrays.y_fit, arrays.y_val])
    return Arrays(X, y, arrays.X_val, arrays.y_val, arrays.X_te, arrays.y_te)


def evaluate_run(
    run: str | Path | None,
    runs_dir: Path,
    rank: int = 1,
    refit: bool = False,
    n_boot: int = 1000,
    plots: bool = True,
    log: Log = _quiet,
) -> dict:
    """Retrain the ``rank``-th best finished trial of a run and measure it on the test set.

    Without ``refit`` the retrained validation loss must equal the search's figure (it is
    computed by the same operations); ``reproduced`` in the result says whether it does.
    Also: a bootstrap of the test fMSE (``n_boot`` resamples seeded by the run's seed; 0
    disables it) paired with the runner-up, the exact ridge optimum for the trial's l2, the
    Gaussian noise model, the weights and bias (.npy) and, unless ``plots`` is false, the
    pictures. Writes ``eval.json`` last, in the run folder, and returns its content.
    """
    from agereg import report
    from agereg.evaluate import gaussian_noise

    if n_boot < 0:
        raise RunError(f"--bootstrap {n_boot}: give a number of resamples >= 0 (0 disables)")
    ctx = open_run(run, runs_dir)
    ranked = [r for r in rank_records(ctx.records) if r.status == "ok"]
    if not ranked:
        raise RunError(f"{ctx.run_dir}: no finished trial to evaluate (all diverged, failed "
                       "or not run yet); resume the search or widen the grid")
    if not 1 <= rank <= len(ranked):
        raise RunError(f"--rank {rank} is out of range: the run has {len(ranked)} finished "
                       "trials")
    rec = ranked[rank - 1]
    arrays = in_memory(ctx.dataset, ctx.split, ctx.cfg.execution.precision)
    train_rows = refit_arrays(arrays) if refit else arrays
    log(f"training trial #{rank} again ({'on train+validation' if refit else 'as in the search'})")
    fit = _refit(ctx.cfg, train_rows, rec) if refit else retrain(ctx.cfg, arrays, rec)
    pred_te = predict(arrays.X_te, fit.w, fit.b)  # (M,)
    test = regression_metrics(arrays.y_te, pred_te)
    notes: list[str] = []
    noise = gaussian_noise(train_rows.y_fit, predict(train_rows.X_fit, fit.w, fit.b),
                           arrays.y_te, pred_te)
    result = {
        "run": str(ctx.run_dir),
        "dataset": ctx.dataset.info.description,
        "trial": _trial_dict(rec, rank),
        "refit": refit,
        "trained_on": (f"train+validation ({len(train_rows.y_fit)} rows)" if refit
                       else f"training split ({len(arrays.y_fit)} rows)"),
        "engine": ctx.cfg.execution.engine,
        "precision": ctx.cfg.execution.precision,
        "train_fmse": fit.losses[0],
        "val_fmse": None if refit else fit.losses[1],
        "search_val_fmse": rec.val_loss,
        "reproduced": None if refit else fit.losses[1] == rec.val_loss,
        "test": test,
        "baseline_test": mean_baseline(train_rows.y_fit, arrays.y_te),
        "bootstrap": _bootstrap(ctx, arrays, train_rows, ranked, rank, refit, pred_te, n_boot,
                                notes, log),
        "ridge": _ridge_reference(train_rows, rec.l2, fit, test, refit, log),
        "noise": {"sigma2": noise.sigma2, "sigma": float(np.sqrt(noise.sigma2)),
                  "test_avg_loglik": noise.test_avg_loglik},
        "files": _save_parameters(ctx.run_dir, fit, refit),
        "notes": notes,
    }
    if plots:
        log("drawing the pictures")
        title = f"trial #{rank}: {report.trial_text(result['trial'])}" + (
            " (refit)" if refit else "")
        written, skipped = report.draw_eval_pictures(
            ctx.run_dir, fit.w, ctx.dataset.info.image_shape, arrays.X_te, arrays.y_te,
            pred_te, title)
        written += report.draw_grid_pictures(ctx.run_dir, rank_records(ctx.records))
        result["files"]["pictures"] = written
        notes += skipped
    else:
        notes.append("no pictures drawn (--no-plots)")
    result = _json_safe(result)
    write_json(ctx.run_dir / "eval.json", result)
    return result


def _refit(cfg: Config, arrays: Arrays, rec: TrialRecord) -> Fit:
    """Train the trial's hyperparameters on training + validation rows."""
    if cfg.execution.engine == "reference":
        fit = train_reference(arrays, cfg.seed, rec.batch_size, rec.learning_rate, rec.l2,
                              rec.epochs)
    else:
        res = train_group(arrays, cfg.seed, rec.batch_size, [rec.learning_rate], [rec.l2],
                          (rec.epochs,), snapshot=(0, rec.epochs))
        fit = res.snapshot or Fit(np.full(arrays.X_fit.shape[1], np.nan), float("nan"),
                                  (float("nan"),) * 3, True)
    if fit.diverged:
        raise RunError(f"trial {rec.key()} diverged when refit on train+validation; "
                       "evaluate without --refit or pick another trial with --rank")
    return fit


def _trial_dict(rec: TrialRecord, rank: int) -> dict:
    return {"rank": rank, "batch_size": rec.batch_size, "learning_rate": rec.learning_rate,
            "epochs": rec.epochs, "l2": rec.l2}


def _bootstrap(
    ctx: RunContext,
    arrays: Arrays,
    train_rows: Arrays,
    ranked: list[TrialRecord],
    rank: int,
    refit: bool,
    pred_te: np.ndarray,
    n_boot: int,
    notes: list[str],
    log: Log,
) -> dict | None:
    """Bootstrap of the test fMSE, paired with the runner-up (the best, when evaluating
    another rank) trained the same way; seeded by the run's config seed."""
    from agereg.evaluate import bootstrap_test

    if n_boot == 0:
        notes.append("bootstrap disabled (--bootstrap 0)")
        return None
    vs_rank = 2 if rank == 1 else 1
    pred_vs = None
    if vs_rank > len(ranked):
        notes.append("no runner-up: the run has a single finished trial, so there is no "
                     "paired comparison")
    else:
        other = ranked[vs_rank - 1]
        log(f"training trial #{vs_rank} for the paired comparison")
        try:
            fit_vs = (_refit(ctx.cfg, train_rows, other) if refit
                      else retrain(ctx.cfg, arrays, other))
            pred_vs = predict(arrays.X_te, fit_vs.w, fit_vs.b)
        except RunError as exc:
            notes.append(f"no paired comparison: {exc}")
    log(f"bootstrap: {n_boot} resamples of {len(arrays.y_te)} test images")
    boot = bootstrap_test(arrays.y_te, pred_te, pred_vs, n_boot, ctx.cfg.seed)
    paired = None
    if boot.paired is not None and pred_vs is not None:
        paired = {
            "versus": _trial_dict(ranked[vs_rank - 1], vs_rank),
            "versus_test_fmse": regression_metrics(arrays.y_te, pred_vs)["fmse"],
            "observed_difference": boot.paired.observed_difference,
            "mean_difference": boot.paired.mean_difference,
            "difference_ci": list(boot.paired.difference_ci),
            "share_better": boot.paired.share_better,
        }
    return {
        "resamples": boot.n_resamples,
        "seed": boot.seed,
        "level": boot.level,
        "n_images": len(arrays.y_te),
        "test_fmse_ci": list(boot.fmse_ci),
        "left_out_share": boot.left_out_share,
        "paired": paired,
    }


def _ridge_reference(
    train_rows: Arrays, l2: float, fit: Fit, test: dict[str, float], refit: bool, log: Log
) -> dict:
    """The exact optimum of the trial's objective on the same training rows, and the SGD
    fit's gap to it (positive: SGD is worse)."""
    from agereg.evaluate import ridge_optimum

    n, d = train_rows.X_fit.shape
    slow = "; this takes a while" if d >= 1000 else ""  # an SVD-based solve, O(n d^2)
    log(f"solving the exact ridge optimum ({n} x {d}, float64{slow})")
    opt = ridge_optimum(train_rows, l2, fit)
    X_te = np.asarray(train_rows.X_te, dtype=np.float64)
    ridge_test = regression_metrics(train_rows.y_te, predict(X_te, opt.fit.w, opt.fit.b))
    # With refit the validation rows are training rows: no validation figures.
    val = None if refit else opt.fit.losses[1]
    return {
        "l2": l2,
        "solution": ("minimum-norm least squares (l2 = 0)" if l2 == 0
                     else "closed-form ridge, bias unregularised"),
        "trained_on": (f"train+validation rows ({len(train_rows.y_fit)})" if refit
                       else f"training split ({len(train_rows.y_fit)} rows)"),
        "train_fmse": opt.fit.losses[0],
        "val_fmse": val,
        "test_fmse": ridge_test["fmse"],
        "test": ridge_test,
        "gap_val_fmse": None if val is None else fit.losses[1] - val,
        "gap_test_fmse": test["fmse"] - ridge_test["fmse"],
        "objective_sgd": opt.objective_sgd,
        "objective_ridge": opt.objective_ridge,
        "objective_gap": opt.objective_sgd - opt.objective_ridge,
    }


def _save_parameters(run_dir: Path, fit: Fit, refit: bool) -> dict:
    """Write the trained weights (D,) and bias (0-d) as float64 .npy files."""
    from agereg.fileio import save_array

    suffix = "_refit" if refit else ""
    names = {"weights": f"weights{suffix}.npy", "bias": f"bias{suffix}.npy"}
    save_array(run_dir / names["weights"], np.asarray(fit.w, dtype=np.float64))
    save_array(run_dir / names["bias"], np.asarray(fit.b, dtype=np.float64))
    return {**names, "pictures": []}


def _json_safe(d: dict) -> dict:
    """``d`` with every non-finite float, at any depth, replaced by None (JSON has no NaN)."""

    def clean(v: object) -> object:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, float) and not np.isfinite(v):
            return None
        return v

    return {k: clean(v) for k, v in d.items()}
