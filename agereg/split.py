"""The reproducible train/validation split (a holdout or K folds) and its ``split.json``.

Both kinds start from ``perm = np.random.default_rng(seed).permutation(n)``:

* holdout: ``val = perm[:round(n * val_fraction)]``, ``train`` the rest;
* K folds: ``folds = np.array_split(perm, K)``; fold ``i`` validates on ``folds[i]`` and
  trains on the other folds concatenated in fold order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agereg.config import MAX_SEED
from agereg.errors import SplitError
from agereg.fileio import NotReadable, atomic_write_text, read_regular

SPLIT_NAME = "split.json"
SPLIT_LIMIT = 1 << 30  # 1 GiB: about 100 million row indices


@dataclass(frozen=True)
class Split:
    """Row indices into the training files.

    Holdout: ``val`` is the first ``n_val`` entries of a seeded permutation of
    ``range(n)``, ``train`` the rest, both in permutation order. K folds: ``folds`` holds
    them; ``train`` is every row (the folds in order: what a refit trains on) and ``val``
    is empty.
    """

    seed: int
    val_fraction: float | None  # None with folds
    n: int
    ytr_sha256: str
    train: np.ndarray
    val: np.ndarray
    folds: tuple[np.ndarray, ...] = ()

    @property
    def k(self) -> int:
        """The number of folds (0 for a holdout)."""
        return len(self.folds)

    def fold(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, validation rows) of fold ``i``."""
        train = np.concatenate([f for j, f in enumerate(self.folds) if j != i])
        return train, self.folds[i]

    def same_rows(self, other: Split) -> bool:
        """Whether the two splits validate (and train) on the same rows, in the same
        order: then their validation figures compare."""
        return (self.ytr_sha256 == other.ytr_sha256 and self.k == other.k and
                all(np.array_equal(a, b) for a, b in zip(
                    (self.train, self.val, *self.folds), (other.train, other.val, *other.folds),
                    strict=True)))

    def describe(self) -> str:
        if self.k:
            return f"{self.k} folds (seed {self.seed})"
        return f"seed {self.seed}, val_fraction {self.val_fraction}"

    def to_dict(self) -> dict:
        if self.k:
            return {"seed": self.seed, "n": self.n, "ytr_sha256": self.ytr_sha256,
                    "folds": [f.tolist() for f in self.folds]}
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "n": self.n,
            "ytr_sha256": self.ytr_sha256,
            "train": self.train.tolist(),
            "val": self.val.tolist(),
        }


def n_validation(n: int, val_fraction: float) -> int:
    return round(n * val_fraction)


def _shown(fraction: float, n: int) -> str:
    """``fraction`` with the fewest digits (3 or more) that still leaves a validation and a
    training row out of ``n``."""
    for digits in range(3, 18):
        text = f"{fraction:.{digits}g}"
        if 1 <= n_validation(n, float(text)) <= n - 1:
            return text
    return repr(fraction)


def make_split(n: int, seed: int, val_fraction: float, ytr_sha256: str) -> Split:
    """Split ``range(n)`` with ``np.random.default_rng(seed).permutation(n)``."""
    n_val = n_validation(n, val_fraction)
    if n_val < 1 or n - n_val < 1:
        low, high = _shown(1 / n, n), _shown((n - 1) / n, n)
        fix = ("a split needs at least 2 training images" if n < 2 else
               f"use val_fraction {low}" if low == high else
               f"use a val_fraction from {low} to {high}")
        raise SplitError(f"val_fraction {val_fraction} leaves {n_val} validation and "
                         f"{n - n_val} training rows out of {n}; both need at least one: {fix}")
    perm = np.random.default_rng(seed).permutation(n)
    return Split(seed, float(val_fraction), n, ytr_sha256, train=perm[n_val:], val=perm[:n_val])


def make_folds(n: int, seed: int, k: int, ytr_sha256: str) -> Split:
    """K folds of ``range(n)``: ``np.array_split(np.random.default_rng(seed).permutation(n),
    k)``."""
    if n < 4:
        raise SplitError(f"{k} folds of {n} rows: cross-validation needs at least 4 training "
                         "images (2 folds that validate on 2 rows each); use a holdout split")
    if not 2 <= k <= n // 2:
        raise SplitError(f"{k} folds of {n} rows: give 2 <= folds <= {n // 2}, so that "
                         "every fold validates on at least 2 rows")
    perm = np.random.default_rng(seed).permutation(n)
    return Split(seed, None, n, ytr_sha256, train=perm, val=perm[:0],
                 folds=tuple(np.array_split(perm, k)))


def save_split(split: Split, path: str | os.PathLike) -> None:
    atomic_write_text(Path(path), json.dumps(split.to_dict()) + "\n")


RECREATE = "recreate it with `agereg split --seed N --force`"


def _bad(path: Path, problem: str, fix: str = RECREATE) -> SplitError:
    """The error of a split.json: ``path: problem; fix``, the problem kept apart."""
    return SplitError(f"{path}: {problem}; {fix}", problem=f"{path}: {problem}")


