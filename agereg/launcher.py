"""The launcher: trains groups in module-level tasks (one group each, or a pair the
batched engine trains together), fanned out with joblib (local processes, threads or a
dask cluster), and streams their records back. It knows nothing of strategies.

The task takes plain, picklable data (a :class:`ArraysRef` naming memory-mappable .npy
files, its :class:`~agereg.plan.Group` objects, their optional starting
:class:`~agereg.batched.State` and the engine settings) and returns a
:class:`GroupOutcome` per group.
Workers memory-map the prepared arrays, so the page cache holds one copy of the data for
every worker on a machine; nothing large travels with a task.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from agereg import interrupts
from agereg.batched import Curves, GroupResult, GroupSpec, State, train_groups
from agereg.data import Dataset
from agereg.engine import Arrays, Fit, train_reference
from agereg.errors import RunError
from agereg.plan import Group, bundles
from agereg.records import Status, TrialKey, TrialRecord
from agereg.split import Split

ARRAY_NAMES = ("X_fit", "y_fit", "X_val", "y_val", "X_te", "y_te")


@dataclass(frozen=True)
class GroupOutcome:
    """A trained group: its records and, if asked for, the parameters after its last
    epoch (columns in the group's order). A batched group of the holdout split also returns
    every trial's parameters, ``weights[i, k]`` (D,) and ``bias[i, k]`` of column ``k`` after
    ``group.epochs[i]`` epochs (NaN where diverged), which the search keeps for ``eval``."""

    group: Group
    records: list[TrialRecord]
    state: State | None = None
    curves: Curves | None = None
    weights: np.ndarray | None = None  # (E, K, D)
    bias: np.ndarray | None = None  # (E, K)


@dataclass(frozen=True)
class ArraysRef:
    """Where the prepared arrays of one precision live: a folder of six .npy files; with
    ``folds`` (K-fold cross-validation), one pool of every training row plus each fold's
    row indices."""

    folder: str
    precision: str
    folds: int = 0


def prepare_arrays(dataset: Dataset, split: Split, precision: str, folder: Path) -> ArraysRef:
    """Write the split's rows, contiguous and in the engine's dtype, for workers to map.
    For K folds: the training files' rows once (the pool) and every fold's indices. A full
    disk (or any OSError) is one line, and the partial folder is removed."""
    try:
        if folder.is_symlink():  # never write through a planted link
            folder.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        return _write_arrays(dataset, split, precision, folder)
    except OSError as exc:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        raise RunError(f"{folder}: cannot write the prepared arrays ({exc.strerror or exc}); "
                       "free some space (they take about the size of the data), then "
                       f"`agereg search --resume {folder.parent}`") from None


def _write_arrays(dataset: Dataset, split: Split, precision: str, folder: Path) -> ArraysRef:
    # y_te last: load_arrays keys its cache on that file
    dtype, f64 = np.dtype(precision), np.dtype(np.float64)
    if split.k:
        _save(folder / "X_fit.npy", dataset.Xtr, None, dtype)
        _save(folder / "y_fit.npy", dataset.ytr, None, f64)
        for i in range(split.k):
            for part, idx in zip(("train", "val"), split.fold(i), strict=True):
                _save(folder / f"fold{i}_{part}.npy", idx, None, idx.dtype)
        _save(folder / "X_te.npy", dataset.Xte, None, dtype)
        _save(folder / "y_te.npy", dataset.yte, None, f64)
        return ArraysRef(str(folder), precision, split.k)
    parts: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]] = [
        ("fit", dataset.Xtr, dataset.ytr, split.train),
        ("val", dataset.Xtr, dataset.ytr, split.val), ("te", dataset.Xte, dataset.yte, None)]
    for name, X, y, rows in parts:
        _save(folder / f"X_{name}.npy", X, rows, dtype)
        _save(folder / f"y_{name}.npy", y, rows, f64)
    return ArraysRef(str(folder), precision)


WRITE_BYTES = 8 * 2**20  # rows converted and written at a time by _save


def _save(path: Path, X: np.ndarray, rows: np.ndarray | None, dtype: np.dtype) -> None:
    """``np.save(path, np.ascontiguousarray(X[rows], dtype=dtype))`` (every row when
    ``rows`` is None; the same bytes, tested), a block of rows at a time through one
    reused buffer: the whole array never exists in this process (138 MB of float64 for
    the homework data, 3.7 GB for the 200,000-row stand-in). Written with ``file.write``,
    so a full disk is an OSError that names its cause (``ndarray.tofile``, which np.save
    uses, reports "3240 requested and 2032 written")."""
    n = len(X) if rows is None else len(rows)
    shape = (n, *X.shape[1:])
    row_bytes = max(1, int(np.prod(shape[1:])) * dtype.itemsize)
    block = max(1, WRITE_BYTES // row_bytes)
    buf = np.empty((min(block, n), *shape[1:]), dtype=dtype)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {
            "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
            "shape": shape})
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            out = buf[: hi - lo]
            out[...] = X[lo:hi] if rows is None else X[rows[lo:hi]]
            f.write(out.data)


def load_arrays(ref: ArraysRef, fold: int | None = None) -> Arrays:
    """Memory-map the prepared arrays (cached per process: one map per worker); for a
    fold, the shared pool with that fold's row indices.

    The files' identity is part of the cache key: a long-lived dask worker must not keep
    serving maps of a ``.work`` folder that a resume has deleted and written again.
    """
    last = Path(ref.folder) / f"{ARRAY_NAMES[-1]}.npy"  # prepare_arrays writes it last
    try:
        st = os.stat(last)
    except OSError as exc:
        raise RunError(
            f"worker on {socket.gethostname()} cannot read {last} ({exc.strerror or exc}); "
            "the run folder must be visible to every worker at the same path: put "
            "--runs-dir on a shared filesystem mounted at the same path on every host"
        ) from None
    arrays = _map_arrays(ref, st.st_dev, st.st_ino, st.st_mtime_ns)
    if fold is None:
        return arrays
    if not 0 <= fold < ref.folds:
        raise RunError(f"fold {fold} is not one of the run's {ref.folds} folds")
    rows = _fold_rows(ref, fold, st.st_dev, st.st_ino, st.st_mtime_ns)
    return dataclasses.replace(arrays, fit_rows=rows[0], val_rows=rows[1])


@functools.lru_cache(maxsize=2)
def _map_arrays(ref: ArraysRef, *identity: int) -> Arrays:
    folder = Path(ref.folder)
    if ref.folds:  # one pool serves as training and validation rows, picked by index
        X, y = (np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("X_fit", "y_fit"))
        X_te, y_te = (np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("X_te", "y_te"))
        return Arrays(X, y, X, y, X_te, y_te)
    return Arrays(*(np.load(folder / f"{n}.npy", mmap_mode="r") for n in ARRAY_NAMES))


@functools.lru_cache(maxsize=16)
def _fold_rows(ref: ArraysRef, fold: int, *identity: int) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(ref.folder)
    return (np.load(folder / f"fold{fold}_train.npy"), np.load(folder / f"fold{fold}_val.npy"))


def in_memory(dataset: Dataset, split: Split, precision: str) -> Arrays:
    """The engine's inputs for a split: X rows in ``precision``, y in float64. For K folds:
    every training row (the folds in order) trains, and stands in as validation rows."""
    dtype = np.dtype(precision)
    if split.k:
        X = np.ascontiguousarray(dataset.Xtr[split.train], dtype=dtype)
        y = np.asarray(dataset.ytr[split.train], dtype=np.float64)
        return Arrays(X, y, X, y, np.ascontiguousarray(dataset.Xte, dtype=dtype),
                      np.asarray(dataset.yte, dtype=np.float64))
    return Arrays(
        np.ascontiguousarray(dataset.Xtr[split.train], dtype=dtype),
        np.asarray(dataset.ytr[split.train], dtype=np.float64),
        np.ascontiguousarray(dataset.Xtr[split.val], dtype=dtype),
        np.asarray(dataset.ytr[split.val], dtype=np.float64),
        np.ascontiguousarray(dataset.Xte, dtype=dtype),
        np.asarray(dataset.yte, dtype=np.float64),
    )


def _record(trial_key: TrialKey, fit: Fit | None, seconds: float, fold: int | None,
            best_epoch: int = 0) -> TrialRecord:
    """A trial's record from its figures (``fit`` None: diverged)."""
    bs, lr, ep, l2, loss = trial_key
    if fit is None:
        return TrialRecord(bs, lr, ep, l2, None, None, None, Status.DIVERGED, seconds,
                           fold=fold, loss=loss)
    tr, va, te = (float(v) for v in fit.losses)

    def num(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    return TrialRecord(bs, lr, ep, l2, tr, va, te, Status.OK, seconds, val_se=num(fit.val_se[0]),
                       fold=fold, train_mae=num(fit.mae[0]), val_mae=num(fit.mae[1]),
                       test_mae=num(fit.mae[2]), val_mae_se=num(fit.val_se[1]),
                       best_epoch=best_epoch or None, loss=loss)


def _progress_writer(path: str | None, total: int) -> Callable[[int], None] | None:
    """A callback that records a group's progress, ``done total``, in a small file that
    the parent polls (worker processes and dask workers cannot call back directly)."""
    if path is None or total <= 0:
        return None
    done = [0]

    def advance(_: int) -> None:
        done[0] += 1
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(f"{done[0]} {total}\n")
            os.replace(tmp, path)
        except OSError:
            pass  # progress is best effort: it never stops a group

    return advance


def read_progress(path: Path) -> float:
    """The fraction of its epochs a group has trained (0 when unknown)."""
    try:
        done, total = (int(x) for x in path.read_text(encoding="ascii").split())
    except (OSError, ValueError):
        return 0.0
    return min(1.0, done / total) if total > 0 else 0.0


def run_groups_on(
    arrays: Arrays, groups: Sequence[Group], seed: int, engine: str,
    starts: Sequence[State | None], keep_state: bool = False, curves: bool = False,
    progress_files: Sequence[str | None] | None = None,
) -> list[GroupOutcome]:
    """Train every trial of ``groups`` (all on the same rows and from the same epoch;
    group ``i`` from ``starts[i]`` if given, else from zero: the numbers are the same),
    the batched engine's groups together (:func:`~agereg.batched.train_groups`). A crash
    becomes ``failed`` records of its group, not an exception. With ``progress_files``,
    the epochs each group has trained are written there after every epoch."""
    files = progress_files or [None] * len(groups)
    t0 = time.perf_counter()
    if engine == "reference":
        outcomes = []
        for g, pf in zip(groups, files, strict=True):
            total = sum(t.epochs for t in g.trials())
            try:
                outcomes.append(GroupOutcome(g, _reference(arrays, g, seed,
                                                           _progress_writer(pf, total))))
            except Exception as exc:  # a failed group is data: keep the search going
                outcomes.append(_failed(g, exc, time.perf_counter() - t0))
            t0 = time.perf_counter()
        return outcomes
    firsts = [0 if st is None else st.epoch for st in starts]
    specs = [
        GroupSpec(g.batch_size, [c[0] for c in g.columns], [c[1] for c in g.columns],
                  g.epochs, st, g.loss, curves, _progress_writer(pf, g.epochs[-1] - first),
                  weights=g.fold is None)  # a fold's parameters are no model to evaluate
        for g, st, pf, first in zip(groups, starts, files, firsts, strict=True)
    ]
    try:
        results: list[GroupResult | Exception] = train_groups(arrays, seed, specs)
    except Exception as exc:
        results = [exc] * len(groups)
    elapsed = time.perf_counter() - t0
    # each group's share of the time, in proportion to its columns times epochs
    work = [len(g.columns) * (g.epochs[-1] - f) for g, f in zip(groups, firsts, strict=True)]
    return [
        _failed(g, res, elapsed * w / sum(work)) if isinstance(res, Exception)
        else _outcome(g, res, elapsed * w / sum(work), first, keep_state)
        for g, res, w, first in zip(groups, results, work, firsts, strict=True)
    ]


def _failed(group: Group, exc: Exception, seconds: float) -> GroupOutcome:
    """A group that raised: every trial ``failed``, with the error as its message."""
    seconds /= max(1, len(group.trials()))
    msg = f"{type(exc).__name__}: {exc}"
    return GroupOutcome(group, [
        TrialRecord(t.batch_size, t.learning_rate, t.epochs, t.l2, None, None, None,
                    Status.FAILED, seconds, msg, fold=group.fold, loss=t.loss)
        for t in group.trials()
    ])  # fmt: skip


def _outcome(group: Group, res: GroupResult, elapsed: float, first: int,
             keep_state: bool) -> GroupOutcome:
    """A trained group's records, from the engine's result and its time."""
    records = []
    top = group.epochs[-1] - first
    assert res.mae is not None and res.val_se is not None and res.best_epoch is not None
    for k, (lr, l2) in enumerate(group.columns):
        for i, ep in enumerate(res.epochs):
            # A column's share of the group's time, in proportion to the epochs it needs.
            seconds = elapsed / len(group.columns) * (ep - first) / top
            fit = None if res.diverged[i, k] else Fit(
                np.empty(0), 0.0, tuple(res.losses[i, k]), False,
                tuple(res.val_se[i, k]), tuple(res.mae[i, k]))
            records.append(_record((group.batch_size, lr, ep, l2, group.loss), fit, seconds,
                                   group.fold, int(res.best_epoch[i, k])))
    return GroupOutcome(group, records, res.state if keep_state else None, res.curves,
                        res.weights, res.bias)


def _reference(arrays: Arrays, group: Group, seed: int,
               on_epoch: Callable[[int], None] | None = None) -> list[TrialRecord]:
    records = []
    for t in group.trials():
        t0 = time.perf_counter()
        fit = train_reference(arrays, seed, t.batch_size, t.learning_rate, t.l2, t.epochs,
                              t.loss, on_epoch)
        records.append(_record(t.key(), None if fit.diverged else fit,
                               time.perf_counter() - t0, group.fold))
    return records


def run_groups(
    ref: ArraysRef, groups: Sequence[Group], seed: int, engine: str,
    starts: Sequence[State | None] | None = None,
    keep_state: bool = False, curves: bool = False,
    progress_files: Sequence[str | None] | None = None,
) -> list[GroupOutcome]:
    """The joblib task: groups of one fold, trained together. One BLAS thread, always: the
    same kernels, so the same numbers, whatever ``n_jobs`` is, and workers x threads never
    exceeds the cores."""
    with threadpool_limits(limits=1, user_api="blas"):
        return run_groups_on(load_arrays(ref, groups[0].fold), groups, seed, engine,
                             starts or [None] * len(groups), keep_state, curves,
                             progress_files)


def _exit_with_parent(parent_pid: int) -> None:
    """loky's initializer of each worker it starts for agereg: exit once agereg is gone.

    Ctrl-C and SIGTERM stop the workers through joblib, but after ``kill -9`` (or the OOM
    killer) loky's workers would idle on as orphans (up to loky's 300 s idle timeout) or,
    holding a result nobody reads, forever. Watching from the worker's start, not from its
    first task, also covers a worker whose parent died before it took one.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)  # the parent died: nobody will read this worker's results

    threading.Thread(target=watch, name="agereg-parent-watch", daemon=True).start()


def effective_jobs(n_jobs: int, n_tasks: int) -> int:
    from joblib import cpu_count

    cores = cpu_count()
    jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    return max(1, min(jobs, n_tasks))


def launch(
    ref: ArraysRef,
    groups: Sequence[Group],
    seed: int,
    engine: str,
    n_jobs: int,
    backend: str = "loky",
    scheduler: str | None = None,
    starts: Sequence[State | None] | None = None,
    keep_state: bool = False,
    curves: bool = False,
    progress_files: Sequence[str | None] | None = None,
) -> Iterator[GroupOutcome]:
    """Yield each group's outcome as soon as its task finishes (in completion order). The
    batched engine trains pairs of groups together where that saves time on this machine's
    workers (:func:`~agereg.plan.bundles`; on a dask cluster every group is its own task);
    a pair's outcomes come together, with the same numbers.
    ``starts[i]`` is the state group ``i`` continues from (None: from zero);
    ``progress_files[i]`` where group ``i`` records its epochs (see :func:`read_progress`)."""
    from joblib import Parallel, delayed

    if not groups:
        return
    starts = starts or [None] * len(groups)
    files = progress_files or [None] * len(groups)
    tasks = plan_tasks(ref, groups, [0 if st is None else st.epoch for st in starts],
                       engine, n_jobs, backend)
    jobs = effective_jobs(n_jobs, len(tasks))
    _install_quiet_abort_hook()
    # Workers need not share our working directory (dask workers do not).
    ref = ArraysRef(os.path.abspath(ref.folder), ref.precision, ref.folds)
    with threadpool_limits(limits=1, user_api="blas"), _backend(backend, jobs, scheduler, ref), \
            warnings.catch_warnings():
        # loky (with psutil installed) restarts a worker whose memory grew by 300 MB, and
        # counts the pages of our memory-mapped arrays as growth; the restart is harmless
        # (the page cache stays), its warning is noise.
        warnings.filterwarnings("ignore", message="A worker stopped while some jobs")
        # when an error (a full disk, on_error: stop) stops the search, joblib says that
        # the tasks still running were cancelled: the error's own line says what happened
        warnings.filterwarnings("ignore", message=r"\d+ tasks (have been successfully "
                                r"executed|which were still being processed)")
        parallel = Parallel(return_as="generator_unordered", pre_dispatch="all")
        results = parallel(
            delayed(run_groups)(ref, [groups[i] for i in t], seed, engine,
                                [starts[i] for i in t], keep_state, curves,
                                [files[i] for i in t])
            for t in tasks)
        try:
            # not `yield from`: the interrupt must be noted before joblib starts aborting
            for outcomes in results:
                # a task's finished groups first: on_error stop must not drop them
                yield from sorted(outcomes, key=lambda o: any(
                    r.status is Status.FAILED for r in o.records))
        except BaseException:  # GeneratorExit, KeyboardInterrupt, a failed append...
            note_interrupt()
            # joblib terminates the workers now; a second Ctrl-C waits until they are
            # gone (see _stop_local_workers)
            with interrupts.shielded():
                workers = _local_workers()  # the ones that ran this search's tasks
                results.close()
                _stop_local_workers(workers)
            raise


def _local_workers() -> list[Any]:
    """This process's loky worker processes, alive now."""
    import multiprocessing

    from joblib.externals.loky.backend.process import LokyProcess

    return [p for p in multiprocessing.active_children() if isinstance(p, LokyProcess)]


def _stop_local_workers(workers: Sequence[Any]) -> None:
    """Kill what is left of ``workers``, this search's loky workers, after joblib's abort.

    loky kills its workers one by one from its manager thread. Without psutil it first
    lists a worker's children with ``pgrep``, which a Ctrl-C sent to the whole process
    group (a second Ctrl-C, or ``timeout``'s signal) can kill; its fallback then calls a
    method its own Popen lacks, the manager thread dies, and the workers not yet killed
    idle on, so Python's exit waited for them forever (about 1 `timeout -s INT` in 6
    near the end of the homework grid's tasks hung). Every worker is idle or aborted by
    now and no result is wanted: SIGKILL them all (a dead one is skipped).

    Not while loky's manager thread still runs: then loky has its workers in hand, and
    when joblib did not abort (every task had finished) it keeps them for the next
    search in this process, whose executor they would break (TerminatedWorkerError).
    Workers joblib started during the abort are not in ``workers``."""
    if any(t.name == "ExecutorManagerThread" and t.is_alive() for t in threading.enumerate()):
        return
    for p in workers:
        if p.is_alive():
            with suppress(OSError, AttributeError, ValueError):
                os.kill(p.pid, signal.SIGKILL)
                p.join(timeout=5)


def plan_tasks(ref: ArraysRef, groups: Sequence[Group], firsts: Sequence[int], engine: str,
               n_jobs: int, backend: str) -> list[tuple[int, ...]]:
    """The tasks :func:`launch` sends: indices into ``groups`` (``firsts[i]``: the epoch
    group ``i`` starts from). The batched engine's groups go in the pairs
    :func:`~agereg.plan.bundles` makes for this machine's workers; with the reference
    engine, or on a dask cluster (whose workers come and go), every group alone."""
    if engine != "batched" or backend == "dask":
        return [(i,) for i in range(len(groups))]
    X = load_arrays(ref).X_fit
    return bundles(groups, firsts, effective_jobs(n_jobs, len(groups)),
                   X.shape[1] * X.dtype.itemsize)


def _backend(backend: str, jobs: int, scheduler: str | None, ref: ArraysRef
             ) -> AbstractContextManager:
    """joblib's engine: local processes or threads, or the dask cluster at ``scheduler``."""
    if backend == "dask":
        from agereg.cluster import dask_backend

        return dask_backend(str(scheduler), Path(ref.folder).parent)  # <run>/.work
    from joblib import parallel_config

    if backend == "loky":  # processes started here, which must not outlive agereg
        return parallel_config(backend=backend, n_jobs=jobs, inner_max_num_threads=1,
                               initializer=_exit_with_parent, initargs=(os.getpid(),))
    return parallel_config(backend=backend, n_jobs=jobs)


# When a search is interrupted, joblib tears its process pool down while loky's manager
# thread may still be queueing work; that thread can then die with a harmless KeyError
# that Python prints as a traceback. The finished trials are saved by then, so such
# reports from loky's own threads are dropped once an interrupt has been noted.
_ABORTING = threading.Event()
_LOKY_THREADS = ("ExecutorManagerThread", "QueueFeederThread", "QueueManagerThread")


def note_interrupt() -> None:
    """Mark the search as being torn down (called on Ctrl-C, SIGTERM and errors)."""
    _ABORTING.set()


def _install_quiet_abort_hook() -> None:
    previous = threading.excepthook
    if getattr(previous, "_agereg", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else ""
        if _ABORTING.is_set() and name.startswith(_LOKY_THREADS):
            return
        previous(args)

    hook._agereg = True  # type: ignore[attr-defined]
    threading.excepthook = hook
    # loky's warning (with a traceback) when pgrep is killed mid-abort: the workers are
    # stopped all the same (_stop_local_workers)
    warnings.filterwarnings("ignore", message="Failed to kill subprocesses")
