"""Losses shared by the methods: small pure functions of tensors.

The adversarial pair is the non-saturating GAN loss of Goodfellow et al. (2014), as Wen et
al. (NeurIPS 2019, Algorithm 1) train with: binary cross-entropy on the discriminator's
logits, the generator maximising ``log D(G(v))`` rather than minimising ``log(1 - D)``.

The feature losses regress a voice encoder's output onto a face-identity network's features,
as Speech2Face (Oh et al., "Speech2Face: Learning the Face Behind a Voice", CVPR 2019, Eq. 1)
does with its feature term: distances between the L2-normalised vectors (so the encoder's
output scale is free), each summed over the feature and averaged over the batch. (Eq. 1 also
has an L1 on the face decoder's first layer and a distillation term; the reproductions these
follow leave them out.) InfoNCE (van den Oord et al. 2018) is the contrastive alternative:
each voice ranks its own face feature above the batch's others. ``FEATURE_LOSSES`` maps
the config's ``model.loss`` names to them.
"""

from __future__ import annotations

from collections.abc import Callable

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


def image_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel difference: the reconstruction terms of the Controlled AutoEncoder
    (Liang et al., Algorithm 1: to the proposal face, to the speaker's face, and the cycle
    back to the proposal)."""
    return (pred - target).abs().mean()


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``sum_k weights[k] * terms[k]`` over the terms present; every term needs a weight (a
    misspelt name is an error, not a silently dropped term)."""
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise KeyError(f"no weight for loss terms {missing}; weights: {sorted(weights)}")
    if not terms:
        raise ValueError("weighted_sum of no terms")
    return sum(float(weights[k]) * v for k, v in terms.items())


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max is the label (rows with label -1 left out)."""
    valid = labels >= 0
    if not bool(valid.any()):
        return logits.new_zeros(())
    return (logits[valid].argmax(-1) == labels[valid]).float().mean()


# --- feature regression (Speech2Face) -------------------------------------------------------

def feature_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||p/|p| - t/|t| ||_1``, averaged over the batch (the default: best in the reports)."""
    return (F.normalize(pred, dim=-1) - F.normalize(target, dim=-1)).abs().sum(-1).mean()


def feature_l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||p/|p| - t/|t| ||_2^2`` (= ``2 - 2 cos``), averaged over the batch: Speech2Face's
    feature term (Eq. 1)."""
    return (F.normalize(pred, dim=-1) - F.normalize(target, dim=-1)).square().sum(-1).mean()


def feature_l1_l2_loss(pred: torch.Tensor, target: torch.Tensor,
                       l2_weight: float = 10.0) -> torch.Tensor:
    """``feature_l1_loss + l2_weight * feature_l2_loss``."""
    return feature_l1_loss(pred, target) + l2_weight * feature_l2_loss(pred, target)


def info_nce_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float = 0.1,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE over the batch: cross-entropy of row i of ``cos(p_i, t_j) / temperature`` with
    the answer ``j = i``; the other rows' targets are the negatives.

    With ``labels`` (the batch's ``identity``, not ``label``: -1 is shared by every identity
    outside training), the other rows of the same identity are left out of the
    negatives: their face is the right answer too. Uninformative predictions cost
    ``log(batch)``.
    """
    logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T / temperature
    if labels is not None:
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


FeatureLoss = Callable[..., torch.Tensor]

FEATURE_LOSSES: dict[str, FeatureLoss] = {
    "l1": feature_l1_loss,
    "l2": feature_l2_loss,
    "l1_l2": feature_l1_l2_loss,
    "infonce": info_nce_loss,
}


def get_feature_loss(name: str) -> FeatureLoss:
    """``FEATURE_LOSSES[name]``; an unknown name fails and lists the valid ones."""
    if name not in FEATURE_LOSSES:
        raise KeyError(f"unknown feature loss {name!r}; valid: {', '.join(FEATURE_LOSSES)}")
    return FEATURE_LOSSES[name]
