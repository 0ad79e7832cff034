"""Shared pytest fixtures: where the real ARC data is, and a wandb that never phones home."""
import os
from pathlib import Path

import pytest

os.environ.setdefault('WANDB_MODE', 'disabled')
os.environ.setdefault('MPLBACKEND', 'Agg')

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def root() -> Path:
    "The project root (holds settings.ini)."
    return ROOT


@pytest.fixture(scope='session')
def shared_data() -> Path:
    "The shared ARC data folder (Kaggle-combined files, ConceptARC); skips where a clone lacks it."
    from dis_nbdev.files import shared_data_dir
    d = shared_data_dir()
    if d is None:
        pytest.skip('../shared/data is absent (a user clone): these tests run in CI, where it is present')
    return d


@pytest.fixture(scope='session')
def kaggle_dir(shared_data) -> Path:
    return shared_data / 'arc-kaggle-combined'


@pytest.fixture(scope='session')
def concept_dir(shared_data) -> Path:
    return shared_data / 'ConceptARC' / 'corpus'


@pytest.fixture(scope='module')
def one_torch_thread():
    "Tiny models run fastest on one torch thread (and the CI machine is shared); restores the setting after the module."
    import torch
    prev = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
