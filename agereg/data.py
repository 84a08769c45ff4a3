"""Loading and validating the four age-regression .npy files.

A dataset is a folder holding ``age_regression_{Xtr,ytr,Xte,yte}.npy``. Images may be
``(N, H, W)`` or already flat ``(N, D)``; they are flattened to ``(N, D)``. Everything is
checked here, before any training, so the engine can trust its inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agereg.errors import DataError
from agereg.fileio import NotReadable, read_regular

FILE_NAMES: dict[str, str] = {
    "Xtr": "age_regression_Xtr.npy",
    "ytr": "age_regression_ytr.npy",
    "Xte": "age_regression_Xte.npy",
    "yte": "age_regression_yte.npy",
}
MANIFEST_NAME = "synthetic.json"

# SHA-256 of the course files as they have circulated since 2020 (shared/DATASET.md).
COURSE_SHA256: dict[str, str] = {
    "Xtr": "1b36355263268eb4a00032854887377a54f91e83398c28345880e1214f6273ef",
    "ytr": "209508d19f3b9e298d377eaed0c510375eb2487c0c887351672e5db22e80615f",
    "Xte": "a95e8d61e96b388155a146bcf3cf858a5c8e391bf4d473d3fec4be3f95ed93e6",
    "yte": "8b74c79ee44a550aa337bbc4d1d2a37486f41f69b32b01efa9bc6a92864b8d23",
}

_CHUNK_ROWS = 4096  # rows checked for finiteness at a time: bounded memory on memory maps


@dataclass(frozen=True)
class DatasetInfo:
    """What a run records about its data: enough to recognise the same files later."""

    path: str
    kind: str  # "course" | "synthetic" | "user"
    description: str
    n_train: int
    n_test: int
    n_features: int
    image_shape: tuple[int, ...] | None
    x_dtype: str
    sha256: dict[str, str]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape) if self.image_shape else None
        return d


@dataclass(frozen=True)
class Dataset:
    """Validated arrays: ``Xtr (N, D)``, ``ytr (N,)``, ``Xte (M, D)``, ``yte (M,)``.

    The X arrays may be read-only memory maps; nothing here copies them.
    """

    Xtr: np.ndarray
    ytr: np.ndarray
    Xte: np.ndarray
    yte: np.ndarray
    info: DatasetInfo


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_array(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: file not found; run `agereg synth --out {path.parent}` "
                        "for a synthetic stand-in or copy the course files there")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        # mmap_mode keeps the 46 MB image files out of private memory; allow_pickle=False
        # because unpickling runs arbitrary code.
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(arr, np.ndarray):  # an .npz archive saved under an .npy name
            arr.close()
            raise DataError(f"{path}: is an .npz archive, not an .npy array; save each "
                            "array with numpy.save") from None
        return arr
    except ValueError as exc:
        text = str(exc)
        if "object" in text.lower() or "pickle" in text.lower():
            raise DataError(f"{path}: holds pickled Python objects, which agereg refuses to "
                            "load (unpickling runs code); save it as a numeric array") from None
        raise DataError(f"{path}: not a readable .npy file ({text}); re-export it with "
                        "numpy.save") from None
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"{path}: cannot read .npy file ({exc}); re-export it with "
                        "numpy.save") from None


def _check_numeric(arr: np.ndarray, path: Path) -> None:
    if arr.dtype.hasobject or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise DataError(f"{path}: dtype {arr.dtype} is not a real numeric type; "
                        "save it as float32 or float64")


def _check_finite(arr: np.ndarray, path: Path) -> None:
    if np.issubdtype(arr.dtype, np.integer):
        return
    for start in range(0, arr.shape[0], _CHUNK_ROWS):
        block = np.asarray(arr[start : start + _CHUNK_ROWS])
        if not np.isfinite(block).all():
            row = start + int(np.argmin(np.isfinite(block.reshape(block.shape[0], -1)).all(1)))
            raise DataError(f"{path}: row {row} holds NaN or inf; remove or fix that row")


def _load_x(path: Path) -> tuple[np.ndarray, tuple[int, ...] | None]:
    X = _load_array(path)
    _check_numeric(X, path)
    if X.ndim not in (2, 3):
        raise DataError(f"{path}: images must have shape (N, H, W) or (N, D), got {X.shape}")
    if X.shape[0] == 0 or int(np.prod(X.shape[1:])) == 0:
        raise DataError(f"{path}: empty array of shape {X.shape}")
    _check_finite(X, path)
    image_shape = tuple(int(s) for s in X.shape[1:]) if X.ndim == 3 else None
    return X.reshape(X.shape[0], -1), image_shape


def check_images(path: Path, d: int) -> np.ndarray:
    """New images to predict, validated like a data file: an .npy of shape (N, H, W) or
    (N, D), or a single image (H, W) or (D,), whose pixels per image are ``d``; numeric and
    finite. Returns the (N, D) rows."""
    if path.exists() and not path.is_file():
        raise DataError(f"{path}: not a regular file; give an .npy of images")
    if not path.exists():  # not a dataset's file: no advice to synthesise one
        raise DataError(f"{path}: file not found; give the .npy file of the images to "
                        "predict")
    X = _load_array(path)
    _check_numeric(X, path)
    if X.size == d and (X.ndim == 1 or (X.ndim == 2 and X.shape[1] != d)):
        X = X.reshape(1, d)  # one image, flat (D,) or (H, W)
    if X.ndim in (2, 3) and X.shape[0] == 0:
        raise DataError(f"{path}: holds no images (shape {X.shape}); give at least one")
    if X.ndim not in (2, 3) or int(np.prod(X.shape[1:])) != d:
        raise DataError(f"{path}: images of shape {X.shape} do not fit the run's data, "
                        f"{d} pixels per image; give (N, {d}) or (N, H, W) with H x W = {d}")
    _check_finite(X, path)
    return np.asarray(X).reshape(X.shape[0], -1)


def _load_y(path: Path) -> np.ndarray:
    y = _load_array(path)
    _check_numeric(y, path)
    if y.ndim != 1:
        fix = (f"; save it flat, np.save('{path.name}', y.ravel())"
               if y.ndim == 2 and 1 in y.shape else "")
        raise DataError(f"{path}: ages must be a 1-D array (N,), got shape {y.shape}{fix}")
    if y.shape[0] == 0:
        raise DataError(f"{path}: holds no ages (an empty array); give one age per image")
    y = np.asarray(y, dtype=np.float64)
    _check_finite(y, path)
    return y


def _describe(folder: Path, sha: dict[str, str]) -> tuple[str, str]:
    if sha == COURSE_SHA256:
        return "course", "course files, verified"
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        try:
            meta = json.loads(read_regular(manifest, 64 * 1024).decode("utf-8"))
        except (OSError, ValueError, NotReadable, RecursionError):
            meta = {}
        if isinstance(meta, dict) and meta.get("synthetic") is True:
            return "synthetic", (f"synthetic stand-in (agereg synth, seed {meta.get('seed')}); "
                                 "not real faces")
    return "user", "user data (not the course files)"


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """Load and validate a dataset folder; raise :class:`DataError` on any problem."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        hint = (f"give the folder holding it, {folder.parent}"
                if folder.name in FILE_NAMES.values() else
                "give the folder holding the four .npy files")
        raise DataError(f"{folder}: a file, not a dataset folder; {hint} (data.dir in the "
                        "config, or --data)")
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found; give the folder holding the "
                        "four .npy files (data.dir in the config, or --data), or make a "
                        f"stand-in with `agereg synth --out {folder}`")
    paths = {key: folder / name for key, name in FILE_NAMES.items()}
    Xtr, shape_tr = _load_x(paths["Xtr"])
    ytr = _load_y(paths["ytr"])
    Xte, shape_te = _load_x(paths["Xte"])
    yte = _load_y(paths["yte"])
    for X, y, xk, yk in ((Xtr, ytr, "Xtr", "ytr"), (Xte, yte, "Xte", "yte")):
        if X.shape[0] != y.shape[0]:
            raise DataError(f"{paths[xk]}: {X.shape[0]} images but {paths[yk].name} holds "
                            f"{y.shape[0]} ages; the two files must have the same length")
    if Xtr.shape[1] != Xte.shape[1] or shape_tr != shape_te:
        raise DataError(f"{paths['Xte']}: test images have shape {shape_te or Xte.shape[1:]} "
                        f"but training images {shape_tr or Xtr.shape[1:]}; they must match")
    sha = {key: sha256_file(p) for key, p in paths.items()}
    kind, description = _describe(folder, sha)
    info = DatasetInfo(
        path=str(folder.resolve()),
        kind=kind,
        description=description,
        n_train=int(Xtr.shape[0]),
        n_test=int(Xte.shape[0]),
        n_features=int(Xtr.shape[1]),
        image_shape=shape_tr,
        x_dtype=str(Xtr.dtype),
        sha256=sha,
    )
    return Dataset(Xtr=Xtr, ytr=ytr, Xte=Xte, yte=yte, info=info)
