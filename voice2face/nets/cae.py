"""The Controlled AutoEncoder (Liang, Yu, Xu, Raj & Singh, "Controlled AutoEncoders to
Generate Faces from Voices", ISVC 2020, arXiv:2107.07988): morph a proposal face toward the
speaker of a voice.

``GatedUNet``: a U-Net autoencoder on ``[B, 3, S, S]`` faces in [-1, 1]. The encoder has four
levels of two 3x3 convolution + BatchNorm + ReLU blocks with 64, 128, 256 and 512 channels
(times ``width``), each followed by 2x2 max-pooling; a bottleneck block of the same kind at
S/16 (ours: the paper's description stops at the last pooling; it is where ``"concat"``
conditions); the decoder is the mirror image: a stride-2 transposed convolution per level, the skip
connection of that level concatenated, two conv + BN + ReLU blocks; a 1x1 convolution to RGB
and tanh.

The gating controller (the paper's conditioning): one linear layer per decoder
transposed convolution maps the 64-d voice embedding ``e`` to one logit per filter parameter of
that layer, and ``W_b = W * sigmoid(A e_b + c)`` is the layer's weight for sample ``b``: every
sample gets its own decoder (``gating="full"``). Two cheaper granularities, not in the paper:
``"channel"`` (one gate per output channel) and ``"lowrank"`` (the ``[C_in, C_out k k]`` logit
matrix of each sample is a learned matrix shared by every sample, which plays the part of the
full controller's bias, plus a product of rank-``rank`` factors read from the voice by one
linear layer).
``gating="concat"`` is the ablation: no gates, the embedding is concatenated to the bottleneck
input at every position instead.

The paper trains with batch size 1 because every sample needs its own weights. Here the
per-sample weights are applied in one batched call: a grouped transposed convolution with the
batch folded into the channels, or a batched matrix product where the kernel equals the stride
(``batched_conv_transpose2d``); ``impl="loop"`` runs the plain per-sample loop instead, the
reference the tests and ``benchmarks/cae.py`` compare against. The full controller has
``cond_dim + 1`` parameters per decoder filter parameter, most of the model at width 1
(``benchmarks/cae.py`` prints the counts of every gating).

``CAECritic``: the paper's discriminator and identity classifier, two linear heads on one
shared convolutional trunk.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from voice2face.nets.gan import FaceCritic

GATINGS = ("full", "channel", "lowrank", "concat")
IMPLS = ("batched", "loop")


def unet_channels(width: float = 1.0, base: int = 64, levels: int = 4) -> list[int]:
    """64, 128, 256, 512 at width 1 (the paper's scaffold); never below 8 channels."""
    return [max(8, int(round(base * 2 ** i * width))) for i in range(levels)]


def batched_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             stride: int, padding: int) -> torch.Tensor:
    """``x [B, C_in, H, W]`` with per-sample weights ``[B, C_in, C_out, k, k]`` -> ``[B, C_out, H', W']``.

    One batched call. In general a grouped transposed convolution: the batch folded into the
    channels (``[1, B C_in, H, W]``), the weights stacked to ``[B C_in, C_out, k, k]``,
    ``groups=B``, so group ``b`` sees only sample ``b``'s channels and filters. When the
    kernel equals the stride and there is no padding (the U-Net's 2x2, stride-2 up-convolution)
    the output patches do not overlap and each is one matrix product: a ``bmm`` of
    ``[B, H W, C_in]`` by ``[B, C_in, C_out k k]``, about twice as fast on CPU; its output is
    channels-last when ``x`` is (as a convolution's follows its input's memory format).
    """
    b, c_in, h, w = x.shape
    c_out, k = weight.shape[2], weight.shape[3]
    if bias is not None:
        bias = bias.to(x.dtype)  # an fp32 bias would make a bf16 output fp32 (autocast)
    if k == stride and padding == 0:
        nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last)
        rows = (x.permute(0, 2, 3, 1).reshape(b, h * w, c_in) if nhwc
                else x.flatten(2).transpose(1, 2))
        patches = torch.bmm(rows, weight.reshape(b, c_in, c_out * k * k).to(rows.dtype))
        if nhwc:  # [b, h, k, w, k, c_out] rows of NHWC memory, seen as NCHW
            out = (patches.view(b, h, w, c_out, k, k).permute(0, 1, 4, 2, 5, 3)
                   .reshape(b, h * k, w * k, c_out).permute(0, 3, 1, 2))
        else:
            out = (patches.view(b, h, w, c_out, k, k).permute(0, 3, 1, 4, 2, 5)
                   .reshape(b, c_out, h * k, w * k))
        return out if bias is None else out + bias.view(1, -1, 1, 1)
    out = F.conv_transpose2d(x.reshape(1, b * c_in, h, w), weight.reshape(b * c_in, c_out, k, k),
                             None if bias is None else bias.repeat(b), stride, padding, groups=b)
    return out.view(b, c_out, out.shape[-2], out.shape[-1])


