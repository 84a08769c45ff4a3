"""Tests for agereg.config: loading, validation messages, round trips and CLI overrides."""

from __future__ import annotations

import datetime
import math
import string
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agereg.config import (
    Config,
    DataConfig,
    ExecutionConfig,
    Grid,
    SplitConfig,
    apply_overrides,
    config_to_dict,
    dump_config,
    load_config,
    parse_config,
)
from agereg.errors import ConfigError

CONFIGS = Path(__file__).parents[1] / "configs"

GRID = """\
grid:
  batch_size: [160, 200]
  learning_rate: [3.0e-6, 3.0e-5]
  epochs: [16, 32]
  l2: [0.0, 1.0e-3]
"""


def grid_text(**lines: str | None) -> str:
    """Return the GRID section with some value lines replaced (None drops the key)."""
    values = {"batch_size": "[160, 200]", "learning_rate": "[3.0e-6, 3.0e-5]"}
    values |= {"epochs": "[16, 32]", "l2": "[0.0, 1.0e-3]"}
    values |= lines
    body = "".join(f"  {key}: {value}\n" for key, value in values.items() if value is not None)
    return "grid:\n" + body


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def expect_error(call: Callable[[], object], *fragments: str) -> str:
    """Assert that call raises exactly ConfigError with a one-line message holding fragments."""
    with pytest.raises(ConfigError) as info:
        call()
    assert type(info.value) is ConfigError
    message = str(info.value)
    assert message.splitlines() == [message], message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def load_error(tmp_path: Path, text: str, *fragments: str) -> str:
    message = expect_error(lambda: load_config(write(tmp_path, text)), *fragments)
    assert message.startswith("grid.yaml: "), message
    return message


# --------------------------------------------------------------------------- good configs


def test_shipped_homework_grid_loads() -> None:
    cfg = load_config(CONFIGS / "grid.yaml")
    assert len(cfg.grid) == 256
    assert cfg.name == "homework"
    assert (cfg.seed, cfg.n_jobs, cfg.data.dir) == (0, -1, "data")
    assert cfg.split == SplitConfig(seed=0, val_fraction=0.2)
    assert cfg.grid.batch_size == (160, 200, 400, 640)
    assert cfg.grid.learning_rate == (3.0e-8, 3.0e-6, 3.0e-5, 3.0e-3)
    assert cfg.grid.epochs == (16, 32, 48, 64)
    assert cfg.grid.l2 == (1.0e-7, 1.0e-5, 1.0e-3, 1.0e-1)


def test_shipped_tiny_grid_loads() -> None:
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert cfg.name == "tiny"
    assert cfg.data.dir == "data/tiny"
    assert cfg.grid == Grid((16, 32), (1.0e-3, 1.0e-2), (2, 4), (0.0, 1.0e-3))
    assert len(cfg.grid) == 16


def test_a_data_dir_under_home_is_read_as_a_shell_would(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    cfg = load_config(write(tmp_path, "data: {dir: ~/faces}\n" + GRID))
    assert cfg.data.dir == str(tmp_path / "me" / "faces")
    assert load_config(write(tmp_path, "data: {dir: a~b}\n" + GRID)).data.dir == "a~b"


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GRID))
    assert cfg == Config(
        grid=Grid((160, 200), (3.0e-6, 3.0e-5), (16, 32), (0.0, 1.0e-3)),
        seed=0,
        name="search",
        n_jobs=-1,
        max_trials=100_000,
        data=DataConfig(dir="data"),
        split=SplitConfig(seed=0, val_fraction=0.2),
        execution=ExecutionConfig(
            engine="batched", precision="float64", backend="loky", scheduler=None
        ),
    )


def test_null_sections_mean_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data:\nsplit:\nexecution:\n" + GRID))
    assert (cfg.data, cfg.execution) == (DataConfig(), ExecutionConfig())
    assert cfg.split == SplitConfig()


