"""Tables, pictures and the shareable ``report.html`` of a run folder.

Everything here reads or writes the run folder only; nothing retrains. The grid pictures
(``heatmap_val.png``, ``val_vs_epochs.png``) come from the trial log alone. The rows and
lines describing an ``eval.json`` are plain strings, so the terminal (rich, in
:mod:`agereg.cli`) and the HTML page show the same figures. matplotlib is imported lazily,
through :mod:`agereg.plots`, only when a picture is drawn.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agereg import __version__
from agereg.advice import edge_notices
from agereg.errors import RunError
from agereg.fileio import NotReadable, atomic_write_bytes, atomic_write_text, read_regular
from agereg.records import (
    Config3,
    Selection,
    TrialRecord,
    finished_trials,
    rank,
    score,
    select,
    status_counts,
)
from agereg.runs import (
    CONFIG_NAME,
    CURVES_NAME,
    DATASET_NAME,
    EVAL_NAME,
    LOG_NAME,
    RUN_NAME,
    STOPPED,
    CurveKey,
    CurvePoint,
    evaluations,
    mean_curve,
    read_curves,
    read_json,
    read_log,
    resolve_run,
    run_status,
    stored_config,
    stored_lr_limit,
)
from agereg.words import counted

if TYPE_CHECKING:
    from agereg.plots import Curve, GridCells

REPORT_NAME = "report.html"
GRID_PICTURES = ("heatmap_val.png", "val_vs_epochs.png")
EVAL_PICTURES = ("weights.png", "worst_test.png", "pred_vs_true.png", "cumulative_score.png",
                 "error_by_age.png", "ridge_path.png")
CAPTIONS = {
    "weights.png": "The trained weights as an image (red raises the predicted age, blue "
                   "lowers it; zero is white).",
    "worst_test.png": "The five test images with the largest absolute errors.",
    "pred_vs_true.png": "Predicted against true age on the test set; the line is y = x.",
    "cumulative_score.png": "CS(theta): the share of test images whose absolute error is at "
                            "most theta years, against the median predictor's.",
    "error_by_age.png": "Test MAE and mean signed error (positive: predicted too old) per "
                        "decade of true age.",
    "ridge_path.png": "Validation and test fMSE of the exact ridge solution against l2, "
                      "with the SGD trials' best validation fMSE at each searched l2.",
    "gradient_noise.png": "Measured variance of minibatch gradients (dots) against the law "
                          "tr(Sigma)/B (N-B)/(N-1) (lines), at w = 0 and at the selected "
                          "trial.",
    "lr_vs_batch.png": "The run's best learning rate per batch size against the linear and "
                       "square-root rules, the full-batch limit 2/lambda_max and the "
                       "fastest step of minibatch SGD (the top of the suggested range).",
    "heatmap_val.png": "Validation fMSE over learning rate x l2 for each batch size, at the "
                       "best epoch count of each cell (written under the value); grey x: "
                       "diverged or failed; red frame: the best cell.",
    "halving_rungs.png": "Successive halving: each configuration's validation fMSE at each "
                         "rung it reached; the best survivors of the last rung in colour "
                         "and named, the other survivors light blue, the stopped ones grey.",
    "val_vs_epochs.png": "Validation fMSE after every epoch (the learning curves; dots: the "
                         "searched epoch counts) for the best configurations.",
}
NO_EVAL = "run `agereg eval --best` for test-set metrics"
NOTHING_TO_EVAL = ("no finished trial to evaluate: every trial diverged or failed "
                   "(`agereg analyze` suggests learning rates that train)")
TOP_CURVES = 5


def no_eval_hint(ranked: Sequence[TrialRecord], status: str | None, run_dir: Path) -> str:
    """What a run without an evaluation should do next: evaluate; or, when no trial
    finished (``agereg eval`` would fail), wait for a search still ``running``, resume
    one that stopped (by its folder ``run_dir``), or, when it finished, search with other
    learning rates."""
    finished = any(r.status.has_losses() for r in ranked)
    if status == "running":  # eval refuses a run whose lock the search holds
        return ("the search is still running: run `agereg eval --best` once it ends" if
                finished else "no finished trial yet: the search is still running")
    if finished:
        return NO_EVAL
    stopped = STOPPED.get(status or "")
    if stopped:
        return (f"no finished trial yet: the search {stopped}; resume it: "
                f"`agereg search --resume {run_dir}`")
    return NOTHING_TO_EVAL


# ---------------------------------------------------------------- grid pictures


def grid_cells(records: Iterable[TrialRecord]) -> GridCells:
    """The trial log as a (batch size, learning rate, l2) cube of min-over-epochs
    validation losses, with the cells whose trials all diverged or failed marked."""
    from agereg.plots import GridCells  # matplotlib is imported only when drawing

    recs = list(records)
    bss = tuple(sorted({r.batch_size for r in recs}))
    lrs = tuple(sorted({r.learning_rate for r in recs}))
    l2s = tuple(sorted({r.l2 for r in recs}))
    shape = (len(bss), len(lrs), len(l2s))
    values = np.full(shape, np.nan)
    epochs = np.zeros(shape, dtype=np.int64)
    seen = np.zeros(shape, dtype=bool)
    for r in recs:
        cell = (bss.index(r.batch_size), lrs.index(r.learning_rate), l2s.index(r.l2))
        seen[cell] = True
        if r.status.has_losses() and r.val_loss is not None and math.isfinite(r.val_loss) \
                and not r.val_loss >= values[cell]:  # NaN: first value; else a better one
            values[cell] = r.val_loss
            epochs[cell] = r.epochs
    return GridCells(bss, lrs, l2s, values, seen & np.isnan(values), epochs)


def top_curves(records: Iterable[TrialRecord], k: int = TOP_CURVES,
               curves: dict[CurveKey, dict[int, CurvePoint]] | None = None) -> list[Curve]:
    """Validation loss by epochs of the ``k`` best (batch_size, learning_rate, l2)
    configurations, ranked by their best validation loss (ties in grid order). With the
    run's learning curves, every epoch (the mean over folds for K folds); without, the
    searched epoch counts only."""
    from agereg.plots import Curve

    by_config: dict[Config3, list[TrialRecord]] = {}
    for r in records:
        by_config.setdefault(r.column(), []).append(r)

    def best(rs: list[TrialRecord]) -> float:
        ok = [r.val_loss for r in rs if r.status.has_losses() and r.val_loss is not None]
        return min(ok) if ok else math.inf

    ranked = sorted((c for c in by_config if best(by_config[c]) < math.inf),
                    key=lambda c: (best(by_config[c]), c))
    out = []
    several = len({c[3] for c in by_config}) > 1
    for column in ranked[:k]:
        bs, lr, l2, loss = column
        rs = sorted(by_config[column], key=lambda r: r.epochs)
        label = f"batch {bs}, lr {lr:g}, l2 {l2:g}" + (f", {loss}" if several else "")
        full = mean_curve(curves or {}, column)
        if full:
            epochs = tuple(sorted(full))
            out.append(Curve(label, epochs, tuple(full[e] for e in epochs),
                             tuple(r.epochs for r in rs)))
            continue
        val = tuple(r.val_loss if r.status.has_losses() and r.val_loss is not None
                    else math.nan for r in rs)
        out.append(Curve(label, tuple(r.epochs for r in rs), val))
    return out


def draw_grid_pictures(
    run_dir: Path, records: Sequence[TrialRecord], only_missing: bool = False,
    strategy: str = "grid",
) -> list[str]:
    """Write heatmap_val.png and val_vs_epochs.png (once a trial finished) from the
    trial log (with ``only_missing``, only those missing or older than the log), and the
    strategy's own view: the heat map as points for random and refine (their values are
    not a grid), and halving_rungs.png for halving. Returns the names written (none for
    an empty log)."""
    from agereg import plots

    if not records:
        return []
    names = [*GRID_PICTURES, *(["halving_rungs.png"] if strategy == "halving" else [])]
    if not any(r.status.has_losses() for r in records):
        names.remove("val_vs_epochs.png")  # no curve to draw; the heat map marks each cell
    todo = [n for n in names if not (only_missing and _fresh(run_dir / n, run_dir))]
    if not todo:
        return []
    curves = read_curves(run_dir)  # every input is read (and checked) before any write
    if "heatmap_val.png" in todo:
        atomic_write_bytes(run_dir / "heatmap_val.png", plots.heatmap_val(
            grid_cells(records), points=strategy in ("random", "refine")))
    if "halving_rungs.png" in todo:
        atomic_write_bytes(run_dir / "halving_rungs.png", plots.halving_rungs(records))
    if "val_vs_epochs.png" in todo:
        atomic_write_bytes(run_dir / "val_vs_epochs.png",
                           plots.val_vs_epochs(top_curves(records, curves=curves)))
    return todo


def stale_report(run_dir: Path) -> bool:
    """Whether the run folder holds a report.html older than its trial log (written
    before a --resume or --extend trained more trials): `agereg report` rewrites it."""
    return (run_dir / REPORT_NAME).is_file() and not _fresh(run_dir / REPORT_NAME, run_dir)


def _fresh(picture: Path, run_dir: Path) -> bool:
    """Whether a grid picture (or the analysis) exists and is newer than the trial log
    and the curves it was drawn from (one drawn from a partial log is redrawn once the
    run has grown)."""
    try:
        drawn = picture.stat().st_mtime_ns
    except OSError:
        return False
    sources = [run_dir / LOG_NAME, run_dir / CURVES_NAME]
    return all(not p.exists() or p.stat().st_mtime_ns <= drawn for p in sources)


def draw_eval_pictures(
    run_dir: Path,
    w: np.ndarray,
    image_shape: Sequence[int] | None,
    X_te: np.ndarray,
    y_te: np.ndarray,
    pred_te: np.ndarray,
    title: str,
    res: dict | None = None,
) -> tuple[list[str], list[str]]:
    """Write weights.png, worst_test.png, pred_vs_true.png and, given the evaluation
    ``res``, cumulative_score.png and error_by_age.png; returns (names written, notes on
    pictures skipped). Pictures of images need the data's image shape."""
    from agereg import plots

    written, notes = [], []
    if image_shape:
        shape = tuple(int(s) for s in image_shape)
        atomic_write_bytes(run_dir / "weights.png", plots.weights_image(w, shape, title))
        atomic_write_bytes(run_dir / "worst_test.png",
                           plots.worst_test(X_te, y_te, pred_te, shape))
        written += ["weights.png", "worst_test.png"]
    else:
        notes.append("weights.png and worst_test.png skipped: the data are flat (no image "
                     "shape in dataset.json)")
    atomic_write_bytes(run_dir / "pred_vs_true.png", plots.pred_vs_true(y_te, pred_te, title))
    written.append("pred_vs_true.png")
    if res is not None:
        cs = res["cumulative_score"]
        atomic_write_bytes(run_dir / "cumulative_score.png", plots.cumulative_score(
            cs["theta"], cs["share"], cs["median_predictor_share"], title))
        atomic_write_bytes(run_dir / "error_by_age.png", plots.error_by_age(res["by_decade"]))
        written += ["cumulative_score.png", "error_by_age.png"]
        if res.get("ridge_path"):
            written.append(draw_ridge_path(run_dir, res["ridge_path"]))
    return written, notes


