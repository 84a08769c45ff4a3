"""``agereg eval``: retrain a trial of a run and measure it on the test set.

Orchestration only: the numbers come from :mod:`agereg.evaluate` (metrics, bootstrap,
ridge optimum) and :mod:`agereg.engine`; pictures from :mod:`agereg.report`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agereg.basis import ridge_basis_beside
from agereg.batched import column_fit, train_group
from agereg.config import Config
from agereg.data import Dataset
from agereg.engine import Arrays, Fit, diverged_fit, train_reference
from agereg.errors import RunError
from agereg.evaluate import (
    CS_THETAS,
    RidgeBasis,
    cumulative_score,
    error_by_decade,
    mean_baseline,
    median_baseline,
    predict,
    regression_metrics,
)
from agereg.fileio import KiB, NotReadable, read_npy
from agereg.launcher import in_memory
from agereg.params import load_params
from agereg.pipeline import Log, load_run_dataset, load_run_split, quiet, stored_config
from agereg.plan import Group
from agereg.records import RunSummary, TrialRecord, finished_trials
from agereg.records import rank as rank_records
from agereg.runs import (
    EVAL_NAME,
    RUN_NAME,
    STOPPED,
    EvalStaging,
    RunLock,
    eval_folder,
    json_safe,
    read_json,
    read_log,
    read_plan,
    resolve_run,
    run_status,
    write_json,
)
from agereg.split import Split
from agereg.words import counted

MAX_BOOTSTRAP = 1_000_000  # resamples: their (resamples, 2) means stay 16 MB


@dataclass(frozen=True)
class RunContext:
    """A finished or interrupted run, loaded and checked against its data."""

    run_dir: Path
    cfg: Config
    dataset: Dataset
    split: Split
    records: list[TrialRecord]
    plan: dict[str, list[Group]]  # the stored plan, by stage

    def summary(self) -> RunSummary:
        """The trials ranked by the run's ``select_by``, and the one its ``select`` picks."""
        return RunSummary(rank_records(self.records, self.cfg.select_by), len(self.records),
                          rule=self.cfg.select, by=self.cfg.select_by)


def open_run(run: str | Path | None, runs_dir: Path, log: Log = quiet) -> RunContext:
    run_dir = resolve_run(run, runs_dir)
    cfg = stored_config(run_dir)
    dataset = load_run_dataset(run_dir, cfg, log)
    split = load_run_split(run_dir, dataset.info)
    return RunContext(run_dir, cfg, dataset, split, read_log(run_dir), read_plan(run_dir))


def group_of(ctx: RunContext, rec: TrialRecord) -> Group | None:
    """The stored group that trained ``rec`` (None for a trial reused from another run, or
    a run written before plans were stored)."""
    for groups in ctx.plan.values():
        for g in groups:
            if (g.batch_size == rec.batch_size and (rec.learning_rate, rec.l2) in g.columns
                    and rec.epochs in g.epochs and g.loss == rec.loss):
                return g
    if ctx.plan and rec.origin is None:
        raise RunError(f"{ctx.run_dir}: trial {rec.key()} is not in the run's stored plan "
                       "(plan.jsonl); the run folder is damaged")
    return None


def retrain(ctx: RunContext, arrays: Arrays, recs: list[TrialRecord], refit: bool = False
            ) -> list[Fit]:
    """Train ``recs`` again by exactly the operations the search used, so their losses are
    bit-for-bit those in the log (``refit``: on other rows, so no figure to match). The
    batched engine's products have a fixed width, so a column's numbers do not depend on
    the group it trained in, nor on whether halving continued it from saved parameters:
    training the columns from zero, together, replays each. A run error when the first
    diverges."""
    if not refit:
        for r in recs:
            group_of(ctx, r)  # every trial retrained must be one this run trained
    fits = _train_columns(ctx.cfg, arrays, recs)
    if fits[0].diverged:
        raise RunError(f"trial {recs[0].key()} diverged when trained again ("
                       f"{_where(ctx, refit)}); " + (
                           "evaluate without --refit or pick another trial with --rank"
                           if refit else "the data or the numerical libraries changed "
                           "since the search"))
    return fits


