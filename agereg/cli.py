"""The command-line shell: parse options, call :mod:`agereg.pipeline`, print.

The only module (with ``__main__``) that imports click or rich. Every
:class:`~agereg.errors.AgeregError` becomes a one-line message and exit code 2 in
:func:`main`, and nowhere else. Logs and progress go to stderr, results to stdout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import json
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click
from rich import box
from rich.console import Console
from rich.markup import escape as _rich_escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from agereg import __version__, interrupts, pipeline
from agereg.assessment import MAX_BOOTSTRAP, evaluate_run
from agereg.config import (
    BACKENDS,
    ENGINES,
    MAX_SEED,  # what a config accepts, so a run's own stored config loads back
    PRECISIONS,
    Config,
    apply_overrides,
    load_config,
)
from agereg.errors import AgeregError, RunError
from agereg.fileio import NotReadable, read_regular
from agereg.launcher import note_interrupt
from agereg.records import TrialRecord
from agereg.report import (
    REPORT_NAME,
    EvalText,
    Report,
    analysis_lines,
    build_report,
    counts_text,
    describe_eval,
    eval_files,
    fmt,
    ranking_rows,
    selection_text,
    several_losses,
    stale_report,
    summary_dict,
)
from agereg.runs import BEST_NAME, EVAL_NAME, resolve_run
from agereg.words import counted, listed

if TYPE_CHECKING:
    from agereg.predict import Prediction

EXIT_USAGE = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_SIGPIPE = 141  # what a shell reports for a tool that SIGPIPE ended, as `| head` does


class _ReaderGone(BaseException):
    """The reader of stdout or stderr went away (``agereg report | head -1``): like a
    Unix tool that SIGPIPE ends, agereg stops (a search as on Ctrl-C: saved, resumable)
    and :func:`main` exits quietly with :data:`EXIT_SIGPIPE`. Not an OSError, which click
    would turn into exit code 1, the code of a bug (and so would rich), and not an
    Exception, which a search could take for a failed trial."""


class _Console(Console):
    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise _ReaderGone


def _echo(text: str) -> None:
    """Print ``text`` (a result) on stdout."""
    try:
        click.echo(text, nl=False)
    except BrokenPipeError:
        raise _ReaderGone from None


err = _Console(stderr=True, highlight=False, soft_wrap=True)
out = _Console(highlight=False)


# C0 and C1 control characters and DEL: a value from a config or a run folder must not
# move the cursor, clear the screen, set the title or break the one-line promise.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def escape(text: str) -> str:
    """Rich markup escaped and control characters made visible: every message goes
    through here."""
    return _rich_escape(printable(text))


class _State:
    debug = False


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so cleanup runs as for Ctrl-C.

    A BaseException, as KeyboardInterrupt is: a group trained in this process treats any
    Exception as its failure, and a SIGTERM is no failure of the trial it lands in."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    note_interrupt()
    interrupts.deliver(Terminated())  # held while a run folder is being made consistent


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    note_interrupt()
    interrupts.deliver(KeyboardInterrupt())


# ---------------------------------------------------------------- the group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agereg")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Hyperparameter search for linear regression trained by minibatch SGD.

    \b
    Typical session:
      agereg synth --out data            # or copy the four course .npy files to data/
      agereg split --seed 0              # optional: fix the train/validation split
      agereg search configs/grid.yaml    # train every trial, write runs/<time>-<name>/
      agereg eval --best                 # measure the winner on the test set
      agereg analyze                     # batch size and learning rate, measured
      agereg report                      # report.html, a page to share
    """
    _State.debug = debug


# ---------------------------------------------------------------- synth


