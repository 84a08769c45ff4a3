"""``agereg export RUN --mlflow``: a finished run into MLflow, through MLflow's own API
(never by writing its folder layout). An optional extra: ``pip install 'agereg[mlflow]'``.

One parent run for the agereg run (the config as parameters, the selected trial's
figures as metrics, the status and counts as tags, report.html as an artifact) and one
child run per configuration (batch size, learning rate, l2, loss): its parameters, its
train/validation/test fMSE and validation MAE at every recorded epoch count (the MLflow
step is the epoch count), the validation learning curve when the run recorded one, and
the status at each epoch count as tags.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from agereg.config import flat_config
from agereg.errors import RunError
from agereg.records import Config3, TrialRecord, rank, select, status_counts
from agereg.runs import RunLock, read_curves, read_log, resolve_run, stored_config
from agereg.words import counted

TAG = "agereg.run"  # on the parent: the run folder it was exported from


def export_mlflow(run: str | Path | None, runs_dir: Path, tracking_uri: str | None,
                  experiment: str = "agereg", force: bool = False) -> dict[str, Any]:
    """Export a run; returns what was created (experiment id, parent run id, children)."""
    try:
        import mlflow
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise RunError("MLflow is not installed: pip install 'agereg[mlflow]' (or "
                       "mlflow-skinny), then export again") from None
    from agereg.report import build_report

    run_dir = resolve_run(run, runs_dir)
    cfg = stored_config(run_dir)
    with RunLock(run_dir):  # a search still writing it: one line, as for eval
        records = read_log(run_dir)
    if not records:
        raise RunError(f"{run_dir}: no trials to export yet; resume the search first: "
                       f"`agereg search --resume {run_dir}`")
    report = build_report(run_dir, runs_dir)  # the page goes along as an artifact
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no database chatter on stderr
    started: list[str] = []  # the parent run, once created
    try:
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        client = MlflowClient()
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            experiment, artifact_location=_artifact_location(mlflow.get_tracking_uri()))
        key = str(run_dir.resolve())
        # an export that failed or was interrupted halfway does not count as done
        earlier = client.search_runs([exp_id], filter_string=f"tags.`{TAG}` = '{key}' and "
                                     "attributes.status = 'FINISHED'")
        if earlier and not force:
            then = sum(int(v) for k, v in earlier[0].data.tags.items()
                       if k.startswith("count.") and str(v).isdigit())
            since = (f"; the run has changed since ({counted(then, 'trial')} then, "
                     f"{len(records)} now)"
                     if then and then != len(records) else "")
            raise RunError(f"{run_dir}: already exported to MLflow experiment {experiment!r} "
                           f"(run {earlier[0].info.run_id}){since}; pass --force to export "
                           "again")
        ranked = rank(records, cfg.select_by)
        sel = select(ranked, cfg.select, cfg.select_by)
        parent = client.create_run(exp_id, run_name=run_dir.name,
                                   tags={TAG: key, "agereg.strategy": cfg.search.strategy})
        pid = parent.info.run_id
        started.append(pid)
        now = int(time.time() * 1000)
        # MLflow's parameter values are bounded strings
        params = [Param(k, str(v)[:500]) for k, v in flat_config(cfg).items()]
        metrics = []
        if sel.trial is not None:
            for name in ("train_loss", "val_loss", "test_loss", "val_mae", "test_mae"):
                v = getattr(sel.trial, name)
                if v is not None:
                    metrics.append(Metric(f"selected.{name}", float(v), now, 0))
        tags = [RunTag(f"count.{k}", str(v)) for k, v in status_counts(records).items()]
        client.log_batch(pid, metrics=metrics, params=params, tags=tags)
        if report.html_path is not None:  # written: the run is locked, so writable
            client.log_artifact(pid, str(report.html_path))
        children = _children(client, exp_id, pid, records, read_curves(run_dir), now,
                             Metric, Param, RunTag)
        client.set_terminated(pid)
    except BaseException as exc:
        for pid in started:  # shown as failed in MLflow; a later export starts afresh
            with contextlib.suppress(Exception):
                client.set_terminated(pid, "FAILED" if isinstance(exc, Exception) else "KILLED")
        if isinstance(exc, RunError) or not isinstance(exc, Exception):
            raise
        said = " ".join(str(exc).split())
        if len(said) > 160:  # at a word, so that no quote is left open mid-word
            said = said[:160].rsplit(" ", 1)[0] + " ..."
        uri = mlflow.get_tracking_uri()
        fix = "check --tracking-uri"
        if uri.startswith("file:") or "://" not in uri:  # a folder: MLflow's file store
            fix += (", or give a database file, e.g. sqlite:///mlflow.db (MLflow 3 keeps its "
                    "file store in maintenance mode)")
        raise RunError(f"MLflow at {tracking_uri or 'its default tracking URI'} refused the "
                       f"export ({type(exc).__name__}: {said}); {fix}") from None
    return {"experiment": experiment, "experiment_id": exp_id, "parent_run_id": pid,
            "child_runs": children, "tracking_uri": mlflow.get_tracking_uri()}


def _artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a new experiment in a local SQLite store go next to its database
    (``<db folder>/mlartifacts``), not into ``./mlruns`` of whatever the current folder
    is; other stores keep MLflow's default."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.resolve().parent / "mlartifacts").as_uri()
    return None


def _children(client: Any, exp_id: str, parent_id: str, records: list[TrialRecord],
              curves: dict, now: int, Metric: Any, Param: Any, RunTag: Any) -> int:
    by_column: dict[Config3, list[TrialRecord]] = {}
    for r in records:
        by_column.setdefault(r.column(), []).append(r)
    for (bs, lr, l2, loss), rs in sorted(by_column.items()):
        child = client.create_run(exp_id, run_name=f"batch {bs}, lr {lr:g}, l2 {l2:g}, {loss}",
                                  tags={"mlflow.parentRunId": parent_id})
        cid = child.info.run_id
        params = [Param("batch_size", str(bs)), Param("learning_rate", repr(lr)),
                  Param("l2", repr(l2)), Param("loss", loss),
                  Param("epochs", ",".join(str(r.epochs) for r in sorted(
                      rs, key=lambda r: r.epochs)))]
        metrics, tags = [], []
        for r in rs:
            tags.append(RunTag(f"status.epochs_{r.epochs}", r.status.value))
            for name in ("train_loss", "val_loss", "test_loss", "val_mae"):
                v = getattr(r, name)
                if v is not None:
                    metrics.append(Metric(name, float(v), now, r.epochs))
        for key, points in curves.items():
            if key[:4] == (bs, lr, l2, loss) and key[4] is None:
                metrics += [Metric("val_fmse_curve", float(p[1]), now, e)
                            for e, p in sorted(points.items()) if p[1] is not None]
        for i in range(0, max(len(metrics), 1), 1000):  # MLflow takes 1000 metrics a batch
            client.log_batch(cid, metrics=metrics[i:i + 1000],
                             params=params if i == 0 else [], tags=tags if i == 0 else [])
        client.set_terminated(cid)
    return len(by_column)