def _indices(value: object, key: str, n: int, path: Path) -> np.ndarray:
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise _bad(path, f"'{key}' must be a list of integer row indices")
    try:
        arr = np.asarray(value, dtype=np.int64)
    except OverflowError:
        raise _bad(path, f"'{key}' holds an index too large for a row number") from None
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise _bad(path, f"'{key}' holds indices outside 0..{n - 1}")
    return arr


def _seed_ok(seed: object) -> bool:
    """A seed a config accepts too (so a run's resolved config loads back)."""
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED


def parse_split(raw: object, path: Path) -> Split:
    """Validate a decoded ``split.json`` document (without reference to any dataset)."""
    if isinstance(raw, dict) and "folds" in raw:
        return _parse_folds(raw, path)
    keys = ("seed", "val_fraction", "n", "ytr_sha256", "train", "val")
    if not isinstance(raw, dict) or any(k not in raw for k in keys):
        raise _bad(path, f"not an agereg split (needs keys {', '.join(keys)})")
    n = raw["n"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise _bad(path, f"'n' must be an integer >= 2, got {n!r}")
    if not isinstance(raw["ytr_sha256"], str):
        raise _bad(path, "'ytr_sha256' must be a string")
    train = _indices(raw["train"], "train", n, path)
    val = _indices(raw["val"], "val", n, path)
    if train.size == 0 or val.size == 0:
        raise _bad(path, "train and val must both be non-empty")
    together = np.concatenate([train, val])
    if together.size != n or np.unique(together).size != n:
        raise _bad(path, f"train and val must together hold each of the {n} rows exactly "
                         "once (overlapping or missing indices)")
    seed, frac = raw["seed"], raw["val_fraction"]
    if not _seed_ok(seed) or not isinstance(frac, int | float) or isinstance(frac, bool):
        raise _bad(path, "'seed' must be an integer from 0 to 2^63 - 1 and 'val_fraction' "
                         "a number")
    return Split(seed, float(frac), n, raw["ytr_sha256"], train=train, val=val)


def _parse_folds(raw: dict, path: Path) -> Split:
    fix = "recreate it with `agereg split --seed N --folds K --force`"
    keys = ("seed", "n", "ytr_sha256", "folds")
    if any(k not in raw for k in keys):
        raise _bad(path, f"not an agereg fold split (needs keys {', '.join(keys)})", fix)
    n, seed = raw["n"], raw["seed"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 4:
        raise _bad(path, f"'n' must be an integer >= 4, got {n!r}", fix)
    if not _seed_ok(seed) or not isinstance(raw["ytr_sha256"], str):
        raise _bad(path, "'seed' must be an integer from 0 to 2^63 - 1 and 'ytr_sha256' a "
                         "string", fix)
    if not isinstance(raw["folds"], list) or not 2 <= len(raw["folds"]) <= n // 2:
        raise _bad(path, f"'folds' must be a list of 2 to {n // 2} folds", fix)
    folds = tuple(_indices(f, f"folds[{i}]", n, path) for i, f in enumerate(raw["folds"]))
    together = np.concatenate(folds)
    if any(f.size < 2 for f in folds) or together.size != n or np.unique(together).size != n:
        raise _bad(path, f"the folds must together hold each of the {n} rows exactly once, "
                         "at least 2 per fold", fix)
    return Split(seed, None, n, raw["ytr_sha256"], train=together, val=together[:0],
                 folds=folds)


def load_split(path: str | os.PathLike, n: int, ytr_sha256: str) -> Split:
    """Read ``split.json`` and check it belongs to the training labels given."""
    path = Path(path)
    try:
        raw = json.loads(read_regular(path, SPLIT_LIMIT).decode("utf-8"))
    except FileNotFoundError:
        raise _bad(path, "split file not found", "run `agereg split --seed N`") from None
    except NotReadable as exc:
        raise _bad(path, str(exc)) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = " ".join(str(exc).split())[:150]
        raise _bad(path, f"not a readable JSON split file ({reason})") from None
    split = parse_split(raw, path)
    if split.n != n or split.ytr_sha256 != ytr_sha256:
        raise _bad(path, f"made for other data (n={split.n}, ytr sha256 "
                         f"{split.ytr_sha256[:12]}...) but the training labels have n={n}, "
                         f"sha256 {ytr_sha256[:12]}...",
                   f"replace it with `agereg split --seed N --force --data {path.parent}`")
    return split


def stale_split_note(folder: Path, n: int, ytr_sha256: str) -> str | None:
    """A note when ``folder``'s split.json does not fit the training labels given (new
    data written over old, keeping the old split), else None."""
    path = Path(folder) / SPLIT_NAME
    if not path.exists():
        return None
    try:
        load_split(path, n, ytr_sha256)
    except SplitError:
        return (f"{path} was made for other files (or is damaged) and a search on "
                f"{folder} would refuse it: replace it with `agereg split --seed N --force "
                f"--data {folder}`, or delete it")
    return None
