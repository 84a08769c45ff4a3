"""The train/validation split: deterministic, a partition, and checked against its data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agereg.errors import SplitError
from agereg.split import load_split, make_split, save_split


def test_deterministic_partition():
    a, b = make_split(100, 5, 0.2, "x"), make_split(100, 5, 0.2, "x")
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert len(a.val) == 20 and len(a.train) == 80
    assert sorted(np.concatenate([a.train, a.val]).tolist()) == list(range(100))
    perm = np.random.default_rng(5).permutation(100)
    assert a.val.tolist() == perm[:20].tolist() and a.train.tolist() == perm[20:].tolist()
    assert not np.array_equal(make_split(100, 6, 0.2, "x").val, a.val)


def test_round_trip(tmp_path: Path):
    s = make_split(50, 1, 0.3, "abc")
    save_split(s, tmp_path / "split.json")
    t = load_split(tmp_path / "split.json", 50, "abc")
    assert np.array_equal(s.train, t.train) and t.seed == 1 and t.val_fraction == 0.3
    doc = json.loads((tmp_path / "split.json").read_text())
    assert set(doc) == {"seed", "val_fraction", "n", "ytr_sha256", "train", "val"}


def test_fraction_leaving_an_empty_side():
    with pytest.raises(SplitError, match="both need at least one"):
        make_split(3, 0, 0.01, "x")


@pytest.fixture
def split_file(tmp_path: Path) -> Path:
    p = tmp_path / "split.json"
    save_split(make_split(20, 0, 0.2, "sha"), p)
    return p


def _tamper(p: Path, **changes) -> None:
    doc = json.loads(p.read_text())
    doc.update(changes)
    p.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"n": 21}, "each of the 21 rows"),
        ({"ytr_sha256": "other"}, "other data"),
        ({"val": [0, 1, 2, 3]}, "exactly once"),
        ({"train": list(range(4, 25))}, "outside 0..19"),
        ({"train": [-1, *range(5, 20)]}, "outside"),
        ({"train": "all"}, "list of integer"),
        ({"val": []}, "non-empty"),
        ({"n": "20"}, "'n' must be an integer"),
    ],
)
def test_tampered_split_is_rejected(split_file: Path, change, fragment):
    _tamper(split_file, **change)
    with pytest.raises(SplitError) as exc:
        load_split(split_file, 20, "sha")
    assert fragment in str(exc.value) and "\n" not in str(exc.value)
    assert "agereg split" in str(exc.value)


def test_overlap_is_rejected(split_file: Path):
    doc = json.loads(split_file.read_text())
    doc["val"][0] = doc["train"][0]
    split_file.write_text(json.dumps(doc))
    with pytest.raises(SplitError, match="overlapping"):
        load_split(split_file, 20, "sha")


def test_not_json_and_missing_keys(split_file: Path):
    split_file.write_text("{not json")
    with pytest.raises(SplitError, match="not a readable JSON"):
        load_split(split_file, 20, "sha")
    split_file.write_text("{}")
    with pytest.raises(SplitError, match="not an agereg split"):
        load_split(split_file, 20, "sha")
    with pytest.raises(SplitError, match="not found"):
        load_split(split_file.parent / "none.json", 20, "sha")


def test_split_of_another_dataset_size(split_file: Path):
    with pytest.raises(SplitError, match="made for other data"):
        load_split(split_file, 25, "sha")


@pytest.mark.parametrize("n", [2, 3, 7, 2001, 4000])
def test_a_split_with_no_validation_row_says_which_fractions_work(n: int):
    import re

    with pytest.raises(SplitError) as info:
        make_split(n, 0, 0.0001, "x")
    said = str(info.value)
    if n == 2:  # one fraction works: said as one
        assert said.endswith("both need at least one: use val_fraction 0.5"), said
        return
    low, high = re.search(r"use a val_fraction from (\S+) to (\S+)$", said).groups()
    for fraction in (float(low), float(high)):  # both ends of the advice work
        split = make_split(n, 0, fraction, "x")
        assert len(split.val) >= 1 and len(split.train) >= 1
    assert len(make_split(n, 0, float(low), "x").val) == 1
    assert len(make_split(n, 0, float(high), "x").train) == 1