def test_all_keys_are_read(tmp_path: Path) -> None:
    text = """\
name: My_run-2.b
seed: 11
n_jobs: -2
max_trials: 8
data: {dir: ../faces}
split: {seed: 5, val_fraction: 0.25}
execution: {engine: reference, precision: float32, backend: dask, scheduler: "tls://h:1"}
grid: {batch_size: 8, learning_rate: 0.5, epochs: [1, 2], l2: [0, 1, 2, 3]}
"""
    cfg = load_config(write(tmp_path, text))
    assert (cfg.name, cfg.seed, cfg.n_jobs, cfg.max_trials) == ("My_run-2.b", 11, -2, 8)
    assert cfg.data == DataConfig(dir="../faces")
    assert cfg.split == SplitConfig(seed=5, val_fraction=0.25)
    assert cfg.execution == ExecutionConfig("reference", "float32", "dask", "tls://h:1")
    assert len(cfg.grid) == 8


@pytest.mark.parametrize("split", ["", "split:\n", "split: {val_fraction: 0.3}\n"])
def test_split_seed_falls_back_to_top_level_seed(tmp_path: Path, split: str) -> None:
    cfg = load_config(write(tmp_path, f"seed: 7\n{split}{GRID}"))
    assert cfg.seed == 7
    assert cfg.split.seed == 7


def test_explicit_split_seed_wins(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "seed: 7\nsplit: {seed: 3}\n" + GRID))
    assert (cfg.seed, cfg.split.seed) == (7, 3)


def test_numeric_strings_are_numbers(tmp_path: Path) -> None:
    text = grid_text(
        batch_size='["160", 200.0, "1e3"]',
        learning_rate='[1e-7, 3E-5, " 0.1 ", "+2"]',
        l2="[1e-3, -0.0]",
        epochs='" 4 "',
    )
    cfg = load_config(write(tmp_path, "seed: '3'\nsplit: {val_fraction: 2e-1}\n" + text))
    assert cfg.grid.batch_size == (160, 200, 1000)
    assert all(type(v) is int for v in cfg.grid.batch_size + cfg.grid.epochs)
    assert cfg.grid.learning_rate == (1e-07, 3e-05, 0.1, 2.0)
    assert all(type(v) is float for v in cfg.grid.learning_rate + cfg.grid.l2)
    assert cfg.grid.epochs == (4,)
    assert cfg.grid.l2 == (0.0, 0.001)
    assert math.copysign(1.0, cfg.grid.l2[0]) == 1.0  # -0.0 is stored as 0.0
    assert (cfg.seed, cfg.split.val_fraction) == (3, 0.2)


def test_scalar_means_one_value_list(tmp_path: Path) -> None:
    text = grid_text(batch_size="64", learning_rate="1.0e-3", epochs="5", l2="0")
    grid = load_config(write(tmp_path, text)).grid
    assert grid == Grid(batch_size=(64,), learning_rate=(1.0e-3,), epochs=(5,), l2=(0.0,))
    assert len(grid) == 1


def test_grid_values_are_sorted(tmp_path: Path) -> None:
    text = grid_text(
        batch_size="[640, 160, 400]", learning_rate="[3.0e-3, 3.0e-8]", epochs="[9, 1]", l2="[1, 0]"
    )
    grid = load_config(write(tmp_path, text)).grid
    assert grid == Grid((160, 400, 640), (3.0e-8, 3.0e-3), (1, 9), (0.0, 1.0))
    assert len(grid) == 3 * 2 * 2 * 2


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_bytes(b"\xef\xbb\xbfname: bom\n" + GRID.encode())
    assert load_config(path).name == "bom"


def test_max_trials_boundary_is_allowed(tmp_path: Path) -> None:
    assert len(load_config(write(tmp_path, "max_trials: 16\n" + GRID)).grid) == 16


# --------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path: Path) -> None:
    message = expect_error(lambda: load_config(tmp_path / "nope.yaml"), "not found", "nope.yaml")
    assert message.startswith("nope.yaml: ")


