"""The pictures: plain arrays in, PNG bytes out. The only module that imports matplotlib.

Every function draws one figure of a fixed size at :data:`DPI` (no tight bounding box,
so the pixel size is known in advance: see :data:`SIZES`), renders it to PNG bytes and
closes it. Writing the bytes to a file is the caller's job.
"""

from __future__ import annotations

import contextlib
import io
import math
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # headless: no display needed, same pixels everywhere

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, NullFormatter, NullLocator

from agereg.words import counted

DPI = 100
# Figure sizes in inches; x DPI gives the PNG's pixels (all products are whole numbers).
SIZES: dict[str, tuple[float, float]] = {
    "weights": (5.0, 4.0),  # 500 x 400
    "worst_test": (10.0, 2.5),  # 1000 x 250
    "pred_vs_true": (5.0, 5.0),  # 500 x 500
    "val_vs_epochs": (7.0, 4.0),  # 700 x 400
    "cumulative_score": (5.0, 4.0),  # 500 x 400
    "error_by_age": (7.0, 4.0),  # 700 x 400
    "ridge_path": (6.0, 4.0),  # 600 x 400
    "halving_rungs": (6.0, 4.0),  # 600 x 400
    "gradient_noise": (6.0, 4.0),  # 600 x 400
    "lr_vs_batch": (6.0, 4.0),  # 600 x 400
}
HEATMAP_PANEL = (4.0, 4.0)  # per batch size; plus HEATMAP_EXTRA_WIDTH for the colorbar
HEATMAP_EXTRA_WIDTH = 1.0
HEATMAP_MAX_COLUMNS = 4
# Colours span at most this factor above the best loss: the scale is spent where the good
# cells are (a nearly diverged trial with a loss of 1e188, or a row of untrained 860s,
# would otherwise paint every sensible cell the same colour); worse cells get the top one.
HEATMAP_COLOUR_RANGE = 2.0
# With more distinct values on an axis (random draws), cells are drawn as points on log
# axes instead: a heatmap of 60 x 60 mostly empty cells is unreadable.
HEATMAP_MAX_VALUES = 12
LEGEND_SURVIVORS = 5  # halving_rungs names this many of the last rung's survivors
OTHER_SURVIVORS = "#9ecae1"  # ... and draws the others in this light blue
TITLE_WIDTH = 60  # characters per title line at fontsize 9 in a 5-inch picture


def heatmap_size(n_batch_sizes: int) -> tuple[float, float]:
    """Figure size of the validation heatmap: panels in rows of at most 4, one colorbar."""
    cols = min(max(n_batch_sizes, 1), HEATMAP_MAX_COLUMNS)
    rows = math.ceil(max(n_batch_sizes, 1) / HEATMAP_MAX_COLUMNS)
    return HEATMAP_PANEL[0] * cols + HEATMAP_EXTRA_WIDTH, HEATMAP_PANEL[1] * rows


def _wrap(title: str, width: int = TITLE_WIDTH) -> str:
    """A title broken into lines that fit a 500-pixel picture (drawn values such as
    learning_rate 0.00347532 make trial titles longer than one line)."""
    return textwrap.fill(title, width)


@contextlib.contextmanager
def _figure(size: tuple[float, float], rows: int = 1, cols: int = 1, fixed: bool = False
            ) -> Iterator[tuple[Figure, np.ndarray]]:
    """A new figure and its (rows, cols) axes, closed on exit whatever happens. Constrained
    layout fits labels and colorbars inside the fixed figure size; a ``fixed`` figure is
    placed by :func:`_margins` instead (half the drawing time: the layout costs a drawing
    pass of its own)."""
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False,
                             layout=None if fixed else "constrained")
    try:
        yield fig, axes
    finally:
        plt.close(fig)


LINE = 0.17  # inches per line of a 9-10 point title
CHAR = 0.085  # inches per character of a 10-point tick label (digits, minus, dot)