def draw_ridge_path(folder: Path, path: dict) -> str:
    """Write ridge_path.png from an eval.json's ``ridge_path``; returns its name."""
    from agereg import plots

    atomic_write_bytes(folder / "ridge_path.png", plots.ridge_path(path))
    return "ridge_path.png"


# ---------------------------------------------------------------- eval.json as text


def fmt(v: float | None, signed: bool = False) -> str:
    """A number for people: 4 significant digits, '-' for missing or non-finite."""
    if v is None or not math.isfinite(v):
        return "-"
    spec = "+" if signed else ""
    return f"{v:{spec}.4g}" if abs(v) < 1e5 else f"{v:{spec}.3e}"


def trial_text(t: dict) -> str:
    loss = t.get("loss", "squared")
    return (f"batch_size {t['batch_size']}, learning_rate {t['learning_rate']:g}, "
            f"epochs {t['epochs']}, l2 {t['l2']:g}" + ("" if loss == "squared" else
                                                       f", {loss} loss"))


def eval_table(res: dict) -> tuple[list[str], list[list[str]]]:
    """Column names and rows of the test-metrics table of an eval.json."""
    test, base = res["test"], res["baseline_test"]
    median = res.get("baseline_median_test")
    ridge = res.get("ridge")
    boot = res.get("bootstrap")
    rt = (ridge or {}).get("test", {})

    def row(name: str, this: float | None, mean: float | None = None,
            opt: float | None = None, med: float | None = None) -> list[str]:
        cells = [name, fmt(this), "" if mean is None else fmt(mean)]
        if median:
            cells.append("" if med is None else fmt(med))
        return [*cells, "" if opt is None else fmt(opt)] if ridge else cells

    def blank(name: str, value: str) -> list[str]:
        return [name, value] + [""] * (1 + bool(median) + bool(ridge))

    rows = [  # age estimation is judged in years: MAE first
        row("test MAE (years)", test["mae"], base["mae"], rt.get("mae"),
            median and median.get("mae")),
        row("test RMSE (years)", test["rmse"], base["rmse"], rt.get("rmse"),
            median and median.get("rmse")),
        row("test fMSE", test["fmse"], base["fmse"], rt.get("fmse"),
            median and median.get("fmse")),
    ]
    if boot:
        lo, hi = boot["test_fmse_ci"]
        rows.append(blank(f"fMSE {boot['level']:.0%} CI", f"[{fmt(lo)}, {fmt(hi)}]"))
    rows += [
        row("test R²", test.get("r2"), base.get("r2"), rt.get("r2"), median and median.get("r2")),
        row("train fMSE", res["train_fmse"], None, ridge and ridge.get("train_fmse")),
        row("val fMSE", res["val_fmse"], None, ridge and ridge.get("val_fmse")),
    ]
    columns = ["metric", "this trial", "mean"]  # the baselines: constant predictors
    if median:
        columns.append("median")
    if ridge:
        columns.append(f"ridge l2={ridge['l2']:g}")
    return columns, rows


