"""Classifier heads on unit embeddings, shared by the pretraining methods.

Cosine classifiers (NormFace, Wang et al. 2017) train the embedding on the sphere, which is
where every consumer uses it: cosine matching and retrieval, and the GAN's normalised input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    """Logits ``scale * cos(embedding, class weight)`` for ``[B, dim]`` -> ``[B, classes]``."""

    def __init__(self, dim: int, classes: int, scale: float = 16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / dim ** 0.5)
        self.scale = scale

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(embedding, dim=-1) @ F.normalize(self.weight, dim=-1).T


class CovariateHeads(nn.Module):
    """Identity (cosine) and gender (logit of male) heads on an embedding, and with
    ``attributes > 0`` a linear head regressing that many continuous covariates.

    DIMNet (Wen et al., ICLR 2019) shares such heads between the voice and the face
    embedders, which is what maps both modalities into one space.
    """

    def __init__(self, dim: int, classes: int, scale: float = 16.0, attributes: int = 0):
        super().__init__()
        self.identity = CosineClassifier(dim, classes, scale)
        self.gender = nn.Linear(dim, 1)
        self.attributes = nn.Linear(dim, attributes) if attributes else None

    def forward(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        unit = F.normalize(embedding, dim=-1)
        out = {"identity": self.identity(unit), "gender": self.gender(unit).squeeze(-1)}
        if self.attributes is not None:
            out["attributes"] = self.attributes(unit)
        return out


class FeatureHead(nn.Module):
    """An embedding ``[B, dim]`` -> a feature ``[B, out]`` through one hidden layer of
    ``hidden`` units (ReLU): the regression's encoder on a frozen voice embedder
    (``model.encoder=embedder``)."""

    def __init__(self, dim: int, out: int, hidden: int = 512):
        super().__init__()
        self.config = {"dim": dim, "out": out, "hidden": hidden}
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)
