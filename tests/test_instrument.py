"""The instrument table (``evaluation.instrument``) on a tiny synthetic world with a judge and a
voice embedder trained a few steps: its rows and columns, the gender-only control at chance on
same-gender matching, the real-faces row equal to ``evaluate``'s (the same computation), and
``benchmarks/instrument.py`` printing it. The probes and the instruments themselves are tested
against slow references in test_bounds.py; what ``voice2face results`` makes of the table, in
test_results.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, load_script, train_quick
from voice2face.constants import default_judge, pretrained_dir
from voice2face.evaluation.instrument import COLUMNS, ROWS, measure
from voice2face.synth.audit import HiddenAttributes, load_world


@pytest.fixture(scope="module")
def tiny(synthetic_world) -> Path:
    """The tiny synthetic world with its judge and voice embedder (conftest)."""
    return synthetic_world


@pytest.fixture(scope="module")
def measured(tiny) -> dict:
    return measure(tiny, default_judge(tiny), pretrained_dir(tiny) / "voice.ckpt")


def test_every_row_and_column_with_the_worlds_chance_and_ceiling(tiny, measured):
    manifest, _, identities = load_world(tiny)
    rows = measured["rows"]
    assert list(rows) == list(ROWS)  # the table's order
    for key, row in rows.items():
        wanted = [k for k, _, _ in COLUMNS
                  if (key != "ceiling" or "match" in k) and (key not in ("chance", "ceiling")
                                                              or k != "frechet")]
        assert sorted(row) == sorted(wanted), key
        assert all(math.isfinite(v) for v in row.values()), (key, row)
    ceiling = {k: v for k, v in manifest["ceilings"].items() if k.startswith("match_")}
    assert rows["ceiling"] == {**ceiling, **{f"attribute_{k}": v for k, v in ceiling.items()}}
    counts = measured["counts"]
    assert counts["test_utterances"] == manifest["splits"]["test"]["samples"]
    assert counts["test_gallery"] == manifest["gallery"]["test"]["samples"]
    assert counts["train_gallery"] == manifest["gallery"]["train"]["samples"]
    # chance: 1:2 at 0.5, gender accuracy at the larger gender's share of the test utterances
    # (every test identity speaks as many utterances)
    men = np.mean([i.gender == "m" for i in identities if i.split == "test"])
    assert rows["chance"]["match_1to2"] == rows["chance"]["attribute_match_1to2_gender"] == 0.5
    assert rows["chance"]["attribute_gender_acc"] == pytest.approx(max(men, 1 - men))
    assert rows["chance"]["attribute_r2_age"] == rows["chance"]["attribute_r2_size"] == 0.0
    assert set(measured["readout_r2"]) == {"readout_r2_gender", "readout_r2_age",
                                           "readout_r2_size"}
    assert set(measured["voice_r2"]) == {"gender", "age", "size"}
    # the voice-embedder oracle estimates o from the embedding: not the o-oracle's rows
    assert rows["voice_oracle"] != rows["o_oracle"]
    assert np.all(np.asarray(measured["sigma_voice"]) > np.asarray(measured["sigma"]))


def test_the_gender_only_control_is_chance_against_same_gender_imposters(measured):
    """Every speaker of a gender gets the same face, so within a gender it tells no one
    apart, through either instrument."""
    row = measured["rows"]["gender_only"]
    assert row["match_1to2_gender"] == pytest.approx(0.5, abs=0.05)
    assert row["attribute_match_1to2_gender"] == pytest.approx(0.5, abs=0.05)


def test_the_real_faces_row_is_evaluates(tiny, measured, tmp_path):
    """The same data and judge give evaluate's real-faces row (a held-out photo of the
    speaker against the other half of the gallery), to the last digit: the same images, the
    same halves, the same matching metric."""
    from voice2face.evaluation import evaluate
    voice = pretrained_dir(tiny) / "voice.ckpt"
    gan = train_quick("gan", tiny, tmp_path / "runs", "trainer.max_steps=2", "run.name=gan",
                      f"model.voice={voice}", "model.feature_weight=0", "model.target=null")
    r = evaluate(gan, tmp_path / "eval", tiny, default_judge(tiny), log=lambda *a: None)
    for key in ("match_1to2", "match_1to2_gender", "frechet"):
        assert measured["rows"]["real_faces"][key] == pytest.approx(
            r["rows"]["real_faces"][key], abs=1e-6), key


def test_the_same_inputs_give_the_same_table(tiny, measured):
    again = measure(tiny, default_judge(tiny), pretrained_dir(tiny) / "voice.ckpt")
    assert again["rows"] == measured["rows"]
    assert again["readout_r2"] == measured["readout_r2"]


def test_the_frontier_starts_at_the_posterior_sample_row(tiny, measured):
    """The frontier's one-draw row is the table's voice-embedder posterior sample (the same
    seeded draws); averaging more draws moves the faces from real ones toward the mean."""
    got = measure(tiny, default_judge(tiny), pretrained_dir(tiny) / "voice.ckpt",
                  frontier=(1, 64))
    assert got["rows"] == measured["rows"]
    assert got["frontier"][1] == measured["rows"]["voice_oracle_sample"]
    assert got["frontier"][64]["frechet"] > got["frontier"][1]["frechet"]
    assert "frontier" not in measured


def test_hidden_attributes_are_the_worlds_and_real_data_has_none(tiny, fake_root):
    world = HiddenAttributes.of_world(tiny)
    _, config, identities = load_world(tiny)
    assert world.z.shape == world.o.shape == (len(identities), 3)
    assert np.allclose(world.sigma, config.voice_noise)
    assert np.allclose(world.o, [i.voice.observed for i in identities])
    with pytest.raises(ValueError, match="not a synthetic world"):
        HiddenAttributes.of_world(fake_root)


def test_the_benchmark_prints_every_row(measured, capsys):
    bench = load_script("instrument_bench", REPO / "benchmarks" / "instrument.py")
    text = bench.format_table(measured)
    lines = text.splitlines()
    for key, label in ROWS.items():
        line = next(line for line in lines if line.startswith(label + " "))
        cells = line[len(label):].split()
        assert len(cells) == len(COLUMNS), line
        row = measured["rows"][key]
        for (k, _, _), cell in zip(COLUMNS, cells):
            assert cell == ("—" if k not in row else f"{row[k]:.3f}"), (label, k)
    assert "read-outs' R² on single test gallery faces" in text
    assert "voice probe's R² of o on test utterances" in text


def test_the_judge_regresses_a_synthetic_worlds_hidden_attributes(tiny, fake_root):
    """On a synthetic world the judge gains a head regressing z from its embedding, trained
    with the identity and gender heads (the loss against a hand computation); on other data
    it has none."""
    import torch
    import torch.nn.functional as F

    from datamodules import VoiceFaceDataModule
    from helpers import quick_config
    from voice2face.losses import covariate_loss
    from voice2face.methods.base import data_info
    from voice2face.methods.face import FaceModule
    from voice2face.methods.pretrained import load_judge

    dm = VoiceFaceDataModule(tiny)
    z = HiddenAttributes.of_world(tiny).z
    judge = load_judge(default_judge(tiny), data_info(dm))
    faces = torch.rand(5, 3, dm.face_size, dm.face_size) * 2 - 1
    assert judge.eval()(faces)["attributes"].shape == (5, 3)

    cfg = quick_config("face", tiny, tiny.parent / "unused", "model.attribute_weight=0.5",
                       "model.augment=0")
    module = FaceModule(cfg, data_info(dm))
    np.testing.assert_array_equal(module.world_z.numpy(), z.astype(np.float32))
    train = [i["index"] for i in dm.identities if i["split"] == "train"][:3]
    batch = {"faces": torch.rand(3, 2, 3, dm.face_size, dm.face_size) * 2 - 1,
             "label": torch.tensor([0, 1, 2]), "gender": torch.tensor([1.0, 0.0, 1.0]),
             "identity": torch.tensor(train)}
    module.log = lambda *args, **kwargs: None
    torch.manual_seed(0)
    loss = module.training_step(batch, 0)
    out = module.encoder(batch["faces"].flatten(0, 1))
    labels = batch["label"].repeat_interleave(2)
    wanted = (covariate_loss(out, labels, batch["gender"].repeat_interleave(2), 1.0)
              + 0.5 * ((out["attributes"] - torch.as_tensor(z[np.repeat(train, 2)]).float())
                       ** 2).mean())
    assert torch.allclose(loss, wanted, atol=1e-5)

    plain = FaceModule(quick_config("face", fake_root, tiny.parent / "unused"),
                       data_info(VoiceFaceDataModule(fake_root)))
    off = FaceModule(quick_config("face", tiny, tiny.parent / "unused",
                                  "model.attribute_weight=0"), data_info(dm))
    for module in (plain, off):
        size = module.encoder_config["face_size"]
        assert module.encoder.attributes is None and module.world_z is None
        assert "attributes" not in module.encoder(torch.rand(2, 3, size, size))


def test_dimnet_regresses_the_hidden_attributes_from_both_embeddings(tiny, fake_root):
    """DIMNet's shared covariate heads gain one regressing z, from the voice and from the face
    embedding alike (the loss against a hand computation); on other data there is none. Its
    face embedder is exported, and ``load_target`` gives it as a feature term's network."""
    import torch

    from datamodules import VoiceFaceDataModule
    from helpers import quick_config
    from voice2face.losses import covariate_loss
    from voice2face.methods.base import data_info
    from voice2face.methods.dimnet import DimnetModule

    dm = VoiceFaceDataModule(tiny)
    z = torch.as_tensor(HiddenAttributes.of_world(tiny).z).float()
    module = DimnetModule(quick_config("dimnet", tiny, tiny.parent / "unused",
                                       "model.attribute_weight=0.5"), data_info(dm))
    train = [i["index"] for i in dm.identities if i["split"] == "train"][:3]
    batch = {"faces": torch.rand(3, 2, 3, dm.face_size, dm.face_size) * 2 - 1,
             "mel": torch.randn(3, 64, 50), "mel_lengths": torch.tensor([50, 40, 30]),
             "label": torch.tensor([0, 1, 2]), "gender": torch.tensor([1.0, 0.0, 1.0]),
             "identity": torch.tensor(train)}
    module.log = module.log_dict = lambda *args, **kwargs: None
    module.eval()  # batch norm by its running statistics: the same outputs twice
    loss = module.training_step(batch, 0)
    voice = module.voice_outputs(batch["mel"], batch["mel_lengths"])
    face = module.face_outputs(batch["faces"].flatten(0, 1))
    zv, zf = z[train], z[train].repeat_interleave(2, 0)
    wanted = (covariate_loss(voice, batch["label"], batch["gender"])
              + covariate_loss(face, batch["label"].repeat_interleave(2),
                               batch["gender"].repeat_interleave(2))
              + 0.5 * (((voice["attributes"] - zv) ** 2).mean()
                       + ((face["attributes"] - zf) ** 2).mean()))
    assert torch.allclose(loss, wanted, atol=1e-5)

    plain = DimnetModule(quick_config("dimnet", fake_root, tiny.parent / "unused",
                                      "model.attribute_weight=0.5"),
                         data_info(VoiceFaceDataModule(fake_root)))
    assert plain.heads.attributes is None and plain.world_z is None
    assert "attributes" not in plain.voice_outputs(batch["mel"], batch["mel_lengths"])