def decade_table(res: dict) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the error-by-age table of an eval.json (none in older ones)."""
    rows = [[str(d["decade"]), str(d["count"]), fmt(d["mae"]), fmt(d["mean_signed_error"], True)]
            for d in res.get("by_decade") or []]
    return ["true age", "images", "MAE (years)", "mean signed error"], rows


def eval_lines(res: dict) -> list[str]:
    """Sentences on the cumulative score, the error by age, the bootstrap, the paired
    comparison, the exact optimum, the noise model and any notes of an eval.json (older
    files without these keys give fewer)."""
    lines = []
    cs = res.get("cumulative_score")
    if cs and 5 in cs["theta"] and 10 in cs["theta"]:
        at = cs["theta"].index
        lines.append(f"cumulative score: {cs['share'][at(5)]:.1%} of the test images within "
                     f"5 years, {cs['share'][at(10)]:.1%} within 10 (median predictor: "
                     f"{cs['median_predictor_share'][at(5)]:.1%} and "
                     f"{cs['median_predictor_share'][at(10)]:.1%})")
    decades = res.get("by_decade")
    if decades:
        worst = max(decades, key=lambda d: d["mae"])
        signed = worst["mean_signed_error"]
        lean = "" if signed == 0 else f": predicted too {'old' if signed > 0 else 'young'}"
        lines.append(f"error by age: the largest MAE is in ages {worst['decade']}, "
                     f"{fmt(worst['mae'])} years over {counted(worst['count'], 'image')} "
                     f"(mean signed error "
                     f"{fmt(signed, True)}{lean})")
    boot = res.get("bootstrap")
    winner = res["trial"]["rank"] == 1
    if boot:
        paired = boot.get("paired")
        if paired:
            v = paired["versus"]
            who, other = ("winner", "runner-up") if winner else ("this trial", "best")
            lo, hi = paired["difference_ci"]
            lines.append(
                f"paired bootstrap vs {other} #{v['rank']} ({trial_text(v)}, test fMSE "
                f"{fmt(paired['versus_test_fmse'])}): {who} better in "
                f"{paired['share_better']:.0%} of resamples; mean difference "
                f"{fmt(paired['mean_difference'], True)} [{fmt(lo, True)}, {fmt(hi, True)}] "
                f"(test fMSE, {who} minus {other})")
        lines.append(
            f"bootstrap: {counted(boot['resamples'], 'resample')} of "
            f"the {boot['n_images']} test images (seed {boot['seed']}); an average resample "
            f"leaves out {boot['left_out_share']:.1%} of them (1/e = 36.8%)")
    ridge = res.get("ridge")
    if ridge:
        kind = ("minimum-norm least squares, l2 = 0: expect it to overfit"
                if ridge["l2"] == 0 else f"closed-form ridge, l2 {ridge['l2']:g}")
        gap_val = ridge.get("gap_val_fmse")
        val = "" if gap_val is None else f"validation {fmt(gap_val, True)}, "
        if ridge.get("note"):
            lines.append(ridge["note"])
        lines.append(
            f"exact optimum ({kind}, float64, on {_rows(ridge['trained_on'])}): SGD gap "
            f"{val}test {fmt(ridge['gap_test_fmse'], True)} fMSE" + (
                "" if ridge.get("objective_gap") is None else
                f"; training objective gap {fmt(ridge['objective_gap'], True)}"))
    path = res.get("ridge_path")
    if path and path.get("best_l2") is not None:
        verdict = ("better than every SGD trial" if path.get("beats_every_sgd_trial") else
                   "not better than the best SGD trial")
        l2s, best = path["l2"], path["best_l2"]
        edge = ("; the validation fMSE still falls at the path's largest l2: here the more "
                "regularised the better, towards predicting the training mean"
                if best == l2s[-1] else
                "; it is the path's smallest positive l2, so ridge's optimum may lie below it"
                if best > 0 and best == min(v for v in l2s if v > 0) else "")
        lines.append(
            f"exact ridge path over l2 {l2s[0]:.3g} ... {l2s[-1]:.3g}: the best "
            f"l2 is {best:.3g}, validation fMSE {fmt(path['best_val_fmse'])} "
            f"(test {fmt(path['best_test_fmse'])}), {verdict} (best SGD validation "
            f"{fmt(path['sgd_best_val_fmse'])}){edge}")
    elif path and path.get("note"):
        lines.append(f"exact ridge path: {path['note']}")
    noise = res.get("noise")
    if noise:
        lines.append(
            f"Gaussian noise model: sigma² {fmt(noise['sigma2'])} (sigma "
            f"{fmt(noise['sigma'])} years, = 2 x train fMSE); test log-likelihood "
            f"{fmt(noise['test_avg_loglik'])} per image")
    lines += res.get("notes", [])
    return lines


def _rows(trained_on: str) -> str:
    """"the training split (4000 rows)", "all 5000 training rows (5-fold run)"."""
    return trained_on if trained_on.startswith("all ") else f"the {trained_on}"


def eval_files(res: dict) -> list[str]:
    """The files an eval wrote in its folder, eval.json first."""
    files = res.get("files") or {}
    names = [EVAL_NAME]
    names += [files[k] for k in ("weights", "bias") if files.get(k)]
    return names + list(files.get("pictures", []))


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the run: its folder, its eval.json, how it reads (checked) and
    the pictures it drew."""

    folder: Path
    result: dict
    text: EvalText
    pictures: list[str]


