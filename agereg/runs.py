"""The run folder: layout, the append-only trial log, summaries, locking and resume.

Layout of ``runs/<YYYYmmdd-HHMMSS>-<name>/``::

    config.yaml    the resolved config, written before any training
    dataset.json   what data the run used (path, shapes, sha256s, kind)
    split.json     the exact train/validation split used
    run.json       status (running / interrupted / finished), counts, versions
    plan.jsonl     the groups each stage of the strategy trained, appended before training
    trials.jsonl   append-only log: one JSON line per finished trial, fsynced per group
    folds.jsonl    K-fold runs: the append-only log of each fold of each trial
    curves.csv     learning curves: one row per (column, fold, epoch), appended per group
    results.csv    every trial, ranked by validation loss (rebuilt from the log)
    best.json      the best finished trial (rebuilt from the log)
    params/<id>.npz  the parameters each group trained (see agereg.params), for eval
    evals/<trial_id>[-refit]/   one folder per evaluation (eval.json, weights, pictures)
    .lock          held (flock) by the process writing the run

``runs/latest`` is a symbolic link to the newest created run folder (a one-line text file
naming it where links are not possible).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import errno
import io
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from agereg import __version__, interrupts
from agereg.batched import Curves
from agereg.config import LOSSES, MAX_SEED, Config, config_digest, load_config
from agereg.errors import ConfigError, RunError
from agereg.fileio import (
    KiB,
    MiB,
    NotReadable,
    append_durable,
    atomic_write_text,
    make_folder,
    open_no_follow,
    read_regular,
)
from agereg.plan import Group
from agereg.records import (
    Config3,
    RunSummary,
    Selection,
    Status,
    TrialRecord,
    rank,
    score,
    status_counts,
)
from agereg.words import counted

LOG_NAME = "trials.jsonl"
FOLD_LOG_NAME = "folds.jsonl"
CURVES_NAME = "curves.csv"
CURVE_COLUMNS = ("batch_size", "learning_rate", "l2", "loss", "fold", "epoch",
                 "train_running", "val_fmse", "val_mae")
PLAN_NAME = "plan.jsonl"
CONFIG_NAME = "config.yaml"
RUN_NAME = "run.json"
DATASET_NAME = "dataset.json"
BEST_NAME = "best.json"
LATEST_NAME = "latest"
EVALS_DIR = "evals"
EVAL_NAME = "eval.json"
CSV_COLUMNS = (
    "rank", "batch_size", "learning_rate", "epochs", "l2",
    "train_loss", "val_loss", "test_loss", "status", "seconds", "trial_id", "loss",
    "train_mae", "val_mae", "test_mae", "train_rmse", "val_rmse", "test_rmse",
    "val_se", "val_mae_se", "val_sd", "best_epoch",
)  # fmt: skip


def create_run_dir(runs_dir: Path, name: str) -> Path:
    """Make a new, unique run folder. ``mkdir`` is atomic, so two searches started in
    the same second still get different folders."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for i in range(1, 1000):
            path = runs_dir / (f"{stamp}-{name}" if i == 1 else f"{stamp}-{name}-{i}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise RunError(f"{runs_dir}: cannot create a run folder ({exc.strerror or exc}); "
                       "choose another place with --runs-dir") from None
    raise RunError(f"{runs_dir}: too many runs named {name!r} this second")