def _margins(fig: Figure, title: str = "", ax: Axes | None = None, left: float = 0.7,
             bottom: float = 0.5, right: float = 0.15, top: float = 0.1, **space: float
             ) -> None:
    """Fixed margins in inches, with room for each line of ``title`` on top and, given
    the plotted ``ax``, for its widest y tick label and the y label on the left (call it
    when the axes' limits are final)."""
    w, h = fig.get_size_inches()
    top += LINE * (title.count("\n") + 1) if title else 0
    if ax is not None:
        labels = ax.yaxis.get_major_formatter().format_ticks(list(ax.get_yticks()))
        chars = max((4 if t.startswith("$") else len(t) for t in labels), default=3)
        left = 0.4 + CHAR * chars
    fig.subplots_adjust(left=left / w, bottom=bottom / h, right=1 - right / w,
                        top=1 - top / h, **space)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _finish(ax: Axes, xlabel: str, ylabel: str, title: str, *, title_size: int = 10,
            legend: bool = True, legend_size: int = 7,
            legend_loc: Literal["best", "lower left", "lower right"] = "best",
            legend_alpha: float | None = None,
            grid_which: Literal["major", "both"] = "major",
            grid_axis: Literal["both", "y"] = "both") -> None:
    """The common finish of a line or bar plot: axis labels, a light grid, the legend
    (when ``legend``) and the title."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which=grid_which, axis=grid_axis, alpha=0.3)
    if legend:
        ax.legend(fontsize=legend_size, loc=legend_loc, framealpha=legend_alpha)
    ax.set_title(title, fontsize=title_size)


def _symmetric_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    m = float(finite.max()) if finite.size else 0.0
    return m if m > 0 else 1.0


def weights_image(w: np.ndarray, image_shape: tuple[int, ...], title: str = "") -> bytes:
    """The weight vector as an image, diverging colours with zero at the centre."""
    with _figure(SIZES["weights"], fixed=True) as (fig, axes):
        ax = axes[0, 0]
        img = np.asarray(w, dtype=np.float64).reshape(image_shape)
        m = _symmetric_limit(img)
        title = _wrap(title or "weights (red raises, blue lowers the predicted age)")
        _margins(fig, left=0.15, bottom=0.15, right=0.15, title=title)
        im = ax.imshow(img, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        fig.colorbar(im, ax=ax, label="weight (years per unit of pixel)")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
        return _png(fig)


def worst_test(
    X: np.ndarray, y: np.ndarray, pred: np.ndarray, image_shape: tuple[int, ...], k: int = 5
) -> bytes:
    """The ``k`` test images with the largest absolute errors, with true and predicted age:
    one mosaic (each image scaled to its own grey range, as imshow would), drawn in one
    axes (a third of the time of one axes per image)."""
    with _figure(SIZES["worst_test"], fixed=True) as (fig, axes):
        ax = axes[0, 0]
        _margins(fig, left=0.1, bottom=0.1, right=0.1, top=0.6)
        order = np.argsort(-np.abs(pred - y), kind="stable")[:k]
        h, w = image_shape
        # tiles at least a k-th of the width apart, so that tall narrow images still leave
        # room for their titles: (10 - 0.2) inches wide and (2.5 - 0.7) high for the row
        pitch = h * (SIZES["worst_test"][0] - 0.2) / k / (SIZES["worst_test"][1] - 0.7)
        gap = max(1, w // 6, round(pitch - w))
        tiles = np.full((h, k * w + (k - 1) * gap), np.nan)  # NaN: the white gaps
        for j, i in enumerate(order):
            img = np.asarray(X[i], dtype=np.float64).reshape(h, w)
            lo, hi = float(img.min()), float(img.max())
            tiles[:, j * (w + gap): j * (w + gap) + w] = (img - lo) / (hi - lo or 1.0)
            ax.annotate(f"true {y[i]:.0f}, predicted {pred[i]:.1f}",
                        (j * (w + gap) + (w - 1) / 2, -0.5), xytext=(0, 4),  # above its top
                        textcoords="offset points", ha="center", va="bottom", fontsize=9)
        ax.imshow(tiles, cmap=colormaps["gray"].with_extremes(bad="white"), vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_axis_off()
        fig.suptitle(f"the {len(order)} test images with the largest absolute errors"
                     if len(order) != 1 else "the test image and its absolute error",
                     fontsize=10)
        return _png(fig)


FEW_POINTS = 200  # pred_vs_true draws this many images or fewer as larger, solid dots


def pred_vs_true(y: np.ndarray, pred: np.ndarray, title: str = "") -> bytes:
    """Predicted against true age on the test set, with the line y = x."""
    with _figure(SIZES["pred_vs_true"], fixed=True) as (fig, axes):
        ax = axes[0, 0]
        title = _wrap(title or "test set")
        few = y.size <= FEW_POINTS  # a handful of images: larger, solid dots that show
        ax.scatter(y, pred, s=24 if few else 8, alpha=0.9 if few else 0.4, edgecolors="none")
        both = np.concatenate([y, pred])
        both = both[np.isfinite(both)]
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="y = x")
        ax.set_xlabel("true age (years)")
        ax.set_ylabel("predicted age (years)")
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(loc="best")  # away from the points (one image sat under "upper left")
        _margins(fig, ax=ax, title=title)
        return _png(fig)


@dataclass(frozen=True)
class GridCells:
    """Validation loss over the grid, min over epochs: ``values[i, j, k]`` for batch size
    ``i``, learning rate ``j`` and l2 ``k``; NaN where no finished trial exists.
    ``bad[i, j, k]`` marks cells that were run but whose trials all diverged or failed."""

    batch_sizes: tuple[int, ...]
    learning_rates: tuple[float, ...]
    l2s: tuple[float, ...]
    values: np.ndarray  # (S, L, R) float64
    bad: np.ndarray  # (S, L, R) bool
    epochs: np.ndarray | None = None  # (S, L, R) int: the epoch count of each cell's value


def _norm(values: np.ndarray) -> Normalize:
    """Log colours (over at most HEATMAP_COLOUR_RANGE) when every finite loss is positive
    and they differ, linear otherwise. Larger losses get the top colour."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return Normalize(0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return Normalize(lo, lo + 1.0)
    if lo > 0:
        return Normalize(lo, min(hi, lo * HEATMAP_COLOUR_RANGE))
    return Normalize(lo, hi)


