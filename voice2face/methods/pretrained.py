"""Loading pretrained nets out of method checkpoints, frozen.

* ``load_voice_embedder``: the voice embedder of a ``voice`` or ``dimnet`` checkpoint, which
  the GAN (and later the CAE) take as their frozen voice encoder.
* ``load_judge``: the face encoder of a ``face`` checkpoint, which evaluation uses to embed
  and classify generated and real faces. A judge only means something on the data it was
  trained on (its identity head is over that data's training identities), so it is checked
  against the data's fingerprint.
* ``load_target``: the trunk of a ``face`` checkpoint other than the judge, whose features
  the Speech2Face-style methods regress onto and decode from (``regression``,
  ``face_decoder``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from voice2face.methods.base import CheckpointError, Embeddings, load_module, read_checkpoint_meta
from voice2face.methods.dimnet import DimnetModule
from voice2face.methods.face import FaceModule
from voice2face.methods.voice import VoiceModule
from voice2face.nets import FaceEncoder, FaceTrunk, VoiceEmbedder

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
            f"with `voice2face train voice --export {path}` or `voice2face train dimnet "
            f"--export {path}` (`make train` makes the one its profile names), or point "
            f"model.voice at a voice or dimnet checkpoint") from e


def target_config(module: FaceModule) -> dict[str, Any]:
    """The ``FaceTrunk`` arguments that rebuild a ``face`` module's trunk (the methods that
    keep a target network in their checkpoint save them as hyperparameters)."""
    m = module.cfg["model"]
    return {"face_size": module.data_info["face_size"], "dim": m["dim"], "width": m["width"],
            "norm": "batch"}  # FaceEncoder's trunk norm


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def load_target(path: str | Path, data: dict[str, Any], judge: str | Path | None = None
                ) -> tuple[FaceTrunk, dict[str, Any]]:
    """The frozen trunk of a ``face`` checkpoint trained on ``data``, and its config.

    Its features are a training signal, so it must not be the judge of ``judge`` (when that
    file exists): a regression onto the judge's own space would be measured by the network it
    was fitted to. The same weights under another file name are refused too (the same seed
    on the same data trains the same net); train the target with another ``seed``.
    """
    meta = read_checkpoint_meta(path)
    if meta["method"] not in JUDGE_SOURCES:
        raise CheckpointError(f"{path}: a checkpoint of method {meta['method']!r}, expected a "
                              f"face-identity network (method 'face', made by `voice2face "
                              f"train face seed=1 --export {path}`)")
    check_same_data(path, meta.get("data", {}), data, "the target network was")
    module = load_module(path, JUDGE_SOURCES)
    if judge is not None and Path(judge).is_file():
        if same_weights(module.encoder, load_module(judge, JUDGE_SOURCES).encoder):
            raise CheckpointError(
                f"{path}: the target network has the judge's weights ({judge}); features "
                f"regressed onto the judge would be measured by it: train another face network "
                f"with `voice2face train face seed=1 --export {path}`")
    config = target_config(module)
    trunk = FaceTrunk(**config)
    trunk.load_state_dict(module.encoder.trunk.state_dict())
    return freeze(trunk), config
