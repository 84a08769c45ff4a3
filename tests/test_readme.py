"""The README's promises, checked: its by-hand recipe reproduces a search result."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from tests_helpers import read_results, search

README = Path(__file__).resolve().parents[1] / "README.md"


def recipe() -> str:
    text = README.read_text()
    section = text[text.index("### Reproducing a number by hand"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("loss", ["squared", "absolute"])
def test_recipe_reproduces_results_csv(tiny_config: Path, data_copy: Path, tmp_path: Path,
                                       loss: str):
    tiny_config.write_text(tiny_config.read_text().replace(
        "l2: [0.0, 1.0e-2]", "l2: [0.0, 1.0e-2]\n  loss: [squared, absolute]"))
    run_dir = search(tiny_config, tmp_path / "runs")
    row = next(r for r in read_results(run_dir) if r["status"] == "ok" and r["epochs"] == "3"
               and r["loss"] == loss)
    code = recipe()
    values = (f'seed, batch_size, lr, epochs, l2, loss = 3, {row["batch_size"]}, '
              f'{row["learning_rate"]}, {row["epochs"]}, {row["l2"]}, "{loss}"')
    code = re.sub(r"seed, batch_size, lr, epochs, l2, loss = .*", values, code)
    code = code.replace('"runs/<your run>"', repr(str(run_dir)))
    code = code.replace('"data/', f'"{data_copy}/')
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README recipe", "exec"), {})
    words = out.getvalue().split()
    assert float(words[-1]) == pytest.approx(float(row["val_loss"]), rel=1e-12)
    assert float(words[2]) == pytest.approx(float(row["val_mae"]), rel=1e-12)


def test_readme_names_every_command():
    text = README.read_text()
    for cmd in ("agereg synth", "agereg split", "agereg search", "agereg eval",
                "agereg analyze", "agereg predict", "agereg runs", "agereg compare",
                "agereg export",
                "python -m pytest -q"):
        assert cmd in text
    assert "python -m pytest -q" in (README.parent / ".ci" / "run").read_text()


def test_readme_describes_every_option_of_every_command():
    from agereg.cli import cli

    text = README.read_text()
    heading = re.compile(r"^##", re.M)

    def section(title: str) -> str:  # from its heading to the next heading
        start = text.index(title)
        end = heading.search(text, start + 1)
        return text[start:end.start() if end else None]

    shared = section("## Commands")  # what every command that reads runs takes
    assert "`--runs-dir DIR`" in shared and "`--run RUN_DIR`" in shared
    for name, command in cli.commands.items():
        own = section(f"### `agereg {name}")
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt not in ("--runs-dir", "--run"):
                    # in prose or a table, as code: not only in the usage block
                    assert f"`{opt}" in own, (name, opt)


def test_readme_documents_every_config_key():
    from agereg import config

    text = README.read_text()
    heading = re.compile(r"^## ", re.M)

    def section(title: str) -> str:
        start = text.index(title)
        end = heading.search(text, start + 1)
        return text[start:end.start() if end else None]

    reference, strategies = section("## Configuration"), section("## Search strategies")
    for keys in (config._TOP_KEYS, config._GRID_KEYS, config._DATA_KEYS, config._SPLIT_KEYS,
                 config._EXECUTION_KEYS):
        for key in keys:  # a line of the annotated example, "  key: value  # meaning"
            assert re.search(rf"^\s*(# )?{key}:", reference, re.M), key
    for key in config._SEARCH_KEYS:  # the strategies' own keys are described with them
        assert re.search(rf"^\s*(# )?{key}:", reference, re.M) or f"`{key}`" in strategies, key


def test_readme_lists_every_key_of_eval_json(tiny_config: Path, tmp_path: Path):
    from tests_helpers import run

    run_dir = search(tiny_config, tmp_path / "runs")
    code, out, err = run(["eval", "--run", str(run_dir), "--bootstrap", "10", "--no-plots",
                          "--json"])
    assert code == 0, err
    keys = set(json.loads(out))
    text = README.read_text()
    table = text[text.index("`eval.json` keys:"):]
    table = table[:table.index("\n\n", table.index("| key | meaning |"))]
    documented = {name for row in table.splitlines()[2:]
                  for name in re.findall(r"`([a-z_.]+)`", row.split("|")[1])}
    assert keys <= documented, keys - documented
