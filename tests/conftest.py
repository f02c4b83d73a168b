"""Shared pytest fixtures and settings."""
import os

import pytest
import torch

from csa_lib.config import SHARED_ROOT

# Two test workers share two cores: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


def shared_path(*parts: str):
    """Path under ../shared, or skip the test cleanly when that folder (or the file) is absent."""
    p = SHARED_ROOT.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


@pytest.fixture
def gen():
    """A seeded torch.Generator for reproducible random inputs."""
    return torch.Generator().manual_seed(0)