def test_file_name_with_a_line_break_gives_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: [\n", name="odd\nname.yaml")
    expect_error(lambda: load_config(path), "odd name.yaml: YAML syntax error at line 2")


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_not_a_regular_file() -> None:
    expect_error(lambda: load_config("/dev/null"), "null: is not a regular file")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "conf.yaml").mkdir()
    expect_error(lambda: load_config(tmp_path / "conf.yaml"), "conf.yaml: ", "is a directory")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated, because chmod 000 does not stop root, and tests may run as root.
    import agereg.config

    def refuse(path: Path, limit: int) -> bytes:
        raise PermissionError(13, "Permission denied")

    path = write(tmp_path, GRID)
    monkeypatch.setattr(agereg.config, "read_regular", refuse)
    expect_error(lambda: load_config(path), "grid.yaml: ", "cannot read", "Permission denied")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_bytes(b"name: caf\xe9\n" + GRID.encode())
    expect_error(lambda: load_config(path), "grid.yaml: ", "not UTF-8", "offset 9")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("name: a\nseed: 0\n  bad: indent\n", ["YAML syntax error at line 3", "not allowed"]),
        ("seed: [1, 2\n" + GRID, ["YAML syntax error at line 2", "flow sequence"]),
        ("grid: 1\n---\ngrid: 2\n", ["line 2", "expected a single document"]),
        ("seed: 0\nname: a\x07b\n", ["line 2", "U+0007"]),
        ("seed: 2020-13-45\n" + GRID, ["month must be in 1..12"]),
        ("seed: !!bool maybe\n" + GRID, ["could not read a value"]),
        ("seed: !!timestamp soon\n" + GRID, ["could not read a value"]),
    ],
)
def test_yaml_errors(tmp_path: Path, text: str, fragments: list[str]) -> None:
    load_error(tmp_path, text, *fragments)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: a\nname: b\n" + GRID, "line 2 sets 'name' again (first set on line 1)"),
        (GRID + "  l2: [0.5]\n", "line 6 sets 'l2' again (first set on line 5)"),
        ("split: {seed: 1, seed: 2}\n" + GRID,
         "line 1, column 18 sets 'seed' again (first set at column 9)"),
        (GRID + "grid: {l2: [0.5]}\n", "line 6 sets 'grid' again (first set on line 1)"),
    ],
)
def test_a_key_set_twice_is_refused(tmp_path: Path, text: str, fragment: str) -> None:
    # YAML itself keeps the last value silently, dropping the first line's values
    load_error(tmp_path, text, fragment, "delete one of them")


def test_a_merged_key_may_be_overridden(tmp_path: Path) -> None:
    text = ("grid: {<<: {batch_size: [8], learning_rate: [0.1], epochs: [1], l2: [0.0]}, "
            "l2: [0.5]}\n")
    assert load_config(write(tmp_path, text)).grid.l2 == (0.5,)


def test_deep_nesting(tmp_path: Path) -> None:
    # PyYAML composes nodes recursively. A low recursion limit keeps the input small, since
    # PyYAML's scanner is quadratic in the nesting depth; the limit is restored at once.
    path = write(tmp_path, "seed: " + "[" * 400 + "]" * 400 + "\n" + GRID)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(300)
    try:
        with pytest.raises(ConfigError) as info:
            load_config(path)
    finally:
        sys.setrecursionlimit(limit)
    assert str(info.value) == "grid.yaml: the YAML is nested too deeply; flatten it"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "~\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    load_error(tmp_path, text, "is empty", "grid:")


@pytest.mark.parametrize(
    ("text", "kind"), [("- 1\n- 2\n", "a list"), ("hello\n", "a string"), ("3\n", "a number")]
)
def test_document_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    load_error(tmp_path, text, "must be a mapping", f"not {kind}")


# --------------------------------------------------------------------------- bad values

