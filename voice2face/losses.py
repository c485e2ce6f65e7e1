"""Losses shared by the methods: small pure functions of tensors.

The adversarial pair is the non-saturating GAN loss of Goodfellow et al. (2014), as Wen et
al. (NeurIPS 2019, Algorithm 1) train with: binary cross-entropy on the discriminator's
logits, the generator maximising ``log D(G(v))`` rather than minimising ``log(1 - D)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-log D(x) - log(1 - D(G(v)))``, averaged: real faces to 1, generated faces to 0."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``-log D(G(v))``."""
    return F.softplus(-fake_logits).mean()


def identity_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over training identities; label -1 (not a training identity) is ignored.

    A batch with no training identity gives 0 (not NaN), still connected to ``logits``.
    """
    valid = labels >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid], labels[valid])


def gender_loss(logits: torch.Tensor, gender: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the male logit against gender (1 male, 0 female)."""
    return F.binary_cross_entropy_with_logits(logits, gender.to(logits.dtype))


def covariate_loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, gender: torch.Tensor,
                   gender_weight: float = 1.0) -> torch.Tensor:
    """DIMNet's covariate supervision: identity and gender heads on one embedding."""
    return (identity_loss(outputs["identity"], labels)
            + gender_weight * gender_loss(outputs["gender"], gender))


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max is the label (rows with label -1 left out)."""
    valid = labels >= 0
    if not bool(valid.any()):
        return logits.new_zeros(())
    return (logits[valid].argmax(-1) == labels[valid]).float().mean()