@dataclass(frozen=True)
class Report:
    """What ``agereg report`` found and wrote."""

    run_dir: Path
    ranked: list[TrialRecord]
    counts: dict[str, int]
    trials_planned: int | None
    evals: list[Evaluation]  # best rank first, refits after the plain retrainings
    html_path: Path | None  # None: the run folder cannot be written, so no page
    drawn: list[str]  # grid pictures drawn now because they were missing
    pictures: list[str]  # grid pictures embedded in the HTML
    notices: tuple[str, ...]  # edge-of-range notices on the best trial
    selection: Selection  # the trial the run's select rule picks
    next_step: str  # what to do when nothing is evaluated (see no_eval_hint)
    analysis: list[str] | None = None  # the sentences of RUN/analysis/analysis.json


def build_report(run: str | os.PathLike | None, runs_dir: Path, top: int = 10) -> Report:
    """Read a run folder, draw the grid pictures if missing and write report.html."""
    run_dir = resolve_run(run, runs_dir)
    cfg = stored_config(run_dir)
    ranked = rank(read_log(run_dir), cfg.select_by)
    counts = status_counts(ranked)
    info = read_json(run_dir / RUN_NAME, "this run folder is damaged")
    status = run_status(run_dir, info)
    next_step = no_eval_hint(ranked, status, run_dir)
    if status == "killed":
        info = {**info, "status": "killed (no process holds the run any more; "
                                  "agereg search --resume goes on)"}
    dataset = read_json(run_dir / DATASET_NAME, "this run folder is damaged")
    evals = read_evaluations(run_dir, {r.trial_id: k for k, r in
                                       enumerate(finished_trials(ranked), 1)})
    analysis = read_analysis(run_dir)
    selection = select(ranked, cfg.select, cfg.select_by)
    # a run folder this process cannot write (a read-only mount, another user's run)
    # still gives its ranking; the caller says that no page was written
    writable = os.access(run_dir, os.W_OK)
    drawn = draw_grid_pictures(run_dir, ranked, only_missing=True,
                               strategy=cfg.search.strategy) if writable else []
    pictures = [n for n in (*GRID_PICTURES, "halving_rungs.png") if (run_dir / n).is_file()]
    planned = info.get("trials_planned")
    config_text = _read_text(run_dir / CONFIG_NAME)
    notices = edge_notices(ranked, cfg.select_by, cfg.select, stored_lr_limit(info))
    page = render_html(run_dir, ranked, counts, planned, info, dataset, config_text, evals,
                       notices, pictures, top, selection, analysis, next_step)
    html_path = run_dir / REPORT_NAME if writable else None
    if html_path is not None:
        atomic_write_text(html_path, page)
    return Report(run_dir, ranked, counts, planned if isinstance(planned, int) else None,
                  evals, html_path, drawn, pictures, notices, selection, next_step,
                  None if analysis is None else analysis[0])


