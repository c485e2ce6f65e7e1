"""Frozen nets loaded out of method checkpoints as nets (``methods.pretrained``): each is the
trained module's own net, the wrong checkpoint is refused by name, a checkpoint saved before
checkpoints described their nets is refused and then upgraded, and no method module imports
another."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from datamodules import VoiceFaceDataModule
from helpers import import_graph, train_quick
from voice2face import cli
from voice2face.methods import METHODS, CheckpointError, Voices, load_method
from voice2face.methods.base import data_info, read_checkpoint, read_checkpoint_meta
from voice2face.methods.pretrained import (exported_net, load_face_decoder, load_judge,
                                           load_target, load_voice_embedder, same_weights)
from voice2face.nets import FaceDecoder, VoiceEmbedder

# what each pretrained file of the Makefile exports
EXPORTS = {"voice": {"voice"}, "dimnet": {"voice", "face"}, "face": {"encoder", "trunk"},
           "face-target": {"encoder", "trunk"}, "decoder": {"decoder", "target"}}


def example_input(net: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    if isinstance(net, VoiceEmbedder):
        return torch.randn(3, net.config["n_mels"], 40), torch.tensor([40, 25, 10])
    if isinstance(net, FaceDecoder):
        return (F.normalize(torch.randn(3, net.config["dim"]), dim=-1),)
    return (torch.rand(3, 3, 16, 16) * 2 - 1,)  # the face nets, on the tiny world's faces


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = example_input(a)
    with torch.no_grad():
        out_a, out_b = a(*x), b(*x)
    if isinstance(out_a, dict):
        return out_a.keys() == out_b.keys() and all(torch.equal(out_a[k], out_b[k]) for k in out_a)
    return torch.equal(out_a, out_b)


def old_checkpoint(path: Path, old: Path) -> Path:
    """``path`` as it was saved before checkpoints described their nets."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    del checkpoint["nets"]
    torch.save(checkpoint, old)
    return old


@pytest.mark.parametrize("file", sorted(EXPORTS))
def test_each_exported_net_is_the_trained_module_s(file, pretrained):
    path = pretrained / f"{file}.ckpt"
    checkpoint = read_checkpoint(path)
    assert set(checkpoint["nets"]) == EXPORTS[file]
    module = load_method(path)
    for name, spec in checkpoint["nets"].items():
        net = exported_net(path, checkpoint, name)
        trained = module.get_submodule(spec["prefix"].removesuffix("."))
        assert type(net) is type(trained)
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        # one memory layout for both (the trained module's weights may be channels-last, which
        # sums in another order): the same weights then give the same outputs to the bit
        for m in (net, trained):
            m.to(memory_format=torch.contiguous_format)
        assert same_outputs(net, trained), name


def test_the_loaders_give_the_exported_nets(world, pretrained):
    info = data_info(VoiceFaceDataModule(world))
    for file in ("voice", "dimnet"):
        voice = load_voice_embedder(pretrained / f"{file}.ckpt")
        assert same_weights(voice, load_method(pretrained / f"{file}.ckpt").voice)
        assert voice(torch.randn(2, 64, 30)).shape == (2, 64)
    judge = load_judge(pretrained / "face.ckpt", info)
    assert same_weights(judge, load_method(pretrained / "face.ckpt").encoder)
    assert judge(torch.zeros(1, 3, 16, 16))["identity"].shape == (1, info["num_train_identities"])
    trained_on = read_checkpoint_meta(pretrained / "face.ckpt")["data"]
    assert trained_on["fingerprint"] == info["fingerprint"]

    face = load_method(pretrained / "face-target.ckpt")
    trunk, config = load_target(pretrained / "face-target.ckpt", info, pretrained / "face.ckpt")
    assert same_weights(trunk, face.encoder.trunk) and not trunk.training
    m = face.cfg["model"]  # what the methods that keep a target save as its hyperparameters
    assert config == {"face_size": 16, "dim": m["dim"], "width": m["width"], "norm": "batch"}

    # DIMNet's face embedder, the CAE's feature network and the regression's target in the
    # cpu profile
    dimnet = load_method(pretrained / "dimnet.ckpt")
    embedder, config = load_target(pretrained / "dimnet.ckpt", info, pretrained / "face.ckpt")
    assert same_weights(embedder, dimnet.face) and not embedder.training
    assert config == dimnet.face_config

    decoder, target = load_face_decoder(pretrained / "decoder.ckpt")
    module = load_method(pretrained / "decoder.ckpt")
    assert same_weights(decoder, module.decoder) and same_weights(target, module.target)
    # the cpu profile's decoder renders DIMNet's face embedding, the paper's face-target's
    assert same_weights(target, embedder)


