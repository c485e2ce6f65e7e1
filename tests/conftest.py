"""Shared fixtures: tiny datasets written into temporary folders (nothing is downloaded), the
pretrained nets trained on them, and the benchmark script. Plain helpers: ``helpers``."""

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


# --- the tiny world and its nets: built once per session ---------------------------------------
# helpers imports Lightning: the fixtures import it when first used, so that a module that
# needs none of them does not wait for it.

@pytest.fixture(scope="session")
def world(fake_root) -> Path:
    """The tiny dataset the methods train on (one line to swap for another world)."""
    return fake_root


@pytest.fixture(scope="session")
def pretrained(world) -> Path:
    """The world's ``pretrained/`` folder, with every net of the registry's ``PRETRAINED``."""
    from helpers import pretrained_nets
    return pretrained_nets(world)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A runs folder that a module's trained-checkpoint fixtures share."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def bench():
    """benchmarks/train_step.py, loaded as a module."""
    from helpers import REPO, load_script
    return load_script("train_step_bench", REPO / "benchmarks" / "train_step.py")


@pytest.fixture(scope="session")
def synthetic_world(tmp_path_factory) -> Path:
    """A tiny synthetic world (its hidden attributes known) with its judge ``face.ckpt`` and a
    ``voice.ckpt`` embedder, each trained a few steps: enough to measure with, not to judge."""
    from helpers import train_quick

    from voice2face.constants import pretrained_dir
    from voice2face.methods import PRETRAINED
    from voice2face.synth.generate import generate_world
    from voice2face.synth.world import PRESETS
    from voice2face.training import export
    root = tmp_path_factory.mktemp("synthetic") / "world"
    generate_world(root, PRESETS["tiny"], workers=1, progress=False)
    for name in ("face", "voice"):
        method, overrides = PRETRAINED[name]
        final = train_quick(method, root, root.parent / "pretrain-runs", "trainer.max_steps=6",
                            f"run.name={name}", *overrides)
        export(final, pretrained_dir(root) / f"{name}.ckpt")
    return root
