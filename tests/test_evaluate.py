"""``voice2face evaluate``: its three outputs, reference rows, determinism and errors; the grid
that validation logs to W&B; ``voice2face generate``."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image

from helpers import speechlike, train_quick
from voice2face import cli
from voice2face.evaluation import evaluate

# the tiny world has 4 test identities: recall@5 and above are not applicable there
KEYS = ["match_1to2", "match_1to2_gender", "recall@1", "gender_acc", "cosine", "identity_top1",
        "identity_top5"]


@pytest.fixture(scope="module")
def cgan(world, pretrained, runs) -> Path:
    """A conditional GAN trained with W&B logging on, so validation logs its grid there."""
    return train_quick("cgan", world, runs, "trainer.max_steps=4", "run.name=cgan",
                       "logger.wandb=true")


def test_evaluate_writes_table_json_and_grid(world, cgan, tmp_path):
    r = evaluate(cgan, tmp_path / "eval", grid_identities=3, grid_utterances=2)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["rows"] == r["rows"] and saved["method"] == "cgan" and saved["variant"] == "conditional"
    assert set(saved["rows"]) == {"method", "real_faces", "chance"}  # no ceiling: not synthetic
    for name, row in saved["rows"].items():
        assert set(KEYS) <= set(row), name
        for key, value in row.items():
            if key == "frechet":  # a distance, not a rate
                assert value >= 0, (name, value)
                continue
            low = -1.0 if key == "cosine" else 0.0
            assert low <= value <= 1.0, (name, key, value)
    assert saved["rows"]["chance"]["match_1to2"] == 0.5
    # K at or above the 4 test identities (or 12 images): no row reports it, the JSON says why
    for key in ("recall@5", "recall@10", "recall@50", "recall@20_image"):
        assert all(key not in row for row in saved["rows"].values()), key
        assert "not applicable" in saved["not_computed"][key], key
    assert "K=5" in saved["not_computed"]["recall@5"]
    assert "4 identities" in saved["not_computed"]["recall@5"]
    assert "recall@10_image" in saved["rows"]["method"]  # 10 of 12 images: a real number
    assert saved["counts"]["test_utterances"] == 16 and saved["counts"]["known_utterances"] == 6
    table = (tmp_path / "eval" / "metrics.md").read_text()
    for label in ("| cgan (conditional) |", "| real faces", "| chance |", "1:2 match", "R@1"):
        assert label in table
    assert "R@5" not in table and "R@10" not in table
    # Liang et al.'s retrieval: 12 test images, fewer than 500, so every gallery is all of
    # them, 3 of the speaker's: chance 1 - C(9, 5) / C(12, 5)
    assert saved["counts"]["retrieval_gallery_images"] == 12
    assert saved["rows"]["chance"]["retrieval_top5"] == pytest.approx(1 - 126 / 792)
    assert "retrieval_top5" in saved["rows"]["method"]
    assert "retrieval_top5" not in saved["rows"]["real_faces"]
    assert "Face retrieval (Liang et al.)" in table and "all 12 test gallery images" in table
    grid = Image.open(tmp_path / "eval" / "grid.png")
    assert grid.size[1] >= 3 * 16 and grid.mode == "RGB"


def test_same_seed_same_numbers(world, cgan, tmp_path):
    a = evaluate(cgan, tmp_path / "a", seed=3)
    b = evaluate(cgan, tmp_path / "b", seed=3)
    assert a["rows"] == b["rows"]
    assert (tmp_path / "a" / "grid.png").read_bytes() == (tmp_path / "b" / "grid.png").read_bytes()


def test_ceiling_row_of_a_synthetic_world(world, pretrained, cgan, tmp_path):
    synthetic = tmp_path / "world"
    shutil.copytree(world, synthetic, ignore=shutil.ignore_patterns("pretrained"))
    manifest = json.loads((synthetic / "manifest.json").read_text())
    manifest.update(kind="synthetic", ceilings={"match_1to2": 0.8, "match_1to2_gender": 0.7,
                                                "trials": 1000})
    (synthetic / "manifest.json").write_text(json.dumps(manifest))
    r = evaluate(cgan, tmp_path / "eval", data=synthetic, judge=pretrained / "face.ckpt")
    assert r["rows"]["ceiling"] == {"match_1to2": 0.8, "match_1to2_gender": 0.7}
    # its manifest's source regenerates another world than its identities: no attribute pass
    assert not any(k.startswith("attribute_") for row in r["rows"].values() for k in row)
    table = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| ceiling (synthetic world) | 0.800 | 0.700 |" in table
    assert "Attribute agreement" not in table


def test_dimnet_is_evaluated_in_its_own_space(world, pretrained, runs, tmp_path):
    final = train_quick("dimnet", world, runs, "trainer.max_steps=2", "run.name=dimnet",
                        "trainer.val_check_interval=100")
    r = evaluate(final, tmp_path / "eval")
    assert set(KEYS) <= set(r["rows"]["method"]) and r["files"]["grid"] is None
    # no generated face, no face retrieval
    assert "retrieval_top5" not in r["rows"]["method"]
    assert "retrieval_gallery_images" not in r["counts"]
    assert "Face retrieval" not in (tmp_path / "eval" / "metrics.md").read_text()


def test_cli_and_its_errors(world, pretrained, cgan, tmp_path, capsys):
    assert cli.main(["evaluate", "--ckpt", str(cgan), "--out", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "| chance |" in out and "metrics.json" in out

    def error(*args) -> str:
        assert cli.main(["evaluate", *args, "--out", str(tmp_path / "err")]) == 2
        return capsys.readouterr().err

    voice = pretrained / "voice.ckpt"
    assert "a checkpoint of method 'voice', expected" in error("--ckpt", str(voice))
    assert "expected a face judge" in error("--ckpt", str(cgan), "--judge", str(voice))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no manifest.json" in error("--ckpt", str(cgan), "--data", str(empty))
    # the same shards under another identity table: a judge of other data
    other = tmp_path / "other"
    shutil.copytree(world, other, ignore=shutil.ignore_patterns("pretrained"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["identities"][0]["name"] = "Fredrika Other"
    (other / "manifest.json").write_text(json.dumps(manifest))
    msg = error("--ckpt", str(cgan), "--data", str(other), "--judge",
                str(pretrained / "face.ckpt"), "--allow-other-data")
    assert "judge was trained on other data" in msg and "voice2face train face" in msg
    assert "no judge at" in error("--ckpt", str(cgan), "--data", str(other), "--allow-other-data")


def test_validation_logs_the_grid_to_wandb_and_the_run_folder(cgan):
    run = cgan.parent.parent
    assert sorted(p.name for p in (run / "grids").glob("*.png")) == ["val-step000002.png",
                                                                   "val-step000004.png"]
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert list(offline.glob("files/media/images/val/grid_*.png"))


def test_generate_a_face_from_an_audio_file(cgan, pretrained, tmp_path, capsys):
    import numpy as np
    import soundfile as sf
    import torch
    import torchaudio.functional as AF
    voiced = [torch.from_numpy(speechlike(1.6, f0)) for f0 in (140, 210)]
    stereo = torch.stack([AF.resample(v, 16_000, 44_100) for v in voiced], 1).numpy()
    sf.write(tmp_path / "voice.wav", stereo, 44_100)  # stereo, 44.1 kHz: mixed and resampled
    out = tmp_path / "face.png"
    assert cli.main(["generate", "--ckpt", str(cgan), str(tmp_path / "voice.wav"),
                     "--out", str(out), "--size", "48"]) == 0
    assert Image.open(out).size == (48, 48)
    assert "face.png" in capsys.readouterr().out

    def error(*args: str) -> str:
        assert cli.main(["generate", "--ckpt", str(cgan), *args]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err.strip().splitlines()[-1]

    (tmp_path / "broken.flac").write_bytes(b"fLaC but not really")
    assert "cannot decode audio file" in error(str(tmp_path / "broken.flac"))
    assert cli.main(["generate", "--ckpt", str(pretrained / "face.ckpt"),
                     str(tmp_path / "voice.wav")]) == 2
    assert "a checkpoint of method 'face', expected" in capsys.readouterr().err

    # no speech, or less than the shortest utterance the methods learn from
    sf.write(tmp_path / "silence.wav", 1e-4 * np.random.default_rng(0).standard_normal(160_000),
             16_000)
    line = error(str(tmp_path / "silence.wav"))
    assert str(tmp_path / "silence.wav") in line and "no speech found by voice activity" in line
    sf.write(tmp_path / "short.wav", speechlike(0.2, 150, silence=0.1), 16_000)
    line = error(str(tmp_path / "short.wav"))
    assert str(tmp_path / "short.wav") in line and "s of speech" in line
    assert "need at least 1 s" in line
    # --out a folder, or under a file
    line = error(str(tmp_path / "voice.wav"), "--out", str(tmp_path))
    assert f"--out {tmp_path} is a folder" in line
    line = error(str(tmp_path / "voice.wav"), "--out", str(tmp_path / "voice.wav" / "face.png"))
    assert str(tmp_path / "voice.wav") in line
    # numeric options out of range: argparse's usage error, exit 2
    for option, value in [("--size", "-5"), ("--size", "0"), ("--size", "x"), ("--seed", "-1")]:
        with pytest.raises(SystemExit) as e:
            cli.main(["generate", "--ckpt", str(cgan), str(tmp_path / "voice.wav"), option, value])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument {option}" in err and "Traceback" not in err


def test_evaluate_a_folder_as_checkpoint_says_so(cgan, tmp_path, capsys):
    run = cgan.parent.parent
    assert cli.main(["evaluate", "--ckpt", str(run), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {run} is a folder; expected a .ckpt file" in err
    assert "does not exist" not in err and "Traceback" not in err


def test_the_frechet_column_compares_generated_and_real_faces_in_judge_space(cgan, tmp_path):
    """The method and the real faces each get a Fréchet distance to the real gallery half (its
    arithmetic is checked against scipy in test_metrics), and chance none. Which of the two
    is larger here is left alone: 6 real faces against a GAN of 4 steps in the space of a
    judge of 6 steps order them by luck of the arithmetic."""
    rows = evaluate(cgan, tmp_path / "eval", grid_identities=2, grid_utterances=1)["rows"]
    for row in ("method", "real_faces"):
        assert math.isfinite(rows[row]["frechet"]) and rows[row]["frechet"] >= 0
    assert "frechet" not in rows["chance"]


# --- bad values, refused before any work: one line (or argparse's usage), exit 2 -------------

def evaluate_fails(capsys, *args: str) -> str:
    """The one line a refused ``voice2face evaluate`` prints."""
    assert cli.main(["evaluate", *map(str, args)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voice2face evaluate: "), err
    return lines[0]


@pytest.fixture
def no_evaluation(monkeypatch):
    """An evaluation that must not start: the refusals come before any work."""
    import voice2face.evaluate as E

    def started(*args, **kwargs):
        raise AssertionError("the evaluation started")
    monkeypatch.setattr(E, "evaluate", started)


def test_numeric_and_choice_options_are_checked_by_argparse(cgan, tmp_path, capsys,
                                                           no_evaluation):
    out = tmp_path / "eval"
    for option, value in [("--batch-size", "0"), ("--batch-size", "-3"), ("--batch-size", "x"),
                          ("--workers", "-1"), ("--seed", "-1"), ("--seed", str(2**32)),
                          ("--grid-identities", "-1"), ("--grid-utterances", "0"),
                          ("--device", "tpu"), ("--device", "cuda:x")]:
        with pytest.raises(SystemExit) as e:
            cli.main(["evaluate", "--ckpt", str(cgan), "--out", str(out), option, value])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument {option}" in err, (option, value, err)
        assert "Traceback" not in err and value in err
    assert not out.exists()


def test_a_gpu_that_torch_cannot_use_is_refused_up_front(cgan, tmp_path, capsys, no_evaluation):
    import torch
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        line = evaluate_fails(capsys, "--ckpt", cgan, "--out", tmp_path / "e", "--device",
                              f"cuda:{count}")
        assert f"--device cuda:{count}: this machine has {count} GPU(s)" in line
    else:
        line = evaluate_fails(capsys, "--ckpt", cgan, "--out", tmp_path / "e", "--device", "cuda")
        assert "--device cuda: torch cannot use a GPU here" in line and "--device cpu" in line
    assert not (tmp_path / "e").exists()


def test_output_and_data_paths_are_checked_before_work(cgan, tmp_path, capsys, no_evaluation):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    line = evaluate_fails(capsys, "--ckpt", cgan, "--out", a_file)
    assert f"--out {a_file} is a file" in line
    line = evaluate_fails(capsys, "--ckpt", cgan, "--out", a_file / "eval")
    assert f"--out {a_file / 'eval'}: {a_file} is a file" in line
    line = evaluate_fails(capsys, "--ckpt", cgan, "--out", tmp_path / "e", "--data", a_file)
    assert f"--data {a_file} is a file" in line
    assert a_file.read_text() == "mine" and not (tmp_path / "e").exists()


def test_data_other_than_the_checkpoints_needs_allow_other_data(world, cgan, tmp_path, capsys):
    import torch

    from voice2face.methods.base import data_info
    from datamodules import VoiceFaceDataModule
    # a checkpoint that records another world as its training data
    ckpt = torch.load(cgan, map_location="cpu", weights_only=False)
    ckpt["voice2face"]["data"].update(root="/elsewhere/world-b", fingerprint="0123456789abcdef")
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    fingerprint = data_info(VoiceFaceDataModule(world))["fingerprint"]
    args = ["--ckpt", other, "--data", world, "--out", tmp_path / "eval"]
    line = evaluate_fails(capsys, *args)
    # both worlds named, each with its identity table
    for fact in (str(other), "/elsewhere/world-b", "0123456789abcdef", str(world), fingerprint):
        assert fact in line, (fact, line)
    assert "--allow-other-data" in line and not (tmp_path / "eval").exists()
    # without --data, evaluate takes the checkpoint's own data: not there any more
    assert "/elsewhere/world-b does not exist" in evaluate_fails(capsys, *args[:2], *args[4:])
    # allowed: said in one line on stdout, then measured
    assert cli.main(["evaluate", *map(str, args), "--allow-other-data"]) == 0
    said = [l for l in capsys.readouterr().out.splitlines() if "--allow-other-data" in l]
    assert len(said) == 1 and said[0].startswith(f"voice2face evaluate: {other} was trained on")
    assert (tmp_path / "eval" / "metrics.json").is_file()

    # the checkpoint's own folder, since replaced by another world: the default --data
    moved = tmp_path / "world"
    shutil.copytree(world, moved)
    ckpt = torch.load(cgan, map_location="cpu", weights_only=False)
    ckpt["voice2face"]["data"]["root"] = str(moved)
    torch.save(ckpt, other)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["identities"][0]["name"] = "Fredrika Other"
    (moved / "manifest.json").write_text(json.dumps(manifest))
    line = evaluate_fails(capsys, "--ckpt", other, "--out", tmp_path / "eval2")
    assert str(other) in line and str(moved) in line and fingerprint in line
    assert "holds other data" in line and "--data" in line
    assert not (tmp_path / "eval2").exists()


def test_a_truncated_test_shard_says_what_evaluate_can_do(world, pretrained, cgan, tmp_path,
                                                          capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(world, damaged, ignore=shutil.ignore_patterns("pretrained"))
    shard = json.loads((damaged / "manifest.json").read_text())["splits"]["test"]["shards"][0]
    path = damaged / "shards" / shard["name"]
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    line = evaluate_fails(capsys, "--ckpt", cgan, "--data", damaged, "--judge",
                          pretrained / "face.ckpt", "--out", tmp_path / "eval")
    assert str(path) in line and "truncated" in line
    assert "skip_corrupt" not in line and "voice2face synth" in line
    assert not (tmp_path / "eval").exists()


# --- the judge's attribute read-outs on a synthetic world (issue 26) -------------------------

@pytest.fixture(scope="module")
def synthetic_gan(synthetic_world) -> tuple[Path, Path]:
    """The tiny synthetic world with its judge and voice embedder (conftest), and a GAN on
    that embedder trained two steps."""
    from voice2face.constants import pretrained_dir
    root = synthetic_world
    gan = train_quick("gan", root, root.parent / "runs", "trainer.max_steps=2", "run.name=gan",
                      f"model.voice={pretrained_dir(root) / 'voice.ckpt'}", "model.feature_weight=0",
                      "model.target=null")
    return root, gan


def test_attribute_agreement_on_a_synthetic_world(synthetic_gan, tmp_path, monkeypatch):
    """The method's and the real faces' rows get the judge's attribute read-outs, equal to
    ``bounds``' functions applied by hand to the same embeddings; chance and ceiling get
    theirs; every other number is the one an evaluation without the attribute pass gives."""
    import numpy as np
    import torch

    from datamodules import VoiceFaceDataModule
    from voice2face.constants import default_judge
    from voice2face.evaluation import bounds as B
    from voice2face.evaluation import protocol as P
    from voice2face.evaluation.attributes import ATTRIBUTE_KEYS
    from voice2face.evaluation.instrument import judge_pass
    from voice2face.methods.base import data_info
    from voice2face.methods.pretrained import load_judge
    from voice2face.synth.audit import HiddenAttributes

    root, gan = synthetic_gan
    passes = []  # the method's probes, kept by probe_pass, to score by hand

    def probe_pass(*args, **kwargs):
        passes.append(real_probe_pass(*args, **kwargs))
        return passes[-1]
    real_probe_pass = P.probe_pass
    monkeypatch.setattr(P, "probe_pass", probe_pass)
    judge = default_judge(root)
    off = evaluate(gan, tmp_path / "off", root, judge, attributes=False, log=lambda *a: None)
    r = evaluate(gan, tmp_path / "on", root, judge, log=lambda *a: None)
    rows = r["rows"]
    keys = set(ATTRIBUTE_KEYS)
    for name in ("method", "real_faces"):
        assert keys <= set(rows[name]), name
        assert all(math.isfinite(rows[name][k]) for k in keys), rows[name]
    assert "proposal_faces" not in rows  # a GAN has no proposals
    # nothing else moved: the attribute pass off gives every other key and value
    assert not any(k.startswith("attribute_") for row in off["rows"].values() for k in row)
    assert {name: {k: v for k, v in row.items() if k not in keys}
            for name, row in rows.items()} == off["rows"]
    for key in ("counts", "extra", "not_computed"):
        assert r[key] == off[key], key
    saved = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert saved["rows"] == rows

    # by hand: the judge through the training gallery, the read-outs fitted to the true z
    world = HiddenAttributes.of_world(root)
    dm = VoiceFaceDataModule(root, eval_batch_size=64, num_workers=0)
    # in the memory layout evaluate gives it: the GAN's (model.channels_last, true by default)
    net = load_judge(judge, data_info(dm)).eval().to(memory_format=torch.channels_last)
    train, test = judge_pass(net, dm, "train"), judge_pass(net, dm, "test")
    readout = B.fit_readout(train["emb"], world.z[train["identity"]])

    def by_hand(probe_emb, speaker, gallery):
        probe_readout = readout.predict(probe_emb)
        return {**B.attribute_matching(probe_readout, speaker, readout.predict(test["emb"][gallery]),
                                       test["identity"][gallery], test["gender"][gallery],
                                       world.sigma),
                **B.attribute_agreement(probe_readout, world.z[speaker])}

    half = P.halves(torch.as_tensor(test["identity"]), torch.as_tensor(test["index"])).numpy()
    real = by_hand(test["emb"][half], test["identity"][half], ~half)
    assert set(real) == keys
    assert {k: rows["real_faces"][k] for k in keys} == pytest.approx(real, abs=1e-9)
    every = np.ones(len(half), dtype=bool)

    def method_by_hand(probes):
        speaker = torch.cat(probes.speakers).numpy()
        return by_hand(torch.cat(probes.queries["method"]).numpy(), speaker, every)

    probes = passes[-1]
    assert {k: rows["method"][k] for k in keys} == pytest.approx(method_by_hand(probes), abs=1e-9)
    # a GAN of two steps draws one face whatever the voice: its matching is a tie (0.5), so
    # the same check again with faces that tell the speakers apart, the speaker's own photo
    # of the utterance as the "generated" face
    generated = P.Subject.voices

    def own_photo(self, batch, device):
        _, _, proposal = generated(self, batch, device)
        face = batch["face"].to(device)
        return face, P.judge_faces(self.judge, face), proposal
    monkeypatch.setattr(P.Subject, "voices", own_photo)
    photo = evaluate(gan, tmp_path / "photo", root, judge, log=lambda *a: None)["rows"]["method"]
    expected = method_by_hand(passes[-1])
    assert {k: photo[k] for k in keys} == pytest.approx(expected, abs=1e-9)
    assert photo["attribute_match_1to2"] > 0.55  # no tie: the by-hand check has teeth
    assert {k: photo[k] for k in keys} != {k: rows["method"][k] for k in keys}

    men = float(np.mean(torch.cat(probes.gender).numpy()))
    assert {k: rows["chance"][k] for k in keys} == pytest.approx({
        "attribute_match_1to2": 0.5, "attribute_match_1to2_gender": 0.5,
        "attribute_gender_acc": max(men, 1 - men), "attribute_r2_age": 0.0,
        "attribute_r2_size": 0.0})
    ceilings = json.loads((root / "manifest.json").read_text())["ceilings"]
    assert rows["ceiling"] == {**{k: ceilings[k] for k in ("match_1to2", "match_1to2_gender")},
                               "attribute_match_1to2": ceilings["match_1to2"],
                               "attribute_match_1to2_gender": ceilings["match_1to2_gender"]}
    table = (tmp_path / "on" / "metrics.md").read_text()
    assert "Attribute agreement" in table and "Attribute agreement" not in \
        (tmp_path / "off" / "metrics.md").read_text()
    line = next(l for l in table.splitlines()[table.splitlines().index(
        next(l for l in table.splitlines() if l.startswith("Attribute agreement"))):]
        if l.startswith(f"| {r['label']} |"))
    assert line.split("|")[2].strip() == f"{rows['method']['attribute_match_1to2']:.3f}"
    print(f"\nevaluation seconds: attributes off {off['seconds']}, on {r['seconds']}")
