"""The Speech2Face family: ``face_decoder`` and ``regression`` on a tiny world; the target is
frozen and never the judge; the decoder is needed to make faces, and the commands say so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from datamodules import VoiceFaceDataModule
from helpers import Repeat, quick_config, speechlike, train_quick
from voice2face import cli
from voice2face.evaluation import evaluate
from voice2face.methods import METHODS, CheckpointError, Voices, load_method
from voice2face.methods.base import data_info
from voice2face.training import export


def build(name: str, world: Path, tmp_path: Path, *overrides: str):
    cfg = quick_config(name, world, tmp_path, *overrides)
    dm = VoiceFaceDataModule(world, num_workers=0, spectrogram=cfg.data.spectrogram)
    return METHODS[name](OmegaConf.to_container(cfg, resolve=True), data_info(dm))


def fit_on(module, batch: dict, steps: int) -> None:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(Repeat(batch, steps), batch_size=None))


@pytest.fixture(scope="module")
def spec_batch(world):
    dm = VoiceFaceDataModule(world, batch_size=6, num_workers=0, crop_seconds=0.3,
                             spectrogram=True)
    return next(iter(dm.train_dataloader()))


@pytest.fixture(scope="module")
def regression(world, pretrained, tmp_path_factory) -> Path:
    """A regression trained without a decoder (it may come later) and its run folder."""
    runs = tmp_path_factory.mktemp("runs")
    return train_quick("regression", world, runs, "trainer.max_steps=3", "run.name=nodec",
                       f"model.decoder={runs / 'missing.ckpt'}", "run.evaluate=true")


def test_face_decoder_learns_to_reconstruct_and_logs_a_grid(world, pretrained, tmp_path,
                                                             spec_batch):
    final = train_quick("face_decoder", world, tmp_path, "trainer.max_steps=2", "run.name=d")
    header = next((tmp_path / "d").glob("csv/version_*/metrics.csv")).read_text().splitlines()[0]
    assert "val/recon_l1" in header and "train/loss_pixels" in header
    assert list((tmp_path / "d" / "grids").glob("val-step*.png"))
    assert load_method(final, expect="face_decoder").decoder.dim == 64

    # on a fixed batch the pixel loss falls, the optional feature term trains too, and the
    # target network (frozen, in eval mode) stays exactly as loaded
    dec = build("face_decoder", world, tmp_path, "model.feature_weight=0.1", "optim.lr=3e-3")
    before_target = {k: v.clone() for k, v in dec.target.state_dict().items()}
    faces = spec_batch["faces"].flatten(0, 1)
    with torch.no_grad():
        before = float(dec.reconstruction_loss(faces)[1]["loss_pixels"])
    fit_on(dec, spec_batch, 30)
    # measured with batch statistics, before and after: 30 steps do not settle running ones
    dec.train()
    with torch.no_grad():
        loss, out = dec.reconstruction_loss(faces)
    assert float(out["loss_pixels"]) < 0.7 * before and "loss_feature" in out
    for k, v in dec.target.state_dict().items():
        assert torch.equal(v, before_target[k]), k
    assert not any(p.requires_grad for p in dec.target.parameters())


ENCODER_SETTINGS = {  # each encoder with the data it reads (the cpu profile's is embedder)
    "spectrogram": ["model.encoder=spectrogram", "data.spectrogram=true"],
    "mel": ["model.encoder=mel"],
    "embedder": ["model.encoder=embedder", "model.cache_voice=false"],  # crops, not the cache
}


@pytest.mark.parametrize("encoder", list(ENCODER_SETTINGS))
def test_regression_loss_falls_on_a_fixed_batch_and_only_the_encoder_trains(
        encoder, world, pretrained, tmp_path, spec_batch):
    reg = build("regression", world, tmp_path, *ENCODER_SETTINGS[encoder], "optim.lr=3e-3",
                "model.width=0.125")
    assert reg.needs_spectrogram == (encoder == "spectrogram") and reg.decoder is not None
    frozen_names = ("target", "decoder") + (("voice",) if encoder == "embedder" else ())
    assert (reg.voice is not None) == (encoder == "embedder")
    frozen = {f"{n}.{k}": v.clone() for n in frozen_names
              for k, v in getattr(reg, n).state_dict().items()}
    voices = Voices.of(spec_batch)

    def loss() -> float:
        with torch.no_grad():
            return float(reg.feature_loss(reg.predict(voices), reg.face_features(
                spec_batch["faces"]), spec_batch["identity"]))

    reg.eval()
    before = loss()
    fit_on(reg, spec_batch, 25)
    reg.eval()
    assert loss() < 0.6 * before
    for n in frozen_names:
        for k, v in getattr(reg, n).state_dict().items():  # weights and BatchNorm statistics
            assert torch.equal(v, frozen[f"{n}.{k}"]), (n, k)
        assert not any(p.requires_grad for p in getattr(reg, n).parameters())
    assert {p for g in reg.optimizers().optimizer.param_groups
            for p in g["params"]} == set(reg.encoder.parameters())


@pytest.mark.parametrize("loss", ["l1", "l2", "l1_l2", "infonce"])
def test_each_loss_is_a_variant(loss, world, pretrained, tmp_path):
    """The variant's loss is the one the module trains on, with the config's parameters and the
    identities (InfoNCE keeps another sample of the speaker out of the negatives); each is
    checked against a loop in test_speech2face."""
    from voice2face import losses
    reg = build("regression", world, tmp_path, f"model.loss={loss}")
    assert reg.label == f"regression ({loss}, embedder)"  # the cpu profile's encoder
    pred, true, identity = torch.randn(4, 64), torch.randn(4, 64), torch.tensor([0, 0, 1, 2])
    m = reg.cfg["model"]
    named = {"l1": losses.feature_l1_loss(pred, true), "l2": losses.feature_l2_loss(pred, true),
             "l1_l2": losses.feature_l1_l2_loss(pred, true, float(m["l2_weight"])),
             "infonce": losses.info_nce_loss(pred, true, float(m["temperature"]), labels=identity)}
    assert len({float(v) for v in named.values()}) == 4  # four losses, told apart here
    unlabelled = losses.info_nce_loss(pred, true, float(m["temperature"]))
    assert float(unlabelled) != float(named["infonce"])
    assert torch.equal(reg.feature_loss(pred, true, identity), named[loss])
    with pytest.raises(KeyError, match="unknown feature loss 'l3'; valid: l1, l2"):
        build("regression", world, tmp_path, "model.loss=l3")


def test_the_target_is_not_the_judge(world, pretrained, tmp_path):
    # the judge itself, and the judge's weights under another name (seed 0 again)
    copy = tmp_path / "copy-of-judge.ckpt"
    shutil.copy(pretrained / "face.ckpt", copy)
    for target in (pretrained / "face.ckpt", copy):
        for method in ("regression", "face_decoder"):
            with pytest.raises(CheckpointError, match="the target network has the judge's weights"):
                build(method, world, tmp_path, f"model.target={target}")
    with pytest.raises(CheckpointError, match="expected a face-identity network"):
        build("regression", world, tmp_path, f"model.target={pretrained / 'voice.ckpt'}")
    with pytest.raises(ValueError, match="set data.spectrogram=true"):
        build("regression", world, tmp_path, "model.encoder=spectrogram", "data.spectrogram=false")


def test_without_a_decoder_training_works_and_faces_need_one(world, pretrained, regression,
                                                             tmp_path, capsys):
    run = regression.parent.parent
    header = next(run.glob("csv/version_*/metrics.csv")).read_text().splitlines()[0]
    assert "val/feature_cosine" in header and "val/feature_recall@1" in header
    assert "val/match_1to2" not in header  # nothing to judge without faces
    assert not (run / "eval").exists()  # the evaluation after training was skipped, not failed

    reg = load_method(regression, expect="regression")
    assert reg.decoder is None
    voices = Voices(torch.randn(2, 64, 30), torch.tensor([30, 20]),
                    torch.randn(2, 257, 30, dtype=torch.complex64))
    with pytest.raises(CheckpointError, match="no face decoder.*--decoder PATH"):
        reg.generate_faces(voices)
    with pytest.raises(CheckpointError, match="no face decoder"):
        evaluate(regression, tmp_path / "eval")
    assert cli.main(["evaluate", "--ckpt", str(regression), "--out", str(tmp_path / "e")]) == 2
    assert "train face_decoder" in capsys.readouterr().err

    # the decoder given afterwards, on either command line
    decoder = pretrained / "decoder.ckpt"
    assert cli.main(["evaluate", "--ckpt", str(regression), "--decoder", str(decoder),
                     "--out", str(tmp_path / "ok")]) == 0
    assert "own measures" in capsys.readouterr().out
    wav = tmp_path / "voice.wav"
    import soundfile as sf
    sf.write(wav, speechlike(1.6, 150), 16000)  # generate keeps only what voice activity detection hears
    assert cli.main(["generate", "--ckpt", str(regression), str(wav), "--out",
                     str(tmp_path / "x.png")]) == 2
    assert "no face decoder" in capsys.readouterr().err
    assert cli.main(["generate", "--ckpt", str(regression), str(wav), "--decoder", str(decoder),
                     "--out", str(tmp_path / "face.png")]) == 0
    assert Image.open(tmp_path / "face.png").size == (16, 16)
    # a method without such a part says so
    gan = train_quick("gan", world, tmp_path, "trainer.max_steps=1", "run.name=g",
                      "trainer.val_check_interval=100")
    assert cli.main(["evaluate", "--ckpt", str(gan), "--decoder", str(decoder),
                     "--out", str(tmp_path / "g")]) == 2
    assert "has no replaceable part 'decoder'" in capsys.readouterr().err


def test_a_run_without_decoder_resumes_with_one(world, pretrained, regression, tmp_path):
    # the decoder was trained meanwhile: the resumed run renders with it from then on
    run = tmp_path / "run"
    shutil.copytree(regression.parent.parent, run)
    final = train_quick("regression", world, tmp_path, "trainer.max_steps=4",
                        f"run.resume={run}", "trainer.val_check_interval=100")
    assert torch.load(final, weights_only=False, map_location="cpu")["global_step"] == 4
    reg = load_method(final, expect="regression")
    assert reg.decoder is not None
    assert reg_faces_match_the_decoder(final, pretrained / "decoder.ckpt", world)


def test_a_decoder_of_another_target_is_refused(world, pretrained, regression, tmp_path):
    other = tmp_path / "other-target.ckpt"
    export(train_quick("face", world, tmp_path, "trainer.max_steps=2", "seed=2", "run.name=f"),
           other)
    dec = train_quick("face_decoder", world, tmp_path, "trainer.max_steps=1", "run.name=d",
                      f"model.target={other}", "trainer.val_check_interval=100")
    reg = load_method(regression, expect="regression")
    with pytest.raises(CheckpointError, match="another target network"):
        reg.replace_part("decoder", dec)
    with pytest.raises(CheckpointError, match="no replaceable part 'critic'"):
        reg.replace_part("critic", dec)


def test_evaluation_adds_the_feature_measures(world, pretrained, regression, tmp_path):
    r = evaluate(regression, tmp_path / "eval", parts={"decoder": pretrained / "decoder.ckpt"})
    extra = r["extra"]
    assert extra["test/feature_gallery_identities"] == 4  # the tiny world's test identities
    assert extra["test/feature_gallery_images"] == 12
    assert not any("attribute" in k for k in extra)  # no synthetic world: no attribute probe
    # the distances, recomputed one utterance at a time: predicted against true feature
    reg = load_method(regression, expect="regression")
    dm = VoiceFaceDataModule(world, eval_batch_size=5, num_workers=0, spectrogram=True)
    for split in ("known", "test"):
        distances = {"cosine": [], "l2": [], "l1": []}
        for batch in dm.eval_dataloader(split, rank=0, world_size=1):
            with torch.no_grad():
                pred, true = reg.predict(Voices.of(batch)), reg.face_features(batch["faces"])
            for p, t in zip(F.normalize(pred, dim=-1), F.normalize(true, dim=-1)):
                distances["cosine"].append(float(F.cosine_similarity(p, t, dim=0)))
                distances["l2"].append(float((p - t).norm()))
                distances["l1"].append(float((p - t).abs().sum()))
        for k, values in distances.items():
            assert extra[f"{split}/feature_{k}"] == pytest.approx(sum(values) / len(values),
                                                                  rel=1e-5, abs=1e-6), (split, k)
    for suffix in ("", "_l1", "_l2"):
        # a rate (its arithmetic against a loop in test_metrics); how far above chance (1/4) a
        # regression of 3 steps lands is luck of the arithmetic
        assert 0 <= extra[f"test/feature_recall@1{suffix}"] <= 1
        # K at or above the 4 identities would score 1 whatever the regression: left out
        assert not any(f"test/feature_recall@{k}{suffix}" in extra for k in (5, 10, 20, 50))
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["extra"] == extra and saved["label"] == "regression (l2, embedder)"
    assert "| test/feature_recall@1_l2 |" in (tmp_path / "eval" / "metrics.md").read_text()
    # real | decoded from the true feature | generated: a name label of 96 px, 2 + 1 + 4 faces
    # of 16 px with 2 px padding, and two 8 px gaps (a GAN's grid has one gap, no middle)
    assert Image.open(tmp_path / "eval" / "grid.png").size[0] == 96 + 7 * 18 + 2 * 8
    assert reg_faces_match_the_decoder(regression, pretrained / "decoder.ckpt", world)


def reg_faces_match_the_decoder(ckpt: Path, decoder: Path, world: Path) -> bool:
    """The reference faces are the decoder's rendering of the target's feature."""
    reg = load_method(ckpt, expect="regression")
    reg.replace_part("decoder", decoder)
    faces = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        want = reg.decoder(reg.face_features(faces))
    return torch.allclose(reg.reference_faces(faces), want)


def test_an_evaluation_encodes_each_utterance_once(world, pretrained, regression):
    """The judged passes and the family's own measures read the same utterances: once
    ``cache_utterances`` is called, the encoder sees each of them once, and the measures are
    those of a module that encodes everything again."""
    def loaded():
        reg = load_method(regression, expect="regression")
        reg.replace_part("decoder", pretrained / "decoder.ckpt")
        return reg

    dm = VoiceFaceDataModule(world, eval_batch_size=5, num_workers=0, spectrogram=True)
    again = loaded().extra_metrics(dm, "cpu")
    reg = loaded()
    reg.cache_utterances()
    encoded: list[int] = []
    reg.encoder.register_forward_hook(lambda net, args, out: encoded.append(len(out)))
    utterances = 0
    for split in ("known", "test"):
        for batch in dm.eval_dataloader(split, rank=0, world_size=1):  # the judged passes
            assert reg.generate_faces(Voices.of(batch)).shape[0] == len(batch["key"])
            utterances += len(batch["key"])
    assert sum(encoded) == utterances
    assert reg.extra_metrics(dm, "cpu") == pytest.approx(again, abs=1e-6)
    assert sum(encoded) == utterances  # nothing encoded twice


# ---- evaluation in bounded windows ----------------------------------------------------------

def random_voices(lengths: list[int], frames: int | None = None) -> Voices:
    """Utterances of ``lengths`` frames, zero past their ends as the data pads them."""
    frames = frames or max(lengths)
    valid = (torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None])[:, None]
    mel = torch.randn(len(lengths), 64, frames) * valid
    spec = torch.randn(len(lengths), 257, frames, dtype=torch.complex64) * valid
    return Voices(mel, torch.tensor(lengths), spec)


def one(voices: Voices, i: int, start: int, n: int) -> Voices:
    """Frames ``start .. start + n`` of utterance ``i``, alone."""
    return Voices(voices.mel[i:i + 1, :, start:start + n], torch.tensor([n]),
                  voices.spec[i:i + 1, :, start:start + n])


@pytest.fixture
def windowed(world, pretrained, tmp_path):
    """A regression whose evaluation window is 0.1 s: 7 frames (1,600 samples, 512-sample
    frames every 160)."""
    def make(encoder: str = "spectrogram", seconds: str = "0.1"):
        reg = build("regression", world, tmp_path, *ENCODER_SETTINGS[encoder],
                    "model.width=0.125", f"model.eval_max_seconds={seconds}").eval()
        return reg
    return make


def test_the_embedder_hears_whole_utterances_through_the_frozen_voice_net(windowed):
    """model.encoder=embedder: no windows (the frozen embedder reads a whole utterance, as
    the GAN's does); each utterance's prediction is the head on the embedder's output for it
    alone, computed here one utterance at a time."""
    reg = windowed("embedder")
    assert reg.window_frames() is None and not reg.needs_spectrogram
    voices = random_voices([30, 3, 17], frames=30)  # longer than the 7-frame window
    with torch.no_grad():
        pred = reg.predict(voices)
        for i, n in enumerate([30, 3, 17]):
            alone = reg.voice(voices.mel[i:i + 1, :, :n], torch.tensor([n]))
            torch.testing.assert_close(pred[i], reg.encoder(alone)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder", ["spectrogram", "mel"])
def test_an_utterance_within_the_window_is_predicted_as_before(windowed, encoder):
    reg = windowed(encoder)
    assert reg.window_frames() == 7
    voices = random_voices([7, 3, 5], frames=9)  # padded past the window, no utterance longer
    with torch.no_grad():
        assert torch.equal(reg.predict(voices), reg._encode(voices))


@pytest.mark.parametrize("encoder", ["spectrogram", "mel"])
def test_a_long_utterance_is_the_length_weighted_mean_of_its_windows(windowed, encoder):
    """Reference: each window encoded alone, in a loop; ceil(L / 7) equal windows, their unit
    predictions averaged by frames and renormalised; a short utterance of the same batch as
    it is."""
    reg = windowed(encoder)
    lengths = [30, 4, 15, 7, 8]
    voices = random_voices(lengths)
    with torch.no_grad():
        got = reg.predict(voices)
        for i, n in enumerate(lengths):
            k = -(-n // 7)
            bounds = [j * n // k for j in range(k + 1)]  # k windows, lengths within 1
            if k == 1:
                want = reg._encode(one(voices, i, 0, n))[0]
            else:
                total = torch.zeros_like(got[i])
                for a, b in zip(bounds, bounds[1:]):
                    assert 0 < b - a <= 7
                    total += (b - a) * F.normalize(reg._encode(one(voices, i, a, b - a))[0], dim=0)
                want = F.normalize(total / n, dim=0)
            assert torch.allclose(got[i], want, atol=1e-5), (i, n)
    # null: whole utterances, as before the window existed
    whole = windowed(encoder, "null")
    whole.load_state_dict(reg.state_dict())
    assert whole.window_frames() is None
    with torch.no_grad():
        assert torch.equal(whole.predict(voices), whole._encode(voices))


def test_the_encoder_never_sees_more_than_a_batch_of_windows(windowed):
    """Peak activations are bounded: no encoder call outside training has more than 7 frames
    per utterance, nor more utterances than the batch (so at most a batch of window-long
    crops), however long the utterances; training still reads its crops whole."""
    reg = windowed()
    calls: list[tuple[int, int]] = []
    reg.encoder.register_forward_pre_hook(lambda net, args: calls.append(
        (args[0].shape[0], args[0].shape[-1])))
    lengths = [300, 3, 71, 150]  # up to 43 windows each
    voices = random_voices(lengths)
    with torch.no_grad():
        pred = reg.predict(voices)
        faces = reg.generate_faces(voices)
    assert pred.shape == (4, 64) and torch.isfinite(pred).all() and faces.shape[0] == 4
    assert calls and all(b <= len(lengths) and t <= 7 for b, t in calls), calls
    windows = sum(-(-n // 7) for n in lengths)
    assert sum(b for b, _ in calls) == 2 * windows  # each window once per pass
    calls.clear()
    reg.train()
    reg.predict(voices)
    assert calls == [(4, 300)]


def test_the_predicted_features_attribute_probe_on_a_synthetic_world(synthetic_world,
                                                                      tmp_path, monkeypatch):
    """On a synthetic world, ``extra_metrics`` adds the R² of a ridge probe fitted from the
    predicted unit features of the known speakers' utterances to their hidden attributes and
    scored on the test speakers': what the probe is given is checked against predictions made
    here one utterance at a time, and its score recomputed. On data that is no synthetic world
    the measure is absent (the fake world: ``test_evaluation_adds_the_feature_measures``)."""
    import voice2face.methods.regression as R
    from voice2face.constants import pretrained_dir
    from voice2face.synth.audit import ATTRIBUTES, HiddenAttributes, LinearProbe, r_squared
    root = synthetic_world
    target = tmp_path / "target.ckpt"  # a face network other than the judge
    export(train_quick("face", root, tmp_path, "trainer.max_steps=2", "run.name=t", "seed=1"),
           target)
    reg = build("regression", root, tmp_path, f"model.voice={pretrained_dir(root) / 'voice.ckpt'}",
                f"model.target={target}", f"model.decoder={tmp_path / 'none.ckpt'}").eval()
    dm = VoiceFaceDataModule(root, eval_batch_size=7, num_workers=0)
    probes = []

    class Recorded(LinearProbe):
        def fit(self, x, y):
            probes.append(self)
            self.x_fit, self.y_fit = x, y
            return super().fit(x, y)

        def predict(self, x):
            self.x_scored = x
            return super().predict(x)
    monkeypatch.setattr(R, "LinearProbe", Recorded)
    extra = reg.extra_metrics(dm, "cpu")

    def one_by_one(split: str):
        feats, ids = [], []
        for sample in dm.eval_dataset(split):
            mel = sample["mel"][None]
            with torch.no_grad():
                pred = reg.predict(Voices(mel, torch.tensor([mel.shape[-1]])))
            feats.append(F.normalize(pred, dim=-1)[0].double().numpy())
            ids.append(int(sample["identity"]))
        return np.stack(feats), np.array(ids)

    z = HiddenAttributes.of_world(root).z
    (x_known, id_known), (x_test, id_test) = one_by_one("known"), one_by_one("test")
    assert len(set(id_known)) > 1 and not set(id_known) & set(id_test)
    (probe,) = probes
    assert probe.ridge == 1e-2
    np.testing.assert_allclose(probe.x_fit, x_known, atol=1e-5)
    np.testing.assert_array_equal(probe.y_fit, z[id_known])
    np.testing.assert_allclose(probe.x_scored, x_test, atol=1e-5)
    want = r_squared(LinearProbe.predict(probe, probe.x_scored), z[id_test])
    for name, value in zip(ATTRIBUTES, want):
        assert extra[f"test/feature_attribute_r2_{name}"] == value, name
