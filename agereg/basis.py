"""The ridge basis of a run: one eigendecomposition of the centred training matrix
(:class:`~agereg.evaluate.RidgeBasis`), computed once and cached in the run folder
(``ridge_basis_train.npz`` / ``_refit``), decomposed beside the rest of an evaluation.

A cache that does not match the rows (shape, labels), or cannot be read, is computed
again, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from agereg.engine import Arrays
from agereg.evaluate import RidgeBasis, gram
from agereg.fileio import KiB, NotReadable, read_npz, save_npz

Log = Callable[[str], None]

RIDGE_CACHE = "ridge_basis_{kind}.npz"


@contextlib.contextmanager
def ridge_basis_beside(run_dir: Path, rows: Arrays, kind: str, log: Log
                       ) -> Iterator[Callable[[], RidgeBasis]]:
    """The eigendecomposition of the run's centred training matrix, collected by calling
    what the block receives: at once from the cache, or else the Gram matrix now and its
    eigendecomposition in a thread beside the block (cached when collected). Meanwhile
    BLAS keeps one thread (set here, never while a product runs), so the decomposition
    and the block's Python work share the two cores; with two BLAS threads beside the
    pictures the evaluation was slower than without overlap (measured)."""
    X = np.asarray(rows.X_fit, dtype=np.float64)
    y = np.asarray(rows.y_fit, dtype=np.float64)
    stamp = hashlib.sha256(y.tobytes() + np.asarray(X.shape).tobytes()).hexdigest()
    path = run_dir / RIDGE_CACHE.format(kind=kind)
    cached = _cached_basis(path, stamp, X.shape)
    if cached is not None:
        yield lambda: cached
        return
    n, d = X.shape
    log(f"eigendecomposition of the centred training matrix ({n} x {d}, float64; cached "
        "for the next evaluation)")
    g = gram(X, y)
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(1) as pool:
        future = pool.submit(RidgeBasis.decompose, g)
        saving: list[Future[None]] = []

        def collect() -> RidgeBasis:
            basis = future.result()
            if not saving:  # cached beside the rest of the block too
                saving.append(pool.submit(_save_basis, path, basis, stamp))
            return basis

        yield collect
        for done in saving:
            done.result()  # a cache that could not be written says so


def _save_basis(path: Path, basis: RidgeBasis, stamp: str) -> None:
    save_npz(path, M=basis.M, s=basis.s, c=basis.c, x_mean=basis.x_mean,
             y_mean=np.asarray(basis.y_mean), n=np.asarray(basis.n), stamp=np.asarray(stamp))


def _cached_basis(path: Path, stamp: str, shape: tuple[int, int]) -> RidgeBasis | None:
    """The cached basis when it is readable and made from these rows; None otherwise (a
    FIFO or an oversized file is not read)."""
    n, d = shape
    limit = 8 * (d * min(n, d) + 2 * min(n, d) + d) + 64 * KiB
    try:
        z = read_npz(path, limit)
        if str(z["stamp"]) == stamp and z["M"].shape[0] == d:
            return RidgeBasis(z["M"], z["s"], z["c"], z["x_mean"], float(z["y_mean"]),
                              int(z["n"]))
    except (OSError, KeyError, ValueError, NotReadable):
        pass  # missing or damaged: computed again
    return None