BAD_VALUES = [
    # keys
    ("grd:\n  batch_size: 1\n", ["unknown key 'grd'; did you mean 'grid'?"]),
    ("colour: red\n" + GRID, ["unknown key 'colour'", "allowed keys are grid, seed, name"]),
    (grid_text(batch_sizes="[1]"), ["'grid.batch_sizes'", "did you mean 'grid.batch_size'?"]),
    (grid_text(zz="[1]"), ["unknown key 'grid.zz'", "allowed keys are batch_size, learning_rate"]),
    ("data: {dirr: x}\n" + GRID, ["'data.dirr'", "did you mean 'data.dir'?"]),
    ("split: {val_frac: 0.1}\n" + GRID, ["'split.val_frac'", "did you mean 'split.val_fraction'?"]),
    ("execution: {Backend: dask}\n" + GRID, ["did you mean 'execution.backend'?"]),
    ("1: 2\n" + GRID, ["key 1 is not a name", "allowed keys are grid"]),
    ("~: 2\n" + GRID, ["key null is not a name"]),
    (grid_text(**{"7": "[1]"}), ["key 7 in grid is not a name"]),
    ("seed: 1\n", ["missing required key 'grid'"]),
    # sections
    ("grid:\n", ["grid must be a mapping", "not null"]),
    ("grid: [1, 2]\n", ["grid must be a mapping", "not a list"]),
    (grid_text(l2=None), ["grid is missing 'l2'"]),
    ("data: [x]\n" + GRID, ["data must be a mapping", "not a list"]),
    ("split: 5\n" + GRID, ["split must be a mapping", "not a number"]),
    ("execution: fast\n" + GRID, ["execution must be a mapping", "not a string"]),
    # grid lists
    (grid_text(l2="[]"), ["grid.l2 is an empty list"]),
    (grid_text(l2="{a: 1}"), ["grid.l2 has the unknown distribution 'a'"]),
    (grid_text(l2=""), ["grid.l2 = null is not a number"]),
    (grid_text(batch_size="[[160], 200]"), ["grid.batch_size[0] = [160] is a nested list"]),
    (grid_text(batch_size="[160, {a: 1}]"), ["grid.batch_size[1] = {'a': 1} is a nested mapping"]),
    (grid_text(batch_size="[160, 160.0]"), ["grid.batch_size lists 160 twice", "duplicate"]),
    (grid_text(l2='[1.0e-7, "1e-7"]'), ["grid.l2 lists 1e-07 twice"]),
    # numbers
    (
        grid_text(learning_rate="[3.0e-6, 3.0e-5, le-7]"),
        ["grid.learning_rate[2] = 'le-7' is not a number; write it like 1.0e-7"],
    ),
    (grid_text(epochs="[fast]"), ["grid.epochs[0] = 'fast' is not a number"]),
    (grid_text(l2='[""]'), ["grid.l2[0] = '' is not a number"]),
    (grid_text(l2="[0x]"), ["grid.l2[0] = '0x' is not a number"]),
    (grid_text(epochs="['\u0663']"), ["grid.epochs[0] = '\u0663' is not a number"]),
    (grid_text(learning_rate="[true]"), ["grid.learning_rate[0] = true is a boolean"]),
    (grid_text(epochs="no"), ["grid.epochs = false is a boolean"]),
    (grid_text(learning_rate="[.inf]"), ["grid.learning_rate[0] = inf is not a finite number"]),
    (grid_text(l2="[.nan]"), ["grid.l2[0] = nan is not a finite number"]),
    (grid_text(l2="[-.inf]"), ["grid.l2[0] = -inf is not a finite number"]),
    (grid_text(learning_rate='["inf"]'), ["grid.learning_rate[0] = 'inf' is not a finite"]),
    (grid_text(learning_rate="[nan]"), ["grid.learning_rate[0] = 'nan' is not a finite"]),
    (grid_text(learning_rate="[1e999]"), ["grid.learning_rate[0] = '1e999' is not a finite"]),
    (grid_text(learning_rate="[1.0e+999]"), ["grid.learning_rate[0] = inf is not a finite"]),
    (grid_text(l2=f"[{10**400}]"), ["grid.l2[0] = 1000", "is too large"]),
    (grid_text(batch_size="[160.5]"), ["grid.batch_size[0] = 160.5 is not a whole number"]),
    (grid_text(batch_size='["160.5"]'), ["grid.batch_size[0] = '160.5' is not a whole number"]),
    (grid_text(batch_size="[0]"), ["grid.batch_size[0] = 0 must be a positive whole number"]),
    (grid_text(epochs="[-1]"), ["grid.epochs[0] = -1 must be a positive whole number"]),
    (grid_text(epochs="[1.0e+300]"), ["grid.epochs[0] = 1e+300 is too large"]),
    (grid_text(epochs="[1.0e300]"), ["grid.epochs[0] = '1.0e300' is too large"]),
    (grid_text(learning_rate="[0]"), ["grid.learning_rate[0] = 0 must be greater than 0"]),
    (grid_text(learning_rate="[-1.0e-3]"), ["= -0.001 must be greater than 0"]),
    (grid_text(l2="[-1.0e-3]"), ["grid.l2[0] = -0.001 must be 0 or more"]),
    # scalars
    ("seed: -1\n" + GRID, ["seed = -1 must be 0 or more"]),
    ("seed: 1.5\n" + GRID, ["seed = 1.5 is not a whole number"]),
    ("seed:\n" + GRID, ["seed = null is not a number"]),
    (f"seed: {10**400}\n" + GRID, ["seed = 1000", "is too large"]),
    (f"seed: 0x{'f' * 3000}\n" + GRID, ["seed = <integer of 12000 bits> is too large"]),
    (f"seed: {2**63}\n" + GRID, ["seed = 9223372036854775808 is too large"]),
    ("split: {seed: -2}\n" + GRID, ["split.seed = -2 must be 0 or more"]),
    ("split: {val_fraction: 0}\n" + GRID, ["split.val_fraction = 0 must be between 0 and 1"]),
    ("split: {val_fraction: 1}\n" + GRID, ["split.val_fraction = 1 must be between 0 and 1"]),
    ("split: {val_fraction: 20%}\n" + GRID, ["split.val_fraction = '20%' is not a number"]),
    ("n_jobs: 0\n" + GRID, ["n_jobs = 0 is not allowed", "-1 for all cores"]),
    ("n_jobs: many\n" + GRID, ["n_jobs = 'many' is not a number"]),
    ("max_trials: 0\n" + GRID, ["max_trials = 0 must be a positive whole number"]),
    ("name: .hidden\n" + GRID, ["name = '.hidden' is not a valid name", "1-64 letters"]),
    ("name: -x\n" + GRID, ["name = '-x' is not a valid name"]),
    ("name: a b\n" + GRID, ["name = 'a b' is not a valid name"]),
    ("name: ''\n" + GRID, ["name = '' is not a valid name"]),
    ("name: caf\u00e9\n" + GRID, ["name = 'caf\u00e9' is not a valid name"]),
    (f"name: {'x' * 65}\n" + GRID, ["is not a valid name"]),
    ("name: 2024\n" + GRID, ["name = 2024 is not a string", "quote it"]),
    ("data: {dir: ''}\n" + GRID, ["data.dir = '' is not a folder path"]),
    ("data: {dir: 3}\n" + GRID, ["data.dir = 3 is not a folder path"]),
    ('data: {dir: "a\\0b"}\n' + GRID, ["data.dir = 'a\\x00b' holds characters"]),
    # execution
    (
        "execution: {engine: batchd}\n" + GRID,
        [
            "execution.engine = 'batchd' is not one of 'batched', 'reference'; "
            "did you mean 'batched'?"
        ],
    ),
    ("execution: {engine: zzz}\n" + GRID, ["is not one of 'batched', 'reference'"]),
    ("execution: {precision: float16}\n" + GRID, ["'float16' is not one of 'float64', 'float32'"]),
    ("execution: {backend: lokey}\n" + GRID, ["'lokey'", "did you mean 'loky'?"]),
    ("execution: {backend: 1}\n" + GRID, ["execution.backend = 1 is not one of"]),
    (
        "execution: {backend: dask}\n" + GRID,
        ["execution.backend is 'dask'", "add execution.scheduler", "--scheduler"],
    ),
    (
        "execution: {scheduler: 'tcp://h:8786'}\n" + GRID,
        ["execution.scheduler is set but execution.backend is 'loky'"],
    ),
    (
        "execution: {backend: dask, scheduler: 'http://h:1'}\n" + GRID,
        ["execution.scheduler = 'http://h:1' is not a scheduler address", "tcp://"],
    ),
    ("execution: {backend: dask, scheduler: 'tcp://'}\n" + GRID, ["= 'tcp://' is not a sched"]),
    ("execution: {backend: dask, scheduler: ''}\n" + GRID, ["= '' is not a scheduler"]),
    # size
    ("max_trials: 15\n" + GRID, ["the grid has 16 trials", "more than max_trials = 15"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_VALUES, ids=[f[0] for _, f in BAD_VALUES])
def test_bad_values(tmp_path: Path, text: str, fragments: list[str]) -> None:
    load_error(tmp_path, text, *fragments)


def test_grid_too_large(tmp_path: Path) -> None:
    forty = "[" + ", ".join(str(i) for i in range(1, 41)) + "]"
    text = grid_text(batch_size=forty, learning_rate=forty, epochs=forty, l2=forty)
    message = load_error(tmp_path, text)
    assert message == (
        "grid.yaml: the grid has 2,560,000 trials (40 batch sizes x 40 learning rates x "
        "40 epoch counts x 40 l2 values), more than max_trials = 100,000; "
        "shrink the grid or raise max_trials"
    )


GOOD_GRID = {"batch_size": [1], "learning_rate": [1.0], "epochs": [1], "l2": [0.0]}
CYCLE: list[object] = []
CYCLE.append(CYCLE)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (None, "is empty"),
        ({"grid": GOOD_GRID, "seed": 10**5000}, "seed = <integer of 16610 bits> is too large"),
        ({"grid": {**GOOD_GRID, "l2": -(10**5000)}}, "grid.l2 = <-integer of 16610 bits>"),
        ({"grid": {**GOOD_GRID, "epochs": CYCLE}}, "grid.epochs[0] = [[[[...]]]] is a nested list"),
        ({"grid": {**GOOD_GRID, "l2": {1, 2}}}, "grid.l2 is a set; write a list"),
        ({"grid": {**GOOD_GRID, "l2": (1, 2)}}, "grid.l2 is a list; write a list"),
        ({"grid": {**GOOD_GRID, "l2": b"1"}}, "grid.l2 = b'1' is not a number"),
        ({"grid": GOOD_GRID, "seed": datetime.date(2020, 1, 1)}, "seed = datetime.date(2020,"),
        ({"grid": GOOD_GRID, ("a", 1): 2}, "key ('a', 1) is not a name"),
        ({"grid": GOOD_GRID, "name": "x" * 10_000}, "name = 'xxxxxxxx"),
    ],
)
def test_parse_config_survives_odd_python_values(raw: object, fragment: str) -> None:
    message = expect_error(lambda: parse_config(raw, "my\nconfig.yaml"), fragment)
    assert message.startswith("my config.yaml: ")
    assert len(message) < 300, message


