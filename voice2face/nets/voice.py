"""Voice embedding network of Wen, Singh & Raj (NeurIPS 2019), Table 2.

Five 1-D convolutions over log-mel frames (64 -> 256 -> 384 -> 576 -> 864 -> 64, kernel 3,
stride 2), batch norm and ReLU after the first four, average pooling over time, and an L2
normalised 64-d embedding. Pooling is masked with the utterance lengths, and padded frames are
zeroed after every layer, so an utterance gets the same embedding alone or in a padded batch.

The net normalises its log-mel input itself over the valid frames (``norm``):
``"bin"``, every mel bin to zero mean and unit variance over the utterance (Wen et al.; it
removes the channel's colouring, and with it the speaker's long-term spectral envelope:
vocal-tract length and the mean pitch's harmonics), or ``"utterance"``, one mean and
variance over all bins and frames (loudness goes, the envelope stays).

``pooling="stats"`` replaces the average by statistics pooling (Snyder et al. 2018,
x-vectors): the mean and standard deviation over time of the last layer's ``dim`` channels,
mapped back to ``dim`` by a linear layer. The spread over time is where a voice's
pitch movements (tremor, intonation) show; an average keeps only its spectral colour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PAPER_CHANNELS = (256, 384, 576, 864)
POOLINGS = ("mean", "stats")
NORMS = ("bin", "utterance")


def scaled(channels: tuple[int, ...], width: float) -> tuple[int, ...]:
    """Channel counts times a width multiplier (at least 8 each): narrow nets for CPU runs."""
    return tuple(max(8, int(round(c * width))) for c in channels)


def conv_lengths(lengths: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """Frames after a kernel-3, padding-1 convolution with ``stride``: ceil(L / stride)."""
    return torch.div(lengths + stride - 1, stride, rounding_mode="floor")


def time_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """``[B, 1, steps]`` float mask, 1 on valid frames (in fp32: cast it to the activations'
    dtype before multiplying, or a bf16 activation comes out fp32)."""
    frames = torch.arange(steps, device=lengths.device)
    return (frames[None, :] < lengths[:, None]).unsqueeze(1).float()


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """``dtype``, or fp32 for a narrower one (bf16 and fp16 under autocast)."""
    return torch.promote_types(dtype, torch.float32)


def normalize_mel(mel: torch.Tensor, lengths: torch.Tensor, norm: str) -> torch.Tensor:
    """Log-mel ``[B, n_mels, T]`` normalised over each utterance's valid frames, padding 0.

    ``"bin"``: per mel bin (mean and population std over time); ``"utterance"``: one mean and
    std over every bin and valid frame. A constant input (zero variance) maps to zeros.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose from {NORMS}")
    mask = time_mask(lengths, mel.shape[-1]).to(mel.dtype)     # [B, 1, T]
    dims = (-1,) if norm == "bin" else (-2, -1)
    frames = mask.sum(-1, keepdim=True)                        # [B, 1, 1]
    count = frames if norm == "bin" else frames * mel.shape[-2]
    mean = (mel * mask).sum(dims, keepdim=True) / count
    centred = (mel - mean) * mask
    std = (centred.pow(2).sum(dims, keepdim=True) / count).sqrt()
    return centred / (std + 1e-5)


class VoiceEmbedder(nn.Module):
    """Log-mel ``[B, n_mels, T]`` (+ lengths ``[B]``) -> embedding ``[B, dim]``.

    ``norm`` defaults to ``"bin"``, the paper's, which is also what checkpoints saved before
    the option existed were trained with.

    ``forward`` returns the L2-normalised embedding; ``features`` the pooled, unnormalised one
    (what a classifier head is trained on during pretraining).
    """

    def __init__(self, n_mels: int = 64, dim: int = 64, width: float = 1.0,
                 channels: tuple[int, ...] = PAPER_CHANNELS, pooling: str = "mean",
                 norm: str = "bin"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLINGS}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose from {NORMS}")
        self.dim, self.pooling, self.norm = dim, pooling, norm
        # the constructor's arguments: what a checkpoint needs to rebuild the net
        self.config = {"n_mels": n_mels, "dim": dim, "width": width, "channels": list(channels),
                       "pooling": pooling, "norm": norm}
        widths = (n_mels, *scaled(tuple(channels), width))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                          nn.BatchNorm1d(c_out), nn.ReLU(inplace=True))
            for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.out = nn.Conv1d(widths[-1], dim, 3, stride=2, padding=1)
        self.stats = nn.Linear(2 * dim, dim) if pooling == "stats" else None

    def features(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((mel.shape[0],), mel.shape[-1], dtype=torch.long,
                                 device=mel.device)
        lengths = lengths.clamp(min=1)
        x = normalize_mel(mel, lengths, self.norm)
        for layer in (*self.blocks, self.out):
            x = layer(x)
            lengths = conv_lengths(lengths)
            # zero the padding: batch norm shifts it away from 0, and the next kernel sees it
            x = x * time_mask(lengths, x.shape[-1]).to(x.dtype)
        # pooled in fp32 (under bf16 autocast the convolutions' outputs are bf16): a sum over
        # many frames, and a variance as a difference of moments, lose their digits in bf16
        x = x.to(at_least_fp32(x.dtype))
        n = lengths[:, None].to(x.dtype)
        mean = x.sum(-1) / n
        if self.stats is None:
            return mean
        # padding is zero, so the masked second moment is a plain sum
        var = ((x * x).sum(-1) / n - mean * mean).clamp(min=1e-6)
        return self.stats(torch.cat([mean, var.sqrt()], dim=-1))

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.features(mel, lengths), dim=-1)


def perturb_embedding(embedding: torch.Tensor, std: float) -> torch.Tensor:
    """Wen et al.'s augmentation: Gaussian noise on the unit embedding, renormalised."""
    if std <= 0:
        return embedding
    return F.normalize(embedding + std * torch.randn_like(embedding), dim=-1)