ANALYSIS_PICTURES = ("gradient_noise.png", "lr_vs_batch.png")


def read_analysis(run_dir: Path) -> tuple[list[str], list[Path]] | None:
    """The sentences and pictures of RUN/analysis/ (written by `agereg analyze`), checked;
    None when the run has not been analysed."""
    path = run_dir / "analysis" / "analysis.json"
    if not path.exists():
        return None
    res = read_json(path, "run `agereg analyze --run RUN` again to rewrite it")
    try:
        lines = analysis_lines(res)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) \
            as exc:
        raise RunError(f"{path}: not an agereg analysis ({type(exc).__name__}); delete it or "
                       "run `agereg analyze --run RUN` again") from None
    if not _fresh(path, run_dir):  # the search trained more trials since (a --resume)
        lines.append(f"analysed before the search trained its latest trials: the figures at "
                     "the selected trial and the scaling rules are as of then; `agereg "
                     f"analyze --run {run_dir}` brings them up to date")
    pictures = [path.parent / n for n in ANALYSIS_PICTURES if (path.parent / n).is_file()]
    return lines, pictures


def read_evaluations(run_dir: Path, ranks: dict[str, int] | None = None
                     ) -> list[Evaluation]:
    """Every evaluation of the run (``evals/*/``, and a 0.1 run's own eval.json), each
    checked to be one; the best-ranked first, plain retrainings before refits.
    ``ranks``: each finished trial's rank now, by trial id (see :func:`as_of_now`)."""
    folders = evaluations(run_dir)
    if (run_dir / EVAL_NAME).is_file():  # written by agereg 0.1, before evals/ existed
        folders.append(run_dir)
    evals = []
    for folder in folders:
        path = folder / EVAL_NAME
        res = read_json(path, "recompute it with `agereg eval --force`")
        text = describe_eval(res, path)  # read back: checked as it is described
        trial_id = folder.name.removesuffix("-refit") if folder != run_dir else None
        now = as_of_now(res, (ranks or {}).get(trial_id or ""))
        if now is not res:  # its rank moved: described as it reads now
            res, text = now, describe_eval(now, path)
        listed = (res.get("files") or {}).get("pictures") or []
        evals.append(Evaluation(folder, res, text, [n for n in EVAL_PICTURES
                                                    if n in listed and (folder / n).is_file()]))
    evals.sort(key=lambda e: (bool(e.result.get("refit")), e.result["trial"]["rank"]))
    return evals


def as_of_now(res: dict, rank_now: int | None) -> dict:
    """An eval.json as it reads now. When the trial ranks otherwise than when it was
    evaluated (the search was resumed and trained more trials), it is labelled with its
    rank of now, and a first note says that what compares it with other trials (the
    paired bootstrap, the ridge path's SGD figures) is as of then. The file is unchanged."""
    was = res["trial"]["rank"]
    if rank_now is None or rank_now == was:
        return res
    again = f"`agereg eval --rank {rank_now}{' --refit' * bool(res.get('refit'))} --force`"
    note = (f"evaluated when this trial ranked #{was}; the search has trained more trials "
            "since, so what compares it with other trials (the paired bootstrap, the ridge "
            f"path's SGD figures) is as of then: {again} brings it up to date")
    return {**res, "trial": {**res["trial"], "rank": rank_now},
            "notes": [note, *(res.get("notes") or [])]}


_TRIAL_KEYS: dict[str, type] = {"rank": int, "batch_size": int, "learning_rate": float,
                                "epochs": int, "l2": float}