# --------------------------------------------------------------------------- round trips

AWKWARD = Config(
    grid=Grid(
        batch_size=(1, 160, 2**40),
        learning_rate=(5e-324, 1e-300, 3.0e-8, 0.1, 1 / 3, 2.5e300),
        epochs=(7,),
        l2=(0.0, 1e-16, 0.1 + 0.2),
    ),
    seed=2**63 - 1,
    name="_a.b-c",
    n_jobs=-(2**63),
    max_trials=1000,
    data=DataConfig(dir="dir with: colon/ünï\ncode\x85and\u2028breaks "),
    split=SplitConfig(seed=4, val_fraction=1e-9),
    execution=ExecutionConfig("reference", "float32", "dask", "ucx://10.0.0.1:1"),
)


@pytest.mark.parametrize("cfg", [AWKWARD, Config(grid=Grid((1,), (0.5,), (1,), (0.0,)))])
def test_dict_round_trip(cfg: Config) -> None:
    raw = config_to_dict(cfg)
    assert parse_config(raw, "x") == cfg
    keys = ["name", "seed", "n_jobs", "max_trials", "data", "split", "execution", "search",
            "on_error", "select", "select_by", "grid"]
    assert list(raw) == keys
    assert raw["execution"] == {
        "engine": cfg.execution.engine,
        "precision": cfg.execution.precision,
        "backend": cfg.execution.backend,
        "scheduler": cfg.execution.scheduler,
        "curves": cfg.execution.curves,
    }
    assert_plain(raw)