def heatmap_val(cells: GridCells, points: bool = False) -> bytes:
    """One heatmap of validation fMSE over learning_rate x l2 per batch size (with
    ``points``, or more than HEATMAP_MAX_VALUES values on an axis: one point per
    configuration on log axes, the view of random and refine).

    Grey cells with an x: every trial diverged or failed. White: not run. A red frame
    marks the best cell overall (a red square, the best point). Colours run linearly from
    the best to :data:`HEATMAP_COLOUR_RANGE` times the best; worse cells get the top one.
    """
    n = len(cells.batch_sizes)
    cols = min(max(n, 1), HEATMAP_MAX_COLUMNS)
    rows = math.ceil(max(n, 1) / HEATMAP_MAX_COLUMNS)
    with _figure(heatmap_size(n), rows, cols) as (fig, axes):
        norm = _norm(cells.values)
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        has_best = bool(np.isfinite(cells.values).any())
        best = np.unravel_index(np.nanargmin(cells.values), cells.values.shape) \
            if has_best else None
        annotate = len(cells.learning_rates) * len(cells.l2s) <= 36  # room for numbers
        for ax in axes.flat[n:]:
            ax.set_axis_off()
        im = None
        scatter = points or max(len(cells.learning_rates), len(cells.l2s)) > HEATMAP_MAX_VALUES
        for i, (ax, bs) in enumerate(zip(axes.flat, cells.batch_sizes, strict=False)):
            if scatter:
                im = _scatter_panel(ax, cells, i, norm, cmap, best)
                ax.set_title(f"batch size {bs}", fontsize=10)
                continue
            v = np.ma.masked_invalid(cells.values[i])  # (L, R)
            im = ax.imshow(v, cmap=cmap, norm=norm, origin="lower", aspect="auto")
            for j, k in zip(*np.nonzero(cells.bad[i]), strict=True):
                ax.add_patch(Rectangle((k - 0.5, j - 0.5), 1, 1, color="0.7"))
                ax.text(k, j, "x", ha="center", va="center", color="0.2", fontsize=11)
            if annotate:  # the value and, below it, the epoch count that reached it
                for j, k in zip(*np.nonzero(np.isfinite(cells.values[i])), strict=True):
                    val = float(cells.values[i, j, k])
                    text = f"{val:.4g}"
                    if cells.epochs is not None and cells.epochs[i, j, k] > 0:
                        text += f"\n{int(cells.epochs[i, j, k])} ep"
                    ax.text(k, j, text, ha="center", va="center", fontsize=8,
                            color="white" if norm(val) < 0.5 else "black")
            if best is not None and best[0] == i:
                ax.add_patch(Rectangle((best[2] - 0.5, best[1] - 0.5), 1, 1, fill=False,
                                       edgecolor="red", linewidth=3.5))
            ax.set_xticks(range(len(cells.l2s)), [f"{x:g}" for x in cells.l2s], fontsize=9,
                          rotation=45)
            ax.set_yticks(range(len(cells.learning_rates)),
                          [f"{x:g}" for x in cells.learning_rates], fontsize=9)
            ax.set_xlabel("l2")
            ax.set_ylabel("learning rate")
            ax.set_title(f"batch size {bs}", fontsize=10)
        if im is not None and has_best:  # no colours to explain when nothing finished
            finite = cells.values[np.isfinite(cells.values)]
            clipped = bool(finite.size) and norm.vmax is not None and \
                float(finite.max()) > float(norm.vmax)
            fig.colorbar(im, ax=list(axes.flat),
                         label=f"validation fMSE (top: >= {HEATMAP_COLOUR_RANGE:g} x best)",
                         extend="max" if clipped else "neither")
        # on two lines where one does not fit the figure (one batch size makes a 5-inch
        # picture, narrower than the title at 11 points), the key on the second
        fits = int(fig.get_size_inches()[0] * TITLE_WIDTH / 5 * 9 / 11)
        what, key = ("validation fMSE at the best epoch count per cell",
                     "(grey x: diverged or failed; red frame: best)")
        fig.suptitle(f"{what} {key}" if len(what) + len(key) < fits else f"{what}\n{key}",
                     fontsize=11)
        return _png(fig)


