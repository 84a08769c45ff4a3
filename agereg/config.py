"""Load, validate and write the YAML config of a hyperparameter search.

The config is validated once, here, at the boundary: everything after
:func:`load_config` can trust a :class:`Config`. Every problem raises
:class:`~agereg.errors.ConfigError` with a one-line message that starts with the
file name, names the key and the bad value, and says how to fix it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agereg.errors import ConfigError
from agereg.fileio import NotReadable, read_regular

__all__ = [
    "BACKENDS",
    "ENGINES",
    "LOSSES",
    "PRECISIONS",
    "SCHEDULER_SCHEMES",
    "STRATEGIES",
    "Config",
    "DataConfig",
    "Distribution",
    "ExecutionConfig",
    "Grid",
    "SearchConfig",
    "SplitConfig",
    "apply_overrides",
    "config_digest",
    "config_to_dict",
    "dump_config",
    "load_config",
    "parse_config",
    "result_defining",
]

ENGINES = ("batched", "reference")
PRECISIONS = ("float64", "float32")
BACKENDS = ("loky", "threading", "dask")
SCHEDULER_SCHEMES = ("tcp://", "tls://", "inproc://", "ucx://")
STRATEGIES = ("grid", "random", "halving", "refine")
ON_ERROR = ("record", "stop")
CONFIG_LIMIT = 1 << 20  # 1 MiB: a larger file is not a config (and YAML would take minutes)
SELECT = ("best", "one_se")
SELECT_BY = ("fmse", "mae")
DISTRIBUTIONS = ("log_uniform", "uniform")

_TOP_KEYS = (
    "grid", "seed", "name", "n_jobs", "max_trials", "data", "split", "execution", "search",
    "on_error", "select", "select_by",
)  # fmt: skip
_GRID_KEYS = ("batch_size", "learning_rate", "epochs", "l2", "loss")
_REQUIRED_GRID_KEYS = ("batch_size", "learning_rate", "epochs", "l2")
LOSSES = ("squared", "absolute")
_DATA_KEYS = ("dir",)
_SPLIT_KEYS = ("seed", "val_fraction", "folds")
_EXECUTION_KEYS = ("engine", "precision", "backend", "scheduler", "curves")
_SEARCH_KEYS = ("strategy", "n_trials", "seed", "eta", "rounds", "points", "tol")
# The keys each strategy reads; any other search key is an error that says so.
_STRATEGY_KEYS = {
    "grid": (),
    "random": ("n_trials", "seed"),
    "halving": ("n_trials", "seed", "eta"),
    "refine": ("n_trials", "seed", "rounds", "points", "tol"),
}

# Integers end up in numpy seeds, joblib and run metadata; anything outside int64 is a typo.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
MAX_SEED = _INT_MAX  # a seed, a count or an index read back must fit what a config accepts
# Plain ASCII decimal numbers only: float() would also take "1_0", "infinity", "nan"
# and digits of other scripts.
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d{1,30}", re.ASCII)
_NON_FINITE = {"inf", "infinity", "nan", ".inf", ".nan"}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")

_Num = TypeVar("_Num", int, float)


@dataclass(frozen=True)
class Distribution:
    """A continuous range to draw from: ``uniform`` or ``log_uniform`` on [low, high]."""

    kind: str
    low: float
    high: float


Axis = tuple[float, ...] | Distribution


@dataclass(frozen=True)
class Grid:
    """The hyperparameter space: every combination of the listed values is one trial.

    Each tuple holds distinct values sorted ascending, so the trial order does not depend
    on how the config file listed them. ``learning_rate`` and ``l2`` may instead be a
    :class:`Distribution` (random, halving and refine draw from it).
    """

    batch_size: tuple[int, ...]
    learning_rate: Axis
    epochs: tuple[int, ...]
    l2: Axis
    loss: tuple[str, ...] = ("squared",)  # training losses, in LOSSES order

    def __len__(self) -> int:
        """Return the number of trials, the product of the four lengths (0 when an axis
        is a distribution: the strategy decides how many trials it draws)."""
        return _n_trials(self)

    def is_finite(self) -> bool:
        return not any(isinstance(a, Distribution) for a in (self.learning_rate, self.l2))


@dataclass(frozen=True)
class SearchConfig:
    """The search strategy and its settings (see README, "Search strategies")."""

    strategy: str = "grid"
    n_trials: int | None = None
    seed: int | None = None  # None: the top-level seed
    eta: int = 3
    rounds: int = 3
    points: int = 4
    tol: float = 1e-3


@dataclass(frozen=True)
class DataConfig:
    """Where the dataset lives.

    ``dir`` is kept as written; a relative path is relative to the current
    working directory of whoever reads the data.
    """

    dir: str = "data"


@dataclass(frozen=True)
class SplitConfig:
    """How the training data is split: a holdout of ``val_fraction``, or, with ``folds``
    (K >= 2), K-fold cross-validation (``val_fraction`` is then not used)."""

    seed: int = 0
    val_fraction: float = 0.2
    folds: int | None = None


@dataclass(frozen=True)
class ExecutionConfig:
    """How trials are computed and where they run.

    ``scheduler`` is a dask scheduler address; it is required with backend
    ``"dask"`` and not allowed with any other backend.
    """

    engine: str = "batched"
    precision: str = "float64"
    backend: str = "loky"
    scheduler: str | None = None
    curves: bool = True  # learning curves (curves.csv); never changes a number


@dataclass(frozen=True)
class Config:
    """A validated search config.

    ``n_jobs`` follows joblib (-1 all cores, -2 all but one, or a positive
    count); a grid with more than ``max_trials`` trials is refused. ``on_error`` is what a
    trial that raises does: ``record`` (saved as failed, the search goes on) or ``stop``.
    Either way the search exits non-zero and ``--resume`` trains failed trials again.
    ``select`` is the rule that picks the best trial: ``best`` (lowest validation loss) or
    ``one_se`` (the most regularised trial within one standard error of it);
    ``select_by`` the validation figure that ranks and selects: ``fmse`` or ``mae``.
    """

    grid: Grid
    seed: int = 0
    name: str = "search"
    n_jobs: int = -1
    max_trials: int = 100_000
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    on_error: str = "record"
    select: str = "best"
    select_by: str = "fmse"


class _Invalid(Exception):
    """A validation failure, before the file name or option is put in front of it."""


class _DuplicateKey(Exception):
    """A key set twice in one YAML mapping: where (line, column), and where first."""

    def __init__(self, key: object, at: tuple[int, int], first: tuple[int, int]) -> None:
        self.key, self.at, self.first = key, at, first

    def where(self) -> str:
        (line, col), (first, first_col) = self.at, self.first
        if line == first:  # a flow mapping, {seed: 1, seed: 2}
            return (f"line {line}, column {col} sets {_show(self.key)} again (first set at "
                    f"column {first_col})")
        return f"line {line} sets {_show(self.key)} again (first set on line {first})"


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping, which YAML
    would otherwise settle silently by keeping the last (a second ``learning_rate:`` line
    would drop the first). Keys brought in by a ``<<`` merge may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, tuple[int, int]] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                mark = key_node.start_mark
                at = (mark.line + 1, mark.column + 1)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
                if first is not None:
                    raise _DuplicateKey(key, at, first)
                seen[key] = at
        return super().construct_mapping(node, deep=deep)


# --------------------------------------------------------------------------- public API


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file.

    Parameters
    ----------
    path
        The config file.

    Returns
    -------
    Config
        The validated config, every default filled in.

    Raises
    ------
    ConfigError
        For any problem with the file or its contents, and for nothing else.
    """
    try:
        file = Path(path)
    except TypeError:
        raise ConfigError(f"config path {_show(path)} is not a file path") from None
    source = file.name or str(file)
    text = _read_text(file, source)
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader
    except _DuplicateKey as dup:
        raise _error(
            f"{source}: {dup.where()}; YAML would keep only the last, so delete one of them"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ", ".join(filter(None, [exc.context, exc.problem])) or "invalid syntax"
        raise _error(f"{source}: YAML syntax error{where}: {problem}; fix the YAML there") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise _error(
            f"{source}: line {line} holds the control character U+{exc.character:04X}, "
            "which YAML does not allow; delete it"
        ) from None
    except RecursionError:
        raise _error(f"{source}: the YAML is nested too deeply; flatten it") from None
    except Exception as exc:
        # PyYAML's value constructors leak ValueError, KeyError, AttributeError... for
        # things like "2020-13-45" or "!!bool maybe"; they are all bad config values.
        detail = f"{type(exc).__name__}: {exc}"[:120]
        raise _error(
            f"{source}: YAML could not read a value ({detail}); check dates and !!tags"
        ) from None
    return parse_config(raw, source)


def parse_config(raw: object, source: str) -> Config:
    """Validate what ``yaml.safe_load`` returned for a config file.

    Parameters
    ----------
    raw
        The loaded YAML document.
    source
        The file name to start error messages with.

    Returns
    -------
    Config
        The validated config; grid values are distinct and sorted ascending.

    Raises
    ------
    ConfigError
        With a one-line message naming the key, the value and the fix.
    """
    if raw is None:
        raise _error(f"{source}: the config file is empty; add at least a grid: section")
    try:
        return _parse(raw)
    except _Invalid as exc:
        raise _error(f"{source}: {exc}") from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Return the config as plain YAML-safe Python types, every default filled in.

    ``parse_config(config_to_dict(cfg), source) == cfg`` for any validated config.
    """
    grid = cfg.grid
    return {
        "name": cfg.name,
        "seed": cfg.seed,
        "n_jobs": cfg.n_jobs,
        "max_trials": cfg.max_trials,
        "data": {"dir": cfg.data.dir},
        "split": ({"seed": cfg.split.seed, "folds": cfg.split.folds} if cfg.split.folds
                  else {"seed": cfg.split.seed, "val_fraction": cfg.split.val_fraction}),
        "execution": {
            "engine": cfg.execution.engine,
            "precision": cfg.execution.precision,
            "backend": cfg.execution.backend,
            "scheduler": cfg.execution.scheduler,
            "curves": cfg.execution.curves,
        },
        "search": _search_to_dict(cfg.search),
        "on_error": cfg.on_error,
        "select": cfg.select,
        "select_by": cfg.select_by,
        "grid": {
            "batch_size": list(grid.batch_size),
            "learning_rate": _axis_to_yaml(grid.learning_rate),
            "epochs": list(grid.epochs),
            "l2": _axis_to_yaml(grid.l2),
            "loss": list(grid.loss),
        },
    }


def result_defining(cfg: Config) -> dict[str, Any]:
    """The keys that change a run's numbers (its trials, their ranking, the strategy's
    decisions): a resumed run must agree on all of them."""
    d = config_to_dict(cfg)
    return {
        "grid": d["grid"],
        "search": d["search"],
        "select_by": d["select_by"],
        "seed": d["seed"],
        "split": d["split"],
        "execution.engine": d["execution"]["engine"],
        "execution.precision": d["execution"]["precision"],
    }


def config_digest(cfg: Config) -> str:
    """SHA-256 of :func:`result_defining`: recorded in run.json when a run starts, so that
    a stored config edited afterwards is caught before its numbers are trusted."""
    text = json.dumps(result_defining(cfg), sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def flat_config(cfg: Config) -> dict[str, Any]:
    """The config as ``{"grid.batch_size": [...], "split.seed": 0, ...}``; a grid axis
    drawn from a distribution stays one value, ``{"log_uniform": [low, high]}``."""
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and prefix != "grid.":
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(config_to_dict(cfg), "")
    return out


def _axis_to_yaml(axis: Axis) -> object:
    if isinstance(axis, Distribution):
        return {axis.kind: [axis.low, axis.high]}
    return list(axis)


def _search_to_dict(search: SearchConfig) -> dict[str, object]:
    """Only the keys the strategy reads, so the written config loads back."""
    d: dict[str, object] = {"strategy": search.strategy}
    for key in _STRATEGY_KEYS[search.strategy]:
        if getattr(search, key) is not None:
            d[key] = getattr(search, key)
    return d


def dump_config(cfg: Config) -> str:
    """Return the config as YAML text that :func:`load_config` reads back unchanged.

    Floats are written with ``repr`` (PyYAML's default), which round-trips exactly.
    """
    # Flow style only for collections of scalars: sections stay block, lists go inline.
    # allow_unicode stays off: PyYAML writes U+0085 and U+2028 raw and reads them back
    # as line breaks, so non-ASCII text is escaped to round-trip exactly.
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def apply_overrides(
    cfg: Config,
    *,
    n_jobs: int | None = None,
    engine: str | None = None,
    precision: str | None = None,
    backend: str | None = None,
    scheduler: str | None = None,
    curves: bool | None = None,
) -> Config:
    """Return ``cfg`` with command-line options applied; ``None`` means not given.

    The values are validated with the config-file rules and errors name the
    option (``--n-jobs``...). A non-dask ``--backend`` without ``--scheduler``
    drops a scheduler that came from the config file.

    Raises
    ------
    ConfigError
        If an option value is invalid or the options conflict.
    """
    try:
        top: dict[str, int] = {}
        if n_jobs is not None:
            top["n_jobs"] = _n_jobs(n_jobs, "--n-jobs")
        given: dict[str, str | None] = {}
        if engine is not None:
            given["engine"] = _choice(engine, "--engine", ENGINES)
        if precision is not None:
            given["precision"] = _choice(precision, "--precision", PRECISIONS)
        if backend is not None:
            given["backend"] = _choice(backend, "--backend", BACKENDS)
        if scheduler is not None:
            given["scheduler"] = _scheduler(scheduler, "--scheduler")
        execution = replace(cfg.execution, **given)  # type: ignore[arg-type]
        if curves is not None:
            execution = replace(execution, curves=curves)
        if backend is not None and scheduler is None and execution.backend != "dask":
            # The user picked a non-dask backend on purpose; the file's scheduler is moot.
            execution = replace(execution, scheduler=None)
        if scheduler is not None and execution.backend != "dask":
            raise _Invalid(
                f"--scheduler is only used with backend 'dask', but the backend is "
                f"{_show(execution.backend)}; add --backend dask or drop --scheduler"
            )
        if execution.backend == "dask" and execution.scheduler is None:
            raise _Invalid(
                "backend 'dask' needs a scheduler address; pass --scheduler "
                "tcp://HOST:8786 or set execution.scheduler in the config"
            )
    except _Invalid as exc:
        raise _error(str(exc)) from None
    return replace(cfg, execution=execution, **top)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- reading


def _read_text(file: Path, source: str) -> str:
    """Return the file's text, or raise ConfigError saying why it cannot be read."""
    try:
        if not file.exists():
            raise _error(f"{source}: config file not found at {_show(str(file))}; check the path")
        if file.is_dir():
            raise _error(f"{source}: is a directory, not a config file; pass a .yaml file")
        # A FIFO or device could block forever or never end.
        if not file.is_file():
            raise _error(f"{source}: is not a regular file; pass a .yaml file")
        data = read_regular(file, CONFIG_LIMIT)
    except NotReadable as exc:
        raise _error(f"{source}: {exc}; a config is a few hundred bytes of YAML") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise _error(f"{source}: cannot read the config file ({reason}); check the path") from None
    try:
        return data.decode("utf-8")  # PyYAML itself skips a leading byte-order mark
    except UnicodeDecodeError as exc:
        raise _error(
            f"{source}: is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None


# --------------------------------------------------------------------------- parsing


def _parse(raw: object) -> Config:
    if not isinstance(raw, dict):
        raise _Invalid(
            f"the config must be a mapping of keys like grid:, seed: and name:, "
            f"not {_kind(raw)}; see configs/grid.yaml for the layout"
        )
    top = _keys(raw, "", _TOP_KEYS)
    if "grid" not in top:
        raise _Invalid(
            "missing required key 'grid'; add a grid: section with "
            "batch_size, learning_rate, epochs and l2"
        )
    grid = _grid(top["grid"])
    seed = _seed(top["seed"], "seed") if "seed" in top else Config.seed
    name = _name(top["name"], "name") if "name" in top else Config.name
    n_jobs = _n_jobs(top["n_jobs"], "n_jobs") if "n_jobs" in top else Config.n_jobs
    max_trials = (
        _max_trials(top["max_trials"], "max_trials") if "max_trials" in top else Config.max_trials
    )

    data = DataConfig(**_section(top, "data", _DATA_KEYS, {"dir": _dir}))  # type: ignore[arg-type]
    split_options = _section(top, "split", _SPLIT_KEYS,
                             {"seed": _seed, "val_fraction": _fraction, "folds": _folds})
    if "folds" in split_options and "val_fraction" in split_options:
        raise _Invalid("split.folds and split.val_fraction exclude each other (with K folds "
                       "each fold validates on 1/K of the rows); remove one of them")
    split_options.setdefault("seed", seed)  # one seed in the file sets both
    split = SplitConfig(**split_options)  # type: ignore[arg-type]
    execution = ExecutionConfig(
        **_section(  # type: ignore[arg-type]
            top,
            "execution",
            _EXECUTION_KEYS,
            {
                "engine": lambda v, k: _choice(v, k, ENGINES),
                "precision": lambda v, k: _choice(v, k, PRECISIONS),
                "backend": lambda v, k: _choice(v, k, BACKENDS),
                "scheduler": _scheduler,
                "curves": _flag,
            },
        )
    )
    _check_scheduler(execution)
    search = _search(top.get("search"), grid)
    on_error = _choice(top["on_error"], "on_error", ON_ERROR) if "on_error" in top else "record"
    select = _choice(top["select"], "select", SELECT) if "select" in top else "best"
    select_by = _choice(top["select_by"], "select_by", SELECT_BY) if "select_by" in top \
        else "fmse"
    budget = search_budget(search, grid)
    if budget > max_trials:
        what = (f"the grid has {budget:,} trials ({_grid_shape(grid)})"
                if search.strategy == "grid" else
                f"strategy {search.strategy!r} may train up to {budget:,} trials")
        raise _Invalid(
            f"{what}, more than max_trials = {max_trials:,}; shrink the "
            f"{'grid' if search.strategy == 'grid' else 'search'} or raise max_trials"
        )
    return Config(
        grid=grid,
        seed=seed,
        name=name,
        n_jobs=n_jobs,
        max_trials=max_trials,
        data=data,
        split=split,
        execution=execution,
        search=search,
        on_error=on_error,
        select=select,
        select_by=select_by,
    )


def search_budget(search: SearchConfig, grid: Grid) -> int:
    """The most trials a strategy can train (each epoch count is a trial)."""
    n_epochs = len(grid.epochs)
    columns = _n_trials(grid) // n_epochs
    if search.n_trials is not None:
        columns = search.n_trials
    if search.strategy in ("grid", "random"):
        return columns * n_epochs
    if search.strategy == "halving":
        total, alive = 0, columns
        for _ in range(n_epochs):
            total, alive = total + alive, max(1, alive // search.eta)
        return total
    # refine: the first round, then rounds - 1 sub-grids of points x points columns at up
    # to three batch sizes, with up to two more epoch counts each
    later = 3 * search.points**2 * (n_epochs + 2 * search.rounds)
    return columns * n_epochs + (search.rounds - 1) * later


def curve_rows(search: SearchConfig, grid: Grid) -> int:
    """The most rows of learning curves (one per trained column and epoch) a search can
    write for one fold: every column trains to at most the largest epoch count, which
    ``refine`` doubles at most once a round."""
    n_epochs = len(grid.epochs)
    columns = _n_trials(grid) // n_epochs if search.n_trials is None else search.n_trials
    top = max(grid.epochs)
    if search.strategy != "refine":
        return columns * top
    return columns * top + sum(3 * search.points**2 * top * 2**r
                               for r in range(1, search.rounds))


def _search(raw: object, grid: Grid) -> SearchConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _Invalid(
            f"search must be a mapping like {{strategy: random, n_trials: 60}}, not "
            f"{_kind(raw)}"
        )
    section = _keys(raw, "search.", _SEARCH_KEYS)
    strategy = (_choice(section["strategy"], "search.strategy", STRATEGIES)
                if "strategy" in section else "grid")
    allowed = _STRATEGY_KEYS[strategy]
    for key in section:
        if key != "strategy" and key not in allowed:
            users = [s for s, keys in _STRATEGY_KEYS.items() if key in keys]
            raise _Invalid(
                f"search.{key} is not used by strategy {strategy!r} (only by "
                f"{' and '.join(users)}); remove it or change search.strategy"
            )
    checks: dict[str, Callable[[object, str], object]] = {
        "n_trials": lambda v, k: _positive(v, k, "60"),
        "seed": _seed,
        "eta": lambda v, k: _at_least(v, k, 2, "3"),
        "rounds": lambda v, k: _positive(v, k, "3"),
        "points": lambda v, k: _at_least(v, k, 2, "4"),
        "tol": _tolerance,
    }
    values = {k: checks[k](v, f"search.{k}") for k, v in section.items() if k != "strategy"}
    out = SearchConfig(strategy=strategy, **values)  # type: ignore[arg-type]
    if not grid.is_finite():
        axis = "learning_rate" if isinstance(grid.learning_rate, Distribution) else "l2"
        if strategy == "grid":
            raise _Invalid(
                f"grid.{axis} is a distribution, which the grid strategy cannot enumerate; "
                "list values, or set search.strategy to random, halving or refine"
            )
        if out.n_trials is None:
            raise _Invalid(
                f"grid.{axis} is a distribution, so strategy {strategy!r} needs "
                "search.n_trials (how many configurations to draw); add it, like n_trials: 60"
            )
    elif strategy == "random" and out.n_trials is None:
        raise _Invalid("strategy 'random' needs search.n_trials; add it, like n_trials: 60")
    return out


def _at_least(value: object, key: str, low: int, example: str) -> int:
    number = _whole(value, key, example)
    if number < low:
        raise _Invalid(f"{_at(key, value)} must be at least {low}; write it like {example}")
    return number


def _tolerance(value: object, key: str) -> float:
    number = _real(value, key, "0.001")
    if not 0 <= number < 1:
        raise _Invalid(f"{_at(key, value)} must be in [0, 1); write it like 0.001")
    return number


def _keys(raw: dict[object, object], prefix: str, allowed: tuple[str, ...]) -> dict[str, object]:
    """Check that every key of a mapping is an allowed string; return it typed."""
    for key in raw:
        if not isinstance(key, str):
            where = f"in {prefix[:-1]} " if prefix else ""
            raise _Invalid(
                f"key {_show(key)} {where}is not a name; allowed keys are {', '.join(allowed)}"
            )
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = (
                f"did you mean {_show(prefix + close[0])}?"
                if close
                else f"allowed keys are {', '.join(allowed)}"
            )
            raise _Invalid(f"unknown key {_show(prefix + key)}; {hint}")
    return {str(key): value for key, value in raw.items()}


def _section(
    top: Mapping[str, object],
    name: str,
    allowed: tuple[str, ...],
    checks: Mapping[str, Callable[[object, str], object]],
) -> dict[str, object]:
    """Validate an optional section; absent or null means all defaults."""
    raw = top.get(name)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _Invalid(
            f"{name} must be a mapping with keys {', '.join(allowed)}, not {_kind(raw)}; "
            f"write it like {name}: {{{allowed[0]}: ...}}"
        )
    section = _keys(raw, f"{name}.", allowed)
    return {key: checks[key](value, f"{name}.{key}") for key, value in section.items()}


def _grid(raw: object) -> Grid:
    if not isinstance(raw, dict):
        raise _Invalid(
            f"grid must be a mapping with keys {', '.join(_GRID_KEYS)}, not {_kind(raw)}; "
            "see configs/grid.yaml for an example"
        )
    section = _keys(raw, "grid.", _GRID_KEYS)
    for key in _REQUIRED_GRID_KEYS:
        if key not in section:
            raise _Invalid(f"grid is missing {key!r}; add grid.{key} as a list of values")
    return Grid(
        batch_size=_grid_values(section["batch_size"], "grid.batch_size", _batch_size),
        learning_rate=_axis(section["learning_rate"], "grid.learning_rate", _learning_rate),
        epochs=_grid_values(section["epochs"], "grid.epochs", _epochs),
        l2=_axis(section["l2"], "grid.l2", _l2),
        loss=_losses(section.get("loss", ["squared"])),
    )


def _losses(raw: object) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _Invalid("grid.loss is an empty list; give squared, absolute or both")
    chosen = [_choice(v, f"grid.loss[{i}]" if isinstance(raw, list) else "grid.loss", LOSSES)
              for i, v in enumerate(items)]
    if len(set(chosen)) < len(chosen):
        raise _Invalid("grid.loss lists a loss twice; remove the duplicate")
    return tuple(sorted(chosen, key=LOSSES.index))


def _axis(raw: object, key: str, check: Callable[[object, str], float]) -> Axis:
    """A list of values, or a distribution ``{log_uniform: [a, b]}`` / ``{uniform: [a, b]}``."""
    if not isinstance(raw, dict):
        return _grid_values(raw, key, check)
    example = f"{key.split('.')[-1]}: {{log_uniform: [1.0e-4, 1.0]}}"
    if len(raw) != 1:
        raise _Invalid(f"{key} must be a list or one distribution, like {example}")
    (kind, bounds), = raw.items()
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"write it like {example}"
        raise _Invalid(f"{key} has the unknown distribution {_show(kind)}; {hint}")
    where = f"{key}.{kind}"
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise _Invalid(f"{where} = {_show(bounds)} must be two numbers [low, high]; "
                       f"write it like {example}")
    low, high = check(bounds[0], f"{where}[0]"), check(bounds[1], f"{where}[1]")
    if not low < high:
        raise _Invalid(f"{where} = {_show(bounds)}: low must be below high; swap them")
    if kind == "log_uniform" and low <= 0:
        raise _Invalid(f"{where} = {_show(bounds)}: a log-uniform range must start above 0; "
                       "use a small positive low, or list 0 with other values")
    return Distribution(str(kind), float(low), float(high))


def _grid_values(raw: object, key: str, check: Callable[[object, str], _Num]) -> tuple[_Num, ...]:
    """Validate one grid list (a scalar means a one-value list); return it sorted."""
    if isinstance(raw, list):
        if not raw:
            raise _Invalid(f"{key} is an empty list; give at least one value")
        labelled = [(f"{key}[{i}]", item) for i, item in enumerate(raw)]
    elif isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in DISTRIBUTIONS:
        raise _Invalid(f"{key} cannot be a distribution (only learning_rate and l2 can: "
                       "batch sizes and epoch counts are whole numbers); list the values, "
                       "like [16, 64]")
    elif isinstance(raw, (dict, set, frozenset, tuple)):
        raise _Invalid(f"{key} is {_kind(raw)}; write a list of numbers like [1, 2], or one number")
    else:
        labelled = [(key, raw)]
    values: list[_Num] = []
    seen: set[_Num] = set()  # a set, not `in values`: long lists must not go quadratic
    for label, item in labelled:
        if isinstance(item, (list, dict, set, tuple)):
            raise _Invalid(
                f"{_at(label, item)} is a nested {_kind(item).split()[-1]}; "
                f"{key} must be a flat list of numbers"
            )
        value = check(item, label)
        if value in seen:
            raise _Invalid(f"{key} lists {_show(value)} twice; remove the duplicate")
        seen.add(value)
        values.append(value)
    return tuple(sorted(values))


# --------------------------------------------------------------------------- values


def _batch_size(value: object, key: str) -> int:
    return _positive(value, key, "160")


def _epochs(value: object, key: str) -> int:
    return _positive(value, key, "32")


def _learning_rate(value: object, key: str) -> float:
    number = _real(value, key, "1.0e-7")
    if number <= 0:
        raise _Invalid(f"{_at(key, value)} must be greater than 0; write it like 1.0e-7")
    return number


def _l2(value: object, key: str) -> float:
    number = _real(value, key, "1.0e-7")
    if number < 0:
        raise _Invalid(f"{_at(key, value)} must be 0 or more; write it like 0.0 or 1.0e-7")
    return number


def _seed(value: object, key: str) -> int:
    number = _whole(value, key, "0")
    if number < 0:
        raise _Invalid(f"{_at(key, value)} must be 0 or more; write it like 0")
    return number


def _n_jobs(value: object, key: str) -> int:
    number = _whole(value, key, "-1")
    if number == 0:
        raise _Invalid(
            f"{_at(key, value)} is not allowed; use -1 for all cores, "
            "-2 for all but one, or a positive number of workers"
        )
    return number


def _max_trials(value: object, key: str) -> int:
    return _positive(value, key, "100000")


def _flag(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _Invalid(f"{_at(key, value)} must be true or false")


def _folds(value: object, key: str) -> int:
    return _at_least(value, key, 2, "5")


def _fraction(value: object, key: str) -> float:
    number = _real(value, key, "0.2")
    if not 0 < number < 1:
        raise _Invalid(f"{_at(key, value)} must be between 0 and 1 (exclusive); write it like 0.2")
    return number


def _name(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"{_at(key, value)} is not a string; quote it, like {key}: 'run-1'")
    if not _NAME.fullmatch(value):
        raise _Invalid(
            f"{_at(key, value)} is not a valid name; use 1-64 letters, digits, '.', '_' "
            "or '-', not starting with '.' or '-'"
        )
    return value


def _dir(value: object, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"{_at(key, value)} is not a folder path; give one like 'data'")
    if "\x00" in value or not _is_utf8(value):
        raise _Invalid(f"{_at(key, value)} holds characters no path can contain; fix the path")
    # "~/faces" as a shell would read it: YAML leaves the tilde, and the folder "~" in
    # the current directory is never what was meant
    return os.path.expanduser(value)


def _choice(value: object, key: str, allowed: tuple[str, ...]) -> str:
    if isinstance(value, str) and value in allowed:
        return value
    message = f"{_at(key, value)} is not one of {', '.join(map(repr, allowed))}"
    close = difflib.get_close_matches(value, allowed, n=1) if isinstance(value, str) else []
    raise _Invalid(f"{message}; did you mean {close[0]!r}?" if close else message)


def _scheduler(value: object, key: str) -> str | None:
    if value is None:  # null is the default: no scheduler
        return None
    if not (
        isinstance(value, str)
        and _is_utf8(value)
        and any(value.startswith(s) and len(value) > len(s) for s in SCHEDULER_SCHEMES)
    ):
        raise _Invalid(
            f"{_at(key, value)} is not a scheduler address; write it like "
            "tcp://127.0.0.1:8786 (schemes: tcp://, tls://, inproc://, ucx://)"
        )
    if not value.startswith("inproc://") and not _host_port(value.split("://", 1)[1]):
        raise _Invalid(
            f"{_at(key, value)} is not a HOST:PORT address (an IPv6 host goes in brackets: "
            "tcp://[::1]:8786); write it like tcp://127.0.0.1:8786"
        )
    return value


_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", re.ASCII)


def _host_port(address: str) -> bool:
    """``HOST:PORT`` with a DNS name or IPv4 host, or ``[IPv6]:PORT``; port 1-65535. Checked
    here because dask, given ``tcp://[::1``, prints a traceback after a 20 s stall."""
    import ipaddress

    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return False
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        port = rest[1:]
    else:
        host, sep, port = address.rpartition(":")
        if not sep or not _HOST.fullmatch(host):
            return False
    return port.isascii() and port.isdigit() and 1 <= int(port) <= 65535


def _check_scheduler(execution: ExecutionConfig) -> None:
    if execution.backend == "dask" and execution.scheduler is None:
        raise _Invalid(
            "execution.backend is 'dask' but no scheduler is set; add execution.scheduler "
            "(like tcp://127.0.0.1:8786) or pass --scheduler"
        )
    if execution.backend != "dask" and execution.scheduler is not None:
        raise _Invalid(
            f"execution.scheduler is set but execution.backend is {execution.backend!r}; "
            "a scheduler is only used with backend 'dask', so remove it or set backend: dask"
        )


def _positive(value: object, key: str, example: str) -> int:
    number = _whole(value, key, example)
    if number < 1:
        raise _Invalid(
            f"{_at(key, value)} must be a positive whole number; write it like {example}"
        )
    return number


def _whole(value: object, key: str, example: str) -> int:
    """Read an int, an integral float (160.0) or an integral numeric string ("160", "1e3")."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value)  # at most 30 digits, so no int-to-str size limit trouble
    else:
        real = _real(value, key, example)
        if not real.is_integer():
            raise _Invalid(f"{_at(key, value)} is not a whole number; write it like {example}")
        number = int(real)
    if not _INT_MIN <= number <= _INT_MAX:
        raise _Invalid(f"{_at(key, value)} is too large; write a number like {example}")
    return number


def _real(value: object, key: str, example: str) -> float:
    """Read a finite number: an int, a float or a decimal string such as "1e-7"."""
    if isinstance(value, bool):
        raise _Invalid(f"{_at(key, value)} is a boolean, not a number; write it like {example}")
    if isinstance(value, int):
        try:
            number = float(value)
        except OverflowError:
            raise _Invalid(f"{_at(key, value)} is too large; write it like {example}") from None
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        # PyYAML reads 1e-7 (no dot) as a string, so decimal strings count as numbers.
        number = float(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").lower() in _NON_FINITE:
        number = math.nan
    else:
        raise _Invalid(f"{_at(key, value)} is not a number; write it like {example}")
    if not math.isfinite(number):
        raise _Invalid(f"{_at(key, value)} is not a finite number; write it like {example}")
    return number + 0.0  # turns -0.0 into 0.0, so l2 = -0 is written back as 0.0


# --------------------------------------------------------------------------- messages


class _ShortRepr(reprlib.Repr):
    """Short reprs for messages, with YAML spellings for booleans and null."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 60
        self.maxlong = 40
        self.maxlevel = 3

    def repr_int(self, x: int, level: int) -> str:
        # str(int) refuses more than 4300 digits, and YAML hex can be that long.
        if x.bit_length() > 10_000:
            return f"<{'-' if x < 0 else ''}integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)

    def repr_bool(self, x: bool, level: int) -> str:
        return "true" if x else "false"

    def repr_NoneType(self, x: None, level: int) -> str:  # reprlib dispatches on type(x).__name__
        return "null"


_show = _ShortRepr().repr


def _at(key: str, value: object) -> str:
    """Return "key = value" for config keys and "--option value" for CLI options."""
    return f"{key} {_show(value)}" if key.startswith("--") else f"{key} = {_show(value)}"


def _kind(value: object) -> str:
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (type(None), "null"),
        (bool, "a boolean"),
        ((int, float), "a number"),
        (str, "a string"),
        (dict, "a mapping"),
        ((list, tuple), "a list"),
        ((set, frozenset), "a set"),
    ]
    for types, kind in kinds:
        if isinstance(value, types):
            return kind
    return f"a {type(value).__name__}"


def _n_trials(grid: Grid) -> int:
    axes = (grid.batch_size, grid.learning_rate, grid.epochs, grid.l2, grid.loss)
    return math.prod(0 if isinstance(a, Distribution) else len(a) for a in axes)


def _grid_shape(grid: Grid) -> str:
    def n(a: Axis) -> int:
        return 0 if isinstance(a, Distribution) else len(a)

    parts = [
        (len(grid.batch_size), "batch size"),
        (n(grid.learning_rate), "learning rate"),
        (len(grid.epochs), "epoch count"),
        (n(grid.l2), "l2 value"),
    ] + ([(len(grid.loss), "loss")] if len(grid.loss) > 1 else [])
    return " x ".join(f"{n:,} {noun}{'' if n == 1 else 's'}" for n, noun in parts)


def _is_utf8(text: str) -> bool:
    """False for lone surrogates, which YAML "\\ud800" escapes can produce."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _error(message: str) -> ConfigError:
    # Values are shown with repr, which escapes newlines; this catches file names and
    # PyYAML problem texts, so every message stays a single line.
    return ConfigError(_one_line(message))