KEPT, AGAIN = "kept by the search", "trained again"


def trained(ctx: RunContext, arrays: Arrays, recs: list[TrialRecord], refit: bool,
            again: bool, log: Log) -> tuple[list[Fit], str, list[str]]:
    """The fits of ``recs`` (the evaluated trial first): from the parameters the search
    kept (:mod:`agereg.params`) when their figures, computed as the engine computes them,
    give the search's validation fMSE bit for bit; otherwise, or with ``refit`` or
    ``again``, trained again by :func:`retrain`. Also which it was (``KEPT`` or
    ``AGAIN``) for the evaluated trial, and a note when it was trained again although the
    search should have kept its parameters."""
    kept: list[Fit | None] = [None] * len(recs)
    notes: list[str] = []
    if not (refit or again):
        for j, r in enumerate(recs):
            got = kept_fit(ctx, arrays, r)
            kept[j] = got if isinstance(got, Fit) else None
            if isinstance(got, str) and j == 0 and ctx.cfg.execution.engine != "reference":
                notes.append(f"trial {r.key()} was trained again: {got}")
    if kept[0] is not None:
        log("using the parameters the search kept" + (
            "" if all(kept) else "; training the runner-up again"))
        todo = [r for r, f in zip(recs, kept, strict=True) if f is None]
        again_fits = iter(_train_columns(ctx.cfg, arrays, todo) if todo else [])
        return [f if f is not None else next(again_fits) for f in kept], KEPT, notes
    log(f"training the trial{' and the runner-up' if len(recs) > 1 else ''} again "
        f"({_where(ctx, refit)})")
    return retrain(ctx, arrays, recs, refit), AGAIN, notes


def kept_fit(ctx: RunContext, arrays: Arrays, rec: TrialRecord) -> Fit | str:
    """The fit of ``rec`` from the parameters the search kept (:mod:`agereg.params`),
    its figures computed as the engine computes them on ``arrays`` (the run's split, in
    its precision), when they give the search's validation fMSE bit for bit; otherwise
    a sentence saying why not (the reference engine keeps none)."""
    group_of(ctx, rec)  # every trial evaluated must be one this run trained
    if ctx.cfg.execution.engine == "reference":
        return "the reference engine keeps no parameters"
    groups = [g for stage in ctx.plan.values() for g in stage]
    got = load_params(ctx.run_dir, groups, rec, arrays.X_fit.shape[1])
    if isinstance(got, str) and rec.origin:  # reused by --extend: the run that trained it
        got = _origin_params(Path(rec.origin), rec, arrays.X_fit.shape[1], got)
    if isinstance(got, str):
        return got
    if got[0].dtype != arrays.X_fit.dtype:
        return f"its kept parameters are {got[0].dtype}, not the run's {arrays.X_fit.dtype}"
    fit = column_fit(arrays, *got)
    if fit.losses[1] != rec.val_loss:
        return "its kept parameters do not give the search's validation fMSE"
    return fit


def _origin_params(origin: Path, rec: TrialRecord, d: int, reason: str
                   ) -> tuple[np.ndarray, np.generic] | str:
    """A reused trial's parameters from the run that trained it (``origin``), if that
    run is still there and kept them; else ``reason``. Trusted as any kept parameters
    are: only when they give the search's validation fMSE bit for bit (the caller)."""
    try:
        groups = [g for stage in read_plan(origin).values() for g in stage]
    except (RunError, OSError):
        return reason
    got = load_params(origin, groups, rec, d)
    return reason if isinstance(got, str) else got


def _where(ctx: RunContext, refit: bool) -> str:
    return ("all training rows" if ctx.split.k else "train+validation" if refit
            else "as in the search")


