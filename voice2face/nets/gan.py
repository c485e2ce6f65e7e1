"""Generator and critic of the voice-to-face GAN (Wen, Singh & Raj, NeurIPS 2019, Table 2).

``FaceGenerator``: a 64-d (unit) voice embedding -> a 4x4 transposed convolution to 1024
channels, stride-2 4x4 transposed convolutions halving the channels up to the face size
(1024 -> 512 -> 256 -> 128 -> 64 for 64x64), a 1x1 convolution to RGB and tanh. With
``noise_dim > 0`` a Gaussian z is concatenated to the embedding (the conditional GAN of
Mirza & Osindero 2014, as in "Deep Face Gen").

``FaceCritic``: the discriminator and the identity classifier of the paper, two linear heads
on one shared convolutional trunk (``FaceTrunk``). With ``cond_dim > 0`` the discriminator is
a projection discriminator (Miyato & Koyama 2018): ``D(x, e) = w.h + <P e, h>`` for the trunk
feature ``h`` and the voice embedding ``e``. With ``gender=True`` a third linear head gives
the logit of male: an auxiliary classifier (AC-GAN, Odena et al. 2017) that the paper does
not have, used by the short CPU profile (see ``voice2face/methods/gan.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from voice2face.nets.face import FaceTrunk, down_stages


class FaceGenerator(nn.Module):
    """Embedding ``[B, in_dim]`` (and noise ``[B, noise_dim]``) -> face ``[B, 3, S, S]``."""

    def __init__(self, in_dim: int = 64, face_size: int = 64, width: float = 1.0,
                 noise_dim: int = 0, norm: str = "batch", out_channels: int = 64):
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch', got {norm!r}")
        self.in_dim, self.noise_dim, self.face_size = in_dim, noise_dim, face_size
        stages = down_stages(face_size)
        chans = [max(8, int(round(out_channels * 2 ** (stages - i) * width)))
                 for i in range(stages + 1)]  # 1024, 512, 256, 128, 64 for 64x64

        def block(conv: nn.Module, c: int) -> list[nn.Module]:
            return [conv, *([nn.BatchNorm2d(c)] if norm == "batch" else []), nn.ReLU(True)]

        bias = norm == "none"
        layers = block(nn.ConvTranspose2d(in_dim + noise_dim, chans[0], 4, bias=bias), chans[0])
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += block(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias), c_out)
        layers += [nn.Conv2d(chans[-1], 3, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, embedding: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.noise_dim:
            if noise is None:
                noise = torch.randn(embedding.shape[0], self.noise_dim, device=embedding.device,
                                    dtype=embedding.dtype)
            embedding = torch.cat([embedding, noise], dim=1)
        return self.net(embedding[:, :, None, None])


class FaceCritic(nn.Module):
    """Discriminator and identity classifier on a shared trunk (Wen et al., Table 2).

    ``forward(face, cond)`` returns ``{"adversarial": real/fake logit [B], "identity":
    logits [B, classes]}``, and ``"gender"`` (logit of male, [B]) when built with
    ``gender=True``.
    """

    def __init__(self, face_size: int = 64, num_classes: int = 924, dim: int = 64,
                 width: float = 1.0, cond_dim: int = 0, norm: str = "none",
                 gender: bool = False):
        super().__init__()
        self.trunk = FaceTrunk(face_size, dim, width, norm=norm)
        self.adversarial = nn.Linear(dim, 1)
        self.classifier = nn.Linear(dim, num_classes)
        self.gender = nn.Linear(dim, 1) if gender else None
        self.cond_dim = cond_dim
        self.projection = nn.Linear(cond_dim, dim, bias=False) if cond_dim else None

    def forward(self, face: torch.Tensor, cond: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        h = F.leaky_relu(self.trunk(face), 0.2)
        adv = self.adversarial(h).squeeze(-1)
        if self.projection is not None:
            if cond is None:
                raise ValueError("a conditional critic needs the voice embedding (cond)")
            adv = adv + (self.projection(cond) * h).sum(-1)
        out = {"adversarial": adv, "identity": self.classifier(h)}
        if self.gender is not None:
            out["gender"] = self.gender(h).squeeze(-1)
        return out