def test_dimnets_face_side_trains_on_the_first_face_views_of_each_sample(tiny):
    """``model.face_views=1``: the face losses are those of each sample's first face alone
    (a hand computation), and the other faces change nothing; 0 takes every face."""
    import torch

    from datamodules import VoiceFaceDataModule
    from helpers import quick_config
    from voice2face.losses import covariate_loss
    from voice2face.methods.base import data_info
    from voice2face.methods.dimnet import DimnetModule

    dm = VoiceFaceDataModule(tiny)
    module = DimnetModule(quick_config("dimnet", tiny, tiny.parent / "unused",
                                       "model.face_views=1", "model.attribute_weight=0"),
                          data_info(dm))
    module.log = module.log_dict = lambda *args, **kwargs: None
    module.eval()
    torch.manual_seed(0)
    batch = {"faces": torch.rand(3, 2, 3, dm.face_size, dm.face_size) * 2 - 1,
             "mel": torch.randn(3, 64, 50), "mel_lengths": torch.tensor([50, 40, 30]),
             "label": torch.tensor([0, 1, 2]), "gender": torch.tensor([1.0, 0.0, 1.0]),
             "identity": torch.tensor([0, 1, 2])}
    loss = module.training_step(batch, 0)
    voice = module.voice_outputs(batch["mel"], batch["mel_lengths"])
    face = module.face_outputs(batch["faces"][:, 0])
    wanted = (covariate_loss(voice, batch["label"], batch["gender"])
              + covariate_loss(face, batch["label"], batch["gender"]))
    assert torch.allclose(loss, wanted, atol=1e-5)
    other = dict(batch, faces=batch["faces"].clone())
    other["faces"][:, 1] = 0.0
    assert torch.allclose(module.training_step(other, 0), loss, atol=1e-6)
    module.cfg["model"]["face_views"] = 0
    assert not torch.allclose(module.training_step(other, 0), loss, atol=1e-3)