LOCK_TRIES = 20  # RunLock tries this many times, 10 ms apart, before naming the holder


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock``; the kernel drops it if the process dies.

    ``read_only_ok``: a command that may only read the run (``predict``, ``eval`` showing
    a stored evaluation) works on a run folder it cannot write (a read-only mount, another
    user's run) under a shared flock instead, which a search's exclusive one still
    refuses; without a lock file no search can be writing it."""

    def __init__(self, run_dir: Path, read_only_ok: bool = False) -> None:
        self.path = run_dir / ".lock"
        self.read_only_ok = read_only_ok
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        try:  # never through a planted link: the PID would overwrite the link's target
            fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunError(f"{self.path}: is a symbolic link; agereg never follows links "
                               "in a run folder: remove it") from None
            if self.read_only_ok and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return self._shared()
            raise RunError(f"{self.path.parent}: cannot lock the run folder "
                           f"({exc.strerror or exc}); check permissions") from None
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # `agereg runs` holds a shared lock for a moment to see whether a search
                # is alive: wait that out; a real holder holds on for its whole command
                if attempt < LOCK_TRIES - 1:
                    time.sleep(0.01)
                    continue
                raise self._busy(fd) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def _shared(self) -> RunLock:
        """A shared flock on a lock file this process cannot write (none if there is no
        such file: then no search ever locked the run here)."""
        import fcntl

        try:
            fd = open_no_follow(self.path, os.O_RDONLY)
        except OSError:
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy(fd) from None
        except OSError:  # a filesystem without flock: nothing to wait for
            os.close(fd)
            return self
        self._fd = fd
        return self

    def _busy(self, fd: int) -> RunError:
        """The error for a lock another process holds (its PID is in the file); closes
        ``fd``."""
        other = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        return RunError(f"{self.path.parent}: another agereg process (pid {other}) is "
                        "writing this run; wait for it or stop it first")

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def lock_held(run_dir: Path) -> bool:
    """Whether the run's :class:`RunLock` is held (an exclusive flock the kernel drops when
    its process dies; held by this process too counts): tried with a shared flock,
    released at once (RunLock waits such a moment out); nothing is written."""
    import fcntl

    try:
        fd = open_no_follow(run_dir / ".lock", os.O_RDONLY)
    except OSError:
        return False  # no lock file (or a planted link): no agereg process holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)


def run_status(run_dir: Path, info: dict, locked: bool = False) -> str | None:
    """run.json's ``status`` (None when it is not text), but ``killed`` for a run still
    ``running`` whose lock no process holds: its search died without a word. ``locked``:
    the caller holds the lock itself, so no search can."""
    status = info.get("status")
    if not isinstance(status, str):
        return None
    if status == "running" and (locked or not lock_held(run_dir)):
        return "killed"
    return status


# How a sentence says that a search with this run_status stopped before it finished
STOPPED = {"interrupted": "was interrupted", "killed": "was killed",
           "failed": "ended with failed trials"}


def json_safe(v: object) -> object:
    """``v`` with every non-finite float, at any depth, replaced by None (JSON has no
    NaN); tuples become lists."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


JSON_LIMIT = 64 * MiB  # run.json, best.json, eval.json, dataset.json, split.json
LOG_LIMIT = 1 << 31  # trials.jsonl, folds.jsonl, plan.jsonl, curves.csv: 2 GiB
# The most rows of learning curves a search may plan (one per column, fold and epoch): at the
# 80-110 bytes of a row, curves.csv stays under LOG_LIMIT.
CURVE_ROWS = 20_000_000


def read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(read_regular(path, JSON_LIMIT).decode("utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: missing; {what}") from None
    except NotReadable as exc:
        raise RunError(f"{path}: {exc}; {what}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RunError(f"{path}: unreadable ({one_line(str(exc))}); {what}") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path}: not a JSON object; {what}")
    return obj


def write_run_info(run_dir: Path, status: str, **extra: object) -> None:
    info = {
        "agereg_version": __version__,
        "status": status,
        "updated": dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "command": " ".join(["agereg", *sys.argv[1:]]),
        **extra,
    }
    write_json(run_dir / RUN_NAME, info)


def stored_lr_limit(info: dict[str, object]) -> float | None:
    """The full-batch stability limit the search measured, from its run.json: None for a
    run made before it was kept, or a value that is not a positive number (it only caps
    the learning rates the edge notices suggest, so nothing else depends on it)."""
    value = info.get("lr_limit")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value) and value > 0:
        return float(value)
    return None


def set_latest(runs_dir: Path, run_dir: Path) -> None:
    """Point ``runs/latest`` at a newly created run: a relative symbolic link (so that
    ``cd runs/latest`` works), replaced atomically; a one-line text file naming the
    folder where the filesystem has no links."""
    link = runs_dir / LATEST_NAME
    tmp = runs_dir / f".latest-{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        atomic_write_text(link, run_dir.name + "\n")


