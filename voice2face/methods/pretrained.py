"""Loading pretrained nets out of method checkpoints, frozen.

* ``load_voice_embedder``: the voice embedder of a ``voice`` or ``dimnet`` checkpoint, which
  the GAN (and later the CAE) take as their frozen voice encoder.
* ``load_judge``: the face encoder of a ``face`` checkpoint, which evaluation uses to embed
  and classify generated and real faces. A judge only means something on the data it was
  trained on (its identity head is over that data's training identities), so it is checked
  against the data's fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from voice2face.methods.base import CheckpointError, Embeddings, load_module, read_checkpoint_meta
from voice2face.methods.dimnet import DimnetModule
from voice2face.methods.face import FaceModule
from voice2face.methods.voice import VoiceModule
from voice2face.nets import FaceEncoder, VoiceEmbedder

# the methods whose checkpoints hold such a net (their registry names), by what they give
VOICE_SOURCES = {"voice": VoiceModule, "dimnet": DimnetModule}
JUDGE_SOURCES = {"face": FaceModule}


def freeze(net: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a pretrained net that nothing trains further."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def load_voice_embedder(path: str | Path) -> VoiceEmbedder:
    """The frozen ``VoiceEmbedder`` of a ``voice`` or ``dimnet`` checkpoint."""
    return freeze(load_module(path, VOICE_SOURCES).voice)


def check_same_data(path: str | Path, trained_on: dict[str, Any], data: dict[str, Any],
                    what: str) -> None:
    if trained_on.get("fingerprint") != data.get("fingerprint"):
        raise CheckpointError(
            f"{path}: {what} trained on other data: its identity table has fingerprint "
            f"{trained_on.get('fingerprint')} ({trained_on.get('root')}, "
            f"{trained_on.get('num_train_identities')} training identities), the data "
            f"evaluated has {data.get('fingerprint')} ({data.get('root')}, "
            f"{data.get('num_train_identities')} training identities); train a judge on this "
            f"data with `voice2face train face data.root={data.get('root')}`")


def load_judge(path: str | Path, data: dict[str, Any] | None = None) -> FaceEncoder:
    """The frozen ``FaceEncoder`` of a ``face`` checkpoint; with ``data`` (``data_info`` of
    the data to evaluate), an error unless the judge was trained on that data."""
    meta = read_checkpoint_meta(path)
    if meta["method"] not in JUDGE_SOURCES:
        raise CheckpointError(f"{path}: a checkpoint of method {meta['method']!r}, expected a "
                              f"face judge (method 'face', made by `voice2face train face`)")
    if data is not None:
        check_same_data(path, meta.get("data", {}), data, "the judge was")
    return freeze(load_module(path, JUDGE_SOURCES).encoder)


def judge_faces(judge: FaceEncoder, faces: Tensor) -> Embeddings:
    """Faces as the judge sees them: its embedding, gender and identity predictions."""
    return Embeddings.of(judge(faces))


def voice_embedder_for(method: str, path: str | Path,
                       config: dict[str, Any] | None = None) -> VoiceEmbedder:
    """The frozen voice embedder of a method built on one: from the ``voice``/``dimnet``
    checkpoint at ``path`` on first construction, or rebuilt empty from ``config`` (the
    embedder's ``config``, saved in the method's hyperparameters) when the method's own
    checkpoint is being loaded and will fill in the weights. The error names the method and
    how to make the checkpoint."""
    if config is not None:
        return freeze(VoiceEmbedder(**config))
    try:
        return load_voice_embedder(path)
    except CheckpointError as e:
        raise CheckpointError(
            f"{e}; {method} needs a pretrained voice embedder at model.voice ({path}): make one "
            f"with `voice2face train voice --export {path}` (the Makefile does this), or point "
            f"model.voice at a voice or dimnet checkpoint") from e