@cli.command()
@click.option("--out", "out_dir", default="data", show_default=True, type=click.Path(),
              help="Folder to write the four .npy files and synthetic.json into.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED))
@click.option("--n-train", default=5000, show_default=True, type=click.IntRange(min=2))
@click.option("--n-test", default=2500, show_default=True, type=click.IntRange(min=1))
@click.option("--side", default=48, show_default=True, type=click.IntRange(min=4),
              help="Images are side x side pixels.")
@click.option("--force", is_flag=True,
              help="Replace existing data files (never the course files).")
def synth(out_dir: str, seed: int, n_train: int, n_test: int, side: int, force: bool) -> None:
    """Write a synthetic stand-in for the course files (same shapes and dtypes). Existing
    files are never replaced without --force; the course files never."""
    from agereg.data import FILE_NAMES, sha256_file
    from agereg.split import stale_split_note
    from agereg.synth import write_synthetic

    path = write_synthetic(out_dir, seed=seed, n_train=n_train, n_test=n_test, side=side,
                           force=force)
    err.print(escape(f"wrote a synthetic stand-in to {path}/ ({n_train} training and {n_test} test "
              f"images of {side}x{side}, seed {seed}); it is not real faces"))
    if notice := stale_split_note(path, n_train, sha256_file(path / FILE_NAMES["ytr"])):
        err.print(f"[yellow]note[/]: {escape(notice)}")


# ---------------------------------------------------------------- split


@cli.command()
@click.option("--seed", required=True, type=click.IntRange(0, MAX_SEED),
              help="Permutation seed, 0 ... 2^63 - 1.")
@click.option("--val-fraction", default=0.2, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--folds", default=None, type=click.IntRange(min=2),
              help="Write K cross-validation folds instead of a holdout split.")
@click.option("--data", "data_dir", default="data", show_default=True, type=click.Path(),
              help="Dataset folder; split.json is written there.")
@click.option("--force", is_flag=True, help="Replace an existing, different split.json.")
def split(seed: int, val_fraction: float, folds: int | None, data_dir: str,
          force: bool) -> None:
    """Write DATA/split.json: a seeded 80/20 train/validation split of the training files,
    or with --folds K, K cross-validation folds."""
    if folds is not None and click.get_current_context().get_parameter_source(
            "val_fraction") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--folds and --val-fraction exclude each other")
    path, s = pipeline.write_split(Path(data_dir), seed, val_fraction, folds, force)
    if s.k:
        sizes = sorted({len(f) for f in s.folds})
        err.print(escape(f"wrote {path}: {s.k} folds of {' or '.join(map(str, sizes))} rows "
                         f"(seed {seed})"))
    else:
        err.print(escape(f"wrote {path}: {len(s.train)} training and {len(s.val)} validation "
                         f"rows (seed {seed}, val_fraction {val_fraction})"))


# ---------------------------------------------------------------- search


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--n-jobs", type=int, default=None,
              help="Worker processes (-1 = all cores). Overrides the config's n_jobs.")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--engine", type=click.Choice(ENGINES), default=None,
              help="batched (default) or reference (one plain loop per trial).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="float64 (default) or float32 (faster, see README).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="joblib backend: loky (default), threading or dask.")
@click.option("--scheduler", default=None, help="dask scheduler address, tcp://HOST:PORT.")
@click.option("--resume", is_flag=False, flag_value="latest", default=None,
              metavar="[RUN_DIR]", help="Continue an interrupted run (default: the latest).")
@click.option("--extend", default=None, metavar="RUN_DIR",
              help="Grow that run: reuse its trials, train only the new ones (new folder).")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1),
              help="Rows of the ranked table to print.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--curves/--no-curves", default=None,
              help="Record learning curves (curves.csv; default: config execution.curves, on).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON on stdout instead of the table.")
def search(config: str | None, n_jobs: int | None, runs_dir: str, engine: str | None,
           precision: str | None, backend: str | None, scheduler: str | None,
           resume: str | None, extend: str | None, top: int, quiet: bool,
           curves: bool | None, as_json: bool) -> int:
    """Run CONFIG's search strategy (the grid by default) and rank the trials by
    validation loss."""
    if config is None and resume is None:
        raise click.UsageError("give a CONFIG file, or --resume to continue a run")
    if extend is not None and (resume is not None or config is None):
        raise click.UsageError("--extend RUN_DIR needs a CONFIG and cannot go with --resume")

    def overrides(cfg: Config) -> Config:
        return apply_overrides(cfg, n_jobs=n_jobs, engine=engine, precision=precision,
                               backend=backend, scheduler=scheduler, curves=curves)

    runs = Path(runs_dir)
    with _progress(quiet) as progress:
        if resume is not None:
            outcome = pipeline.resume_search(None if resume == "latest" else resume, runs,
                                             config, overrides, log=_log, progress=progress,
                                             on_start=_started)
        else:
            cfg = overrides(load_config(config))  # type: ignore[arg-type]
            outcome = pipeline.start_search(cfg, runs, log=_log, progress=progress,
                                            on_start=_started, extend=extend)
    summary = outcome.summary
    if as_json:
        doc = summary_dict(outcome.run_dir, outcome.ranked, summary.selection, summary.notices,
                           top)
        doc.update(computed=outcome.computed, reused=outcome.reused, seconds=outcome.seconds)
        _echo(json.dumps(doc, indent=2) + "\n")
    else:
        _print_ranking(outcome.ranked, top, summary.by)
        if said := selection_text(summary.selection):
            out.print(escape(said))
        for notice in summary.notices:
            out.print(f"[yellow]note[/]: {escape(notice)}")
    reused = f", {outcome.reused} reused" if outcome.reused else ""
    n = len(outcome.ranked)
    err.print(escape(f"{counted(n, 'trial')} ({outcome.computed} trained now{reused}; "
              f"{counts_text(outcome.summary.counts)}) in {outcome.seconds:.1f} s; "
              f"results in {outcome.run_dir}/"))
    if outcome.computed and stale_report(outcome.run_dir):
        _note_old_report(outcome.run_dir, "shows the run before these trials")
    failed = outcome.failure()
    if failed is None:
        return 0
    err.print(f"[red]error[/]: {escape(str(failed))}", soft_wrap=True)
    return failed.exit_code


