"""Voice encoder and face decoder of Speech2Face (Oh et al., "Speech2Face: Learning the Face
Behind a Voice", CVPR 2019, Sec. 3 and the voice encoder table).

``SpectrogramEncoder``: the compressed complex spectrogram ``[B, 2, F, T]`` (real and imaginary
channels, see ``datamodules.features.compress_spectrogram``) -> a feature vector that regresses
a face-identity network's features. Nine 4x4 convolutions with batch norm and ReLU, channels
64 -> 64 -> 128 -> 128 -> 128 -> 256 -> 512 -> 512 -> 512 (times ``width``), a 2x1 max-pool
along frequency after the second to the sixth (257 bins -> 8), the mean over time, and two
fully connected layers (ReLU between) to the feature size. At width 1 with a 4096-d output,
the net has 45.3 M parameters (flattened 512 x 8 = 4096 -> 4096 -> 4096).

The paper's table also halves time with its pools and two strided convolutions; by default
this version pools frequency only, as in the smaller reproductions, so every convolution is
stride 1 in time and an utterance keeps its frame count to the time average. ``time_pools``
names blocks whose pool also halves time (2x2, an odd frame count rounded up): each halving
halves the cost of every later block, which is what a CPU profile can afford (the blocks'
activations, ``channels x bins x frames``, dominate an evaluation's time, not the weights).
Padding frames are zeroed after every layer (activations are >= 0 after the ReLU, so a zero
frame never wins a max-pool) and the average is taken over each utterance's own frames, so an
utterance gets the same feature alone or in a padded batch (in eval mode: in training, batch
norm's statistics see the padding, as in ``VoiceEmbedder``).

``FaceDecoder``: a feature vector -> face ``[B, 3, S, S]`` in [-1, 1]. Speech2Face's decoder
(Cole et al., CVPR 2017) predicts landmarks and a texture; here the GAN's ``FaceGenerator``
renders the L2-normalised feature instead. Normalising makes the decoder blind to the scale of
its input, which the default regression loss (L1 between normalised features) leaves free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from voice2face.nets.gan import FaceGenerator
from voice2face.nets.voice import at_least_fp32, scaled, time_mask

PAPER_CHANNELS = (64, 64, 128, 128, 128, 256, 512, 512, 512)
PAPER_POOLS = (1, 2, 3, 4, 5)  # blocks (0-based) followed by a 2x1 max-pool over frequency
PAPER_HIDDEN = 4096


class SpectrogramEncoder(nn.Module):
    """Compressed spectrogram ``[B, 2, F, T]`` (+ frame lengths ``[B]``) -> feature ``[B, dim]``.

    The output is not normalised: the feature losses (``voice2face.losses.FEATURE_LOSSES``)
    normalise where they need to. ``hidden`` (the first fully connected layer) defaults to
    4096 times ``width``.
    """

    def __init__(self, dim: int = 4096, width: float = 1.0, freq_bins: int = 257,
                 hidden: int | None = None, in_channels: int = 2,
                 channels: tuple[int, ...] = PAPER_CHANNELS,
                 pools: tuple[int, ...] = PAPER_POOLS, time_pools: tuple[int, ...] = ()):
        super().__init__()
        pooled_bins = freq_bins // 2 ** len(pools)
        if pooled_bins < 1:
            raise ValueError(f"{freq_bins} frequency bins cannot be halved {len(pools)} times")
        for name, blocks in (("pools", pools), ("time_pools", time_pools)):
            if any(not 0 <= i < len(channels) for i in blocks):
                raise ValueError(f"{name} {tuple(blocks)} name blocks outside "
                                 f"0..{len(channels) - 1}")
        hidden = hidden if hidden is not None else scaled((PAPER_HIDDEN,), width)[0]
        self.dim = dim
        # the constructor's arguments: what a checkpoint needs to rebuild the net
        self.config = {"dim": dim, "width": width, "freq_bins": freq_bins, "hidden": hidden,
                       "in_channels": in_channels, "channels": list(channels),
                       "pools": list(pools), "time_pools": list(time_pools)}
        widths = (in_channels, *scaled(tuple(channels), width))
        # 'same' padding of a 4-wide kernel (1 before, 2 after, on both axes) keeps every frame
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(c_in, c_out, 4, bias=False),
                          nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
            for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.pools = frozenset(pools)
        self.time_pools = frozenset(time_pools)
        self.fc = nn.Sequential(nn.Linear(widths[-1] * pooled_bins, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, dim))

    def forward(self, spec: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((spec.shape[0],), spec.shape[-1], dtype=torch.long,
                                 device=spec.device)
        lengths = lengths.clamp(min=1)
        mask = time_mask(lengths, spec.shape[-1]).unsqueeze(1)  # [B, 1, 1, T], fp32
        x = spec * mask.to(spec.dtype)
        for i, block in enumerate(self.blocks):
            # zero the padding: batch norm shifts it away from 0, and the next kernel sees it
            # (the mask in the activations' dtype: an fp32 mask would make bf16 ones fp32)
            x = block(x)
            x = x * mask.to(x.dtype)
            if i in self.time_pools:
                # an odd last frame is pooled with a zero frame, which the max ignores
                x = F.max_pool2d(F.pad(x, (0, x.shape[-1] % 2)),
                                 kernel_size=(2 if i in self.pools else 1, 2))
                lengths = (lengths + 1) // 2
                mask = time_mask(lengths, x.shape[-1]).unsqueeze(1)
            elif i in self.pools:
                x = F.max_pool2d(x, kernel_size=(2, 1))
        # the mean over each utterance's frames, summed in fp32 (bf16 under autocast)
        x = x.sum(-1, dtype=at_least_fp32(x.dtype)) / lengths[:, None, None]
        return self.fc(x.flatten(1))


class FaceDecoder(nn.Module):
    """Feature ``[B, dim]`` -> face ``[B, 3, S, S]`` in [-1, 1]: ``FaceGenerator`` on the unit
    feature (see the module docstring)."""

    def __init__(self, dim: int = 4096, face_size: int = 64, width: float = 1.0,
                 norm: str = "batch"):
        super().__init__()
        self.dim = dim
        self.config = {"dim": dim, "face_size": face_size, "width": width, "norm": norm}
        self.generator = FaceGenerator(in_dim=dim, face_size=face_size, width=width, norm=norm)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.generator(F.normalize(feature, dim=-1))
