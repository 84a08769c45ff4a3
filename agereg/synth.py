"""Synthetic stand-in for the face-to-age course data.

The real files (48x48 grayscale faces, age in years) are not on every machine, so
:func:`make_synthetic` draws cartoon faces whose pixels carry a real but weak linear
signal about age. The generator is calibrated (see ``benchmarks/calibrate_synth.py``)
so that the course baselines behave as on the real files: the mean predictor scores a
test fMSE near 110, least squares on raw pixels overfits badly, and early-stopped
gradient descent or SGD clearly beats the mean predictor.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import IO

import numpy as np

from agereg.data import COURSE_SHA256, FILE_NAMES, MANIFEST_NAME, sha256_file
from agereg.errors import DataError
from agereg.fileio import atomic_write

MANIFEST_VERSION = 1

# Images are rendered in chunks so that default-size generation stays far below 1 GB.
_CHUNK = 500

# Age distribution: a normal bulk plus a thin uniform tail so that the extremes 0 and 100
# occur, as in the real training file. After rounding and the tail, the mean is about 39.6
# and the standard deviation about 14.8.
_AGE_MEAN = 39.4
_AGE_STD = 14.55
_AGE_TAIL_FRACTION = 0.012
_HALF_YEAR_FRACTION = 0.016

# Individuals look older or younger than they are; this caps how much of the age
# variance any predictor (linear or not) can explain.
_APPARENT_AGE_STD = 20.0

# Texture: a Gaussian random field with power spectrum ~ 1/f**exponent is smooth but
# gives the pixels a full-rank, power-law covariance. Photos differ in clutter (a capped
# log-normal amplitude, weaker on the face) and sharpness (the exponent varies by
# +-_SHARPNESS_RANGE). This heterogeneity is what makes least squares on 2305 parameters
# overfit as badly as on the real faces, while early-stopped gradient descent, which only
# fits the high-variance directions, does not.
_TEXTURE_EXPONENT = 2.5
_SKIN_TEXTURE_STD = 0.03
_CLUTTER_STD = 0.08
_CLUTTER_SPREAD = 1.0
_CLUTTER_MAX = 0.25
_CLUTTER_ON_FACE = 0.6
_FACE_CLUTTER_MAX = 0.12
_SHARPNESS_RANGE = 1.0

# Depth of the age features at apparent age 75 (they start at 25 and grow linearly).
_WRINKLE_DEPTH = 0.4
_FOLD_DEPTH = 0.35
_LINE_WIDTH = 0.05
# Skin gets paler by this much per 15 years of apparent age. A broad brightening cue is
# learned in the first few hundred steps of zero-initialised gradient descent, as on the
# real data; a darkening cue would fight the intercept, which such a run first fits
# through the mean-image direction.
_PALLOR = 0.05


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, written with tanh so that it never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _save(fh: IO[bytes], array: np.ndarray) -> None:
    np.save(fh, array)


def _blob(
    u: np.ndarray,
    v: np.ndarray,
    cu: float | np.ndarray,
    cv: float | np.ndarray,
    su: float | np.ndarray,
    sv: float | np.ndarray,
) -> np.ndarray:
    """Gaussian bump centred at (cu, cv) with widths (su, sv) in face coordinates."""
    # Separable on purpose: u and v are (k, 1, side) and (k, side, 1), so the exponentials
    # are taken on rows and columns only and the outer product is one multiplication.
    return np.exp(-0.5 * ((u - cu) / su) ** 2) * np.exp(-0.5 * ((v - cv) / sv) ** 2)


def _texture_filter(side: int, exponents: np.ndarray) -> np.ndarray:
    """Per-image ``rfft2`` amplitude filters ``(k, side, side // 2 + 1)`` of unit-variance fields.

    Image ``i`` gets a power spectrum ~ 1/f**exponents[i]: small exponents are sharp,
    large ones blurry.
    """
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.fftfreq(side)[None, :]
    # The floor keeps the lowest frequencies finite; the DC term is dropped because the
    # mean brightness of each image is modelled separately.
    f2 = np.maximum(fx**2 + fy**2, 1.0 / side**2)
    amp = f2[None] ** (-exponents[:, None, None] / 4.0)
    amp[:, 0, 0] = 0.0
    # White noise has rfft2 coefficients of variance side**2, so the filtered field has
    # pixel variance sum(amp**2) / side**2 over the full spectrum; scale that to one.
    amp *= side / np.sqrt(np.sum(amp**2, axis=(1, 2), keepdims=True))
    return amp[:, :, : side // 2 + 1].astype(np.float32)


def _draw_ages(rng: np.random.Generator, n: int) -> np.ndarray:
    """Ages in whole years, a few in half years, within [0, 100]."""
    ages = rng.normal(_AGE_MEAN, _AGE_STD, size=n)
    tail = rng.random(n) < _AGE_TAIL_FRACTION
    ages[tail] = rng.uniform(0.0, 100.0, size=int(tail.sum()))
    ages = np.clip(np.rint(ages), 0.0, 100.0) + 0.0  # + 0.0 turns -0.0 into 0.0
    half = rng.random(n) < _HALF_YEAR_FRACTION
    ages[half] += np.where(ages[half] >= 100.0, -0.5, 0.5)
    return ages


def _draw_params(rng: np.random.Generator, ages: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image nuisance and age-feature parameters, drawn once for all images."""
    n = ages.shape[0]
    apparent = ages + rng.normal(0.0, _APPARENT_AGE_STD, size=n)
    old = np.clip((apparent - 25.0) / 50.0, 0.0, 1.5)
    young = np.exp(-np.clip(apparent, 0.0, None) / 10.0)
    return {
        "cx": rng.normal(0.0, 0.05, n),
        "cy": rng.normal(0.0, 0.05, n),
        # Children have smaller, rounder faces.
        "scale": np.exp(rng.normal(0.0, 0.06, n)) * (1.0 - 0.12 * young),
        "round": 1.0 + 0.15 * young + rng.normal(0.0, 0.04, n),
        "skin": np.clip(rng.normal(0.62, 0.10, n) + _PALLOR * (apparent - 40.0) / 15.0, 0.25, 0.95),
        "bg": rng.uniform(0.15, 0.75, n),
        "bg_gx": rng.normal(0.0, 0.08, n),
        "bg_gy": rng.normal(0.0, 0.08, n),
        # Hair greys with age.
        "hair": np.clip(
            rng.uniform(0.05, 0.45, n) + 0.35 * _sigmoid((apparent - 55.0) / 6.0) * rng.random(n),
            0.0,
            1.0,
        ),
        "light_x": rng.normal(0.0, 0.12, n),
        "light_y": rng.normal(0.0, 0.08, n),
        "eye_y": -0.12 + 0.08 * young + rng.normal(0.0, 0.02, n),
        "eye_size": 1.0 + 0.25 * young + rng.normal(0.0, 0.08, n),
        "mouth": rng.uniform(0.1, 0.3, n),
        # Wrinkles and folds deepen with (apparent) age, with individual variation.
        "wrinkle": _WRINKLE_DEPTH * old * np.exp(rng.normal(0.0, 0.3, n)),
        "fold": _FOLD_DEPTH * old * np.exp(rng.normal(0.0, 0.3, n)),
        "sharpness": rng.uniform(
            _TEXTURE_EXPONENT - _SHARPNESS_RANGE, _TEXTURE_EXPONENT + _SHARPNESS_RANGE, n
        ),
        "skin_texture": _SKIN_TEXTURE_STD * np.exp(rng.normal(0.0, 0.3, n)) * (1.0 + 0.5 * old),
        "clutter": np.minimum(
            _CLUTTER_STD * np.exp(rng.normal(0.0, _CLUTTER_SPREAD, n)), _CLUTTER_MAX
        ),
    }


def _render(
    params: dict[str, np.ndarray],
    noise: np.ndarray,
    side: int,
) -> np.ndarray:
    """Render one chunk of faces as float32 images in [0, 1]."""
    grid = np.linspace(-1.0, 1.0, side, dtype=np.float32)
    x = grid[None, None, :]
    y = grid[None, :, None]

    def p(name: str) -> np.ndarray:
        return params[name][:, None, None]

    # Face coordinates: the face oval is the unit circle, up to roundness.
    u = (x - p("cx")) / p("scale")
    v = (y - p("cy")) / p("scale")

    face_r = np.sqrt((u / (0.58 * p("round"))) ** 2 + (v / 0.75) ** 2)
    face = _sigmoid((1.0 - face_r) / 0.05)
    hair_r = np.sqrt((u / 0.7) ** 2 + ((v + 0.12) / 0.85) ** 2)
    hair = _sigmoid((1.0 - hair_r) / 0.05) * _sigmoid(-(v + 0.05) / 0.06) * (1.0 - face)

    img = p("bg") + p("bg_gx") * x + p("bg_gy") * y
    img = img * (1.0 - hair) + p("hair") * hair
    img = img * (1.0 - face)

    skin = p("skin") * np.ones_like(u)
    es = p("eye_size")
    eyes = _blob(u, v, -0.24, p("eye_y"), 0.09 * es, 0.05 * es) + _blob(
        u, v, 0.24, p("eye_y"), 0.09 * es, 0.05 * es
    )
    brows = _blob(u, v, -0.24, p("eye_y") - 0.13, 0.12, 0.025) + _blob(
        u, v, 0.24, p("eye_y") - 0.13, 0.12, 0.025
    )
    nose = (
        _blob(u, v, 0.0, 0.12, 0.05, 0.12) * 0.08
        + (_blob(u, v, -0.06, 0.22, 0.03, 0.025) + _blob(u, v, 0.06, 0.22, 0.03, 0.025)) * 0.2
    )
    mouth = _blob(u, v, 0.0, 0.42, 0.16, 0.035) * p("mouth")
    skin = skin - 0.35 * eyes - 0.25 * brows - nose - mouth

    # Age features: horizontal forehead lines, under-eye bags, nose-to-mouth folds.
    forehead = _sigmoid((0.32 - np.abs(u)) / 0.05)
    lines = sum(_blob(u, v, 0.0, c, 10.0, _LINE_WIDTH) for c in (-0.56, -0.46, -0.36))
    bags = _blob(u, v, -0.24, p("eye_y") + 0.1, 0.1, 0.03) + _blob(
        u, v, 0.24, p("eye_y") + 0.1, 0.1, 0.03
    )
    # The folds are two diagonal stripes, faded out away from the height of the mouth.
    near_mouth = _blob(u, v, 0.0, 0.3, 1.0, 0.12)
    folds = near_mouth * (
        np.exp(-0.5 * ((u + 0.5 * v + 0.28) / _LINE_WIDTH) ** 2)
        + np.exp(-0.5 * ((u - 0.5 * v - 0.28) / _LINE_WIDTH) ** 2)
    )
    skin = skin - p("wrinkle") * (forehead * lines + bags) - p("fold") * folds

    img = img + skin * face
    img = img * (1.0 + p("light_x") * x + p("light_y") * y)

    # Smooth power-law texture, unit variance per pixel before scaling.
    tex_filter = _texture_filter(side, params["sharpness"])
    field = np.fft.irfft2(np.fft.rfft2(noise) * tex_filter, s=(side, side))
    on_face = np.minimum(_CLUTTER_ON_FACE * p("clutter"), _FACE_CLUTTER_MAX)
    img = img + field * (p("skin_texture") * face + p("clutter") * (1.0 - face) + on_face * face)
    return np.clip(img, 0.0, 1.0)


def make_synthetic(
    seed: int = 0, n_train: int = 5000, n_test: int = 2500, side: int = 48
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate a synthetic face-to-age dataset.

    Parameters
    ----------
    seed : int
        Seed of ``np.random.default_rng``; equal seeds give identical arrays.
    n_train, n_test : int
        Number of training and test images.
    side : int
        Image side length in pixels.

    Returns
    -------
    Xtr, ytr, Xte, yte : np.ndarray
        Images ``(n, side, side)`` float32 in [0, 1] and ages ``(n,)`` float64 in [0, 100].
    """
    if n_train < 1 or n_test < 1 or side < 4:
        raise DataError(
            f"synthetic data needs n_train >= 1, n_test >= 1 and side >= 4, got "
            f"n_train={n_train}, n_test={n_test}, side={side}"
        )
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    # Train and test are drawn from one pool so they share a distribution.
    ages = _draw_ages(rng, n)
    params = _draw_params(rng, ages)

    images = np.empty((n, side, side), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        chunk = {k: val[start:stop].astype(np.float32) for k, val in params.items()}
        noise = rng.standard_normal((stop - start, side, side), dtype=np.float32)
        images[start:stop] = _render(chunk, noise, side)

    return images[:n_train], ages[:n_train], images[n_train:], ages[n_train:]


# Peak bytes per generated pixel: the float32 result plus float64 working arrays.
BYTES_PER_PIXEL = 24


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux, else the
    physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_size(n_train: int, n_test: int, side: int) -> None:
    """Refuse, before allocating anything, a dataset that would not fit in memory."""
    need = (n_train + n_test) * side * side * BYTES_PER_PIXEL
    have = available_memory()
    if need > have // 2:
        raise DataError(
            f"synth: {n_train:,} + {n_test:,} images of {side}x{side} would need about "
            f"{need / 2**30:,.1f} GiB of memory while generating, more than half of the "
            f"{have / 2**30:,.1f} GiB available; ask for fewer or smaller images")


def _check_overwrite(folder: Path, force: bool) -> None:
    """Refuse to destroy a user's data: an existing data file without ``force``, a course
    file ever (a user who copied the course files into data/ first must not lose them)."""
    existing = [folder / name for name in FILE_NAMES.values() if (folder / name).exists()]
    if not existing:
        return
    if not force:
        raise DataError(f"{existing[0]}: exists; agereg synth never writes over existing files: "
                        "choose another --out, or pass --force to replace them")
    for key, name in FILE_NAMES.items():
        path = folder / name
        if path.is_file() and sha256_file(path) == COURSE_SHA256[key]:
            raise DataError(f"{path}: is one of the course files; agereg synth never "
                            "overwrites them, even with --force: choose another --out")


def write_synthetic(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    n_train: int = 5000,
    n_test: int = 2500,
    side: int = 48,
    force: bool = False,
) -> Path:
    """Generate the synthetic dataset and write it as the four course ``.npy`` files.

    Existing files are never written over without ``force``, and files recognised as the
    course files (by SHA-256) never, even with it.

    Each file is written to a temporary file in ``out_dir`` and moved into place with
    ``os.replace``, so an interrupted run never leaves a truncated array behind. The
    manifest ``synthetic.json`` is removed first and written last, so it is present only
    when all four arrays belong to it.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Destination folder; created with parents if missing.
    seed, n_train, n_test, side : int
        Passed to :func:`make_synthetic`.

    Returns
    -------
    Path
        The destination folder.

    Raises
    ------
    DataError
        If ``out_dir`` is an existing file or cannot be written.
    """
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise DataError(
            f"cannot write synthetic data to {folder}: it is a file, not a folder; "
            "choose another output folder"
        )
    check_size(n_train, n_test, side)
    _check_overwrite(folder, force)
    arrays = dict(
        zip(("Xtr", "ytr", "Xte", "yte"), make_synthetic(seed, n_train, n_test, side), strict=True)
    )
    manifest = {
        "synthetic": True,
        "generator": "agereg synth",
        "version": MANIFEST_VERSION,
        "seed": int(seed),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "side": int(side),
        "note": "synthetic stand-in for the age-regression course files; not real faces",
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A manifest from an earlier run must not vouch for a half-replaced folder.
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        for key, name in FILE_NAMES.items():
            atomic_write(folder / name, functools.partial(_save, array=arrays[key]))
        payload = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
        atomic_write(folder / MANIFEST_NAME, lambda fh: fh.write(payload))
    except OSError as exc:
        raise DataError(
            f"cannot write synthetic data to {folder}: {exc.strerror or exc}; "
            "check that the folder is writable or choose another one"
        ) from exc
    return folder
