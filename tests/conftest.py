"""Shared fixtures: tiny datasets and configs made on the fly (no network, no real data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agereg.synth import write_synthetic

TINY_CONFIG = """\
name: tiny
seed: 3
n_jobs: 1
data: {{dir: {data}}}
split: {{seed: 1, val_fraction: 0.25}}
grid:
  batch_size: [8, 32]
  learning_rate: [1.0e-3, 1.0e-2, 1.0e+30]
  epochs: [1, 3]
  l2: [0.0, 1.0e-2]
"""


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 120/60-image synthetic dataset of 6x6 pixels (shared, never modified)."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "tiny", seed=0, n_train=120,
                           n_test=60, side=6)


@pytest.fixture
def data_copy(tmp_path: Path, tiny_data: Path) -> Path:
    """A private copy of the tiny dataset that a test may break."""
    import shutil

    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    return dst


@pytest.fixture
def tiny_config(tmp_path: Path, data_copy: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG.format(data=data_copy))
    return path
