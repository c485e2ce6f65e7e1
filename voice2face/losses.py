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

Every loss computes in fp32 at least, its inputs cast (under bf16 autocast the nets' outputs are
bf16), and none branches on the values of its inputs, so a training step never waits for the
device to read them back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32, or as it is when wider (bf16 and fp16 under autocast become fp32)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-log D(x) - log(1 - D(G(v)))``, averaged: real faces to 1, generated faces to 0."""
    return F.softplus(-_fp32(real_logits)).mean() + F.softplus(_fp32(fake_logits)).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``-log D(G(v))``."""
    return F.softplus(-_fp32(fake_logits)).mean()


def identity_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over training identities; label -1 (not a training identity) is ignored.

    A batch with no training identity gives 0 (not NaN), still connected to ``logits``.
    Written without a branch on the labels' values (the mean over the valid rows as a sum
    over a count of at least 1), so it never waits for the device; in fp32 under autocast.
    """
    valid = labels >= 0
    per_row = F.cross_entropy(_fp32(logits), labels.clamp(min=0), reduction="none")
    return torch.where(valid, per_row, 0.0).sum() / valid.sum().clamp(min=1)


def gender_loss(logits: torch.Tensor, gender: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the male logit against gender (1 male, 0 female)."""
    logits = _fp32(logits)
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
    return (_fp32(pred) - _fp32(target)).abs().mean()


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
    """Fraction of rows whose arg-max is the label (rows with label -1 left out; 0 without
    any), computed without waiting for the device."""
    valid = labels >= 0
    correct = (logits.argmax(-1) == labels) & valid
    return correct.sum() / valid.sum().clamp(min=1)


# --- feature regression (Speech2Face) -------------------------------------------------------

def feature_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||p/|p| - t/|t| ||_1``, averaged over the batch (the default: best in the reports)."""
    return (F.normalize(_fp32(pred), dim=-1)
            - F.normalize(_fp32(target), dim=-1)).abs().sum(-1).mean()


def feature_l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||p/|p| - t/|t| ||_2^2`` (= ``2 - 2 cos``), averaged over the batch: Speech2Face's
    feature term (Eq. 1)."""
    return (F.normalize(_fp32(pred), dim=-1)
            - F.normalize(_fp32(target), dim=-1)).square().sum(-1).mean()


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
    with torch.autocast(pred.device.type, enabled=False):  # a bf16 matmul: 3 digits of cosine
        logits = (F.normalize(_fp32(pred), dim=-1) @ F.normalize(_fp32(target), dim=-1).T
                  / temperature)
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