def _scatter_panel(ax: Axes, cells: GridCells, i: int, norm: Normalize, cmap: Colormap,
                   best: tuple | None) -> PathCollection:
    """One batch size's configurations as points: l2 across (symmetric log, so 0 shows),
    learning rate up (log), colour the validation loss."""
    lr = np.asarray(cells.learning_rates)
    l2 = np.asarray(cells.l2s)
    ok = np.isfinite(cells.values[i])
    j, k = np.nonzero(ok)
    im = ax.scatter(l2[k], lr[j], c=cells.values[i][ok], cmap=cmap, norm=norm, s=36,
                    edgecolors="none")
    jb, kb = np.nonzero(cells.bad[i])
    ax.scatter(l2[kb], lr[jb], marker="x", color="0.5", s=30)
    if best is not None and best[0] == i:
        ax.scatter([l2[best[2]]], [lr[best[1]]], marker="s", s=140, facecolors="none",
                   edgecolors="red", linewidths=2)
    positive = l2[l2 > 0]
    ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1e-12)
    ax.set_yscale("log")
    ax.set_xlabel("l2")
    ax.set_ylabel("learning rate")
    ax.tick_params(labelsize=7)
    return im


@dataclass(frozen=True)
class Curve:
    """Validation loss of one (batch_size, learning_rate, l2) configuration by epochs."""

    label: str
    epochs: tuple[int, ...]
    val: tuple[float, ...]  # NaN where that epoch count diverged or failed
    marks: tuple[int, ...] = ()  # the searched epoch counts, marked on a full curve