def resolve_run(run: str | os.PathLike | None, runs_dir: Path) -> Path:
    """The run folder named by the user, or the latest one; checked to be an agereg run."""
    given = None if run is None or str(run) == LATEST_NAME else Path(run)
    if given is None or (given.name == LATEST_NAME and (given.is_symlink() or given.is_file())):
        # the latest run of runs_dir, or of the runs folder whose pointer was given
        # (runs/latest): named by the folder it points to, which stays that run
        latest = runs_dir / LATEST_NAME if given is None else given
        runs_dir = latest.parent
        try:
            if latest.is_symlink():
                name = os.readlink(latest)
            else:
                name = read_regular(latest, 4 * KiB).decode("utf-8").strip()
        except FileNotFoundError:
            raise _no_latest(latest) from None
        except (OSError, NotReadable, UnicodeDecodeError):
            name = ""
        if not name or "/" in name or name in (".", "..") or "\x00" in name:
            raise RunError(f"{latest}: does not name a run folder (it should hold one folder "
                           f"name of {runs_dir}); delete it and name the run folder") from None
        path = runs_dir / name
    else:
        path = given
    if path.exists() and not path.is_dir():
        config = path.suffix in (".yaml", ".yml")
        raise RunError(f"{path}: a {'config ' * config}file, not a run folder; `agereg runs` "
                       "lists the run folders" + (
                           " (--resume and --extend take one, after the config: `agereg "
                           "search CONFIG --resume RUN`)" if config else ""))
    if not path.is_dir():
        raise RunError(f"{path}: run folder not found; `agereg runs` lists the run folders")
    for name in (CONFIG_NAME, RUN_NAME):
        if (path / name).exists() and not (path / name).is_file():
            raise RunError(f"{path / name}: not a regular file (a FIFO, device or folder); "
                           "this run folder is damaged")
    if not (path / CONFIG_NAME).is_file() or not (path / RUN_NAME).is_file():
        raise RunError(f"{path}: not an agereg run folder (no {CONFIG_NAME} / {RUN_NAME}); "
                       "name a folder that `agereg search` wrote")
    return path


def _no_latest(latest: Path) -> RunError:
    """The error for a missing ``runs/latest``: no runs yet, or (the pointer deleted, or
    lost in a copy that dropped links) the run folders there, the newest named."""
    try:
        held = sorted(p.name for p in latest.parent.iterdir() if p.is_dir()
                      and (p / CONFIG_NAME).is_file() and (p / RUN_NAME).is_file())
    except OSError:
        held = []
    if not held:
        return RunError(f"{latest}: no runs yet; start one with `agereg search CONFIG` or "
                        "name the run folder")
    return RunError(f"{latest}: missing, but {latest.parent} holds {counted(len(held), 'run')}"
                    f" (the newest: {latest.parent / held[-1]}); name the run folder "
                    "(`agereg runs` lists them)")


def stored_config(run_dir: Path) -> Config:
    """The run's resolved config, validated like any config, and checked against the
    digest run.json recorded when the run started (runs made before it was recorded are
    not checked): the logged trials were trained with that config, not an edited one."""
    path = run_dir / CONFIG_NAME
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise RunError(f"{run_dir}: its {CONFIG_NAME} is not valid ({exc}); "
                       "this run cannot be resumed, start a new one") from None
    recorded = read_json(run_dir / RUN_NAME, "this run folder is damaged").get("config_digest")
    if recorded is not None and recorded != config_digest(cfg):
        raise RunError(f"{path}: changed since the run started, in what sets its numbers "
                       "(grid, search, seed, split, select_by, engine or precision), "
                       "and its trials were trained with the original: restore it (a new "
                       "config needs a new search)")
    return cfg


# ---------------------------------------------------------------- trial log


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else v


