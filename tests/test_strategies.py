"""Search strategies: unit tests on a fake objective, then end to end on tiny data
(halving equals the grid to the last digit, resume identity, --extend, config errors)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agereg.advice import edge_notices
from agereg.batched import train_group
from agereg.config import Distribution, Grid, load_config
from agereg.records import Status, TrialRecord
from agereg.records import rank as rank_records
from agereg.runs import read_log, read_plan
from agereg.strategies.base import draw_columns
from agereg.strategies.halving import Halving
from agereg.strategies.random_search import RandomSearch
from agereg.strategies.refine import Refine

from tests_helpers import (
    curve_lines,
    interrupt_at_call,
    latest_run,
    lock_held_elsewhere,
    read_results,
    run,
    search,
    without_seconds,
)

# ---------------------------------------------------------------- a fake objective


def drive(strategy, objective, proposals: list | None = None) -> dict:
    """The sweep loop with ``objective(bs, lr, ep, l2) -> val`` in place of training;
    each proposal is also appended to ``proposals`` when given."""
    results: dict = {}
    for _ in range(100):
        p = strategy.propose(results)
        if p is None:
            return results
        if proposals is not None:
            proposals.append(p)
        for k in p.prune:
            results[k] = results[k].with_status(Status.PRUNED)
        for key in p.trial_keys():
            assert key[4] == "squared"  # (batch_size, learning_rate, epochs, l2, loss)
            v = objective(*key[:4])
            results.setdefault(key, TrialRecord(*key[:4], v, v, v, Status.OK, 0.0))
    raise AssertionError("the strategy never finished")


SPACE = Grid(batch_size=(8, 32), learning_rate=Distribution("log_uniform", 1e-4, 1.0),
             epochs=(2, 6, 18), l2=Distribution("uniform", 0.0, 0.5))


def test_random_draws_stay_in_their_ranges_and_depend_on_the_seed():
    cols = draw_columns(SPACE, 200, seed=3)
    assert len(cols) == 200 == len(set(cols))
    assert {c[0] for c in cols} == {8, 32}
    lrs = np.array([c[1] for c in cols])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1.0
    # log-uniform: about half of the draws below the geometric midpoint 1e-2
    assert 0.35 < np.mean(lrs < 1e-2) < 0.65
    l2s = np.array([c[2] for c in cols])
    assert l2s.min() >= 0.0 and l2s.max() <= 0.5 and 0.35 < np.mean(l2s < 0.25) < 0.65
    assert draw_columns(SPACE, 200, seed=3) == cols
    assert draw_columns(SPACE, 200, seed=4) != cols


def test_random_over_a_finite_grid_samples_without_replacement():
    grid = Grid((8, 16), (0.1, 0.2, 0.3), (1, 2), (0.0, 1.0))
    cols = draw_columns(grid, 5, seed=0)
    assert len(set(cols)) == 5 and all(c[1] in (0.1, 0.2, 0.3) for c in cols)
    assert len(draw_columns(grid, 100, seed=0)) == 12  # all of it
    res = drive(RandomSearch(grid, 5, 0), lambda *k: 1.0)
    assert len(res) == 5 * 2  # every draw recorded at every epoch count


def test_halving_keeps_exactly_the_best_third_at_each_rung():
    grid = Grid((8,), tuple(round(0.01 * i, 2) for i in range(1, 28)), (1, 3, 9), (0.0,))
    # validation loss grows with the learning rate, so the smallest ones survive
    res = drive(Halving(grid, eta=3, n_trials=None, seed=0), lambda bs, lr, ep, l2: lr)
    at = {ep: sorted(k[1] for k in res if k[2] == ep) for ep in (1, 3, 9)}
    assert len(at[1]) == 27 and at[3] == at[1][:9] and at[9] == at[1][:3]
    pruned = sorted((k[1], k[2]) for k, r in res.items() if r.status is Status.PRUNED)
    assert pruned == sorted([(lr, 1) for lr in at[1][9:]] + [(lr, 3) for lr in at[3][3:]])
    assert all(res[(8, lr, 9, 0.0, "squared")].status is Status.OK for lr in at[9])


def test_halving_keeps_at_least_one_and_skips_diverged():
    grid = Grid((8,), (0.1, 0.2), (1, 2), (0.0,))

    def objective(bs, lr, ep, l2):
        return math.nan if lr == 0.1 else 1.0

    strategy = Halving(grid, eta=3, n_trials=None, seed=0)
    results: dict = {}
    while (p := strategy.propose(results)) is not None:
        for key in p.trial_keys():
            v = objective(*key[:4])
            status = Status.DIVERGED if math.isnan(v) else Status.OK
            results[key] = TrialRecord(*key[:4], None if math.isnan(v) else v,
                                       None if math.isnan(v) else v, None, status, 0.0)
    assert (8, 0.2, 2, 0.0, "squared") in results
    assert (8, 0.1, 2, 0.0, "squared") not in results


def test_refine_extends_past_the_edge_and_trains_longer():
    grid = Grid((8,), (1e-3, 1e-2), (2, 4), (0.0, 1e-2))
    # better with larger learning rates and more epochs: the best sits on both edges
    res = drive(Refine(grid, rounds=3, points=5, tol=0.0, n_trials=None, seed=0),
                lambda bs, lr, ep, l2: 10 - math.log10(lr) * 0 - lr * 100 - ep)
    lrs = {k[1] for k in res}
    assert max(lrs) > 1e-2  # round 2 went past the largest learning rate tried
    assert max(k[2] for k in res) >= 8  # the best was at 4 epochs: trained to 8
    assert 0.0 in {k[3] for k in res}


def test_refine_keeps_its_span_on_an_edge_and_halves_it_inside():
    grid = Grid((8,), (1e-3,), (2,), (1e-4, 1e-2))  # l2 values 2 decades apart

    def decades_by_round(objective) -> list[list[float]]:
        proposals: list = []
        drive(Refine(grid, rounds=3, points=5, tol=0.0, n_trials=None, seed=0), objective,
              proposals)
        return [sorted({round(math.log10(c[2]), 3) for c in p.columns}) for p in proposals]

    # better with more l2: the best sits on the top edge of every round
    edge = decades_by_round(lambda bs, lr, ep, l2: -l2)
    assert edge[1] == [-3, -2.5, -2, -1.5, -1]  # round 2: 1 decade either side of 1e-2
    assert edge[2] == [-2, -1.5, -1, -0.5, 0]  # on its edge: the same span again
    # optimum at 10^-2.4: round 2's best, 10^-2.5, is inside its sub-grid: zoom in by half
    inside = decades_by_round(lambda bs, lr, ep, l2: abs(math.log10(l2) + 2.4))
    assert inside[1] == [-3, -2.5, -2, -1.5, -1]
    assert inside[2] == [-3, -2.75, -2.5, -2.25, -2]


def test_refine_spans_every_l2_when_l2_makes_no_difference():
    grid = Grid((8,), (1e-3, 1e-2), (2,), (1e-6, 1e-4, 1e-2))
    strategy = Refine(grid, rounds=2, points=3, tol=1e-3, n_trials=None, seed=0)
    # the loss depends on the learning rate only: the best l2 (1e-6) won a tie
    res = drive(strategy, lambda bs, lr, ep, l2: 1.0 + lr)
    later = sorted({k[3] for k in res if k[1] not in (1e-3, 1e-2)})
    assert later == pytest.approx([1e-6, 1e-4, 1e-2])  # not 1e-6 and the values around it
    # where l2 matters, the sub-grid centres on the best l2 as before
    res = drive(Refine(grid, rounds=2, points=3, tol=1e-3, n_trials=None, seed=0),
                lambda bs, lr, ep, l2: 1.0 + lr + abs(math.log10(l2) + 6))
    later = sorted({k[3] for k in res if k[1] not in (1e-3, 1e-2)})
    assert later == pytest.approx([1e-7, 1e-6, 1e-5])
    # an l2 of 0 among them stays, in place of one value: never more than `points`
    grid0 = Grid((8,), (1e-3, 1e-2), (2,), (0.0, 1e-4, 1e-2))
    res = drive(Refine(grid0, rounds=2, points=3, tol=1e-3, n_trials=None, seed=0),
                lambda bs, lr, ep, l2: 1.0 + lr)
    assert sorted({k[3] for k in res if k[1] not in (1e-3, 1e-2)}) == [0.0, 1e-4, 1e-2]


def test_refine_stops_when_a_round_does_not_improve():
    grid = Grid((8,), (1e-3, 1e-2), (2,), (0.0,))
    res = drive(Refine(grid, rounds=5, points=3, tol=1e-3, n_trials=None, seed=0),
                lambda *k: 1.0)  # flat: round 2 cannot improve, so round 3 never runs
    assert len({k[1] for k in res}) <= 2 + 3


def test_edge_notices_name_the_axis_and_the_next_range():
    recs = [TrialRecord(8, lr, 4, 0.1, 1.0, 5.0 - lr, 1.0, Status.OK, 0.0)
            for lr in (0.001, 0.01, 0.1)]
    notes = edge_notices(recs)
    assert any(n.startswith("best learning_rate 0.1 is the largest tried: the optimum may "
                            "lie above it; try learning_rate: {log_uniform: [0.0333, 3]}")
               for n in notes), notes
    assert not any("l2" in n or "epochs" in n for n in notes)  # one value tried: no notice
    # under one_se the selected trial may be another: the notices name the lowest
    assert edge_notices(recs, rule="one_se")[0].startswith(
        "lowest-validation learning_rate 0.1 is the largest tried")


def test_edge_notices_suggest_learning_rates_up_to_the_stability_limit():
    recs = [TrialRecord(8, lr, 4, 0.1, 1.0, 5.0 - lr, 1.0, Status.OK, 0.0)
            for lr in (0.001, 0.01)]
    capped = edge_notices(recs, lr_limit=0.036)[0]
    assert capped == ("best learning_rate 0.01 is the largest tried: the optimum may lie "
                      "above it, up to the full-batch limit 2 / lambda_max = 0.036; try "
                      "learning_rate: {log_uniform: [0.00333, 0.036]}")
    # far below the limit: the usual 30x, nothing said about it
    assert edge_notices(recs, lr_limit=1.0)[0] == edge_notices(recs)[0]
    assert edge_notices(recs, lr_limit=0.01)[0] == (
        "best learning_rate 0.01 is the largest tried and at the full-batch limit "
        "2 / lambda_max = 0.01: larger ones diverge")
    # the absolute loss has no curvature, so no such limit
    absolute = [dataclasses.replace(r, loss="absolute") for r in recs]
    assert edge_notices(absolute, lr_limit=0.036)[0] == edge_notices(absolute)[0]


def test_no_notice_suggests_a_batch_size_or_epoch_count_below_one():
    recs = [TrialRecord(bs, 0.01, ep, 0.1, 1.0, 1.0 + bs + ep, 1.0, Status.OK, 0.0)
            for bs in (1, 4) for ep in (1, 3)]
    assert edge_notices(recs) == ()  # the best, batch 1 and 1 epoch: nothing lies below
    best_at_4 = [dataclasses.replace(r, val_loss=10.0 - r.batch_size) for r in recs]
    assert any(n.startswith("best batch_size 4 is the largest tried")
               for n in edge_notices(best_at_4))


def test_every_trial_diverged_suggests_learning_rates_below_the_smallest_tried():
    diverged = [TrialRecord(8, lr, 4, 0.0, math.nan, math.nan, math.nan, Status.DIVERGED,
                            0.0) for lr in (0.3, 3.0)]
    # a third of the smallest tried, three decades down
    assert edge_notices(diverged) == (
        "every trial diverged, down to the smallest learning rate tried, 0.3; try "
        "learning_rate: {log_uniform: [0.0001, 0.1]}",)
    # no higher than half the full-batch limit, 1 / lambda_max
    assert edge_notices(diverged, lr_limit=0.036) == (
        "every trial diverged, down to the smallest learning rate tried, 0.3 (the "
        "full-batch limit 2 / lambda_max is 0.036); try learning_rate: {log_uniform: "
        "[1.8e-05, 0.018]}",)
    # a failed trial says nothing about the learning rate: no advice
    failed = dataclasses.replace(diverged[0], status=Status.FAILED)
    assert edge_notices([failed, diverged[1]], lr_limit=0.036) == ()
    assert edge_notices([]) == ()


# ---------------------------------------------------------------- the engine's seam


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_column_does_not_depend_on_its_neighbours(dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 37)).astype(dtype)
    y = X.astype(np.float64) @ rng.normal(size=37) + 1.0
    from agereg.engine import Arrays
    a = Arrays(X[:60], y[:60], X[60:75], y[60:75], X[75:], y[75:])
    lrs = list(10 ** rng.uniform(-3, 1.5, 40))  # some diverge
    l2s = list(10 ** rng.uniform(-5, 0, 40))
    full = train_group(a, 3, 16, lrs, l2s, [2, 60])
    assert full.diverged[-1].any() and not full.diverged[-1].all()
    for k in range(40):
        alone = train_group(a, 3, 16, [lrs[k]], [l2s[k]], [2, 60])
        assert np.array_equal(alone.losses[:, 0], full.losses[:, k], equal_nan=True)
    # continuing from a saved state equals training through
    first = train_group(a, 3, 16, lrs, l2s, [2])
    rest = train_group(a, 3, 16, lrs, l2s, [60], start=first.state)
    assert np.array_equal(rest.losses[0], full.losses[1], equal_nan=True)


# ---------------------------------------------------------------- end to end


SPACE_CONFIG = """\
name: {name}
seed: 2
n_jobs: {n_jobs}
data: {{dir: {data}}}
search: {search}
grid:
  batch_size: [4, 16]
  learning_rate: {lr}
  epochs: [1, 3, 9]
  l2: [0.0, 1.0e-2]