def _train_columns(cfg: Config, arrays: Arrays, recs: list[TrialRecord]) -> list[Fit]:
    """Train trials as the search did. Trials of one batch size and loss share one call
    of the batched engine: its products are 16 columns wide whatever trains beside a
    column, so two trials cost what one does, and each gets exactly its own numbers."""
    if cfg.execution.engine == "reference":
        return [train_reference(arrays, cfg.seed, r.batch_size, r.learning_rate, r.l2,
                                r.epochs, r.loss) for r in recs]
    first = recs[0]
    if any((r.batch_size, r.loss) != (first.batch_size, first.loss) for r in recs):
        return [_train_columns(cfg, arrays, [r])[0] for r in recs]
    res = train_group(arrays, cfg.seed, first.batch_size, [r.learning_rate for r in recs],
                      [r.l2 for r in recs], sorted({r.epochs for r in recs}),
                      snapshots=[(k, r.epochs) for k, r in enumerate(recs)], loss=first.loss)
    found = res.snapshots or {}
    d = arrays.X_fit.shape[1]
    return [found.get((k, r.epochs)) or diverged_fit(d) for k, r in enumerate(recs)]


def refit_arrays(arrays: Arrays) -> Arrays:
    """Training rows followed by validation rows, for a refit on both."""
    X = np.concatenate([arrays.X_fit, arrays.X_val])
    y = np.concatenate([arrays.y_fit, arrays.y_val])
    return Arrays(X, y, arrays.X_val, arrays.y_val, arrays.X_te, arrays.y_te)


@dataclass(frozen=True)
class EvalOutcome:
    """An evaluation: its eval.json content, its folder, and whether it was already there
    (``existing``: nothing was computed; ``--force`` recomputes)."""

    result: dict
    folder: Path
    existing: bool = False


def evaluate_run(
    run: str | Path | None,
    runs_dir: Path,
    rank: int | None = None,
    refit: bool = False,
    n_boot: int = 1000,
    plots: bool = True,
    log: Log = quiet,
    force: bool = False,
    again: bool = False,
) -> EvalOutcome:
    """Measure the ``rank``-th best finished trial of a run (default: the one the run's
    ``select`` rule picks) on the test set: the parameters the search kept, else trained
    again (``again``: always; see :func:`trained`). A cross-validated run has no single
    training split: its trial is refit on every training row.

    Without ``refit`` the model's validation loss must equal the search's figure (it is
    computed by the same operations); ``reproduced`` in the result says whether it does.
    Also: a bootstrap of the test fMSE (``n_boot`` resamples seeded by the run's seed; 0
    disables it) paired with the runner-up, the exact ridge optimum for the trial's l2, the
    Gaussian noise model, the weights and bias (.npy) and, unless ``plots`` is false, the
    pictures. Each evaluation has its own folder, ``evals/<trial_id>[-refit]/``, moved into
    place only when complete; an existing one is returned as it is unless ``force``.
    The run stays locked meanwhile, so a search cannot write it while it is evaluated.
    """
    if not 0 <= n_boot <= MAX_BOOTSTRAP:
        raise RunError(f"--bootstrap {n_boot}: give a number of resamples from 0 (none) to "
                       f"{MAX_BOOTSTRAP:,}")
    run_dir = resolve_run(run, runs_dir)
    # read and written under the lock: no search writes it meanwhile (a run that cannot
    # be written still shows its stored evaluations)
    with RunLock(run_dir, read_only_ok=True):
        ctx = open_run(run_dir, runs_dir, log)
        summary = ctx.summary()
        ranked = finished_trials(summary.ranked)
        selected = summary.selection.rank or 1
        if not ranked:
            raise nothing_finished(ctx, "evaluate")
        if rank is None:
            rank = selected
        rec = nth_finished(ranked, rank, "--rank")
        refit = refit or ctx.split.k > 0  # K folds: refit on all training rows
        folder = eval_folder(ctx.run_dir, rec.trial_id, refit)
        if (folder / EVAL_NAME).is_file() and not force:
            found = read_json(folder / EVAL_NAME, "recompute it with `agereg eval --force`")
            from agereg.report import as_of_now, describe_eval

            describe_eval(found, folder / EVAL_NAME)  # read back: input, validated
            return EvalOutcome(as_of_now(found, rank), folder, existing=True)
        with EvalStaging(folder) as staging:
            result = _evaluate(ctx, ranked, rank, selected, refit, n_boot, plots, staging,
                               log, again)
            result["folder"] = str(folder.relative_to(ctx.run_dir))
            write_json(staging / EVAL_NAME, result)
    return EvalOutcome(result, folder)