def record_to_dict(rec: TrialRecord) -> dict:
    """A trial as the log stores it (``origin``, ``fold``, ``val_sd`` and ``folds`` only
    when set)."""
    d = {"trial_id": rec.trial_id, **asdict(rec), "status": rec.status.value}
    for k in ("train_loss", "val_loss", "test_loss", "val_se", "val_sd", "train_mae",
              "val_mae", "test_mae", "val_mae_se"):
        d[k] = _num(d[k])
    if rec.folds is not None:
        d["folds"] = [[_num(v) for v in f] for f in rec.folds]
    for k in ("origin", "fold", "val_sd", "folds", "train_mae", "val_mae", "test_mae",
              "val_mae_se", "best_epoch"):
        if d[k] is None:
            del d[k]
    if rec.loss == "squared":
        del d["loss"]  # the default, and what every log before the loss axis means
    return d


def record_to_json(rec: TrialRecord) -> str:
    return json.dumps(record_to_dict(rec), allow_nan=False)


def append_records(run_dir: Path, records: Iterable[TrialRecord]) -> None:
    """Append finished trials to the log; durable (fsynced) when this returns."""
    text = "".join(record_to_json(r) + "\n" for r in records)
    if text:
        append_durable(run_dir / LOG_NAME, text)


def _parse_record(line: str) -> TrialRecord:
    d = json.loads(line)
    if not isinstance(d, dict):
        raise ValueError("not an object")
    stored_id = d.pop("trial_id", None)
    rec = TrialRecord(**d)
    for count in (rec.batch_size, rec.epochs):  # as a config allows: 1 ... 2^63 - 1
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SEED:
            raise ValueError("batch_size and epochs must be positive 64-bit integers")
    for value in (rec.learning_rate, rec.l2, rec.seconds):
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value) or value < 0:
            raise ValueError("learning_rate, l2 and seconds must be finite numbers >= 0")

    def num(v: object) -> float | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError("not a finite number")
        return float(v)

    folds = None
    if rec.folds is not None:
        if not isinstance(rec.folds, list) or not all(
                isinstance(f, list) and len(f) == 3 for f in rec.folds):
            raise ValueError("folds must be a list of [train, val, test]")
        folds = tuple((num(a), num(b), num(c)) for a, b, c in rec.folds)
    for optional in (rec.fold, rec.best_epoch):
        if optional is not None and (not isinstance(optional, int)
                                     or isinstance(optional, bool) or optional < 0):
            raise ValueError("fold and best_epoch must be integers >= 0")
    for text in (rec.error, rec.origin):
        if text is not None and not isinstance(text, str):
            raise ValueError("error and origin must be strings")
    _loss(rec.loss)
    out = TrialRecord(
        rec.batch_size, float(rec.learning_rate), rec.epochs, float(rec.l2),
        num(rec.train_loss), num(rec.val_loss), num(rec.test_loss),
        Status(rec.status), float(rec.seconds), rec.error, rec.origin,
        num(rec.val_se), rec.fold, num(rec.val_sd), folds, num(rec.train_mae),
        num(rec.val_mae), num(rec.test_mae), num(rec.val_mae_se), rec.best_epoch, rec.loss,
    )  # fmt: skip
    if stored_id is not None and stored_id != out.trial_id:
        raise ValueError("trial_id does not match the hyperparameters")
    return out


def _read_lines(path: Path, repair: bool) -> list[bytes]:
    """The complete lines of an append-only file (none if it does not exist). Bytes after
    the last newline are a torn write (the process died mid-write): they are ignored and,
    with ``repair``, cut off so that appends start on a fresh line."""
    try:
        data = read_regular(path, LOG_LIMIT)
    except FileNotFoundError:
        return []
    except NotReadable as exc:
        raise RunError(f"{path}: {exc}; this run folder is damaged") from None
    except OSError as exc:
        raise RunError(f"{path}: cannot read ({exc.strerror or exc})") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    if tail and repair:
        try:
            fd = open_no_follow(path, os.O_RDWR)
            with os.fdopen(fd, "r+b") as f:
                f.truncate(sum(len(x) + 1 for x in lines))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise RunError(f"{path}: cannot repair the torn last line "
                           f"({exc.strerror or exc})") from None
    return lines