def test_the_judges_augmentation_mirrors_and_moves_photos_but_never_scales_them():
    """``face.augment``: each photo is itself or its mirror image, moved by at most the
    shift, with the distances inside it kept (a head's size against the frame is the
    world's size); unshifted, about half are mirrored, and nothing else changes."""
    import torch

    from voice2face.methods.face import augment

    size, n = 64, 400
    faces = torch.zeros(n, 3, size, size)
    faces[:, :, 20, 10] = 1.0          # two dots 30 pixels apart, left of centre
    faces[:, :, 20, 40] = 1.0
    torch.manual_seed(0)
    still = augment(faces, 0.0)
    mirrored = torch.tensor([torch.allclose(s, f.flip(-1), atol=1e-5)
                             for s, f in zip(still, faces)])
    assert all(torch.allclose(s, f, atol=1e-5) or m for s, f, m in zip(still, faces, mirrored))
    assert 0.4 < mirrored.float().mean() < 0.6

    moved = augment(faces, 0.06)[:, 0]                   # one channel: [n, size, size]
    xs = torch.arange(size, dtype=torch.float32)
    half = size // 2                    # one dot on each side, mirrored or not, moved or not
    for image in moved:
        dots = [(image[:, :half], xs[:half]), (image[:, half:], xs[half:])]
        row = [(p.sum(1) * xs).sum() / p.sum() for p, _ in dots]
        col = [(p.sum(0) * x).sum() / p.sum() for p, x in dots]
        assert math.isclose(col[1] - col[0], 30.0, abs_tol=1e-3)      # not scaled
        assert math.isclose(row[0], row[1], abs_tol=1e-3)             # not turned
        centre = (col[0] + col[1]) / 2
        assert min(abs(centre - 25), abs(centre - (size - 1 - 25))) <= 0.06 * size + 1e-3
        assert abs(row[0] - 20) <= 0.06 * size + 1e-3
    assert moved.sum(dim=(1, 2)).sub(2.0).abs().max() < 1e-4     # nothing lost at the edges