def _evaluate(
    ctx: RunContext, ranked: list[TrialRecord], rank: int, selected: int, refit: bool,
    n_boot: int, plots: bool, folder: Path, log: Log, again: bool,
) -> dict:
    from agereg import report

    rec = ranked[rank - 1]
    arrays = in_memory(ctx.dataset, ctx.split, ctx.cfg.execution.precision)
    k = ctx.split.k
    # K folds: in_memory already holds every training row (and nothing is held out)
    train_rows = arrays if k else refit_arrays(arrays) if refit else arrays
    with ridge_basis_beside(ctx.run_dir, train_rows, "refit" if refit else "train",
                            log) as basis:
        result, fit, pred_te = _measure(ctx, ranked, rank, selected, refit, n_boot, folder,
                                        log, again, arrays, train_rows)
        notes = result["notes"]
        if plots:  # drawn while the ridge basis may still be computed beside
            log("drawing the pictures")
            title = f"trial #{rank}: {report.trial_text(result['trial'])}" + (
                " (refit)" if refit else "")
            written, skipped = report.draw_eval_pictures(
                folder, fit.w, ctx.dataset.info.image_shape, arrays.X_te, arrays.y_te,
                pred_te, title, result)
            # the grid's pictures depend on the log only: drawn when missing or stale
            report.draw_grid_pictures(ctx.run_dir,
                                      rank_records(ctx.records, ctx.cfg.select_by),
                                      only_missing=True, strategy=ctx.cfg.search.strategy)
            result["files"]["pictures"] = written
            notes += skipped
        else:
            notes.append("no pictures drawn (--no-plots)")
        result["ridge"] = _ridge_reference(train_rows, rec.l2, fit, result["test"], refit,
                                           result["trained_on"], log, rec.loss, basis())
        result["ridge_path"] = _ridge_path_dict(ctx, train_rows, basis(), refit or k > 0,
                                                ranked)
        if plots:  # while a new basis is written to its cache
            result["files"]["pictures"].append(
                report.draw_ridge_path(folder, result["ridge_path"]))
    safe = json_safe(result)
    assert isinstance(safe, dict)
    return safe


