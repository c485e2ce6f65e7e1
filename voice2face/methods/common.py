"""Small pieces the methods share: optimizers from config, validation of embeddings, the
target network's feature of a face (the Speech2Face family's), and a synthetic world's hidden
attributes as training labels (the judge's and DIMNet's attribute heads)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from voice2face.metrics import RecallAtK, applicable
from voice2face.nets import FaceTrunk
from voice2face.synth.audit import HiddenAttributes


def adam(params, optim: dict[str, Any]) -> torch.optim.Adam:
    """Adam with ``optim.lr``, ``optim.betas`` and ``optim.weight_decay`` (if given)."""
    return torch.optim.Adam(params, lr=float(optim["lr"]), betas=tuple(optim.get("betas", (0.9, 0.999))),
                            weight_decay=float(optim.get("weight_decay", 0.0)))


def world_attributes(data: dict) -> torch.Tensor | None:
    """``[identities, 3]``: the hidden z of every identity of a synthetic world by identity
    index (regenerated from the manifest), or None for data that is not one."""
    if data.get("kind") != "synthetic":
        return None
    return torch.as_tensor(HiddenAttributes.of_world(data["root"]).z, dtype=torch.float32)


def unit_features(target: FaceTrunk, faces: torch.Tensor) -> torch.Tensor:
    """The target network's feature of faces: its unit embedding ``[B, dim]``."""
    return F.normalize(target(faces), dim=-1)


class SplitHalfRecall(nn.Module):
    """Identification of held-out identities by their own embeddings: samples with an odd
    ``index`` are probes, samples with an even one the gallery (one entry per identity, the
    mean). Distinct samples on both sides, so an embedding never finds itself.

    A thin wrapper of ``RecallAtK`` (correct under DDP); ``compute`` gives ``{stage/recall@K}``
    for each K below the number of identities (``RecallAtK`` warns about the others).
    """

    def __init__(self, stage: str, top_k=(1, 5)):
        super().__init__()
        self.stage = stage
        self.recall = RecallAtK(top_k)

    def update(self, embedding: torch.Tensor, identity: torch.Tensor, index: torch.Tensor) -> None:
        odd = index % 2 == 1
        for role, rows in (("probe", odd), ("gallery", ~odd)):
            self.recall.update(embedding[rows], identity[rows], index=index[rows], role=role)

    def compute(self) -> dict[str, torch.Tensor]:
        try:
            values = applicable(self.recall, self.recall.compute())
            return {f"{self.stage}/{k}": v for k, v in values.items()}
        finally:
            self.recall.reset()

    def reset(self) -> None:
        self.recall.reset()