@dataclass(frozen=True)
class EvalText:
    """An eval.json as the terminal and the page show it: the heading, its setting, the
    metrics table, the table of error by age, and the sentences."""

    label: str  # "trial #1"
    trial: str  # "batch_size 160, learning_rate 0.003, epochs 48, l2 0.001"
    refit: bool
    engine: str  # "batched, float64"
    trained_on: str  # "the training split (4000 rows)"
    dataset: str
    refit_note: str | None  # said when the validation rows trained the model
    columns: list[str]
    rows: list[list[str]]
    decade_columns: list[str]
    decade_rows: list[list[str]]
    lines: list[str]


def describe_eval(res: dict, path: Path) -> EvalText:
    """Everything printed of an eval.json, built once. An eval.json read back is input:
    anything missing or of the wrong type is one line naming the file, not a traceback."""
    try:
        trial = res["trial"]
        for key, kind in _TRIAL_KEYS.items():
            v = trial[key]
            if isinstance(v, bool) or not isinstance(v, kind if kind is int else int | float):
                raise TypeError(key)
        trained_on = str(res.get("trained_on"))
        refit = bool(res.get("refit"))
        columns, rows = eval_table(res)
        dec_columns, dec_rows = decade_table(res)
        return EvalText(
            f"trial #{trial['rank']}", trial_text(trial), refit,
            f"{res.get('engine')}, {res.get('precision')}", _rows(trained_on),
            str(res.get("dataset")),
            f"refit on {trained_on}: the validation rows were used for training"
            if refit and not trained_on.startswith("all ") else None,
            columns, rows, dec_columns, dec_rows, [str(x) for x in eval_lines(res)])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise RunError(f"{path}: not an agereg evaluation ({type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:80]}); delete it or recompute it with "
                       "`agereg eval --force`") from None