class _progress:
    """A rich progress bar on stderr, fed by the pipeline's callback: trials done (moving
    with every epoch of the running groups), diverged so far, the best validation fMSE so
    far, elapsed time and an estimate of the time left."""

    def __init__(self, quiet: bool) -> None:
        self.bar = None if quiet else Progress(
            TextColumn("training"), BarColumn(), _TrialsColumn(), TextColumn("trials"),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=err, transient=True,
        )  # fmt: skip
        self.task: TaskID | None = None
        self.lock = threading.Lock()  # the pipeline reports from a polling thread too

    def __enter__(self) -> Callable[[float, int, str], None] | None:
        return None if self.bar is None else self.update

    def update(self, done: float, total: int, note: str = "") -> None:
        # Started on the first update, once training begins: an input error before it
        # leaves stderr with its one-line message and nothing else.
        assert self.bar is not None
        with self.lock:
            if self.task is None:
                self.bar.start()
                self.task = self.bar.add_task("trials", total=total, note=note)
            self.bar.update(self.task, completed=done, total=total, note=escape(note))

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.stop()


class _TrialsColumn(MofNCompleteColumn):
    """``57/256``: whole trials, although the bar moves with every epoch."""

    def render(self, task: Task) -> Text:
        return Text(f"{int(task.completed)}/{int(task.total or 0)}", style="progress.download")


def _log(msg: str) -> None:
    err.print(escape(msg), soft_wrap=True)


def _started(run_dir: Path) -> None:
    _Interrupted.run_dir = str(run_dir)
    err.print(escape(f"run folder: {run_dir}/"), soft_wrap=True)


def _print_ranking(ranked: list[TrialRecord], top: int, by: str = "fmse") -> None:
    second = "loss" if several_losses(ranked) else "train"
    names = ("#", "batch", "lr", "epochs", "l2", second, "val", "test", "MAE", "status")
    rows = ranking_rows(ranked, top, short=True, by=by)
    # the figures the ranking does not need go first: test, train, the other validation one
    optional = ["test", *(["train"] if second == "train" else []),
                "val" if by == "mae" else "MAE"]
    table, left_out = _fitted(names, optional,
                              lambda shown: _ranking_table(shown, rows, names, by))
    out.print(table)
    _say_left_out(left_out, "the run's results.csv has every figure")


def _fitted(names: Sequence[str], optional: Sequence[str],
            build: Callable[[list[str]], Table],
            measured: Callable[[list[str]], Table] | None = None
            ) -> tuple[Table, list[str]]:
    """The table ``build`` makes of the columns ``names``, without as many of the
    ``optional`` ones (in that order) as the terminal's width needs; and those left out.
    On a narrow terminal a column less reads better than every number folded onto two
    lines; what is left still folds, never cut. ``measured``: the table whose width
    decides, when a column is meant to fold (a long folder name)."""
    shown, optional = list(names), list(optional)
    while True:
        natural = Measurement.get(out, out.options.update_width(10_000),
                                  (measured or build)(shown)).maximum
        if natural <= out.width or not optional:
            return build(shown), [n for n in names if n not in shown]
        shown.remove(optional.pop(0))


def _say_left_out(left_out: list[str], where: str) -> None:
    if left_out:
        out.print(escape(f"({listed(left_out)} left out at {out.width} columns; {where})"))


