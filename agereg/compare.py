"""``agereg compare RUN_A RUN_B``: two runs' selected trials side by side, what differs in
their configs, and, when both selected trials were evaluated on the same test files, a
paired bootstrap of their test difference. Read-only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agereg.assessment import RunContext, load_model, nothing_finished, open_run, unfinished
from agereg.config import flat_config
from agereg.errors import RunError
from agereg.evaluate import bootstrap_test, predict
from agereg.records import TrialRecord
from agereg.runs import eval_folder, record_to_dict, resolve_run
from agereg.words import counted, listed


def _selected(ctx: RunContext) -> tuple[TrialRecord, int]:
    sel = ctx.summary().selection
    if sel.trial is None or sel.rank is None:
        raise nothing_finished(ctx, "compare", locked=False)
    return sel.trial, sel.rank


def _saved_model(ctx: RunContext, rec: TrialRecord) -> tuple[np.ndarray, float] | None:
    """The selected trial's saved model (None when it was not evaluated, or its files do
    not hold a usable model)."""
    folder = eval_folder(ctx.run_dir, rec.trial_id, refit=ctx.split.k > 0)
    if not (folder / "weights.npy").exists():
        return None
    d = ctx.dataset.info.n_features
    try:
        return load_model(folder, d)
    except RunError:
        return None


def _yaml(v: object) -> str:
    """A config value as a config file writes it (``unset`` for a key one run lacks)."""
    if v is None:
        return "unset"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_yaml(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)  # a float in full: two values never print alike


def compare_runs(run_a: str | Path, run_b: str | Path, runs_dir: Path,
                 n_boot: int = 1000) -> dict[str, Any]:
    """The comparison as a JSON-ready document."""
    ctxs = [open_run(resolve_run(r, runs_dir), runs_dir) for r in (run_a, run_b)]
    if ctxs[0].run_dir.resolve() == ctxs[1].run_dir.resolve():
        raise RunError(f"{ctxs[0].run_dir}: give two different runs to compare")
    picked = [_selected(c) for c in ctxs]
    a_cfg, b_cfg = (flat_config(c.cfg) for c in ctxs)
    differs = [{"key": k, "a": a_cfg.get(k), "b": b_cfg.get(k)}
               for k in sorted(set(a_cfg) | set(b_cfg)) if a_cfg.get(k) != b_cfg.get(k)]
    doc: dict[str, Any] = {
        "runs": [str(c.run_dir) for c in ctxs],
        "selected": [{**record_to_dict(rec), "rank": k, "rule": c.cfg.select,
                      "by": c.cfg.select_by} for (rec, k), c in zip(picked, ctxs, strict=True)],
        "config_differs": differs,
        "same_training_data": ctxs[0].dataset.info.sha256.get("ytr") ==
                              ctxs[1].dataset.info.sha256.get("ytr"),
        "splits": [c.split.describe() for c in ctxs],
        "same_split": ctxs[0].split.same_rows(ctxs[1].split),
        "paired_test": None,
        "unfinished": [unfinished(c, locked=False) for c in ctxs],  # read without the lock
    }
    same_test = all(ctxs[0].dataset.info.sha256.get(k) == ctxs[1].dataset.info.sha256.get(k)
                    for k in ("Xte", "yte"))
    models = [_saved_model(c, rec) for c, (rec, _) in zip(ctxs, picked, strict=True)]
    if not same_test:
        doc["paired_note"] = "the runs used different test files: no paired comparison"
    elif any(m is None for m in models):
        missing = [c.run_dir for c, m in zip(ctxs, models, strict=True) if m is None]
        todo = listed([f"`agereg eval --best --run {d}`" for d in missing])
        who = "neither run is" if len(missing) == 2 else f"{missing[0]} is not"
        doc["paired_note"] = (f"{who} evaluated: run {todo} for a paired bootstrap of the "
                              "test difference")
    elif len(ctxs[0].dataset.yte) < 2:
        doc["paired_note"] = ("the test set holds a single image: every resample would be "
                              "that image, so no paired bootstrap")
    else:
        X_te = np.asarray(ctxs[0].dataset.Xte, dtype=np.float64).reshape(
            len(ctxs[0].dataset.yte), -1)
        y_te = np.asarray(ctxs[0].dataset.yte, dtype=np.float64)
        # load_model checked each against its run's width, and both runs share the
        # test files: the predictions fit the test labels
        preds = [predict(X_te, m[0], m[1]) for m in models if m is not None]
        boot = bootstrap_test(y_te, preds[0], preds[1], n_boot, seed=0)
        assert boot.paired is not None
        doc["paired_test"] = {
            "n_images": len(y_te), "resamples": n_boot, "seed": 0,
            "test_fmse": [float(np.mean(0.5 * (p - y_te) ** 2)) for p in preds],
            "test_mae": [float(np.mean(np.abs(p - y_te))) for p in preds],
            "observed_difference": boot.paired.observed_difference,
            "difference_ci": list(boot.paired.difference_ci),
            "share_a_better": boot.paired.share_better,
            # the same ages for every image (the same model twice): nothing to compare
            "identical_predictions": bool(np.array_equal(preds[0], preds[1])),
        }
    return doc


def _by_mae(sel: dict[str, Any]) -> str:
    """The validation MAE of a trial its run selected by MAE: the figure that chose it."""
    mae = sel.get("val_mae")
    return f", validation MAE {mae:.6g}" if sel.get("by") == "mae" and mae is not None else ""


def compare_lines(doc: dict[str, Any]) -> list[str]:
    """The comparison as sentences for the terminal."""
    lines = []
    for name, run, sel in zip("AB", doc["runs"], doc["selected"], strict=True):
        lines.append(
            f"{name}: {run}: #{sel['rank']} ({sel['rule']}) batch_size {sel['batch_size']}, "
            f"learning_rate {sel['learning_rate']:g}, epochs {sel['epochs']}, l2 {sel['l2']:g}"
            f"{'' if sel.get('loss', 'squared') == 'squared' else ', ' + sel['loss'] + ' loss'}"
            f": validation fMSE {sel['val_loss']:.6g}{_by_mae(sel)}, test fMSE "
            f"{sel['test_loss']:.6g}")
    if doc["config_differs"]:
        lines.append("configs differ in: " + "; ".join(
            f"{d['key']} {_yaml(d['a'])} vs {_yaml(d['b'])}" for d in doc["config_differs"]))
    else:
        lines.append("the configs are the same")
    for name, said in zip("AB", doc["unfinished"], strict=True):
        if said:
            lines.append(f"note: {name}: {said}")
    if not doc["same_training_data"]:
        lines.append("note: the runs trained on different training files")
    elif not doc["same_split"]:
        a, b = doc["splits"]
        lines.append(f"note: the runs validated on different rows (A: {a}; B: {b}): their "
                     "validation figures do not compare, their test figures do")
    p = doc["paired_test"]
    if p is None:
        lines.append(doc.get("paired_note", "no paired comparison"))
    elif p.get("identical_predictions"):
        lines.append(f"paired comparison on the same {p['n_images']} test images: the two "
                     "selected models predict the same age for every image (test fMSE "
                     f"{p['test_fmse'][0]:.4g}): no difference to test")
    else:
        lo, hi = p["difference_ci"]
        lines.append(
            f"paired bootstrap on the same {p['n_images']} test images ("
            f"{counted(p['resamples'], 'resample')}, seed 0): test fMSE "
            f"{p['test_fmse'][0]:.4g} (A) vs {p['test_fmse'][1]:.4g} (B); A minus B "
            f"{p['observed_difference']:+.4g} "
            f"[{lo:+.4g}, {hi:+.4g}]; A better in {p['share_a_better']:.0%} of resamples")
    return lines
