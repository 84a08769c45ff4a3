"""Test-set metrics of a trained linear model. numpy only, no I/O."""

from __future__ import annotations

import numpy as np


def predict(X: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """``X w + b`` in float64: ``(N, D) @ (D,) -> (N,)``."""
    return np.asarray(X @ np.asarray(w, dtype=X.dtype), dtype=np.float64) + b


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """fMSE (half the mean squared error), RMSE and MAE in years, and R^2."""
    r = pred - y
    mse = float(np.mean(r * r))
    total = float(np.sum((y - y.mean()) ** 2))
    return {
        "fmse": 0.5 * mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(r))),
        "r2": float(1.0 - np.sum(r * r) / total) if total > 0 else float("nan"),
    }


def mean_baseline(y_train: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Metrics of predicting the training mean for every test image."""
    return regression_metrics(y_test, np.full_like(y_test, float(np.mean(y_train))))