def _ranking_table(shown: list[str], rows: list[list[str]], names: tuple[str, ...],
                   by: str) -> Table:
    fmse = [n for n in ("train", "val", "test") if n in shown]
    units = [*([", ".join(fmse) + ": fMSE"] if fmse else []),
             *(["MAE: validation, years"] if "MAE" in shown else [])]
    title = f"best trials by validation {'MAE' if by == 'mae' else 'fMSE'}"
    if units != ["val: fMSE"]:  # the title says that much
        title += f" ({'; '.join(units)})"
    # no vertical rules: the ranking column's digits must fit 80 columns
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1, 0, 0))
    for col in shown:
        # a number too wide folds onto a second line; it is never cut
        table.add_column(col, justify="left" if col in ("status", "loss") else "right",
                         overflow="fold")
    keep = [names.index(c) for c in shown]
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table


# ---------------------------------------------------------------- eval


# the run a command reads, as its RUN_DIR argument or as --run (see _one_run)
_run_option = click.option("--run", "run", default=None, type=click.Path(),
                           help="Run folder (default: the latest run).")


@cli.command(name="eval")
@click.argument("run_dir", required=False, type=click.Path())
@click.option("--best", "best", is_flag=True,
              help="Evaluate the best trial, as the run's select rule picks it (default).")
@click.option("--rank", "rank", default=None, type=click.IntRange(min=1),
              help="Evaluate the trial of this rank instead.")
@_run_option
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--refit", is_flag=True, help="Retrain on training + validation rows first.")
@click.option("--bootstrap", "n_boot", default=1000, show_default=True,
              type=click.IntRange(0, MAX_BOOTSTRAP),
              help="Bootstrap resamples of the test set for the confidence intervals and the "
                   "paired comparison with the runner-up (seeded by the run's seed; 0: none).")
@click.option("--no-plots", is_flag=True, help="Do not draw the pictures.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--force", is_flag=True,
              help="Evaluate again even if this trial's evaluation exists (replaces it).")
@click.option("--retrain", "again", is_flag=True,
              help="Train the trial again instead of using the parameters the search kept "
                   "(the validation fMSE must come out bit for bit the search's).")
def eval_(run_dir: str | None, best: bool, rank: int | None, run: str | None, runs_dir: str,
          refit: bool, n_boot: int, no_plots: bool, as_json: bool, force: bool,
          again: bool) -> None:
    """Measure the best trial of RUN_DIR (or --run; default: the latest run) with the
    parameters the search kept (else trained again) on the test set, with bootstrap
    confidence intervals, the exact ridge optimum, the noise model and pictures. Each
    evaluation keeps its own folder, RUN/evals/<trial_id>[-refit]/."""
    if best and rank is not None:
        raise click.UsageError("give --best or --rank, not both")
    outcome = evaluate_run(_one_run(run_dir, run), Path(runs_dir), rank=rank, refit=refit,
                           n_boot=n_boot, plots=not no_plots, log=_log, force=force,
                           again=again)
    res = outcome.result
    if as_json:
        _echo(json.dumps(res, indent=2) + "\n")
    else:
        _print_eval(describe_eval(res, outcome.folder / EVAL_NAME))
    if outcome.existing:
        err.print(escape(f"already evaluated: shown from {outcome.folder}/ (computed earlier; "
                         "--force computes it again)"))
        return
    if res["reproduced"] is False:
        err.print(f"[yellow]warning[/]: the model's validation fMSE {res['val_fmse']!r} differs "
                  f"from the search's {res['search_val_fmse']!r}")
    err.print(escape(f"wrote {', '.join(eval_files(res))} in {outcome.folder}/"))
    _note_old_report(outcome.folder.parent.parent, "does not show this evaluation")


def _note_old_report(run_dir: Path, lacks: str) -> None:
    """A note when the run holds a report.html written before what was just done."""
    if (run_dir / REPORT_NAME).is_file():
        err.print("[yellow]note[/]: " + escape(
            f"{run_dir / REPORT_NAME} {lacks}; `agereg report {run_dir}` rewrites it"))


def _one_run(run_dir: str | None, run: str | None) -> str | None:
    """The run a command was given, as its RUN_DIR argument or as --run (not both)."""
    if run_dir is not None and run is not None:
        raise click.UsageError("give the run as RUN_DIR or --run, not both")
    return run_dir or run


