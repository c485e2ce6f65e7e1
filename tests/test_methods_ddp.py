"""A real 2-process DDP run (gloo, CPU) of every registered method through `voice2face
train` with `trainer.devices=2` and the default strategy, as a user would type it: Lightning
picks plain DDP, and the GAN's and the CAE's two optimizer steps each leave a net without
gradients (see voice2face/methods/gan.py and training.ddp_strategy); and the evaluation after
it for the methods that have one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import QUICK
from voice2face.methods import METHODS, Evaluation


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_under_plain_ddp_with_two_processes(method, world, pretrained,
                                                                 tmp_path):
    cls = METHODS[method]
    evaluable = cls.evaluation is not Evaluation.PRETRAINING
    args = [f"data.root={world}", f"run.root={tmp_path}", *QUICK, f"run.evaluate={evaluable}",
            "run.name=ddp", "trainer.max_steps=3", "trainer.val_check_interval=3",
            "trainer.devices=2", "trainer.accelerator=cpu"]
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


# One rank with a batch of a single identity while the other pairs its batch: the CAE's
# unpaired batch must run the same backward passes and optimizer steps (methods/cae.py), or
# the paired rank waits in its all-reduce forever. The tiny world rarely deals such a batch
# (a few in a hundred), so this script deals it on purpose to rank 1.
CAE_ONE_IDENTITY_SCRIPT = '''
import sys
import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, IterableDataset

sys.path.insert(0, {tests!r})
from helpers import fixed_batch, one_identity, quick_config
from datamodules import VoiceFaceDataModule
from voice2face.methods.base import data_info
from voice2face.methods.cae import CaeModule

world, out = {world!r}, {out!r}


class RankBatches(IterableDataset):
    def __init__(self, batch, n):
        self.batch, self.n = batch, n

    def __iter__(self):
        one = torch.distributed.get_rank() == 1
        return iter([one_identity(self.batch) if one else self.batch] * self.n)


torch.manual_seed(0)
cfg = quick_config("cae", world, out, "model.width=0.25", "model.critic_width=0.25",
                   "eval.judge=null", "model.cache_voice=false")
cae = CaeModule(OmegaConf.to_container(cfg, resolve=True), data_info(VoiceFaceDataModule(world)))
trainer = L.Trainer(max_steps=2 * 3, accelerator="cpu", devices=2,
                    strategy="ddp_find_unused_parameters_true", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0)
trainer.fit(cae, DataLoader(RankBatches(fixed_batch(world), 3), batch_size=None))
torch.save({{"global_step": trainer.global_step,
             "paired": float(trainer.logged_metrics["train/paired"]),
             "params": {{k: v.detach().cpu() for k, v in cae.named_parameters()}}}},
           f"{{out}}/rank{{trainer.global_rank}}.pt")
'''


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cae_trains_under_ddp_when_one_rank_has_a_batch_of_one_identity(world, pretrained,
                                                                        tmp_path):
    script = tmp_path / "cae_one_identity.py"
    script.write_text(CAE_ONE_IDENTITY_SCRIPT.format(tests=str(Path(__file__).parent),
                                                     world=str(world), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["global_step"] for r in ranks] == [6, 6]  # both optimizers stepped, every batch
    assert [r["paired"] for r in ranks] == [1.0, 0.0]
    # the same averaged gradients, the same steps: the same weights (BatchNorm's running
    # statistics are each rank's own)
    for k, v in ranks[0]["params"].items():
        assert torch.equal(v, ranks[1]["params"][k]), k