def read_log(run_dir: Path, repair: bool = False, name: str = LOG_NAME) -> list[TrialRecord]:
    """Read the trial log (or, with ``name=FOLD_LOG_NAME``, the fold log). Every record is
    written as whole lines ending in a newline, so bytes after the last newline are a torn
    write (the process died mid-write): they are ignored and, with ``repair``, cut off so
    that appends start on a fresh line. Any other bad line is an error. A later line for
    the same trial (and fold) supersedes an earlier one."""
    path = run_dir / name
    lines = _read_lines(path, repair)
    records: dict[tuple, TrialRecord] = {}
    for i, raw in enumerate(lines, 1):
        try:
            rec = _parse_record(raw.decode("utf-8"))
        except (ValueError, TypeError, UnicodeDecodeError, OverflowError):
            raise RunError(f"{path}:{i}: corrupt trial record; the log was edited or "
                           "damaged, start a new run") from None
        records[(rec.key(), rec.fold)] = rec
    return list(records.values())


def append_fold_records(run_dir: Path, records: Iterable[TrialRecord]) -> None:
    """Append finished folds to the fold log; durable when this returns."""
    text = "".join(record_to_json(r) + "\n" for r in records)
    if text:
        append_durable(run_dir / FOLD_LOG_NAME, text)


# ---------------------------------------------------------------- ranking and summaries