def _print_eval(t: EvalText) -> None:
    """An evaluation as :func:`agereg.report.describe_eval` reads it: the trial, the
    metrics table, the error by age and the other findings."""
    out.print(f"[bold]{escape(t.label)}[/]: " + escape(
        f"{t.trial} ({t.engine}); data: {t.dataset}"))
    if t.refit_note:
        out.print(escape(t.refit_note))
    # an interval may wrap at its space: measured by its longer half
    halves = dataclasses.replace(t, rows=[[row[0], *(max(c.split(" "), key=len)
                                                     for c in row[1:])] for row in t.rows])
    table, left_out = _fitted(t.columns, [c for c in ("median", "mean") if c in t.columns],
                              lambda shown: _metrics_table(t, shown),
                              lambda shown: _metrics_table(halves, shown))
    out.print(table)
    _say_left_out(left_out, "eval.json and `--json` have them")
    if t.decade_rows:
        by_age = Table(title="test error by decade of true age (signed: + predicted too old)",
                       title_justify="left")
        for col in t.decade_columns:
            by_age.add_column(escape(col), justify="right", overflow="fold")
        for row in t.decade_rows:
            by_age.add_row(*(escape(c) for c in row))
        out.print(by_age)
    for line in t.lines:
        out.print(escape(line))


def _metrics_table(t: EvalText, shown: list[str]) -> Table:
    baselines = [c for c in ("mean", "median") if c in shown]
    caption = "; ".join([
        *([f"{', '.join(baselines)}: the constant predictor{'s' * (len(baselines) > 1)} "
           f"(training {', '.join(baselines)})"] if baselines else []),
        "ridge: the exact optimum of the trial's l2"])
    table = Table(caption=caption, caption_justify="left")
    keep = [t.columns.index(c) for c in shown]
    for i in keep:  # the labels stay whole; a number folds, never "…"
        table.add_column(escape(t.columns[i]), justify="right", no_wrap=i == 0,
                         overflow="fold")
    for row in t.rows:
        table.add_row(*(escape(row[i]) for i in keep))
    return table


# ---------------------------------------------------------------- runs


FOLDER_ROOM = 24  # a run folder's time stamp (15) and an 8-letter name


@cli.command(name="runs")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON on stdout.")
def runs_(runs_dir: str, as_json: bool) -> None:
    """List the run folders: name, start, data, strategy, status, trials, best validation
    fMSE and evaluations; the latest run is marked with *."""
    from agereg.catalog import list_runs

    rows = list_runs(Path(runs_dir))
    if as_json:
        _echo(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
        return
    names = ("folder", "data", "strategy", "status", "trials", "best val", "evals")
    cells = []
    for r in rows:
        trials = "" if r.trials_done is None else (
            f"{r.trials_done}/{r.trials_planned}" if r.trials_planned is not None
            else str(r.trials_done))
        data = {"synthetic": "synth"}.get(r.data or "", r.data or "")
        cells.append(["*" if r.latest else "", escape(r.folder), escape(data),
                      escape(r.strategy or ""), escape(r.status), trials,
                      fmt(r.best_val_loss) if r.best_val_loss is not None else "",
                      str(r.evaluated) if r.evaluated else ""])

    def build(shown: list[str], folder_room: int | None = None) -> Table:
        # one space between columns (as the ranking): a homework run's line fits 80
        table = Table(title=f"runs in {escape(runs_dir)} (* latest)", title_justify="left",
                      box=None, pad_edge=False, padding=(0, 1, 0, 0))
        table.add_column("", no_wrap=True, width=1)  # the latest run's *
        for col in shown:
            # a long folder name folds onto more lines, whole (it is what one copies), and
            # leaves the other columns their room
            table.add_column(col, justify="right" if col in ("trials", "best val", "evals")
                             else "left", no_wrap=col != "folder", overflow="fold")
        keep = [0, *(1 + names.index(c) for c in shown)]
        for row in cells:
            table.add_row(*(row[i][:folder_room] if i == 1 else row[i] for i in keep))
        return table

    # a folder name longer than a time stamp and a short name folds rather than push
    # other columns out
    table, left_out = _fitted(names, ("evals", "strategy", "data"), build,
                              lambda shown: build(shown, FOLDER_ROOM))
    out.print(table)
    _say_left_out(left_out, "`agereg runs --json` has every column")
    for r in rows:
        if r.problem:
            err.print(f"[yellow]damaged[/]: {escape(r.problem)}")
        if r.status == "killed":
            where = Path(runs_dir) / r.folder
            err.print(f"[yellow]killed[/]: {escape(str(where))}: the search stopped without "
                      "saying so (killed, or the machine went down); its finished trials are "
                      f"kept: {escape(f'agereg search --resume {where}')} goes on")
    if not rows:
        err.print(escape(f"no runs in {runs_dir} yet; start one with `agereg search CONFIG`"))


# ---------------------------------------------------------------- compare


@cli.command()
@click.argument("run_a", type=click.Path())
@click.argument("run_b", type=click.Path())
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--bootstrap", "n_boot", default=1000, show_default=True,
              type=click.IntRange(1, MAX_BOOTSTRAP), help="Resamples of the paired bootstrap.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(run_a: str, run_b: str, runs_dir: str, n_boot: int, as_json: bool) -> None:
    """Compare two runs: their selected trials side by side, what differs in their
    configs, and (when both were evaluated on the same test files) a paired bootstrap of
    the test difference."""
    from agereg.compare import compare_lines, compare_runs

    doc = compare_runs(run_a, run_b, Path(runs_dir), n_boot)
    if as_json:
        _echo(json.dumps(doc, indent=2) + "\n")
        return
    for line in compare_lines(doc):
        out.print(escape(line))


# ---------------------------------------------------------------- export


@cli.command()
@click.argument("run_dir", required=False, type=click.Path())
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--mlflow", "to_mlflow", is_flag=True, required=True,
              help="Export to MLflow (the one target so far; needs agereg[mlflow]).")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI, e.g. sqlite:///mlflow.db or http://host:5000 "
                   "(default: MLflow's own, MLFLOW_TRACKING_URI).")