def _measure(
    ctx: RunContext, ranked: list[TrialRecord], rank: int, selected: int, refit: bool,
    n_boot: int, folder: Path, log: Log, again: bool, arrays: Arrays, train_rows: Arrays,
) -> tuple[dict[str, Any], Fit, np.ndarray]:
    """Everything of the evaluation but the ridge figures and the pictures, in eval.json's
    order (``ridge`` and ``ridge_path`` are placeholders), the evaluated fit and its test
    predictions."""
    from agereg.evaluate import gaussian_noise

    rec = ranked[rank - 1]
    k = ctx.split.k
    trained_on = (f"all {len(train_rows.y_fit)} training rows ({k}-fold run)" if k
                  else f"train+validation ({len(train_rows.y_fit)} rows)" if refit
                  else f"training split ({len(arrays.y_fit)} rows)")
    # the runner-up of the paired comparison trains in the same call when it can
    vs_rank = 2 if rank == 1 else 1
    other = ranked[vs_rank - 1] if n_boot and vs_rank <= len(ranked) else None
    fits, source, notes = trained(ctx, train_rows, [rec, *([other] if other else [])], refit,
                                  again, log)
    fit = fits[0]
    fit_vs = fits[1] if other is not None else None
    pred_te = predict(arrays.X_te, fit.w, fit.b)  # (M,)
    test = regression_metrics(arrays.y_te, pred_te)
    if said := unfinished(ctx):
        notes.append(said)
    if k:
        notes.append(f"cross-validated run ({k} folds): the trial was refit on all "
                     f"{len(train_rows.y_fit)} training rows, so there is no validation "
                     "figure to reproduce; its validation loss is the mean over the folds")
    noise = gaussian_noise(train_rows.y_fit, predict(train_rows.X_fit, fit.w, fit.b),
                           arrays.y_te, pred_te)
    result: dict[str, Any] = {
        "run": str(ctx.run_dir),
        "dataset": ctx.dataset.info.description,
        "trial": _trial_dict(rec, rank),
        "refit": refit,
        "selected_by": ctx.cfg.select if rank == selected else None,
        "trained_on": trained_on,
        "engine": ctx.cfg.execution.engine,
        "precision": ctx.cfg.execution.precision,
        "train_fmse": fit.losses[0],
        "val_fmse": None if refit else fit.losses[1],
        "search_val_fmse": rec.val_loss,
        "reproduced": None if refit else fit.losses[1] == rec.val_loss,
        "parameters": source,
        "test": test,
        "baseline_test": mean_baseline(train_rows.y_fit, arrays.y_te),
        "baseline_median_test": median_baseline(train_rows.y_fit, arrays.y_te),
        "cumulative_score": {
            "theta": list(CS_THETAS),
            "share": cumulative_score(arrays.y_te, pred_te),
            "median_predictor_share": cumulative_score(
                arrays.y_te, np.full_like(arrays.y_te, float(np.median(train_rows.y_fit)))),
        },
        "by_decade": error_by_decade(arrays.y_te, pred_te),
        "bootstrap": _bootstrap(ctx, arrays, ranked, rank, pred_te, n_boot, notes, log,
                                fit_vs),
        "ridge": None,  # filled in when the ridge basis is ready
        "ridge_path": None,
        "noise": {"sigma2": noise.sigma2, "sigma": float(np.sqrt(noise.sigma2)),
                  "test_avg_loglik": noise.test_avg_loglik},
        "files": _save_parameters(folder, fit, _model_record(ctx, rec, fit, trained_on)),
        "notes": notes,
    }
    return result, fit, pred_te


def nth_finished(ranked: list[TrialRecord], k: int, option: str) -> TrialRecord:
    """Trial #``k`` of the finished trials ``ranked``, asked for by ``option`` (--rank,
    --trial); one line when the run has no such rank."""
    if not 1 <= k <= len(ranked):
        raise RunError(f"{option} {k} is out of range: the run has "
                       f"{counted(len(ranked), 'finished trial')}")
    return ranked[k - 1]


def nothing_finished(ctx: RunContext, doing: str, locked: bool = True) -> RunError:
    """The error of a run with no finished trial to ``doing`` (evaluate, compare...): to
    search again with other learning rates when its search finished (every trial
    diverged or failed), else to resume it."""
    done = len(ctx.records) > 0 and unfinished(ctx, locked) is None
    return RunError(f"{ctx.run_dir}: no finished trial to {doing} " + (
        "(every trial diverged or failed); search again with other learning rates "
        "(`agereg analyze` suggests a range that trains)" if done else
        "(all diverged, failed or not run yet); resume the search: "
        f"`agereg search --resume {ctx.run_dir}`"))


def unfinished(ctx: RunContext, locked: bool = True) -> str | None:
    """A note when the search did not finish: the trials ranked are only those it logged
    (None for a finished run, or when run.json cannot say). ``locked``: the caller holds
    the run's lock, so a run still ``running`` was killed; otherwise the lock tells."""
    try:
        info = read_json(ctx.run_dir / RUN_NAME, "this run folder is damaged")
    except RunError:
        return None
    planned = info.get("trials_planned")
    status = run_status(ctx.run_dir, info, locked) or ""
    ended = {**STOPPED, "running": "is still running"}.get(status)
    if ended is None:
        return None
    n = len(ctx.records)
    held = f"{n} of {counted(planned, 'planned trial')}" if isinstance(planned, int) \
        else counted(n, "trial")
    then = ("it finishes" if status == "running" else
            f"`agereg search --resume {ctx.run_dir}` completes it")
    return (f"the search {ended}: its log holds {held}, so the ranking may change when "
            f"{then}")