def val_vs_epochs(curves: Sequence[Curve]) -> bytes:
    """Validation fMSE against epochs, one line per configuration (best first)."""
    with _figure(SIZES["val_vs_epochs"], fixed=True) as (fig, axes):
        ax = axes[0, 0]
        positive = True
        lo, hi = np.inf, 0.0
        for c in curves:
            v = np.asarray(c.val, dtype=np.float64)
            positive &= bool(np.all(v[np.isfinite(v)] > 0))
            if np.isfinite(v).any():
                lo, hi = min(lo, float(np.nanmin(v))), max(hi, float(np.nanmax(v)))
            if c.marks:  # a full learning curve: a line, with the searched epochs marked
                at = [i for i, e in enumerate(c.epochs) if e in set(c.marks)]
                ax.plot(c.epochs, v, label=c.label, marker="o", markevery=at, markersize=4)
            else:
                ax.plot(c.epochs, v, marker="o", label=c.label)
        if not curves:
            ax.text(0.5, 0.5, "no finished trial", ha="center", va="center",
                    transform=ax.transAxes)
        elif positive and hi > 10 * lo:  # a log axis only where the range needs one
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # ticks at the searched epoch counts: the marks of full curves, else the points
        marks = sorted({m for c in curves for m in (c.marks or c.epochs)})
        if 0 < len(marks) <= 12:
            ax.set_xticks(marks)
        # a see-through legend: lines that run together stay visible behind it
        _finish(ax, "epochs", "validation fMSE",
                ("validation fMSE of the best configuration" if len(curves) == 1 else
                 f"validation fMSE of the best {len(curves)} configurations") if curves
                else "validation fMSE: no finished trial",
                legend=bool(curves), legend_size=8, legend_alpha=0.6)
        _margins(fig, ax=ax, title="validation fMSE of the best configurations")
        return _png(fig)


def cumulative_score(thetas: Sequence[int], shares: Sequence[float],
                     baseline: Sequence[float] | None = None, title: str = "") -> bytes:
    """CS(theta) against theta, with the median predictor's for comparison."""
    with _figure(SIZES["cumulative_score"], fixed=True) as (fig, axes):
        ax = axes[0, 0]
        title = _wrap("cumulative score on the test set" + (f": {title}" if title else ""))
        ax.plot(thetas, 100 * np.asarray(shares), marker="o", markersize=3, label="this trial")
        if baseline is not None:
            ax.plot(thetas, 100 * np.asarray(baseline), linestyle="--", color="grey",
                    label="median predictor")
        for t in (5, 10):
            if t in thetas:
                v = 100 * shares[list(thetas).index(t)]
                ax.annotate(f"CS({t}) = {v:.1f}%", (t, v), textcoords="offset points",
                            xytext=(6, -12), fontsize=8)
        ax.set_ylim(0, 100)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(ax, "theta (years)", "test images with |error| <= theta (%)", title,
                title_size=9, legend_size=8, legend_loc="lower right")
        _margins(fig, ax=ax, title=title)
        return _png(fig)


def error_by_age(rows: Sequence[dict]) -> bytes:
    """MAE and mean signed error per decade of true age, with each decade's count."""
    with _figure(SIZES["error_by_age"], fixed=True) as (fig, axes):
        ax = axes[0, 0]
        names = [str(r["decade"]) for r in rows]
        x = np.arange(len(rows))
        mae = [float(r["mae"]) for r in rows]
        signed = [float(r["mean_signed_error"]) for r in rows]
        ax.bar(x - 0.2, mae, width=0.4, label="MAE", color="tab:blue")
        ax.bar(x + 0.2, signed, width=0.4, label="mean signed error (+: too old)",
               color="tab:orange")
        ax.axhline(0, color="black", linewidth=0.8)
        for xi, m, r in zip(x, mae, rows, strict=True):
            ax.annotate(f"n={r['count']}", (xi - 0.2, m), textcoords="offset points",
                        xytext=(0, 3), ha="center", fontsize=7)
        ax.set_xticks(x, names)
        _finish(ax, "true age (years)", "error (years)", "test error by decade of true age",
                legend_size=8, grid_axis="y")
        _margins(fig, ax=ax, title="test error by decade of true age")
        return _png(fig)


def gradient_noise(series: Sequence[tuple[str, dict]]) -> bytes:
    """Measured minibatch gradient variance against batch size (log-log), one colour per
    point of measurement, with the law tr(Sigma)/B (N-B)/(N-1) drawn as a line."""
    with _figure(SIZES["gradient_noise"]) as (fig, axes):
        ax = axes[0, 0]
        for (name, d), colour in zip(series, ("tab:blue", "tab:orange"), strict=False):
            b = np.asarray(d["batch_sizes"], dtype=np.float64)
            ax.plot(b, d["law"], color=colour, linewidth=1,
                    label=f"law at {name}: tr(Sigma)/B (N-B)/(N-1)")
            slope = d.get("slope")
            ax.plot(b, d["measured"], "o", color=colour, markersize=4,
                    label=f"measured at {name}" + ("" if slope is None else
                                                   f" (slope {slope:.2f})"))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _finish(ax, "batch size B (drawn without replacement)", "E |g_B - G|^2",
                "minibatch gradient noise against batch size", legend_loc="lower left",
                grid_which="both")
        return _png(fig)