"""
LRS = "[1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2, 0.1, 0.3]"


def write_config(tmp_path: Path, data: Path, search_: str, lr: str = LRS, name: str = "s",
                 n_jobs: int = 1) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPACE_CONFIG.format(name=name, data=data, search=search_, lr=lr,
                                        n_jobs=n_jobs))
    return path


def test_halving_survivors_equal_the_grid_to_the_last_digit(tmp_path: Path, data_copy: Path):
    runs = tmp_path / "runs"
    grid_run = search(write_config(tmp_path, data_copy, "{strategy: grid}", name="g"), runs)
    code, _, err = run(["search", str(write_config(tmp_path, data_copy,
                                                   "{strategy: halving, eta: 3}", name="h",
                                                   n_jobs=2)), "--runs-dir", str(runs),
                        "--quiet"])
    assert code == 0, err
    halv_run = latest_run(runs)
    assert "rung 1 of 3 (1 epoch): training 24 trials" in err, err
    grid = {r.key(): r for r in read_log(grid_run)}
    halv = read_log(halv_run)
    assert len(halv) == 24 + 8 + 2  # 24 configurations, then 24 // 3, then 8 // 3
    for r in halv:  # every halving record, continued from saved parameters or not
        g = grid[r.key()]
        assert (r.train_loss, r.val_loss, r.test_loss) == (g.train_loss, g.val_loss,
                                                            g.test_loss), r
        assert (r.val_mae, r.best_epoch) == (g.val_mae, g.best_epoch), r
    # stopped trials with losses are relabelled pruned; diverged ones stay diverged
    stopped = [r for e, nxt in ((1, 3), (3, 9)) for r in halv if r.epochs == e
               and r.column() not in {h.column() for h in halv if h.epochs == nxt}]
    assert len(stopped) == 16 + 6
    assert [r.status for r in stopped] == [
        Status.PRUNED if grid[r.key()].status is Status.OK else Status.DIVERGED for r in stopped]
    assert any(r.status is Status.PRUNED for r in stopped)
    plan = read_plan(halv_run)
    # the stored stage names key the plan of runs made before: "(1 epochs)" stays there,
    # while the search prints "rung 1 of 3 (1 epoch)"
    assert list(plan) == ["rung 1 of 3 (1 epochs)", "rung 2 of 3 (3 epochs)",
                          "rung 3 of 3 (9 epochs)"]
    assert all(g.start_epoch == 3 for g in plan["rung 3 of 3 (9 epochs)"])
    code, out, err = run(["eval", "--run", str(halv_run), "--bootstrap", "0", "--no-plots",
                          "--json"])
    assert code == 0, err
    assert '"reproduced": true' in out


STRATEGIES = [
    "{strategy: grid}",
    "{strategy: random, n_trials: 10, seed: 1}",
    "{strategy: halving, eta: 2}",
    "{strategy: refine, rounds: 3, points: 3}",
]


@pytest.mark.parametrize("search_", STRATEGIES)
@pytest.mark.parametrize("cut", [1, 2])
def test_interrupt_and_resume_give_the_same_results(tmp_path: Path, data_copy: Path,
                                                     monkeypatch, search_: str, cut: int):
    import agereg.pipeline as pipeline

    config = write_config(tmp_path, data_copy, search_)
    whole = search(config, tmp_path / "whole")
    calls = interrupt_at_call(monkeypatch, pipeline, "append_records", cut + 1)
    code, _, _ = run(["search", str(config), "--runs-dir", str(tmp_path / "cut"), "--quiet"])
    if code == 0:  # the search appended fewer times than the cut: nothing to resume
        assert calls["n"] <= cut
        return
    assert code == 130
    monkeypatch.setattr(pipeline, "append_records", calls["real"])
    code, _, err = run(["search", "--resume", "--runs-dir", str(tmp_path / "cut"), "--quiet"])
    assert code == 0, err
    resumed = latest_run(tmp_path / "cut")
    assert without_seconds(read_results(resumed)) == without_seconds(read_results(whole))
    # each learning-curve point once: a group cut off before its records (or a halving
    # rung trained again from the start) does not append the epochs already there
    assert curve_lines(resumed) == curve_lines(whole)


def test_extend_reuses_logged_trials(tmp_path: Path, data_copy: Path):
    runs = tmp_path / "runs"
    small = search(write_config(tmp_path, data_copy, "{strategy: grid}",
                                lr="[1.0e-3, 1.0e-2]", name="small"), runs)
    bigger = write_config(tmp_path, data_copy, "{strategy: grid}", lr="[1.0e-3, 1.0e-2, 0.1]",
                          name="big")
    code, _, err = run(["search", str(bigger), "--runs-dir", str(runs), "--quiet", "--extend",
                        str(small)])
    assert code == 0, err
    assert "12 trained now, 24 reused" in err
    grown = latest_run(runs)
    assert grown != small
    fresh = search(bigger, tmp_path / "fresh")
    assert without_seconds(read_results(grown)) == without_seconds(read_results(fresh))
    origins = {r.origin for r in read_log(grown)}
    assert origins == {None, str(small)}
    assert json.loads((grown / "run.json").read_text())["extends"] == str(small)
    # eval of a trial trained here and of a reused one: a reused trial's group trained
    # here too (for its new learning rate), so both have kept parameters, and both
    # reproduce the search
    ranked = [r for r in rank_records(read_log(grown)) if r.status.has_losses()]
    for origin in (None, str(small)):
        k = next(i for i, r in enumerate(ranked, 1) if r.origin == origin)
        code, out, err = run(["eval", "--run", str(grown), "--rank", str(k), "--no-plots",
                              "--bootstrap", "0", "--json"])
        assert code == 0, err
        res = json.loads(out)
        assert res["reproduced"] is True and res["parameters"] == "kept by the search"


def test_an_extended_run_carries_the_learning_curves_of_its_reused_trials(
        tmp_path: Path, data_copy: Path):
    from agereg.runs import read_curves

    runs = tmp_path / "runs"
    small = search(write_config(tmp_path, data_copy, "{strategy: grid}", lr="[1.0e-2]",
                                name="small"), runs)
    bigger = write_config(tmp_path, data_copy, "{strategy: grid}", lr="[1.0e-2]", name="big")
    bigger.write_text(bigger.read_text().replace("batch_size: [4, 16]",
                                                 "batch_size: [4, 8, 16]"))
    code, _, err = run(["search", str(bigger), "--runs-dir", str(runs), "--quiet", "--extend",
                        str(small)])
    assert code == 0 and "6 trained now, 12 reused" in err, err  # batch size 8 alone trains
    grown = latest_run(runs)
    fresh = search(bigger, tmp_path / "fresh")
    # the reused trials' curves came along (copied, not trained here): the same as a
    # search of the whole grid, to the last digit
    assert read_curves(grown) == read_curves(fresh)
    assert curve_lines(grown) == curve_lines(fresh)  # each point once in the file too
    # a longer trial of a reused configuration trains it again from the start: only the
    # epochs after the carried curve's are appended
    short = write_config(tmp_path, data_copy, "{strategy: grid}", lr="[1.0e-2]",
                         name="short")
    short.write_text(short.read_text().replace("epochs: [1, 3, 9]", "epochs: [1, 3]"))
    code, _, err = run(["search", str(bigger), "--runs-dir", str(runs), "--quiet", "--extend",
                        str(search(short, runs))])
    assert code == 0 and "10 trained now, 8 reused" in err, err
    assert curve_lines(latest_run(runs)) == curve_lines(fresh)
    assert {k[0] for k in read_curves(grown)} == {4, 8, 16}
    # a reused trial trained nowhere in this run: eval takes the parameters the extended
    # run kept (the search's validation fMSE bit for bit), not a new training
    ranked = [r for r in rank_records(read_log(grown)) if r.status.has_losses()]
    k = next(i for i, r in enumerate(ranked, 1) if r.origin == str(small))
    code, out, err = run(["eval", "--run", str(grown), "--rank", str(k), "--no-plots",
                          "--bootstrap", "0", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["reproduced"] is True and res["parameters"] == "kept by the search"
    # a run without curves, extended with them: said, not hidden
    bare = search(write_config(tmp_path, data_copy, "{strategy: grid}", lr="[1.0e-2]",
                               name="bare"), runs, "--no-curves")
    code, _, err = run(["search", str(bigger), "--runs-dir", str(runs), "--quiet", "--extend",
                        str(bare)])
    assert code == 0 and ("note: the extended run recorded no learning curves: its reused "
                          "trials have none here") in " ".join(err.split()), err


def test_extend_refuses_a_narrower_or_different_config(tmp_path: Path, data_copy: Path):
    runs = tmp_path / "runs"
    small = search(write_config(tmp_path, data_copy, "{strategy: grid}",
                                lr="[1.0e-3, 1.0e-2]", name="small"), runs)
    bigger = write_config(tmp_path, data_copy, "{strategy: grid}", lr="[1.0e-3, 1.0e-2, 0.1]",
                          name="big")
    with lock_held_elsewhere(small):  # its search still running: it would train twice
        code, _, err = run(["search", str(bigger), "--runs-dir", str(runs), "--extend",
                            str(small)])
    assert code == 2 and "another agereg process (pid" in err, err
    assert [p.name for p in runs.iterdir() if "big" in p.name] == []  # no folder made
    narrower = write_config(tmp_path, data_copy, "{strategy: grid}", lr="[1.0e-3]", name="n")
    code, _, err = run(["search", str(narrower), "--runs-dir", str(runs), "--extend",
                        str(small)])
    assert code == 2 and "grid.learning_rate must contain that run's" in err
    other_seed = tmp_path / "seed.yaml"
    other_seed.write_text(write_config(tmp_path, data_copy, "{strategy: grid}",
                                       lr="[1.0e-3, 1.0e-2]", name="x").read_text()
                          .replace("seed: 2", "seed: 3"))
    code, _, err = run(["search", str(other_seed), "--runs-dir", str(runs), "--extend",
                        str(small)])
    assert code == 2 and "differs from that run's in seed" in err
    folds = tmp_path / "folds.yaml"
    folds.write_text(write_config(tmp_path, data_copy, "{strategy: grid}",
                                  lr="[1.0e-3, 1.0e-2]", name="f").read_text()
                     + "split: {folds: 3}\n")
    code, _, err = run(["search", str(folds), "--runs-dir", str(runs), "--extend", str(small)])
    assert code == 2 and "that run used seed 2, val_fraction 0.2, this search 3 folds (seed " \
        "2); extend it with the same split" in err, err
    assert len(list(runs.iterdir())) == 2  # the small run and latest: nothing written


def search_with(tmp_path: Path, text: str) -> tuple[int, str]:
    """Run `agereg search` on a config of ``text``; return the exit code and stderr."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, _, err = run(["search", str(path), "--runs-dir", str(tmp_path / "runs")])
    return code, err