@click.option("--experiment", default="agereg", show_default=True,
              help="MLflow experiment to export into (created if missing).")
@click.option("--force", is_flag=True, help="Export again a run exported before.")
@_run_option
def export(run_dir: str | None, runs_dir: str, to_mlflow: bool, tracking_uri: str | None,
           experiment: str, force: bool, run: str | None) -> None:
    """Export RUN_DIR (or --run; default: the latest run) to MLflow: one parent run, one
    child run per configuration with its losses at every recorded epoch count, report.html
    as an artifact."""
    from agereg.export import export_mlflow

    if not to_mlflow:
        raise click.UsageError("give --mlflow (the one export target)")
    res = export_mlflow(_one_run(run_dir, run), Path(runs_dir), tracking_uri, experiment,
                        force)
    err.print(escape(f"exported to MLflow ({res['tracking_uri']}): experiment "
                     f"{res['experiment']!r}, parent run {res['parent_run_id']} with "
                     f"{res['child_runs']} child runs"))


# ---------------------------------------------------------------- predict


@cli.command()
@click.argument("images", type=click.Path(dir_okay=False))
@_run_option
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--trial", default="best", show_default=True,
              help="best (as the run's select rule picks) or a rank K.")
@click.option("--refit", is_flag=True,
              help="Use the trial's model retrained on training + validation rows "
                   "(agereg eval --refit; made first when missing).")
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False),
              help="Write the CSV (or JSON) there instead of stdout; a name ending in .npy "
                   "gets the ages as a float64 .npy array.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of CSV.")
def predict(images: str, run: str | None, runs_dir: str, trial: str, refit: bool,
            out_file: str | None, force: bool, as_json: bool) -> None:
    """Predicted ages for the images in IMAGES (.npy: (N, H, W), (N, D) or one image) with
    the run's best (or --trial K) model; CSV "index,predicted_age" on stdout or --out
    (an .npy array for an --out ending in .npy)."""
    from agereg.fileio import atomic_write_text, save_array
    from agereg.predict import predict_images

    as_npy = out_file is not None and out_file.lower().endswith(".npy")
    if as_npy and as_json:
        raise click.UsageError(f"--json and --out {out_file}: an .npy file holds the ages "
                               "as an array, not JSON; drop --json or give a .json name")
    if out_file is not None and Path(out_file).exists() and not force:
        raise AgeregError(f"{out_file}: exists; agereg never writes over your files: choose "
                          "another --out or pass --force")
    if out_file is not None and not Path(out_file).parent.is_dir():
        raise AgeregError(f"--out {out_file}: the folder {Path(out_file).parent} does not "
                          "exist; create it first")
    p = predict_images(images, run, Path(runs_dir), trial, log=_log, refit=refit)
    if out_file is None:
        _echo(_prediction_text(p, as_json))
    elif as_npy:  # the ages as numpy would have them: float64, shape (N,)
        save_array(Path(out_file), p.ages.astype("float64"))
    else:
        atomic_write_text(Path(out_file), _prediction_text(p, as_json))
    n = len(p.ages)
    err.print(escape(f"{counted(n, 'prediction')} with trial #{p.rank} ({p.trial_id}), "
                     f"model in {p.folder}/" + (f"; wrote {out_file}" if out_file else "")))
    for notice in p.notes:
        err.print(f"[yellow]note[/]: {escape(notice)}")
    if p.trained_now:  # the trial was evaluated first
        _note_old_report(p.run_dir, "does not show this evaluation")