def lr_vs_batch(batch_sizes: Sequence[int], best_lr: Sequence[float], lr_limit: float,
                fastest: tuple[Sequence[float], Sequence[float]] | None = None) -> bytes:
    """The run's best learning rate per batch size, with the linear and square-root rules
    anchored at the smallest batch size, the full-batch limit 2/lambda_max and, given as
    (batch sizes, learning rates), the fastest step B / (beta + (B - 1) lambda_max)."""
    with _figure(SIZES["lr_vs_batch"]) as (fig, axes):
        ax = axes[0, 0]
        b = np.asarray(batch_sizes, dtype=np.float64)
        lr0 = float(best_lr[0])
        grid = np.geomspace(b[0], b[-1], 50)
        ax.plot(b, best_lr, "o-", color="black", label="best learning rate of the run")
        ax.plot(grid, lr0 * grid / b[0], "--", label="linear rule: lr ~ B")
        ax.plot(grid, lr0 * np.sqrt(grid / b[0]), ":", label="square-root rule: lr ~ sqrt(B)")
        ax.axhline(lr_limit, color="red", linewidth=0.8, label="full-batch limit 2/lambda_max")
        if fastest is not None:
            ax.plot(*fastest, "-.", color="green",
                    label="fastest step B / (beta + (B-1) lambda_max)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        if len(b) <= 12:  # the batch sizes themselves as plain numbers, not 2 x 10^1
            ax.set_xticks(b, [f"{int(v)}" for v in b])
            ax.xaxis.set_minor_formatter(NullFormatter())
        _finish(ax, "batch size", "learning rate", "best learning rate against batch size",
                grid_which="both")
        return _png(fig)


def ridge_path(path: dict) -> bytes:
    """Validation and test fMSE of the exact ridge solution against l2, with the SGD
    trials' best validation fMSE at each searched l2 overlaid. The l2 axis is logarithmic;
    when l2 = 0 is on it (a grid with l2: [0], the path's start), symmetric-log, linear
    below the smallest positive l2, so that 0 shows (as the heat map's points do)."""
    with _figure(SIZES["ridge_path"], fixed=True) as (fig, axes):
        ax = axes[0, 0]
        l2 = np.asarray(path["l2"], dtype=np.float64)
        sgd = list(path.get("sgd_val_by_l2", []))
        every = np.concatenate([l2, [a for a, _ in sgd]])
        positive = every[every > 0]
        zero = bool((every == 0).any()) and positive.size > 0
        keep = l2 >= 0 if zero else l2 > 0
        if path.get("val_fmse") is not None:
            ax.plot(l2[keep], np.asarray(path["val_fmse"])[keep],
                    label="exact ridge: validation")
        ax.plot(l2[keep], np.asarray(path["test_fmse"])[keep], linestyle="--",
                label="exact ridge: test")
        shown = [(a, v) for a, v in sgd if a > 0 or zero]
        if shown:
            ax.plot([a for a, _ in shown], [v for _, v in shown], "o", color="black",
                    label="SGD trials: best validation at that l2")
        if path.get("best_l2"):
            ax.axvline(path["best_l2"], color="grey", linewidth=0.8,
                       label=f"best ridge l2 {path['best_l2']:.3g}")
        if zero:
            ax.set_xscale("symlog", linthresh=float(positive.min()), linscale=1.0)
            lo = math.floor(math.log10(float(positive.min())))
            hi = math.ceil(math.log10(float(every.max())))
            step = max(1, math.ceil((hi - lo) / 7))  # at most 8 decade labels
            decades = list(range(lo, hi + 1, step))
            ax.set_xticks([0.0] + [10.0**k for k in decades],
                          ["0"] + [f"$10^{{{k}}}$" for k in decades])
            ax.xaxis.set_minor_locator(NullLocator())
            # a little room left of 0, so that a point there is not cut in half
            ax.set_xlim(-0.25 * float(positive.min()), float(every.max()) * 1.5)
        else:
            ax.set_xscale("log")
        _finish(ax, "l2", "fMSE", "exact ridge solutions over l2, and the SGD trials",
                grid_which="both")
        _margins(fig, ax=ax, title="exact ridge solutions over l2, and the SGD trials")
        return _png(fig)


@dataclass(frozen=True)
class RungView:
    """What :func:`halving_rungs` draws: each configuration's (epochs, validation fMSE)
    points by rung, the colours of the best survivors (the others are light blue), and
    where the y axis ends (None: where matplotlib puts it) with how many points lie
    above that edge."""

    points: dict[tuple, list[tuple[int, float]]]
    rungs: tuple[int, ...]
    colour: dict[tuple, str]
    survivors: int
    top: float | None
    bottom: float | None  # with top: the y axis's lower end
    above: int

    @property
    def last(self) -> int:
        """The last rung (0 when nothing finished)."""
        return self.rungs[-1] if self.rungs else 0


def rung_view(records: Sequence) -> RungView:
    """The survivors come first: the y axis ends a little above the worst value of any
    configuration that went on past its first rung (the worst of those stopped there,
    often ten times the best, would flatten every line that went on), and the best
    :data:`LEGEND_SURVIVORS` survivors by their last value get colours and names of their
    own."""
    points: dict[tuple, list[tuple[int, float]]] = {}
    for r in records:
        if r.val_loss is not None:
            points.setdefault(r.column(), []).append((r.epochs, r.val_loss))
    for pts in points.values():
        pts.sort()
    rungs = tuple(sorted({e for pts in points.values() for e, _ in pts}))
    last = rungs[-1] if rungs else 0
    survivors = sorted((pts[-1][1], column) for column, pts in points.items()
                       if pts[-1][0] == last)
    colour = {column: f"C{k}" for k, (_, column) in enumerate(survivors[:LEGEND_SURVIVORS])}
    values = [y for pts in points.values() for _, y in pts]
    went_on = [y for pts in points.values() if len(pts) > 1 for _, y in pts]
    top = bottom = None
    above = 0
    if went_on:
        lo, hi = min(values), max(went_on)
        edge = hi + 0.25 * (hi - lo) if hi > lo else hi * 1.1
        above = sum(y > edge for y in values)
        if above:
            top, bottom = edge, lo - 0.05 * (edge - lo)
    return RungView(points, rungs, colour, len(survivors), top, bottom, above)


def halving_rungs(records: Sequence) -> bytes:
    """Validation fMSE of each configuration at each rung (epoch count) it reached: the
    best survivors of the last rung in colour and named, the other survivors light blue,
    the configurations stopped earlier grey; the y axis as :func:`rung_view` sets it."""
    view = rung_view(records)
    with _figure(SIZES["halving_rungs"]) as (fig, axes):
        ax = axes[0, 0]
        for column, pts in sorted(view.points.items(), key=lambda kv: len(kv[1])):
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            named, survived = column in view.colour, xs[-1] == view.last
            ax.plot(xs, ys, marker="o", markersize=3,
                    linewidth=1.4 if named else 0.8 if survived else 0.6,
                    color=view.colour.get(column, OTHER_SURVIVORS if survived else "0.75"),
                    alpha=1.0 if survived else 0.7,
                    label=f"batch {column[0]}, lr {column[1]:.3g}, l2 {column[2]:.3g}"
                    if named else None, zorder=4 if named else 3 if survived else 1)
        if view.rungs:
            ax.set_xticks(view.rungs)
        title = "successive halving: configurations by rung (grey: stopped)"
        if view.top is not None:
            ax.set_ylim(view.bottom, view.top)
            title += (f";\n{counted(view.above, 'stopped value')} above the "
                      "top edge")
        elif len(view.rungs) == 1:  # nothing went on: the whole range is the story
            values = [y for pts in view.points.values() for _, y in pts]
            if min(values) > 0 and max(values) > 10 * min(values):
                ax.set_yscale("log")
        _finish(ax, "epochs (rungs)", "validation fMSE", title, legend=bool(view.colour))
        legend = ax.get_legend()
        if legend is not None and view.survivors > len(view.colour):
            legend.set_title(f"the best {len(view.colour)} of {view.survivors} survivors "
                             "(light blue: the others)", prop={"size": 7})
        return _png(fig)