class GatedConvTranspose2d(nn.Module):
    """A transposed convolution whose weight is gated per sample by a voice embedding.

    ``forward(x [B, C_in, H, W], cond [B, cond_dim])``: sample ``b`` is convolved with
    ``weight * gates(cond)[b]`` (the bias is shared, not gated). ``gates`` returns
    ``[B, C_in, C_out, k, k]`` for ``"full"`` and ``"lowrank"`` and ``[B, 1, C_out, 1, 1]`` for
    ``"channel"``, all in (0, 1). Liang et al.'s gating controller, for one decoder layer.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2,
                 stride: int = 2, padding: int = 0, cond_dim: int = 64,
                 granularity: str = "full", rank: int = 4, impl: str = "batched"):
        super().__init__()
        if granularity not in ("full", "channel", "lowrank"):
            raise ValueError(f"granularity must be 'full', 'channel' or 'lowrank', got {granularity!r}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.granularity, self.rank = stride, padding, granularity, rank
        self.impl = impl
        # the base filters, initialised as nn.ConvTranspose2d initialises its own
        base = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding)
        self.weight, self.bias = nn.Parameter(base.weight.detach()), nn.Parameter(base.bias.detach())
        per_sample = {"full": in_channels * out_channels * kernel_size ** 2,
                      "channel": out_channels,
                      "lowrank": rank * (in_channels + out_channels * kernel_size ** 2)}
        self.controller = nn.Linear(cond_dim, per_sample[granularity])
        self.shared_logits: nn.Parameter | None = None
        if granularity == "lowrank":
            # the logits every sample shares (full gating's are the controller's bias); without
            # them every gate matrix is of rank ``rank``, the static part included
            self.shared_logits = nn.Parameter(
                torch.zeros(in_channels, out_channels * kernel_size ** 2))
            # the right factor of unit scale on a unit voice embedding: the left one then
            # learns at the pace of full gating's logits (at nn.Linear's scale, about 0.1,
            # both factors learn ten times slower and the voice hardly moves the gates)
            with torch.no_grad():
                nn.init.normal_(self.controller.weight[in_channels * rank:])

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {value!r}")
        self._impl = value

    def gates(self, cond: torch.Tensor) -> torch.Tensor:
        b, c_in, c_out, k = cond.shape[0], self.in_channels, self.out_channels, self.kernel_size
        logits = self.controller(cond)
        if self.granularity == "full":
            return torch.sigmoid(logits).view(b, c_in, c_out, k, k)
        if self.granularity == "channel":
            return torch.sigmoid(logits).view(b, 1, c_out, 1, 1)
        left, right = logits.split([c_in * self.rank, self.rank * c_out * k * k], dim=1)
        # 1/sqrt(rank) keeps the voice's part of the logits independent of the rank
        logits = left.view(b, c_in, self.rank) @ right.view(b, self.rank, c_out * k * k)
        logits = self.shared_logits + logits / math.sqrt(self.rank)
        return torch.sigmoid(logits).view(b, c_in, c_out, k, k)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gates = self.gates(cond)
        # the gated weights in the gates' dtype (bf16 under autocast): [B, C_in, C_out, k, k]
        # is most of the layer's memory, and the convolution would cast it anyway
        weight = self.weight.to(gates.dtype)
        if self.impl == "loop":  # the paper's way: one sample at a time through its own weights
            return torch.cat([F.conv_transpose2d(x[i:i + 1], weight * gates[i], self.bias,
                                                 self.stride, self.padding)
                              for i in range(x.shape[0])])
        if self.granularity == "channel":
            # conv(x, W * g) = g * conv(x, W) when g is constant over each output channel's
            # filter: one shared convolution, then a per-sample scale
            out = F.conv_transpose2d(x, self.weight, None, self.stride, self.padding)
            return (out * gates.view(x.shape[0], -1, 1, 1).to(out.dtype)
                    + self.bias.view(1, -1, 1, 1).to(out.dtype))
        return batched_conv_transpose2d(x, weight * gates, self.bias, self.stride, self.padding)


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolution + BatchNorm + ReLU blocks (one U-Net level)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True))


class GatedUNet(nn.Module):
    """Proposal face ``[B, 3, S, S]`` in [-1, 1] and voice embedding ``[B, cond_dim]`` -> face.

    ``gating``: ``"full"`` (the paper), ``"channel"``, ``"lowrank"`` (with ``rank``), or
    ``"concat"`` (the ablation: plain transposed convolutions, the embedding concatenated at the
    bottleneck). ``up_kernel``: 2 (2x2, stride 2, the mirror of the 2x2 pooling) or 4 (4x4,
    stride 2, padding 1). ``impl``: ``"batched"`` or ``"loop"`` (the per-sample reference); also
    settable later with ``set_impl``.
    """

    def __init__(self, face_size: int = 64, cond_dim: int = 64, width: float = 1.0,
                 gating: str = "full", rank: int = 4, up_kernel: int = 2, levels: int = 4,
                 impl: str = "batched"):
        super().__init__()
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
        if up_kernel not in (2, 4):
            raise ValueError(f"up_kernel must be 2 or 4, got {up_kernel}")
        if face_size % 2 ** levels:
            raise ValueError(f"face size {face_size} is not divisible by 2**{levels}")
        self.face_size, self.cond_dim, self.gating = face_size, cond_dim, gating
        chans = unet_channels(width, levels=levels)
        self.channels = chans
        self.down = nn.ModuleList(double_conv(c_in, c_out)
                                  for c_in, c_out in zip([3, *chans[:-1]], chans))
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(chans[-1] + (cond_dim if gating == "concat" else 0), chans[-1])
        padding = (up_kernel - 2) // 2
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for c_in, c_out in zip([chans[-1], *chans[:0:-1]], chans[::-1]):  # 512->512, 512->256, ...
            if gating == "concat":
                self.up.append(nn.ConvTranspose2d(c_in, c_out, up_kernel, 2, padding))
            else:
                self.up.append(GatedConvTranspose2d(c_in, c_out, up_kernel, 2, padding, cond_dim,
                                                    gating, rank, impl))
            self.fuse.append(double_conv(2 * c_out, c_out))
        self.out = nn.Conv2d(chans[0], 3, 1)

    def set_impl(self, impl: str) -> GatedUNet:
        for m in self.up:
            if isinstance(m, GatedConvTranspose2d):
                m.impl = impl
        return self

    def gates(self, voice: torch.Tensor) -> list[torch.Tensor]:
        """Every gated layer's gates for ``voice`` (empty for ``"concat"``)."""
        return [m.gates(voice) for m in self.up if isinstance(m, GatedConvTranspose2d)]

    def forward(self, face: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
        skips, h = [], face
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = self.pool(h)
        if self.gating == "concat":
            # in h's dtype: an fp32 embedding would make the bf16 activations fp32 (autocast)
            h = torch.cat([h, voice[:, :, None, None].to(h.dtype).expand(-1, -1, *h.shape[-2:])],
                          dim=1)
        h = self.bottleneck(h)
        for up, fuse, skip in zip(self.up, self.fuse, skips[::-1]):
            h = up(h) if self.gating == "concat" else up(h, voice)
            h = fuse(torch.cat([h, skip], dim=1))
        return torch.tanh(self.out(h))


class CAECritic(FaceCritic):
    """The discriminator and identity classifier of Liang et al. (their Table 1): two linear
    heads, real/fake and identity, on one shared convolutional trunk.

    The trunk is the one of Wen et al.'s voice-to-face GAN, which the paper builds on
    (``FaceTrunk``: 1x1 conv to 32 channels, stride-2 4x4 convolutions doubling to 512 at
    4x4, a 4x4 convolution to 64-d); the layer table of Liang et al. was not at hand when this
    was written, so check it against their Table 1. Unconditional, no gender head. ``forward(face)`` returns
    ``{"adversarial": logit [B], "identity": logits [B, classes]}``.
    """

    def __init__(self, face_size: int = 64, num_classes: int = 924, dim: int = 64,
                 width: float = 1.0, norm: str = "none"):
        super().__init__(face_size, num_classes, dim, width, cond_dim=0, norm=norm, gender=False)