def _prediction_text(p: Prediction, as_json: bool) -> str:
    """``predict``'s output as text: CSV ``index,predicted_age``, or JSON."""
    if as_json:
        return json.dumps({"run": str(p.run_dir), "rank": p.rank, "trial_id": p.trial_id,
                           "model": str(p.folder), "n": len(p.ages), "notes": list(p.notes),
                           "predicted_age": [float(a) for a in p.ages]}, indent=2) + "\n"
    return "index,predicted_age\n" + "".join(f"{i},{a!r}\n" for i, a in
                                              enumerate(p.ages.tolist()))


# ---------------------------------------------------------------- analyze


@cli.command()
@click.argument("run_dir", required=False, type=click.Path())
@click.option("--data", "data_dir", default=None, type=click.Path(file_okay=False),
              help="Dataset folder (uses its split.json, or a new 80/20 split).")
@click.option("--run", "run", default=None, type=click.Path(),
              help="Run folder (default, without --data: the latest run).")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Batch size for the suggested learning-rate range (default: the run's "
                   "selected trial's, else 32).")
@click.option("--draws", default=100, show_default=True, type=click.IntRange(1, 100_000),
              help="Minibatches drawn per batch size to measure the gradient noise.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def analyze(run_dir: str | None, data_dir: str | None, run: str | None, runs_dir: str,
            batch_size: int | None, draws: int, as_json: bool) -> None:
    """How large a batch, how fast a learning rate, for RUN_DIR (or --run; default: the
    latest run) or --data: the Hessian's largest eigenvalue and the stability limit, the
    minibatch gradient noise against batch size, the simple noise scale, a learning-rate
    range, and (for a run) the scaling rules."""
    from agereg.analyze import analyze as run_analysis

    run = _one_run(run_dir, run)
    if data_dir is not None and run is not None:
        raise click.UsageError("give --data or a run, not both")
    res = run_analysis(data_dir, run, Path(runs_dir), batch_size, draws=draws, log=_log)
    if as_json:
        _echo(json.dumps(res, indent=2) + "\n")
    else:
        for line in analysis_lines(res):
            out.print(escape(line))
    if "pictures" in res:  # a run's analysis, written to its folder
        if not as_json:
            err.print(escape(f"wrote analysis.json, {', '.join(res['pictures'])} in the "
                             "run's analysis/ folder"))
        _note_old_report(resolve_run(run, Path(runs_dir)), "does not show this analysis")


# ---------------------------------------------------------------- report


@cli.command()
@click.argument("run_dir", required=False, type=click.Path())
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1),
              help="Rows of the ranked table to print and to put in the report.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON on stdout instead of the tables.")
@_run_option
def report(run_dir: str | None, runs_dir: str, top: int, as_json: bool,
           run: str | None) -> None:
    """Print the ranking (and test metrics, if evaluated) of RUN_DIR (or --run; default:
    the latest run) and write RUN_DIR/report.html, a self-contained page to share."""
    rep = build_report(_one_run(run_dir, run), Path(runs_dir), top)
    if as_json:
        doc = summary_dict(rep.run_dir, rep.ranked, rep.selection, rep.notices, top)
        doc.update(trials_planned=rep.trials_planned,
                   report=None if rep.html_path is None else str(rep.html_path),
                   evaluations=[{"folder": str(e.folder), **e.result} for e in rep.evals],
                   analysis=rep.analysis)
        _echo(json.dumps(doc, indent=2) + "\n")
        _unwritten(rep)
        return
    _print_ranking(rep.ranked, top, rep.selection.by)
    planned = f" of {rep.trials_planned} planned" if rep.trials_planned is not None else ""
    c = rep.counts
    n = len(rep.ranked)
    out.print(escape(f"{counted(n, 'trial')}{planned}: {counts_text(c)}"))
    if said := selection_text(rep.selection):
        out.print(escape(said))
    for notice in rep.notices:
        out.print(f"[yellow]note[/]: {escape(notice)}")
    if rep.analysis is not None:
        for line in rep.analysis:
            out.print(escape(line))
    if not rep.evals:
        out.print(escape(rep.next_step))
    for ev in rep.evals:
        _print_eval(ev.text)
        out.print(escape(f"(files in {ev.folder}/)"))
    if rep.drawn:
        err.print(escape(f"drew {', '.join(rep.drawn)} from the trial log"))
    _unwritten(rep)
    err.print(escape(f"wrote {rep.html_path}"))