def assert_plain(value: object) -> None:
    """Only YAML-safe plain types: dict with str keys, list, str, int, float, bool, None."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), repr(value)


@pytest.mark.parametrize("cfg", [AWKWARD, Config(grid=Grid((1,), (0.5,), (1,), (0.0,)))])
def test_dump_round_trip(tmp_path: Path, cfg: Config) -> None:
    text = dump_config(cfg)
    assert load_config(write(tmp_path, text)) == cfg
    assert text.startswith("name: ")
    assert "scheduler:" in text


def test_dump_is_readable_and_exact() -> None:
    cfg = load_config(CONFIGS / "grid.yaml")
    text = dump_config(cfg)
    assert "learning_rate: [3.0e-08, 3.0e-06, 3.0e-05, 0.003]" in text
    keys = ["name", "seed", "n_jobs", "max_trials", "data", "split", "execution", "search",
            "on_error", "select", "select_by", "grid"]
    assert list(yaml.safe_load(text)) == keys
    floats = yaml.safe_load(dump_config(AWKWARD))["grid"]["learning_rate"]
    assert [x.hex() for x in floats] == [x.hex() for x in AWKWARD.grid.learning_rate]


# --------------------------------------------------------------------------- overrides

DASK = Config(
    grid=Grid((1,), (0.5,), (1,), (0.0,)),
    execution=ExecutionConfig(backend="dask", scheduler="tcp://h:8786"),
)


def test_overrides_applied() -> None:
    cfg = load_config(CONFIGS / "tiny.yaml")
    new = apply_overrides(
        cfg, n_jobs=3, engine="reference", precision="float32", backend="threading"
    )
    assert new.n_jobs == 3
    assert new.execution == ExecutionConfig("reference", "float32", "threading", None)
    assert (new.grid, new.name) == (cfg.grid, cfg.name)
    assert cfg.execution == ExecutionConfig()  # the input is untouched


def test_no_overrides_is_identity() -> None:
    assert apply_overrides(DASK) == DASK


def test_override_to_dask_with_scheduler() -> None:
    new = apply_overrides(Config(grid=DASK.grid), backend="dask", scheduler="inproc://x")
    assert new.execution == ExecutionConfig(backend="dask", scheduler="inproc://x")


def test_override_scheduler_of_a_dask_config() -> None:
    assert apply_overrides(DASK, scheduler="tls://other:1").execution.scheduler == "tls://other:1"


def test_non_dask_backend_override_drops_file_scheduler() -> None:
    assert apply_overrides(DASK, backend="loky").execution == ExecutionConfig(backend="loky")


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        ({"n_jobs": 0}, ["--n-jobs 0 is not allowed", "-1 for all cores"]),
        ({"n_jobs": True}, ["--n-jobs true is a boolean"]),
        ({"engine": "batchd"}, ["--engine 'batchd' is not one of", "did you mean 'batched'?"]),
        ({"precision": "double"}, ["--precision 'double' is not one of 'float64', 'float32'"]),
        ({"backend": "thread"}, ["--backend 'thread'", "did you mean 'threading'?"]),
        ({"backend": "dask"}, ["backend 'dask' needs a scheduler", "--scheduler"]),
        ({"scheduler": "tcp://h:1"}, ["--scheduler is only used with backend 'dask'", "loky"]),
        ({"scheduler": "h:1", "backend": "dask"}, ["--scheduler 'h:1' is not a scheduler"]),
        ({"scheduler": "", "backend": "dask"}, ["--scheduler '' is not a scheduler"]),
    ],
)
def test_bad_overrides(options: dict[str, object], fragments: list[str]) -> None:
    cfg = Config(grid=DASK.grid)
    expect_error(lambda: apply_overrides(cfg, **options), *fragments)  # type: ignore[arg-type]


def test_scheduler_override_with_non_dask_backend_override() -> None:
    expect_error(
        lambda: apply_overrides(DASK, backend="loky", scheduler="tcp://h:1"),
        "--scheduler is only used with backend 'dask'",
    )


# --------------------------------------------------------------------------- fuzzing

KEYS = [
    *("grid", "seed", "name", "n_jobs", "max_trials", "data", "split", "execution", "dir"),
    *("batch_size", "learning_rate", "epochs", "l2", "val_fraction", "engine", "precision"),
    *("backend", "scheduler", "grd", "l", "2"),
]
TRICKY = [
    *("1e-7", "3E-5", " 0.1 ", "le-7", "inf", "-inf", "nan", ".inf", "", " ", "160", "160.0"),
    *("1e999", "-0", "0x10", "tcp://", "tcp://h:1", "dask", "batched", "float32", "data", "é"),
    *(10**30, -(10**30), 10**400, 2**63, 2**63 - 1, -1, 0, 1, 1e-300, -0.0, 0.5, 1.0, 1e300),
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(TRICKY)
)
ANY_KEY = st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(-2, 2) | st.none()
ANYTHING = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(ANY_KEY, kids, max_size=4),
    max_leaves=8,
)
GRID_VALUE = st.lists(st.integers(1, 300), min_size=1, max_size=3, unique=True) | ANYTHING


def section(keys: str) -> st.SearchStrategy[object]:
    return st.fixed_dictionaries({}, optional=dict.fromkeys(keys.split(), ANYTHING)) | ANYTHING


CONFIG_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "grid": st.fixed_dictionaries(
            {}, optional=dict.fromkeys(["batch_size", "learning_rate", "epochs", "l2"], GRID_VALUE)
        )
        | ANYTHING,
        **dict.fromkeys(["seed", "name", "n_jobs", "max_trials", "gird"], ANYTHING),
        "data": section("dir"),
        "split": section("seed val_fraction"),
        "execution": section("engine precision backend scheduler"),
    },
)
# 100 examples rather than 200: each one writes a file, and the file must run in < 3 s.
FUZZ = settings(max_examples=100, deadline=None)


def check_load(path: Path) -> None:
    """load_config either succeeds with a config that round-trips or raises ConfigError."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert type(exc) is ConfigError
        assert message.splitlines() == [message]
        assert message.startswith(f"{path.name}: ")
    else:
        assert parse_config(config_to_dict(cfg), "x") == cfg
        assert parse_config(yaml.safe_load(dump_config(cfg)), "x") == cfg


