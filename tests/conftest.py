"""Shared fixtures: tiny datasets written into temporary folders (nothing is downloaded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from fake_data import write_fake_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def _sigint_restored():
    """Each test starts with Python's own SIGINT handler. Lightning ignores SIGINT after it
    handles a KeyboardInterrupt in fit, and an ignored signal is inherited by every process
    a later test starts, which then cannot be interrupted."""
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory) -> Path:
    """A dataset in the shard format with sine-tone voices and flat-colour faces."""
    root = tmp_path_factory.mktemp("fake")
    write_fake_dataset(root)
    return root


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whatever ran before it in the session:
    a net built in a test has the same initial weights alone and in the whole suite."""
    import random

    import numpy as np
    import torch
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