@pytest.mark.parametrize(("text", "fragment"), [
    ("search: {strategy: random}\n", "strategy 'random' needs search.n_trials"),
    ("search: {strategy: randon, n_trials: 3}\n", "did you mean 'random'"),
    ("search: {strategy: random, n_trials: 3, eta: 3}\n",
     "search.eta is not used by strategy 'random' (only by halving)"),
    ("search: {strategy: halving, eta: 1}\n", "search.eta = 1 must be at least 2"),
    ("search: {strategy: refine, tol: 2}\n", "search.tol = 2 must be in [0, 1)"),
    ("search: {strategy: grid, n_trials: 3}\n", "search.n_trials is not used by strategy"),
    ("search: [random]\n", "search must be a mapping"),
    ("search: {stratgy: random}\n", "did you mean 'search.strategy'"),
])
def test_search_section_errors(tmp_path: Path, text: str, fragment: str):
    code, err = search_with(
        tmp_path, text + "grid: {batch_size: 8, learning_rate: 0.1, epochs: 1, l2: 0}\n")
    assert code == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("lr", "fragment"), [
    ("{log_uniform: [1.0e-4, 1.0]}", "grid.learning_rate is a distribution, which the grid "
                                     "strategy cannot enumerate"),
    ("{log_uniforn: [1.0e-4, 1.0]}", "did you mean 'log_uniform'"),
    ("{log_uniform: [1.0, 1.0e-4]}", "low must be below high"),
    ("{log_uniform: [1.0e-4]}", "must be two numbers [low, high]"),
    ("{log_uniform: [0.0, 1.0]}", "grid.learning_rate.log_uniform[0] = 0.0 must be greater"),
    ("{uniform: [1.0e-4, fast]}", "grid.learning_rate.uniform[1] = 'fast' is not a number"),
    ("{uniform: [1, 2], log_uniform: [1, 2]}", "must be a list or one distribution"),
])
def test_distribution_errors(tmp_path: Path, lr: str, fragment: str):
    code, err = search_with(
        tmp_path, f"grid: {{batch_size: 8, learning_rate: {lr}, epochs: 1, l2: 0}}\n")
    assert code == 2 and fragment in err, err