def _trial_dict(rec: TrialRecord, rank: int) -> dict:
    return {"rank": rank, "batch_size": rec.batch_size, "learning_rate": rec.learning_rate,
            "epochs": rec.epochs, "l2": rec.l2, "loss": rec.loss}


def _bootstrap(
    ctx: RunContext,
    arrays: Arrays,
    ranked: list[TrialRecord],
    rank: int,
    pred_te: np.ndarray,
    n_boot: int,
    notes: list[str],
    log: Log,
    fit_vs: Fit | None,
) -> dict | None:
    """Bootstrap of the test fMSE, paired with the runner-up (the best, when evaluating
    another rank), ``fit_vs``, trained the same way; seeded by the run's config seed."""
    from agereg.evaluate import bootstrap_test

    if n_boot == 0:
        notes.append("bootstrap disabled (--bootstrap 0)")
        return None
    if len(arrays.y_te) < 2:  # every resample is that image: an interval of one point
        notes.append("no bootstrap: the test set holds a single image, so every resample "
                     "is that image and the intervals would say nothing")
        return None
    vs_rank = 2 if rank == 1 else 1
    pred_vs = None
    if vs_rank > len(ranked):
        notes.append("no runner-up: the run has a single finished trial, so there is no "
                     "paired comparison")
    elif fit_vs is None or fit_vs.diverged:
        notes.append(f"no paired comparison: trial #{vs_rank} diverged when trained again")
    else:
        pred_vs = predict(arrays.X_te, fit_vs.w, fit_vs.b)
    log(f"bootstrap: {counted(n_boot, 'resample')} of "
        f"{counted(len(arrays.y_te), 'test image')}")
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
    train_rows: Arrays, l2: float, fit: Fit, test: dict[str, float], refit: bool,
    trained_on: str, log: Log, loss: str = "squared", basis: RidgeBasis | None = None,
) -> dict:
    """The exact optimum of the trial's objective on the same training rows, and the SGD
    fit's gap to it (positive: SGD is worse)."""
    from agereg.evaluate import ridge_optimum

    opt = ridge_optimum(train_rows, l2, fit, basis)
    X_te = np.asarray(train_rows.X_te, dtype=np.float64)
    ridge_test = regression_metrics(train_rows.y_te, predict(X_te, opt.fit.w, opt.fit.b))
    # With refit the validation rows are training rows: no validation figures.
    val = None if refit else opt.fit.losses[1]
    return {
        "l2": l2,
        "solution": ("minimum-norm least squares (l2 = 0)" if l2 == 0
                     else "closed-form ridge, bias unregularised"),
        "trained_on": trained_on,
        "train_fmse": opt.fit.losses[0],
        "val_fmse": val,
        "test_fmse": ridge_test["fmse"],
        "test": ridge_test,
        "gap_val_fmse": None if val is None else fit.losses[1] - val,
        "gap_test_fmse": test["fmse"] - ridge_test["fmse"],
        # the squared-loss objective: no yardstick for a trial that minimised another loss
        "objective_sgd": opt.objective_sgd if loss == "squared" else None,
        "objective_ridge": opt.objective_ridge if loss == "squared" else None,
        "objective_gap": opt.objective_sgd - opt.objective_ridge if loss == "squared" else None,
        "note": None if loss == "squared" else (
            f"the trial minimised the {loss} loss; the ridge solution is the squared-loss "
            "optimum at the same l2, a reference for the test figures only"),
    }


MODEL_NAME = "model.json"