@FUZZ
@given(doc=CONFIG_LIKE | ANYTHING)
def test_fuzz_yaml_documents(tmp_path_factory: pytest.TempPathFactory, doc: object) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-doc.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    check_load(path)


@FUZZ
@given(data=st.text().map(str.encode) | st.binary())
def test_fuzz_text_and_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-text.yaml"
    path.write_bytes(data)
    check_load(path)


NAME_CHARS = string.ascii_letters + string.digits + "._-"


def finite(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


VALID = st.fixed_dictionaries(
    {
        "grid": st.fixed_dictionaries(
            {
                "batch_size": st.lists(st.integers(1, 2**40), min_size=1, max_size=3, unique=True),
                "learning_rate": st.lists(
                    finite(0, 1e300).filter(bool), min_size=1, max_size=3, unique=True
                ),
                "epochs": st.integers(1, 1000),
                "l2": st.lists(finite(0, 1e300), min_size=1, max_size=3, unique=True),
            }
        ),
        "seed": st.integers(0, 2**63 - 1),
        "n_jobs": st.integers(-(2**63), 2**63 - 1).filter(bool),
        "max_trials": st.integers(27, 2**63 - 1),
        "name": st.text(NAME_CHARS, min_size=1, max_size=64).filter(lambda s: s[0] not in ".-"),
        "data": st.fixed_dictionaries(
            {"dir": st.text(min_size=1).filter(lambda s: s.strip() and "\x00" not in s)}
        ),
        "split": st.fixed_dictionaries({"val_fraction": finite(0, 1).filter(lambda v: 0 < v < 1)}),
        "execution": st.fixed_dictionaries(
            {
                "engine": st.sampled_from(["batched", "reference"]),
                "precision": st.sampled_from(["float64", "float32"]),
            }
        ),
    }
)


@FUZZ
@given(raw=VALID)
def test_valid_configs_round_trip(raw: dict[str, object]) -> None:
    cfg = parse_config(raw, "x")
    assert parse_config(config_to_dict(cfg), "x") == cfg
    assert parse_config(yaml.safe_load(dump_config(cfg)), "x") == cfg
    grid = cfg.grid
    for values in (grid.batch_size, grid.learning_rate, grid.epochs, grid.l2):
        assert list(values) == sorted(set(values))