@pytest.mark.parametrize("axis", ["batch_size", "epochs"])
def test_a_whole_number_axis_as_a_distribution_says_which_axes_can_be(tmp_path: Path,
                                                                       axis: str):
    grid = {"batch_size": "8", "learning_rate": "0.1", "epochs": "1", "l2": "0",
            axis: "{uniform: [1, 100]}"}
    text = "search: {strategy: random, n_trials: 3}\ngrid: {" + ", ".join(
        f"{k}: {v}" for k, v in grid.items()) + "}\n"
    code, err = search_with(tmp_path, text)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (f"grid.{axis} cannot be a distribution (only learning_rate and l2 can") in err


def test_distribution_needs_n_trials_and_round_trips(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("search: {strategy: halving}\ngrid: {batch_size: 8, learning_rate: "
                    "{log_uniform: [1.0e-4, 1.0]}, epochs: [1, 3], l2: 0}\n")
    code, _, err = run(["search", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and "needs search.n_trials" in err
    path.write_text("search: {strategy: halving, n_trials: 9}\ngrid: {batch_size: 8, "
                    "learning_rate: {log_uniform: [1.0e-4, 1.0]}, epochs: [1, 3], l2: 0}\n")
    cfg = load_config(path)
    assert cfg.grid.learning_rate == Distribution("log_uniform", 1e-4, 1.0)
    from agereg.config import dump_config
    (tmp_path / "back.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "back.yaml") == cfg


def test_random_search_draws_its_configurations_as_points(tmp_path: Path):
    from agereg import plots
    from agereg.report import grid_cells

    recs = [TrialRecord(8, lr, 2, l2, 1.0, 1.0 + lr, 1.0, Status.OK, 0.0)
            for lr, l2 in zip(np.logspace(-4, -1, 20), np.r_[0.0, np.logspace(-6, -1, 19)],
                              strict=True)]
    png = plots.heatmap_val(grid_cells(recs))
    assert png.startswith(b"\x89PNG")
    cells = grid_cells(recs)
    assert len(cells.learning_rates) > plots.HEATMAP_MAX_VALUES  # the scatter branch ran


def test_refine_tries_a_smaller_batch_when_the_smallest_wins():
    grid = Grid((8, 16), (1e-3, 1e-2), (2,), (0.0,))
    res = drive(Refine(grid, rounds=2, points=3, tol=0.0, n_trials=None, seed=0),
                lambda bs, lr, ep, l2: bs + lr)
    assert {k[0] for k in res} == {2, 4, 8, 16}  # half and a quarter of the smallest
    res = drive(Refine(grid, rounds=2, points=3, tol=0.0, n_trials=None, seed=0),
                lambda bs, lr, ep, l2: -bs + lr)
    assert {k[0] for k in res} == {8, 16}


def test_the_report_shows_the_strategys_own_view(tmp_path: Path, data_copy: Path):
    runs = tmp_path / "runs"
    halv = search(write_config(tmp_path, data_copy, "{strategy: halving, eta: 3}", name="h"),
                  runs)
    code, _, err = run(["report", str(halv)])
    assert code == 0, err
    assert "halving_rungs.png" in err and (halv / "halving_rungs.png").is_file()
    page = (halv / "report.html").read_text()
    assert "halving_rungs.png: Successive halving" in page
    grid_run = search(write_config(tmp_path, data_copy, "{strategy: grid}", name="g"), runs)
    code, _, err = run(["report", str(grid_run)])
    assert code == 0 and not (grid_run / "halving_rungs.png").exists()


@pytest.mark.parametrize("search_", STRATEGIES)
def test_curve_rows_bounds_what_a_search_writes(tmp_path: Path, data_copy: Path, search_: str):
    from agereg.config import curve_rows

    config = write_config(tmp_path, data_copy, search_)
    cfg = load_config(config)
    run_dir = search(config, tmp_path / "runs")
    written = len((run_dir / "curves.csv").read_text().splitlines()) - 1  # the header
    assert 0 < written <= curve_rows(cfg.search, cfg.grid)
    if search_ == "{strategy: grid}":  # 2 batch sizes x 6 lrs x 2 l2s, to 9 epochs
        assert curve_rows(cfg.search, cfg.grid) == 24 * 9


def test_a_search_whose_curves_outgrow_the_run_is_refused_before_any_work(tmp_path: Path,
                                                                          data_copy: Path):
    from dataclasses import replace

    from agereg.errors import ConfigError
    from agereg.pipeline import _check_curves

    text = SPACE_CONFIG.format(name="long", data=data_copy, search="{strategy: grid}",
                               lr=LRS, n_jobs=1).replace("[1, 3, 9]", "[1, 1000000]")
    code, err = search_with(tmp_path, text)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "24,000,000 rows of curves.csv" in err and "--no-curves" in err
    assert not (tmp_path / "runs").exists() and not (data_copy / "split.json").exists()
    # without curves the same search is accepted (not run here: a million epochs)
    cfg = load_config(tmp_path / "c.yaml")
    _check_curves(replace(cfg, execution=replace(cfg.execution, curves=False)))
    with pytest.raises(ConfigError, match="120,000,000 rows"):  # 5 folds: 5 times as many
        _check_curves(replace(cfg, split=replace(cfg.split, folds=5)))


@pytest.mark.parametrize("search_", ["{strategy: random, n_trials: 30, seed: 1}",
                                     "{strategy: random, n_trials: 24, seed: 1}",
                                     "{strategy: halving, n_trials: 40}"])
def test_asking_for_more_configurations_than_the_grid_holds_is_said(tmp_path: Path,
                                                                     data_copy: Path,
                                                                     search_: str):
    config = write_config(tmp_path, data_copy, search_)  # 2 x 6 x 2 = 24 configurations
    code, _, err = run(["search", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert code == 0, err
    said = " ".join(err.split())
    n = int(search_.split("n_trials: ")[1].split(",")[0].rstrip("}"))
    if n > 24:
        assert (f"note: search.n_trials = {n} configurations, but the grid holds only 24: "
                "each of them is trained") in said
    else:
        assert "holds only" not in said