def _fmt(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def _rmse(fmse: float | None) -> str:
    """RMSE in years from the fMSE: sqrt(2 fMSE)."""
    return "" if fmse is None else repr(math.sqrt(2 * fmse))


def results_csv(ranked: list[TrialRecord]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for i, r in enumerate(ranked, 1):
        w.writerow([
            i, r.batch_size, repr(r.learning_rate), r.epochs, repr(r.l2),
            _fmt(r.train_loss), _fmt(r.val_loss), _fmt(r.test_loss), r.status.value,
            f"{r.seconds:.4f}", r.trial_id, r.loss,
            _fmt(r.train_mae), _fmt(r.val_mae), _fmt(r.test_mae), _rmse(r.train_loss),
            _rmse(r.val_loss), _rmse(r.test_loss),
            _fmt(r.val_se), _fmt(r.val_mae_se), _fmt(r.val_sd),
            "" if r.best_epoch is None else r.best_epoch,
        ])  # fmt: skip
    return buf.getvalue()


def write_summaries(
    run_dir: Path, records: Iterable[TrialRecord], n_planned: int,
    notices: tuple[str, ...] = (), rule: str = "best", by: str = "fmse",
) -> RunSummary:
    """(Re)write results.csv and best.json from records, ranked by validation fMSE or MAE
    (``by``); returns the summary. best.json's ``best`` is the trial the rule picks."""
    summary = RunSummary(rank(list(records), by), n_planned, notices, rule, by)
    atomic_write_text(run_dir / "results.csv", results_csv(summary.ranked))
    sel = summary.selection
    write_json(run_dir / BEST_NAME, {
        "best": None if sel.trial is None else {**record_to_dict(sel.trial), "rank": sel.rank},
        "selection": selection_dict(sel),
        "trials_done": len(summary.ranked),
        "trials_planned": n_planned,
        "counts": status_counts(summary.ranked),
        "notices": list(notices),
    })  # fmt: skip
    return summary


def selection_dict(sel: Selection) -> dict:
    """How the best trial was chosen, as best.json states it."""
    from agereg.records import REGULARISATION_ORDER

    d: dict = {"rule": sel.rule, "by": sel.by, "rank": sel.rank}
    if sel.rule == "one_se":
        d.update({
            "lowest": None if sel.lowest is None else _num(score(sel.lowest, sel.by)),
            "standard_error": _num(sel.se), "threshold": _num(sel.threshold),
            "n_within": sel.n_within, "order": REGULARISATION_ORDER, "note": sel.note,
        })  # fmt: skip
    return d


# ---------------------------------------------------------------- the stored plan


def _group_to_dict(g: Group) -> dict:
    d = {"index": g.index, "batch_size": g.batch_size, "columns": [list(c) for c in g.columns],
         "epochs": list(g.epochs), "start_epoch": g.start_epoch}
    if g.fold is not None:
        d["fold"] = g.fold
    if g.loss != "squared":
        d["loss"] = g.loss
    return d


def append_plan(run_dir: Path, stage: str, groups: list[Group]) -> None:
    """Record the groups of a stage before they train; durable when this returns."""
    line = json.dumps({"stage": stage, "groups": [_group_to_dict(g) for g in groups]},
                      allow_nan=False)
    append_durable(run_dir / PLAN_NAME, line + "\n")


def read_plan(run_dir: Path, repair: bool = False) -> dict[str, list[Group]]:
    """The stored plan: each stage's groups, as they were trained. A torn last line (a
    kill in mid-write) is ignored, and cut off with ``repair``: that stage had not started."""
    path = run_dir / PLAN_NAME
    plan: dict[str, list[Group]] = {}
    for i, raw in enumerate(_read_lines(path, repair), 1):
        try:
            d = json.loads(raw.decode("utf-8"))
            groups = [
                Group(int(g["index"]), _int(g["batch_size"]),
                      tuple((float(a), float(b)) for a, b in g["columns"]),
                      tuple(_int(e) for e in g["epochs"]), _int(g["start_epoch"]),
                      None if g.get("fold") is None else _int(g["fold"]),
                      _loss(g.get("loss", "squared")))
                for g in d["groups"]
            ]
            plan[str(d["stage"])] = groups
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            raise RunError(f"{path}:{i}: corrupt plan record; the file was edited or "
                           "damaged, start a new run") from None
    return plan


def _loss(v: object) -> str:
    if v not in LOSSES:
        raise ValueError("unknown loss")
    return str(v)


def _int(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError("not an integer")
    return v


# ---------------------------------------------------------------- evaluations


def eval_folder(run_dir: Path, trial_id: str, refit: bool) -> Path:
    """Where the evaluation of a trial lives: ``evals/<trial_id>`` (the search's model)
    or ``evals/<trial_id>-refit`` (refit on more rows)."""
    return run_dir / EVALS_DIR / (f"{trial_id}-refit" if refit else trial_id)


def evaluations(run_dir: Path) -> list[Path]:
    """The evaluation folders of a run that hold an eval.json, by name. A folder being
    written (``.staging-*``) or left by an interrupted eval is not one."""
    root = run_dir / EVALS_DIR
    try:
        names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RunError(f"{root}: cannot list ({exc.strerror or exc})") from None
    return [root / n for n in names if (root / n / EVAL_NAME).is_file()]


class EvalStaging:
    """Write an evaluation into ``evals/.staging-<name>-<pid>`` and move it into place
    only when complete, so an interrupted eval leaves nothing that a report would show,
    and one trial's evaluation never mixes with another's files. Call within the run's
    :class:`RunLock` (the lock makes every leftover staging folder stale)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.parent / f".staging-{target.name}-{os.getpid()}"

    def __enter__(self) -> Path:
        make_folder(self.target.parent)
        try:
            for old in self.target.parent.glob(".staging-*"):
                shutil.rmtree(old, ignore_errors=True)  # an interrupted eval's leftovers
            self.path.mkdir()
        except OSError as exc:
            raise RunError(f"{self.target.parent}: cannot create the evaluation folder "
                           f"({exc.strerror or exc}); check free space and permissions") from None
        return self.path

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        old = self.target.parent / f".staging-old-{self.target.name}-{os.getpid()}"
        with interrupts.shielded():  # a Ctrl-C now waits until one evaluation is in place
            try:
                if self.target.exists():  # --force: swap the new one in, then drop the old
                    os.rename(self.target, old)
                os.rename(self.path, self.target)
            except OSError as exc:
                raise RunError(f"{self.target}: cannot move the evaluation into place "
                               f"({exc.strerror or exc})") from None
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- learning curves

CurveKey = tuple[int, float, float, str, int | None]  # (batch_size, lr, l2, loss, fold)
CurvePoint = tuple[float | None, float | None, float | None]  # train_running, val_fmse, val_mae


def curve_points(group: Group, curves: Curves) -> dict[CurveKey, dict[int, CurvePoint]]:
    """A group's learning curves by column and fold, as :func:`append_curve_points` takes
    them (the points of diverged epochs are left out)."""
    return {
        (group.batch_size, float(lr), float(l2), group.loss, group.fold): {
            int(epoch): (float(curves.train[t, k]), float(curves.val_fmse[t, k]),
                         float(curves.val_mae[t, k]))
            for t, epoch in enumerate(curves.epochs) if math.isfinite(curves.val_fmse[t, k])}
        for k, (lr, l2) in enumerate(group.columns)}


def append_curve_points(run_dir: Path, curves: dict[CurveKey, dict[int, CurvePoint]]
                        ) -> None:
    """Append learning-curve points, by column and fold as :func:`read_curves` gives them
    (a group's, or an extended run's for its reused trials), each column's by epoch;
    durable when this returns. The header is written with the first rows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    path = run_dir / CURVES_NAME
    if not path.exists():
        w.writerow(CURVE_COLUMNS)
    for (bs, lr, l2, loss, fold), points in curves.items():
        for epoch, (tr, vf, va) in sorted(points.items()):
            w.writerow([bs, repr(float(lr)), repr(float(l2)), loss,
                        "" if fold is None else fold, epoch, _fmt(tr), _fmt(vf), _fmt(va)])
    append_durable(path, buf.getvalue())


def read_curves(run_dir: Path, repair: bool = False) -> dict[CurveKey, dict[int, CurvePoint]]:
    """The learning curves of a run by column and fold (none if it has no curves.csv);
    a later row for the same column, fold and epoch supersedes an earlier one. A torn
    last row (a kill mid-write) is ignored and, with ``repair``, cut off."""
    path = run_dir / CURVES_NAME
    lines = _read_lines(path, repair)
    out: dict[CurveKey, dict[int, CurvePoint]] = {}
    if not lines:
        return out
    if lines[0].decode("utf-8", "replace") != ",".join(CURVE_COLUMNS):
        raise RunError(f"{path}: not an agereg curves file (its header differs); delete it, "
                       "the trials are unaffected")
    for i, raw in enumerate(lines[1:], 2):
        try:
            bs, lr, l2, loss, fold, epoch, tr, vf, va = raw.decode("utf-8").split(",")
            if loss not in LOSSES:
                raise ValueError("unknown loss")
            key = (_int(int(bs)), _finite(lr), _finite(l2), loss,
                   None if fold == "" else int(fold))
            out.setdefault(key, {})[_int(int(epoch))] = (
                _opt(tr), _opt(vf), _opt(va))
        except (ValueError, UnicodeDecodeError):
            raise RunError(f"{path}:{i}: corrupt curve row; delete the file (the trials are "
                           "unaffected) or start a new run") from None
    return out


def mean_curve(curves: dict[CurveKey, dict[int, CurvePoint]], column: Config3,
               folds: Sequence[int | None] | None = None) -> dict[int, float]:
    """Validation fMSE by epoch of a column, the mean over its folds (``math.fsum / K``),
    at the epochs every fold recorded. With ``folds``, exactly those folds count: any of
    them without a curve gives nothing."""
    if folds is None:
        per_fold = [pts for key, pts in curves.items() if key[:4] == column]
    else:
        found = [curves.get((*column, f)) for f in folds]
        if any(p is None for p in found):
            return {}
        per_fold = [p for p in found if p is not None]
    if not per_fold:
        return {}
    out = {}
    for e in set.intersection(*(set(p) for p in per_fold)):
        vals = [p[e][1] for p in per_fold]
        if all(v is not None for v in vals):
            out[e] = math.fsum(vals) / len(vals)  # type: ignore[arg-type]
    return out


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError("not finite")
    return v


def _opt(text: str) -> float | None:
    return None if text == "" else _finite(text)


def one_line(text: str) -> str:
    """``text`` on one line, at most 200 characters (a message quoting a file must not
    flood the terminal)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= 200 else flat[:197] + "..."