def _unwritten(rep: Report) -> None:
    """After the ranking of a run folder that cannot be written: one line, exit 2."""
    if rep.html_path is None:
        raise RunError(f"{rep.run_dir}: cannot write {REPORT_NAME} there (the folder is not "
                       "writable); the ranking above is read from its log; copy the run "
                       "folder somewhere writable for the page")


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map errors to exit codes in this one place."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C must reach us even when started from a shell that ignores SIGINT for
    # background jobs: finished trials are saved and the run can be resumed.
    previous_int = signal.signal(signal.SIGINT, _on_sigint)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args[1:]:  # accepted after the subcommand too
        args.remove("--debug")
        args.insert(0, "--debug")
    try:
        rv = cli.main(args=args, prog_name="agereg", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except AgeregError as exc:
        if _State.debug:  # the traceback, and still the exit code of bad input
            traceback.print_exc()
        err.print(f"[red]error[/]: {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except click.ClickException as exc:
        # one line, like every other bad input (option values are user input too)
        where = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            where = f"; see `{ctx.command_path} --help`"
        err.print(f"[red]error[/]: {escape(exc.format_message().rstrip('.'))}{escape(where)}",
                  soft_wrap=True)
        return exc.exit_code
    except _ReaderGone:
        # nothing more can reach the reader: both streams are pointed at /dev/null, so
        # that no last word and no final flush of the interpreter fails again
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            for stream in (sys.stdout, sys.stderr):
                os.dup2(devnull, stream.fileno())
        return EXIT_SIGPIPE
    except (KeyboardInterrupt, click.Abort, Terminated) as exc:
        code = EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT
        err.print(escape(f"interrupted ({'SIGTERM' if code == EXIT_SIGTERM else 'Ctrl-C'})"
                         f"{_resume_hint()}"))
        return code
    except Exception as exc:
        if _State.debug:
            raise
        err.print("[red]internal error[/]: " + escape(f"{type(exc).__name__}: {exc} "
                  "(rerun with --debug for the traceback and report it)"), soft_wrap=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _resume_hint() -> str:
    run_dir = _Interrupted.run_dir
    if run_dir is None:
        return ""
    command = f"`agereg search --resume {run_dir}`"
    try:
        best = json.loads(read_regular(Path(run_dir) / BEST_NAME, 1 << 20))
        done, planned = int(best["trials_done"]), int(best["trials_planned"])
    except (OSError, ValueError, KeyError, TypeError, NotReadable, RecursionError):
        done, planned = -1, 0  # unknown: say what is true either way
    if done == 0:
        return f"; no trial had finished in {run_dir}/: {command} trains them all"
    saved = f"{done} of {counted(planned, 'trial')}" if done > 0 else "finished trials"
    return (f"; {saved} saved in {run_dir}/ (ranked partial results in results.csv); "
            f"continue with {command}")


class _Interrupted:
    run_dir: str | None = None


def run() -> None:
    """Console-script entry point: exit with :func:`main`'s code. The work is saved by
    then, so a late Ctrl-C while joblib's workers shut down is ignored, not a traceback."""
    # The objects of the imports live as long as the process: the garbage collector
    # need not walk them again and again (here, not in main(), which tests call).
    gc.freeze()
    for stream in (sys.stdout, sys.stderr):
        # a terminal or pipe that cannot show a character (PYTHONIOENCODING=ascii, a
        # legacy code page) gets "?" for it, not an internal error after the work is done
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Likewise spare the interpreter's last collection the walk over every object that
    # matplotlib and the command created (0.08 s, measured); atexit handlers and
    # finalisers still run.
    gc.freeze()
    sys.exit(code)
