"""The training entry point: run folders, checkpoints, resumption, checkpoint identity."""

from __future__ import annotations

import shutil

import pytest
import torch
from omegaconf import OmegaConf

from voice2face.config import EXPERIMENTS, load_config
from voice2face.methods import METHODS, Evaluation, MethodModule, load_method
from voice2face.methods.base import CheckpointError, read_checkpoint_meta
from voice2face.train import train


class ToyModule(MethodModule):
    """Speaker classification from the time-averaged log-mel: the smallest real method."""

    evaluation = Evaluation.PRETRAINING

    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        self.head = torch.nn.Linear(64, data["num_train_identities"])

    def training_step(self, batch, _):
        logits = self.head(batch["mel"].mean(-1))
        loss = torch.nn.functional.cross_entropy(logits, batch["label"])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, _):
        self.log("val/mel_mean", batch["mel"].mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=float(self.cfg["optim"]["lr"]))


@pytest.fixture
def toy(tmp_path, monkeypatch, fake_root):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    shutil.copy(EXPERIMENTS / "base.yaml", experiments / "base.yaml")
    (experiments / "toy.yaml").write_text("optim: {lr: 0.1}\n")
    monkeypatch.setitem(METHODS, "toy", ToyModule)

    def config(*overrides):
        return load_config("toy", [f"data.root={fake_root}", f"run.root={tmp_path / 'runs'}",
                                   "data.batch_size=4", "data.num_workers=0",
                                   "data.crop_seconds=0.3", "logger.wandb=false",
                                   "trainer.val_check_interval=3", "run.checkpoint_every=2",
                                   "seed=0",
                                   *overrides], root=experiments)
    return config


def test_run_folder_contents_and_resume(toy):
    final = train(toy("trainer.max_steps=4", "run.name=r1"))
    folder = final.parent.parent
    assert folder.name == "r1"
    saved = OmegaConf.load(folder / "config.yaml")
    assert saved.method == "toy" and saved.trainer.max_steps == 4
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    (metrics,) = folder.glob("csv/version_*/metrics.csv")
    assert metrics.read_text().count("\n") > 1
    assert torch.load(final, weights_only=False)["global_step"] == 4
    assert not list(folder.rglob("*.tmp"))

    # resuming continues from the last checkpoint up to the new max_steps
    final = train(toy("trainer.max_steps=7", f"run.resume={folder}"))
    assert final.parent.parent == folder
    assert len(list(folder.glob("csv/version_*/metrics.csv"))) == 2  # the first log is kept
    assert torch.load(final, weights_only=False)["global_step"] == 7

    # run.resume=auto with the same run.name also picks the run up again
    final = train(toy("trainer.max_steps=9", "run.name=r1", "run.resume=auto"))
    assert torch.load(final, weights_only=False)["global_step"] == 9


def test_checkpoint_identity_and_errors(toy, tmp_path):
    final = train(toy("trainer.max_steps=2", "run.name=r2"))
    meta = read_checkpoint_meta(final)
    assert meta["method"] == "toy" and meta["data"]["num_train_identities"] == 6
    module = load_method(final, expect="toy")
    assert isinstance(module, ToyModule) and not module.training
    with pytest.raises(CheckpointError, match="a checkpoint of method 'toy', expected 'gan'"):
        load_method(final, expect="gan")
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(CheckpointError, match="not a voice2face checkpoint"):
        load_method(plain)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt: not a readable"):
        load_method(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_method(tmp_path / "missing.ckpt")


def test_wandb_logs_offline_into_the_run_folder(toy):
    final = train(toy("trainer.max_steps=2", "run.name=r3", "logger.wandb=true"))
    runs = list((final.parent.parent / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