def _ridge_path_dict(ctx: RunContext, rows: Arrays, basis: RidgeBasis, no_val: bool,
                     ranked: list[TrialRecord]) -> dict:
    """Validation and test fMSE of the exact ridge solution over the searched l2 range
    and two decades beyond (further while the best lies at an end: the extended path),
    the best ridge l2 and whether it beats every SGD trial."""
    from agereg.evaluate import extended_ridge_path, path_l2s, ridge_path

    # the l2 values of the finished trials: a grid value whose every trial diverged (l2
    # 1e300) would stretch the path over hundreds of decades that trained nothing
    searched = sorted({r.l2 for r in ranked})
    path = (ridge_path(basis, rows, path_l2s(searched)) if no_val else
            extended_ridge_path(basis, rows, path_l2s(searched)))
    sgd_best = min((r.val_loss for r in ranked if r.val_loss is not None), default=None)
    by_l2: dict[float, float] = {}
    for r in ranked:
        if r.val_loss is not None:
            by_l2[r.l2] = min(by_l2.get(r.l2, r.val_loss), r.val_loss)
    out: dict[str, Any] = {"l2": list(path.l2), "test_fmse": list(path.test_fmse),
                           "val_fmse": None if no_val else list(path.val_fmse),
                           "sgd_best_val_fmse": sgd_best,
                           "sgd_val_by_l2": [[k, v] for k, v in sorted(by_l2.items())]}
    if no_val:  # the validation rows trained the model: no honest choice of l2 here
        rows_used = (f"refit on all training rows, which the {ctx.split.k} folds validated "
                     "on" if ctx.split.k else "refit on the validation rows too")
        out.update(best_l2=None, note=f"{rows_used}: the path shows test fMSE only, no l2 "
                                      "is chosen on it")
        return out
    i = path.best
    out.update(best_l2=path.l2[i], best_val_fmse=path.val_fmse[i],
               best_test_fmse=path.test_fmse[i],
               beats_every_sgd_trial=sgd_best is not None and path.val_fmse[i] < sgd_best)
    return out


def load_model(folder: Path, d: int) -> tuple[np.ndarray, float]:
    """A saved model's weights (D,) and bias, checked against its model.json and the
    data's width ``d``: read back, so validated; one line naming the folder otherwise."""
    model = read_json(folder / MODEL_NAME, "evaluate the trial again with `agereg eval "
                      "--force`") if (folder / MODEL_NAME).is_file() else {}
    try:  # never a FIFO, never unpickled, never more than D floats
        w = read_npy(folder / "weights.npy", 8 * d + 4 * KiB)
        b = read_npy(folder / "bias.npy", 4 * KiB)
    except (OSError, NotReadable) as exc:
        raise RunError(f"{folder}: the saved model is unreadable ({exc}); evaluate the "
                       "trial again with `agereg eval --force`") from None
    if (w.dtype != np.float64 or w.shape != (d,) or b.shape != () or not np.isfinite(w).all()
            or not np.isfinite(b) or model.get("n_features", d) != d):
        raise RunError(f"{folder}: the saved model does not match the run's data ({d} "
                       "features); evaluate the trial again with `agereg eval --force`")
    return w, float(b)


def _model_record(ctx: RunContext, rec: TrialRecord, fit: Fit, trained_on: str) -> dict:
    """What a model is, so that it can be used and identified without agereg."""
    info = ctx.dataset.info
    return {
        "predict": "age = images.reshape(len(images), -1).astype(float64) @ weights + bias",
        "weights": "weights.npy", "bias": float(fit.b), "n_features": len(fit.w),
        "image_shape": None if info.image_shape is None else list(info.image_shape),
        "trial_id": rec.trial_id,
        "trial": {"batch_size": rec.batch_size, "learning_rate": rec.learning_rate,
                  "epochs": rec.epochs, "l2": rec.l2, "loss": rec.loss},
        "trained_on": trained_on, "run": str(ctx.run_dir), "seed": ctx.cfg.seed,
        "engine": ctx.cfg.execution.engine, "precision": ctx.cfg.execution.precision,
        "data_sha256": info.sha256,
    }  # fmt: skip


def _save_parameters(folder: Path, fit: Fit, model: dict) -> dict:
    """Write the trained weights (D,) and bias (0-d) as float64 .npy files, with the
    model's record (model.json)."""
    from agereg.fileio import save_array

    names = {"weights": "weights.npy", "bias": "bias.npy", "model": MODEL_NAME}
    save_array(folder / names["weights"], np.asarray(fit.w, dtype=np.float64))
    save_array(folder / names["bias"], np.asarray(fit.b, dtype=np.float64))
    write_json(folder / MODEL_NAME, model)
    return {**names, "pictures": []}
