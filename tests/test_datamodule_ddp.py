"""A real 2-process DDP run (gloo, CPU) over the DataModule's training stream."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from datamodules import VoiceFaceDataModule
from test_datamodule import all_keys


class KeyRecorder(L.LightningModule):
    """Trains a single scalar and writes down which sample keys each rank saw."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.out_dir, self.keys, self.batches = out_dir, [], 0

    def training_step(self, batch, _):
        self.keys += batch["key"]
        self.batches += 1
        return (self.w - batch["mel"].mean()) ** 2

    def on_train_end(self):
        with open(f"{self.out_dir}/rank{self.global_rank}.json", "w") as f:
            json.dump({"keys": self.keys, "batches": self.batches}, f)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_ranks_disjoint_covering_equal(fake_root, tmp_path):
    dm = VoiceFaceDataModule(fake_root, batch_size=3, num_workers=1, crop_seconds=0.2)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1,
                        use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(KeyRecorder(str(tmp_path)), datamodule=dm)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["batches"] == ranks[1]["batches"] > 0
    seen = [set(r["keys"]) for r in ranks]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(all_keys(fake_root, "train"))
