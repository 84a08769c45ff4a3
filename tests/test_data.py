"""Loading and validating dataset folders: every bad input is a one-line DataError."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from agereg import data as data_mod
from agereg.data import FILE_NAMES, load_dataset
from agereg.errors import DataError


def test_loads_and_flattens(tiny_data: Path):
    ds = load_dataset(tiny_data)
    assert ds.Xtr.shape == (120, 36) and ds.Xte.shape == (60, 36)
    assert ds.ytr.dtype == np.float64
    assert ds.info.kind == "synthetic" and "synthetic" in ds.info.description
    assert ds.info.image_shape == (6, 6) and ds.info.n_features == 36
    assert len(ds.info.sha256["ytr"]) == 64


def test_flat_user_data_is_reported_as_user_data(tmp_path: Path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / FILE_NAMES["Xtr"], rng.random((10, 4)))
    np.save(tmp_path / FILE_NAMES["ytr"], rng.random(10))
    np.save(tmp_path / FILE_NAMES["Xte"], rng.random((5, 4)))
    np.save(tmp_path / FILE_NAMES["yte"], rng.random(5))
    ds = load_dataset(tmp_path)
    assert ds.info.kind == "user" and ds.info.image_shape is None


def test_course_files_are_recognised_by_sha256(data_copy: Path, monkeypatch):
    sha = {k: data_mod.sha256_file(data_copy / n) for k, n in FILE_NAMES.items()}
    monkeypatch.setattr(data_mod, "COURSE_SHA256", sha)
    info = load_dataset(data_copy).info
    assert info.kind == "course" and info.description == "course files, verified"


def _expect(folder: Path, *fragments: str) -> None:
    with pytest.raises(DataError) as exc:
        load_dataset(folder)
    msg = str(exc.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg


def test_missing_folder(tmp_path: Path):
    _expect(tmp_path / "nope", "nope", "not found", "agereg synth")


def test_a_file_given_as_the_folder_names_the_folder_to_give(data_copy: Path):
    # no "run agereg synth --out FILE": that would fail, and not help
    _expect(data_copy / FILE_NAMES["Xtr"], "a file, not a dataset folder",
            f"give the folder holding it, {data_copy}")
    (data_copy / "notes.txt").write_text("x")
    _expect(data_copy / "notes.txt", "a file, not a dataset folder",
            "give the folder holding the four .npy files")


def test_missing_file(data_copy: Path):
    (data_copy / FILE_NAMES["yte"]).unlink()
    _expect(data_copy, FILE_NAMES["yte"], "not found")


def test_pickled_object_array_is_refused(data_copy: Path):
    np.save(data_copy / FILE_NAMES["ytr"], np.array([{"a": 1}] * 120, dtype=object),
            allow_pickle=True)
    _expect(data_copy, FILE_NAMES["ytr"], "pickled")


def test_plain_pickle_file_is_refused(data_copy: Path):
    (data_copy / FILE_NAMES["Xtr"]).write_bytes(pickle.dumps([1, 2, 3]))
    _expect(data_copy, FILE_NAMES["Xtr"])


def test_truncated_file(data_copy: Path):
    p = data_copy / FILE_NAMES["Xtr"]
    p.write_bytes(p.read_bytes()[:300])
    _expect(data_copy, FILE_NAMES["Xtr"], "numpy.save")


def test_not_npy_at_all(data_copy: Path):
    (data_copy / FILE_NAMES["Xte"]).write_text("hello")
    _expect(data_copy, FILE_NAMES["Xte"])


def test_non_numeric_dtype(data_copy: Path):
    np.save(data_copy / FILE_NAMES["ytr"], np.array(["a"] * 120))
    _expect(data_copy, FILE_NAMES["ytr"], "dtype")


def test_nan_values(data_copy: Path):
    X = np.load(data_copy / FILE_NAMES["Xtr"])
    X[17, 2, 3] = np.nan
    np.save(data_copy / FILE_NAMES["Xtr"], X)
    _expect(data_copy, FILE_NAMES["Xtr"], "row 17", "NaN or inf")


def test_inf_label(data_copy: Path):
    y = np.load(data_copy / FILE_NAMES["yte"])
    y[3] = np.inf
    np.save(data_copy / FILE_NAMES["yte"], y)
    _expect(data_copy, FILE_NAMES["yte"], "row 3")


def test_length_mismatch(data_copy: Path):
    np.save(data_copy / FILE_NAMES["ytr"], np.zeros(119))
    _expect(data_copy, "120 images", "119 ages")


def test_labels_must_be_1d(data_copy: Path):
    np.save(data_copy / FILE_NAMES["ytr"], np.zeros((120, 1)))
    _expect(data_copy, FILE_NAMES["ytr"], "1-D", "save it flat, "
            f"np.save('{FILE_NAMES['ytr']}', y.ravel())")


def test_empty_labels(data_copy: Path):
    np.save(data_copy / FILE_NAMES["yte"], np.zeros(0))
    _expect(data_copy, FILE_NAMES["yte"], "holds no ages")


def test_wrong_number_of_dimensions(data_copy: Path):
    np.save(data_copy / FILE_NAMES["Xtr"], np.zeros(120))
    _expect(data_copy, FILE_NAMES["Xtr"], "(N, H, W)")


def test_test_images_of_another_size(data_copy: Path):
    np.save(data_copy / FILE_NAMES["Xte"], np.zeros((60, 5, 5), dtype=np.float32))
    _expect(data_copy, FILE_NAMES["Xte"], "(5, 5)", "(6, 6)")


def test_empty_array(data_copy: Path):
    np.save(data_copy / FILE_NAMES["Xte"], np.zeros((0, 6, 6), dtype=np.float32))
    _expect(data_copy, FILE_NAMES["Xte"], "empty")


def test_manifest_garbage_is_user_data(data_copy: Path):
    (data_copy / "synthetic.json").write_text(json.dumps([1]))
    assert load_dataset(data_copy).info.kind == "user"
