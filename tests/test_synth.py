"""Tests for the synthetic stand-in dataset (agereg.synth)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from agereg import synth
from agereg.errors import DataError
from agereg.synth import FILE_NAMES, MANIFEST_NAME, make_synthetic, write_synthetic

SMALL = {"n_train": 200, "n_test": 100, "side": 8}


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return make_synthetic(seed=3, **SMALL)


def test_shapes_and_dtypes(small: tuple[np.ndarray, ...]) -> None:
    Xtr, ytr, Xte, yte = small
    assert Xtr.shape == (200, 8, 8)
    assert Xte.shape == (100, 8, 8)
    assert ytr.shape == (200,)
    assert yte.shape == (100,)
    assert Xtr.dtype == np.float32
    assert Xte.dtype == np.float32
    assert ytr.dtype == np.float64
    assert yte.dtype == np.float64


def test_other_sizes() -> None:
    Xtr, ytr, Xte, yte = make_synthetic(seed=0, n_train=7, n_test=3, side=13)
    assert Xtr.shape == (7, 13, 13)
    assert Xte.shape == (3, 13, 13)
    assert ytr.shape == (7,)
    assert yte.shape == (3,)


def test_pixels_finite_and_in_unit_interval(small: tuple[np.ndarray, ...]) -> None:
    for X in (small[0], small[2]):
        assert np.all(np.isfinite(X))
        assert X.min() >= 0.0
        assert X.max() <= 1.0
        # Not a constant image set: the generator must produce varied content.
        assert X.std() > 0.05


def test_ages_in_range_and_half_years(small: tuple[np.ndarray, ...]) -> None:
    for y in (small[1], small[3]):
        assert np.all(np.isfinite(y))
        assert y.min() >= 0.0
        assert y.max() <= 100.0
        # Ages are whole or half years.
        assert np.all(np.isin(y * 2 % 2, (0.0, 1.0)))


def test_same_seed_identical_different_seed_differs(small: tuple[np.ndarray, ...]) -> None:
    again = make_synthetic(seed=3, **SMALL)
    for a, b in zip(small, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = make_synthetic(seed=4, **SMALL)
    assert not np.array_equal(small[0], other[0])
    assert not np.array_equal(small[1], other[1])
    assert not np.array_equal(small[2], other[2])
    assert not np.array_equal(small[3], other[3])


def test_train_and_test_differ(small: tuple[np.ndarray, ...]) -> None:
    Xtr, _, Xte, _ = small
    assert not np.array_equal(Xtr[: len(Xte)], Xte)


@pytest.mark.parametrize("bad", [{"n_train": 0}, {"n_test": 0}, {"side": 2}])
def test_invalid_sizes_raise(bad: dict[str, int]) -> None:
    with pytest.raises(DataError):
        make_synthetic(seed=0, **{**SMALL, **bad})


@pytest.mark.parametrize("side", [3, 4])
def test_the_cli_accepts_exactly_the_sides_synth_makes(tmp_path, side: int) -> None:
    """--side's range is synth's own (side >= 4): what --help promises, synth makes."""
    from tests_helpers import run

    code, _, err = run(["synth", "--out", str(tmp_path / "d"), "--side", str(side),
                        "--n-train", "2", "--n-test", "1"])
    if side < 4:
        assert code == 2 and "x>=4" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "d").exists()
    else:
        assert code == 0, err
        assert np.load(tmp_path / "d" / FILE_NAMES["Xtr"]).shape == (2, 4, 4)


def test_write_synthetic_roundtrip(tmp_path, small: tuple[np.ndarray, ...]) -> None:
    out = tmp_path / "nested" / "data"
    result = write_synthetic(out, seed=3, **SMALL)
    assert result == out
    expected = dict(zip(("Xtr", "ytr", "Xte", "yte"), small, strict=True))
    for key, name in FILE_NAMES.items():
        loaded = np.load(out / name, allow_pickle=False)
        assert loaded.dtype == expected[key].dtype
        np.testing.assert_array_equal(loaded, expected[key])
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest == {
        "synthetic": True,
        "generator": "agereg synth",
        "version": 1,
        "seed": 3,
        "n_train": 200,
        "n_test": 100,
        "side": 8,
        "note": "synthetic stand-in for the age-regression course files; not real faces",
    }
    # Exactly the four arrays and the manifest: no temporary files left behind.
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILE_NAMES.values(), MANIFEST_NAME])


def test_write_synthetic_overwrites_existing_only_with_force(tmp_path) -> None:
    write_synthetic(tmp_path, seed=1, **SMALL)
    before = (tmp_path / FILE_NAMES["Xtr"]).read_bytes()
    with pytest.raises(DataError, match="exists; agereg synth never writes over existing "
                                        "files: choose another --out, or pass --force"):
        write_synthetic(tmp_path, seed=2, **SMALL)
    assert (tmp_path / FILE_NAMES["Xtr"]).read_bytes() == before
    write_synthetic(tmp_path, seed=2, force=True, **SMALL)
    ytr = np.load(tmp_path / FILE_NAMES["ytr"], allow_pickle=False)
    np.testing.assert_array_equal(ytr, make_synthetic(seed=2, **SMALL)[1])
    assert json.loads((tmp_path / MANIFEST_NAME).read_text(encoding="utf-8"))["seed"] == 2
    assert len(list(tmp_path.iterdir())) == 5


def test_write_into_file_raises(tmp_path) -> None:
    target = tmp_path / "not_a_folder"
    target.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"not_a_folder.*not a folder"):
        write_synthetic(target, **SMALL)
    assert target.read_text(encoding="utf-8") == "x"


def test_write_below_file_raises(tmp_path) -> None:
    parent = tmp_path / "file"
    parent.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="file"):
        write_synthetic(parent / "sub", **SMALL)


def test_default_size_statistics() -> None:
    start = time.perf_counter()
    Xtr, ytr, Xte, yte = make_synthetic(seed=0)
    elapsed = time.perf_counter() - start
    assert Xtr.shape == (5000, 48, 48)
    assert Xte.shape == (2500, 48, 48)
    assert Xtr.dtype == np.float32
    assert ytr.dtype == np.float64
    assert Xtr.min() >= 0.0
    assert Xtr.max() <= 1.0
    assert Xte.min() >= 0.0
    assert Xte.max() <= 1.0
    assert 0.40 <= float(Xtr.mean()) <= 0.55
    assert abs(float(ytr.mean()) - 39.5) <= 1.5
    assert abs(float(ytr.std()) - 14.8) <= 1.5
    assert abs(float(yte.mean()) - 39.5) <= 1.5
    assert abs(float(yte.std()) - 14.8) <= 1.5
    # Roughly 1.6% of the ages end in .5, as in the real training file.
    assert 0.005 <= float(np.mean(ytr % 1 != 0)) <= 0.03
    # Generous bound: the brief asks for a few seconds at default size.
    assert elapsed < 15.0


def test_write_failure_raises_and_cleans_up(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_save(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    # np.save is looked up through the module at call time, so patching it simulates a
    # full disk in the middle of writing the first array.
    monkeypatch.setattr(synth.np, "save", failing_save)
    with pytest.raises(DataError, match="No space left"):
        write_synthetic(tmp_path, **SMALL)
    # The failed write leaves neither a temporary file nor a partial array behind.
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_removes_old_manifest(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_synthetic(tmp_path, seed=1, **SMALL)

    def failing_save(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(synth.np, "save", failing_save)
    with pytest.raises(DataError):
        write_synthetic(tmp_path, seed=2, force=True, **SMALL)
    # The old arrays survive, but no manifest claims the folder is complete.
    assert not (tmp_path / MANIFEST_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILE_NAMES.values())


def test_course_files_are_never_overwritten_even_with_force(tmp_path, monkeypatch) -> None:
    from agereg import data

    write_synthetic(tmp_path, seed=1, **SMALL)
    # pretend these bytes are the course files: their hashes become the course hashes
    fake = {k: data.sha256_file(tmp_path / n) for k, n in FILE_NAMES.items()}
    monkeypatch.setattr(synth, "COURSE_SHA256", fake)
    before = {n: (tmp_path / n).read_bytes() for n in FILE_NAMES.values()}
    with pytest.raises(DataError, match="is one of the course files; agereg synth never "
                                        "overwrites them, even with --force"):
        write_synthetic(tmp_path, seed=2, force=True, **SMALL)
    assert {n: (tmp_path / n).read_bytes() for n in FILE_NAMES.values()} == before


def test_split_never_replaces_a_different_split_without_force(data_copy) -> None:
    from tests_helpers import run

    args = ["split", "--data", str(data_copy)]
    assert run([*args, "--seed", "1"])[0] == 0
    first = (data_copy / "split.json").read_text()
    assert run([*args, "--seed", "1"])[0] == 0  # the same split again: fine
    code, _, err = run([*args, "--seed", "2"])
    assert code == 2 and "--force" in err
    assert ("exists and holds another split (seed 1, val_fraction 0.2; this one seed 2, "
            "val_fraction 0.2)") in err
    assert (data_copy / "split.json").read_text() == first
    assert run([*args, "--seed", "2", "--force"])[0] == 0
    assert (data_copy / "split.json").read_text() != first


def test_new_data_over_old_says_the_old_split_no_longer_fits(tmp_path: Path) -> None:
    from tests_helpers import run

    small = ["--n-train", "40", "--n-test", "10", "--side", "4"]
    data = str(tmp_path / "d")
    assert run(["synth", "--out", data, *small])[0] == 0
    assert run(["split", "--seed", "1", "--data", data])[0] == 0
    code, _, err = run(["synth", "--out", data, *small, "--seed", "5", "--force"])
    assert code == 0 and f"note: {data}/split.json was made for other files" in err, err
    assert f"`agereg split --seed N --force --data {data}`" in err
    code, _, err = run(["split", "--seed", "1", "--data", data])  # still needs --force
    assert code == 2 and "exists and was made for other files" in err, err
    assert run(["split", "--seed", "1", "--data", data, "--force"])[0] == 0
    code, _, err = run(["synth", "--out", data, *small, "--seed", "5", "--force"])
    assert code == 0 and "note" not in err, err  # the split fits the files again
