"""A real 2-process DDP run (gloo, CPU, two epochs) over the DataModule's training stream."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from datamodules import VoiceFaceDataModule
from helpers import all_keys


class KeyRecorder(L.LightningModule):
    """Trains a single scalar and writes down which sample keys each rank saw."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.out_dir, self.epochs = out_dir, []

    def on_train_epoch_start(self):
        self.epochs.append([])

    def training_step(self, batch, _):
        self.epochs[-1] += batch["key"]
        return (self.w - batch["mel"].mean()) ** 2

    def on_train_end(self):
        with open(f"{self.out_dir}/rank{self.global_rank}.json", "w") as f:
            json.dump({"epochs": self.epochs}, f)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_ranks_disjoint_covering_equal(fake_root, tmp_path):
    dm = VoiceFaceDataModule(fake_root, batch_size=3, num_workers=1, crop_seconds=0.2)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2,
                        use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(KeyRecorder(str(tmp_path)), datamodule=dm)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text())["epochs"] for r in range(2)]
    for epoch in range(2):
        assert len(ranks[0][epoch]) == len(ranks[1][epoch]) > 0
        seen = [set(r[epoch]) for r in ranks]
        assert not seen[0] & seen[1]
        assert seen[0] | seen[1] == set(all_keys(fake_root, "train"))
    # the (persistent) workers heard of the second epoch: another order
    assert all(r[0] != r[1] for r in ranks)
