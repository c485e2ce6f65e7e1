"""Memory layout of the face nets' tensors: channels-last (NHWC).

Tensor cores (cuDNN) and oneDNN run convolutions natively on NHWC memory; with NCHW weights and
activations they add a transpose around each one. ``Module.to(memory_format=torch.channels_last)``
changes the 4-D weights only (1-D voice nets, linear layers and batch norm keep theirs), and a
convolution's output follows its input's format, so converting the input faces once is enough.
The arithmetic is the same up to the order of summation (``tests/test_nets.py``).
"""

from __future__ import annotations

from typing import Any

import torch

# the batch's face tensors: ``face`` [B, 3, S, S]; ``faces`` [B, K, 3, S, S], K per sample
FACE_KEYS = ("face", "faces")


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A face tensor in channels-last memory: ``[B, C, H, W]``, or ``[B, K, C, H, W]`` with each
    of the ``B K`` images NHWC (so the methods' ``flatten(0, 1)`` is a channels-last view);
    any other tensor unchanged."""
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        images = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        return images.unflatten(0, x.shape[:2])
    return x


def faces_channels_last(batch: Any) -> Any:
    """A batch (dict) with its face tensors (``FACE_KEYS``) channels-last."""
    if not isinstance(batch, dict):
        return batch
    return {k: to_channels_last(v) if k in FACE_KEYS and torch.is_tensor(v) else v
            for k, v in batch.items()}
