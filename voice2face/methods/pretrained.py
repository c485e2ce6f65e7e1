"""Loading pretrained nets out of method checkpoints, frozen.

A net is rebuilt from the checkpoint's ``nets`` entry (``methods.base``: its class in
``voice2face.nets``, its constructor's arguments, its weights' prefix in the state dict), so
nothing here knows the method that trained it beyond its registry name.

* ``load_voice_embedder``: the voice embedder of a ``voice`` or ``dimnet`` checkpoint, which
  the GAN and the CAE take as their frozen voice encoder.
* ``load_judge``: the face encoder of a ``face`` checkpoint, which evaluation uses to embed
  and classify generated and real faces. A judge only means something on the data it was
  trained on (its identity head is over that data's training identities), so it is checked
  against the data's fingerprint.
* ``load_target``: the trunk of a ``face`` checkpoint other than the judge, whose features
  the Speech2Face-style methods regress onto and decode from (``regression``,
  ``face_decoder``).
* ``load_face_decoder``: the decoder of a ``face_decoder`` checkpoint, with the target trunk
  it was trained on (``regression`` renders its predictions with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from voice2face.methods.base import CheckpointError, Embeddings, read_checkpoint
from voice2face.nets import NETS, FaceDecoder, FaceEncoder, FaceTrunk, VoiceEmbedder

# the methods (registry names) whose checkpoints export each kind of net, under that name
VOICE_SOURCES = ("voice", "dimnet")
FACE_SOURCE = "face"
DECODER_SOURCE = "face_decoder"


def freeze(net: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a pretrained net that nothing trains further."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def exported_net(path: str | Path, checkpoint: dict[str, Any], name: str) -> nn.Module:
    """The net ``name`` of a checkpoint's ``nets`` entry, with its weights, frozen."""
    nets = checkpoint.get("nets")
    if nets is None:
        raise CheckpointError(
            f"{path}: saved before checkpoints described their nets, so its {name} net cannot be "
            f"loaded on its own; upgrade it in place with `voice2face upgrade {path}` (no "
            f"retraining, the weights stay as they are)")
    if name not in nets:
        raise CheckpointError(f"{path}: exports no net {name!r} (it exports: "
                              f"{', '.join(nets) or 'none'})")
    spec = nets[name]
    # a net's construction draws initial weights that loading overwrites: from a forked RNG,
    # so what a method initialises after loading its frozen nets does not depend on them
    with torch.random.fork_rng(devices=[]):
        net = NETS[spec["net"]](**spec["config"])
    prefix = spec["prefix"]
    net.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items()
                         if k.startswith(prefix)})
    return freeze(net)


def read_source(path: str | Path, methods: tuple[str, ...], expected: str | None = None
                ) -> dict[str, Any]:
    """The checkpoint at ``path``, an error unless its method is one of ``methods``;
    ``expected`` says what was expected in the error (by default the methods' names)."""
    checkpoint = read_checkpoint(path)
    method = checkpoint["voice2face"]["method"]
    if method not in methods:
        raise CheckpointError(f"{path}: a checkpoint of method {method!r}, expected "
                              f"{expected or ' or '.join(map(repr, methods))}")
    return checkpoint


def load_voice_embedder(path: str | Path) -> VoiceEmbedder:
    """The frozen ``VoiceEmbedder`` of a ``voice`` or ``dimnet`` checkpoint."""
    return exported_net(path, read_source(path, VOICE_SOURCES), "voice")


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
    checkpoint = read_source(path, (FACE_SOURCE,), "a face judge (method 'face', made by "
                                                   "`voice2face train face`)")
    if data is not None:
        check_same_data(path, checkpoint["voice2face"].get("data", {}), data, "the judge was")
    return exported_net(path, checkpoint, "encoder")


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


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def load_target(path: str | Path, data: dict[str, Any], judge: str | Path | None = None
                ) -> tuple[FaceTrunk, dict[str, Any]]:
    """The frozen trunk of a ``face`` checkpoint trained on ``data`` (or the face embedder of
    a ``dimnet`` one: a face network in the space its voices share), and its config (the
    ``FaceTrunk`` arguments, which the methods that keep the trunk in their own checkpoint
    save as hyperparameters).

    Its features are a training signal, so it must not be the judge of ``judge`` (when that
    file exists): a regression onto the judge's own space would be measured by the network it
    was fitted to. The same weights under another file name are refused too (the same seed
    on the same data trains the same net); train the target with another ``seed``.
    """
    checkpoint = read_source(path, (FACE_SOURCE, "dimnet"),
                             f"a face-identity network (method 'face', made by `voice2face "
                             f"train face seed=1 model.attribute_weight=0 --export {path}`, "
                             f"or a 'dimnet' checkpoint for its face embedder)")
    check_same_data(path, checkpoint["voice2face"].get("data", {}), data, "the target network was")
    if checkpoint["voice2face"]["method"] == "dimnet":
        if "face" not in checkpoint["nets"]:
            raise CheckpointError(f"{path}: a dimnet checkpoint saved before dimnet exported "
                                  f"its face embedder; describe its nets anew with `voice2face "
                                  f"upgrade {path} --out <new path>` (the weights stay)")
        return (exported_net(path, checkpoint, "face"),
                dict(checkpoint["nets"]["face"]["config"]))
    if judge is not None and Path(judge).is_file():
        if same_weights(exported_net(path, checkpoint, "encoder"), load_judge(judge)):
            raise CheckpointError(
                f"{path}: the target network has the judge's weights ({judge}); features "
                f"regressed onto the judge would be measured by it: train another face network "
                f"with `voice2face train face seed=1 model.attribute_weight=0 "
                f"--export {path}`")
    return exported_net(path, checkpoint, "trunk"), dict(checkpoint["nets"]["trunk"]["config"])


def load_face_decoder(path: str | Path) -> tuple[FaceDecoder, FaceTrunk]:
    """The frozen ``FaceDecoder`` of a ``face_decoder`` checkpoint, and the frozen target
    trunk whose features it was trained to render (a decoder renders those and no others)."""
    checkpoint = read_source(path, (DECODER_SOURCE,))
    return exported_net(path, checkpoint, "decoder"), exported_net(path, checkpoint, "target")