def _read_text(path: Path) -> str:
    try:
        return read_regular(path, 1 << 20).decode("utf-8")
    except (OSError, UnicodeDecodeError, NotReadable) as exc:
        raise RunError(f"{path}: unreadable ({exc}); this run folder is damaged") from None


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; }
td.l, th.l { text-align: left; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
.note { color: #555; }
.notice { background: #fff6d6; border-left: 4px solid #e0b000; padding: 0.3em 0.6em; }
"""


# An absolute path of the user's machine (/home/ana/projects/data): the page is meant to
# be sent, so it shows only the last component ("…/data").
_ABSOLUTE = re.compile(r"(?<![\w.~])/(?:[^\s/'\",;:)]+/)+([^\s/'\",;:)]+)/?")


def _redact(text: str) -> str:
    return _ABSOLUTE.sub(lambda m: "…/" + m.group(1), text)


def _e(v: object) -> str:
    """Text for the page: absolute paths shortened, HTML escaped."""
    return html.escape(_redact(str(v)), quote=True)


def _table(columns: Sequence[str], rows: Iterable[Sequence[object]], left: int = 0) -> str:
    """An HTML table; the first ``left`` columns are left-aligned."""
    head = "".join(f'<th class="l">{_e(c)}</th>' if i < left else f"<th>{_e(c)}</th>"
                   for i, c in enumerate(columns))
    body = "".join(
        "<tr>" + "".join(f'<td class="l">{_e(c)}</td>' if i < left else f"<td>{_e(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>\n"
        for row in rows)
    return f"<div class=\"scroll\"><table>\n<tr>{head}</tr>\n{body}</table></div>\n"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = CAPTIONS.get(path.name, path.name)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(path.name)}">'
            f"<figcaption>{_e(path.name)}: {_e(caption)}</figcaption></figure>\n")


def summary_dict(run_dir: Path, ranked: Sequence[TrialRecord], selection: Selection,
                 notices: Sequence[str], top: int) -> dict:
    """A run's summary, machine-readable (`search --json`, `report --json`)."""
    from agereg.runs import record_to_dict, selection_dict

    best = selection.trial
    return {
        "run": str(run_dir),
        "trials": len(ranked),
        "counts": status_counts(list(ranked)),
        "best": None if best is None else {**record_to_dict(best), "rank": selection.rank},
        "selection": selection_dict(selection),
        "top": [{**record_to_dict(r), "rank": i} for i, r in enumerate(ranked[:top], 1)],
        "notices": list(notices),
    }


def selection_text(sel: Selection) -> str | None:
    """One sentence on the trial a ``one_se`` rule selected (None under ``best``)."""
    if sel.rule != "one_se" or sel.trial is None or sel.lowest is None:
        return None
    if sel.note:
        return sel.note
    t, what = sel.trial, "validation MAE" if sel.by == "mae" else "validation"
    # the figure the rule compared (MAE under select_by: mae), with its standard error
    head = (f"selected by one_se: #{sel.rank} ({trial_text(asdict(t))}), {what} "
            f"{fmt(score(t, sel.by))}")
    if sel.n_within == 1:  # the lowest itself
        return (f"{head}: no other trial lies within one standard error ({fmt(sel.se)}) "
                "of it, so the lowest is selected")
    return (f"{head}: the most regularised of the {sel.n_within} trials within one standard "
            f"error ({fmt(sel.se)}) of the lowest, {fmt(score(sel.lowest, sel.by))}")


def analysis_lines(res: dict) -> list[str]:
    """The findings of ``agereg analyze`` (an analysis.json) as sentences."""
    lines = [
        f"{res['source']}: {res['n_train']} training rows, {res['n_features']} features",
        f"curvature: the Hessian's largest eigenvalue lambda_max = {fmt(res['lambda_max'])} "
        f"({res['eigen']['iterations']} power iterations, relative residual "
        f"{res['eigen']['relative_residual']:.1e}); full-batch gradient descent is stable for "
        f"lr < 2 / lambda_max = {res['lr_limit']:.4g}",
    ]
    for item in res.get("learning_rates", []):
        state = "stable" if item["stable_full_batch"] else "DIVERGES with full-batch descent"
        lines.append(f"  learning rate {item['learning_rate']:g}: "
                     f"{item['fraction_of_limit']:.3g} x the limit ({state})")
    for key, name in (("noise_at_zero", "at w = 0"), ("noise_at_selected",
                                                      "at the selected trial")):
        d = res.get(key)
        if not d:
            continue
        b_simple = d["b_simple"]
        lines.append(
            f"gradient noise {name}: |G|^2 = {fmt(d['g_norm2'])}, tr(Sigma) = "
            f"{fmt(d['trace_sigma'])}, B_simple = tr(Sigma)/|G|^2 = "
            f"{'inf' if b_simple is None else fmt(b_simple)}; measured variance vs B has "
            f"log-log slope {fmt(d['slope'])} (the law tr(Sigma)/B (N-B)/(N-1): -1 while "
            f"B << N); measured / law at B = {d['batch_sizes'][0]}: "
            f"{d['measured'][0] / d['law'][0]:.3f}, at B = {d['batch_sizes'][-1]}: "
            f"{d['measured'][-1] / d['law'][-1]:.3f} ({d['draws']} draws each)")
    if res.get("b_simple") is not None:
        at = res.get("b_simple_at", "w = 0")
        lines.append(f"beyond about B_simple = {fmt(res['b_simple'])} (at "
                     f"{at if at == 'w = 0' else 'the ' + at}) larger batches stop paying off "
                     "(McCandlish et al., 2018): the minibatch gradient is then mostly signal")
    r = res["lr_range"]
    lines.append(f"suggested learning rates for batch size {r['batch_size']} "
                 f"({r['rule']}): {r['yaml']}")
    sc = res.get("scaling")
    if sc:
        pairs = ", ".join(f"B={b}: {lr:g}" for b, lr in zip(sc["batch_sizes"],
                                                            sc["best_learning_rate"],
                                                            strict=True))
        lines.append(f"scaling rules: best learning rate per batch size {pairs}; "
                     f"{sc['verdict']}" if pairs else f"scaling rules: {sc['verdict']}")
    lines += [f"note: {n}" for n in res.get("notes", [])]
    return lines


def counts_text(counts: dict[str, int]) -> str:
    """"250 finished, 6 diverged, 0 failed" (pruned only when there are any)."""
    pruned = f"{counts['pruned']} pruned, " if counts.get("pruned") else ""
    return (f"{counts['ok']} finished, {pruned}{counts['diverged']} diverged, "
            f"{counts['failed']} failed")


def several_losses(ranked: Sequence[TrialRecord]) -> bool:
    return len({r.loss for r in ranked}) > 1


SHORT_LOSS = {"squared": "sq", "absolute": "abs"}


def column_texts(values: Sequence[float | None], distinguish: bool = False) -> list[str]:
    """One format for a whole column: fixed point with the same decimals when every value
    lies in [1e-3, 1e5), else scientific with the same mantissa digits; 4 significant
    digits for the largest value, and with ``distinguish`` as many more as it takes for
    different values to print differently (ranks 1-3 of the homework grid all printed
    88.86). '-' for a missing value."""
    have = [float(v) for v in values if v is not None and math.isfinite(v)]
    fixed = all(v == 0 or 1e-3 <= abs(v) < 1e5 for v in have)
    top = max((abs(v) for v in have), default=1.0)
    if not fixed:
        start = 3
    elif top < 1e3:  # losses and ages: at least two decimals
        start = max(2, 3 - math.floor(math.log10(top))) if top > 0 else 2
    else:
        start = 0
    distinct = sorted(set(have))
    digits = start
    while distinguish and digits < start + 8:
        spec = f".{digits}f" if fixed else f".{digits}e"
        if len({format(v, spec) for v in distinct}) == len(distinct):
            break
        digits += 1
    spec = f".{digits}f" if fixed else f".{digits}e"
    return ["-" if v is None or not math.isfinite(v) else _compact(format(float(v), spec))
            for v in values]


def _compact(text: str) -> str:
    """``3.457e+05`` -> ``3.457e5``, ``1.2e-07`` -> ``1.2e-7``: exponents that fit."""
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if e else text


def ranking_rows(ranked: Sequence[TrialRecord], top: int, short: bool = False,
                 by: str = "fmse") -> list[list[str]]:
    """Rows of :func:`ranking_columns`; with several training losses the loss takes the
    train fMSE's place (the tables must fit 80 columns; ``short``: "sq", "abs"). Every
    number column has one format; the ranking one (``by``) has the digits to tell its
    rows apart."""
    losses = several_losses(ranked)
    shown = list(ranked[:top])

    def loss(r: TrialRecord) -> str:
        return SHORT_LOSS.get(r.loss, r.loss) if short else r.loss

    names = ("train_loss", "val_loss", "test_loss", "val_mae")
    ranking = "val_mae" if by == "mae" else "val_loss"
    cols = [column_texts([getattr(r, name) for r in shown], distinguish=name == ranking)
            for name in names]
    return [[str(i), str(r.batch_size), f"{r.learning_rate:.4g}", str(r.epochs), f"{r.l2:.4g}",
             loss(r) if losses else cols[0][i - 1], cols[1][i - 1], cols[2][i - 1],
             cols[3][i - 1], r.status.value]
            for i, r in enumerate(shown, 1)]


def ranking_columns(ranked: Sequence[TrialRecord]) -> tuple[str, ...]:
    return ("rank", "batch", "learning rate", "epochs", "l2",
            "loss" if several_losses(ranked) else "train fMSE", "val fMSE", "test fMSE",
            "val MAE", "status")


def render_html(
    run_dir: Path,
    ranked: Sequence[TrialRecord],
    counts: dict[str, int],
    planned: object,
    info: dict,
    dataset: dict,
    config_text: str,
    evals: Sequence[Evaluation],
    notices: Sequence[str],
    pictures: Sequence[str],
    top: int,
    selection: Selection | None = None,
    analysis: tuple[list[str], list[Path]] | None = None,
    next_step: str = NO_EVAL,
) -> str:
    """The whole report as one self-contained HTML page (pictures as data URIs);
    ``next_step``: what to do when nothing is evaluated (:func:`no_eval_hint`)."""
    name = run_dir.name
    by = "fmse" if selection is None else selection.by
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        f"<title>agereg report: {_e(name)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
        f"<h1>agereg report: {_e(name)}</h1>\n",
        f"<p class=\"note\">run folder {_e(run_dir.name)}; status "
        f"{_e(info.get('status', '?'))}; "
        f"written by agereg {_e(__version__)}</p>\n",
        "<h2>Dataset</h2>\n",
        _table(["field", "value"], [
            (k, dataset.get(k)) for k in ("description", "kind", "path", "n_train", "n_test",
                                          "n_features", "image_shape", "x_dtype")
        ], left=2),
        "<h2>Best trial</h2>\n",
    ]
    ok = finished_trials(ranked)
    if ok:
        b = selection.trial if selection is not None and selection.trial is not None else ok[0]
        parts.append(f"<p>best trial: <strong>{_e(trial_text(asdict(b)))}</strong>: "
                     f"validation fMSE {_e(fmt(b.val_loss))}, validation MAE "
                     f"{_e(fmt(b.val_mae))} years, train fMSE {_e(fmt(b.train_loss))}"
                     f"{'' if b.best_epoch is None else f', best epoch {b.best_epoch}'}"
                     "</p>\n")
        said = None if selection is None else selection_text(selection)
        if said:
            parts.append(f"<p>{_e(said)}</p>\n")
    else:
        yet = "" if info.get("status") == "finished" else " yet"
        parts.append(f"<p>no finished trial{yet}.</p>\n")
    # what to try next (every trial diverged: which learning rates)
    parts += [f"<p class=\"notice\">{_e(n)}</p>\n" for n in notices]
    done = len(ranked)
    parts += [
        f"<h2>Ranking (top {min(top, done)} of {counted(done, 'trial')}"
        f"{f', {planned} planned' if isinstance(planned, int) else ''})</h2>\n",
        f"<p>by validation {'MAE' if by == 'mae' else 'fMSE'}, the lowest first: "
        f"{_e(counts_text(counts))}.</p>\n",
        _table(ranking_columns(ranked), ranking_rows(ranked, top, by=by)),
    ]
    if pictures:
        parts += [_img(run_dir / p) for p in pictures]
    parts.append("<h2>Test-set evaluations</h2>\n")
    if not evals:
        parts.append(f"<p>No evaluation in this run folder: {_e(next_step)}.</p>\n")
    for ev in evals:
        t = ev.text
        where = ev.folder.relative_to(run_dir) if ev.folder != run_dir else Path(".")
        refit = " (refit)" if t.refit else ""
        parts.append(f"<h3>{_e(t.label)}: {_e(t.trial)}{refit}</h3>\n<p class=\"note\">"
                     f"{_e(t.engine)}; trained on {_e(t.trained_on)}; files in "
                     f"{_e(where)}/</p>\n")
        parts.append(_table(t.columns, t.rows, left=1))
        if t.decade_rows:
            parts.append("<p>Test error by decade of true age (signed: prediction minus "
                         "truth, positive means predicted too old):</p>\n")
            parts.append(_table(t.decade_columns, t.decade_rows, left=1))
        parts.append("<ul>\n" + "".join(f"<li>{_e(x)}</li>\n" for x in t.lines) + "</ul>\n")
        parts += [_img(ev.folder / p) for p in ev.pictures]
    if analysis is not None:
        lines, pics = analysis
        parts.append("<h2>Batch size and learning rate</h2>\n<p class=\"note\">from "
                     "<code>agereg analyze</code> (analysis/analysis.json)</p>\n<ul>\n"
                     + "".join(f"<li>{_e(x)}</li>\n" for x in lines) + "</ul>\n")
        parts += [_img(p) for p in pics]
    parts += [
        "<h2>Config</h2>\n",
        f"<pre>{_e(config_text)}</pre>\n",
        "</body>\n</html>\n",
    ]
    return "".join(parts)