def test_a_checkpoint_of_another_method_is_refused_by_name(world, pretrained):
    info = data_info(VoiceFaceDataModule(world))
    cases = [(load_voice_embedder, "face", "method 'face', expected 'voice' or 'dimnet'"),
             (lambda p: load_judge(p, info), "voice", "method 'voice', expected a face judge"),
             (lambda p: load_target(p, info), "voice",
              "method 'voice', expected a face-identity network"),
             (load_face_decoder, "face", "method 'face', expected 'face_decoder'")]
    for load, file, message in cases:
        path = pretrained / f"{file}.ckpt"
        with pytest.raises(CheckpointError, match=re.escape(f"{path}: a checkpoint of {message}")):
            load(path)
    other = dict(info, fingerprint="0123456789abcdef", root="/elsewhere")
    with pytest.raises(CheckpointError, match="judge was trained on other data"):
        load_judge(pretrained / "face.ckpt", other)


@pytest.mark.parametrize("file, load", [("voice", load_voice_embedder), ("face", load_judge),
                                        ("decoder", load_face_decoder)])
def test_an_old_checkpoint_is_refused_then_upgraded(file, load, pretrained, tmp_path, capsys):
    original = pretrained / f"{file}.ckpt"
    old = old_checkpoint(original, tmp_path / f"old-{file}.ckpt")
    refusal = re.escape(f"{old}: saved before checkpoints described their nets") + \
        ".*" + re.escape(f"`voice2face upgrade {old}`")
    with pytest.raises(CheckpointError, match=refusal):
        load(old)

    # to another file: the old one stays as it was; then in place
    assert cli.main(["upgrade", str(old), "--out", str(tmp_path / "new.ckpt")]) == 0
    assert "nets" not in torch.load(old, weights_only=False, map_location="cpu")
    assert cli.main(["upgrade", str(old)]) == 0
    assert f"{old} exports nets: " in capsys.readouterr().out

    before = torch.load(original, weights_only=False, map_location="cpu")
    for path in (old, tmp_path / "new.ckpt"):
        after = torch.load(path, weights_only=False, map_location="cpu")
        assert after.keys() == before.keys() and after["nets"] == before["nets"]
        assert after["state_dict"].keys() == before["state_dict"].keys()
        assert all(v.dtype == before["state_dict"][k].dtype
                   and torch.equal(v, before["state_dict"][k])
                   for k, v in after["state_dict"].items())
        for name in EXPORTS[file]:
            assert same_outputs(exported_net(path, read_checkpoint(path), name),
                                exported_net(original, read_checkpoint(original), name))

    assert cli.main(["upgrade", str(tmp_path / "missing.ckpt")]) == 2
    assert "missing.ckpt does not exist" in capsys.readouterr().err


def test_an_old_method_checkpoint_that_keeps_a_frozen_net_loads_as_before(world, pretrained,
                                                                         tmp_path):
    """The GAN keeps its voice embedder in its own checkpoint: one saved before checkpoints
    described their nets loads, without the voice file, and generates the same faces."""
    voice = tmp_path / "voice-copy.ckpt"
    shutil.copy(pretrained / "voice.ckpt", voice)
    final = train_quick("gan", world, tmp_path, "trainer.max_steps=1", f"model.voice={voice}",
                        "trainer.val_check_interval=100", "run.name=g")
    voice.unlink()
    old = old_checkpoint(final, tmp_path / "old-gan.ckpt")
    voices = Voices(torch.randn(2, 64, 50), torch.tensor([50, 30]))
    new, before = load_method(final), load_method(old)
    assert torch.equal(new.generate_faces(voices), before.generate_faces(voices))


def test_no_method_module_imports_another():
    """A method loads the nets of another through ``methods.pretrained``, which imports no
    method either: only the registry imports the modules of the methods."""
    graph = import_graph()
    method_modules = {cls.__module__ for cls in METHODS.values()}
    wrong = {(m, t) for m, targets in graph.items() if m.startswith("voice2face.methods.")
             for t in targets if t in method_modules and t != m}
    assert not wrong
    assert {t for t in graph["voice2face.methods.pretrained"]
            if t.startswith("voice2face.methods")} == {"voice2face.methods.base"}
