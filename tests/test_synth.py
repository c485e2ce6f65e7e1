"""The synthetic world: determinism, the split protocol, shard contents, audio, faces and
the Bayes ceiling against a brute-force computation."""

from __future__ import annotations

import io
import json
import math
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.stats import norm

from datamodules.shards import decode_image, iter_tar, read_manifest
from voice2face.synth import cli
from voice2face.synth.audio import render_utterance
from voice2face.synth.ceiling import match_ceilings, world_ceilings
from voice2face.synth.faces import render_face
from voice2face.synth.generate import generate_world, shard_sizes
from voice2face.splits import SPLIT_LETTERS, fold, initial, split_of_name
from voice2face.synth.names import NAMES
from voice2face.synth.world import PRESETS, preset, sample_identities, split_sizes

TINY = PRESETS["tiny"]
# small enough to write twice in a couple of seconds
SMALL = preset("tiny", identities=12, utterances=2, known=1, faces=2, seconds=(0.5, 0.8),
               ceiling_trials=2000)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tiny")
    return root, generate_world(root, TINY, workers=2, progress=False)


def members(root: Path) -> dict[str, list[tuple[str, bytes]]]:
    """Every shard's members in order, by shard name (the tar headers hold write times)."""
    out = {}
    for path in sorted((root / "shards").glob("*.tar")):
        out[path.name] = [(f"{s['__key__']}.{k}", v) for s in iter_tar(path)
                          for k, v in sorted(s.items()) if not k.startswith("__")]
    return out


# --- determinism ---------------------------------------------------------------------------

def test_same_seed_same_world_whatever_the_workers(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "shards").mkdir(parents=True)
    (a / "shards" / "train-000099.tar").write_bytes(b"stale")   # from an older, larger world
    (a / "shards" / "notes.txt").write_text("not ours")
    assert cli.main(["--preset", "tiny", "--out", str(a), "--identities", "12", "--utterances",
                     "2", "--known", "1", "--faces", "2", "--workers", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "same gender" in printed and str(a) in printed
    # the CLI has no flag for the duration, so b is written with the CLI's config
    config = replace(SMALL, seconds=TINY.seconds, ceiling_trials=TINY.ceiling_trials)
    manifest_b = generate_world(b, config, workers=2, progress=False)
    manifest_a = read_manifest(a)
    assert manifest_a == {"format_version": manifest_a["format_version"], **manifest_b}
    shards_a, shards_b = members(a), members(b)
    assert shards_a.keys() == shards_b.keys()
    assert "train-000099.tar" not in shards_a and (a / "shards" / "notes.txt").exists()
    for name in shards_a:
        assert shards_a[name] == shards_b[name], name


def test_cli_voxceleb_layout(tmp_path, capsys):
    out = tmp_path / "vox"
    assert cli.main(["--preset", "tiny", "--out", str(out), "--identities", "10", "--utterances",
                     "1", "--known", "1", "--faces", "2", "--workers", "1", "--quiet",
                     "--layout", "voxceleb"]) == 0
    assert "voice2face prepare" in capsys.readouterr().out
    assert (out / "vox1_meta.csv").is_file()
    assert len(list(out.glob("wav/*/*/*.wav"))) == 10 + split_sizes(10)["train"]   # + known
    assert cli.main(["--preset", "tiny", "--out", str(out), "--identities", "5"]) == 2


def test_different_seeds_differ():
    w0, w1 = sample_identities(SMALL), sample_identities(replace(SMALL, seed=1))
    assert [i.name for i in w0] != [i.name for i in w1]
    assert not np.array_equal(render_utterance(w0[0], 0, SMALL),
                              render_utterance(w0[0], 0, replace(SMALL, seed=1)))
    assert not np.array_equal(render_face(w0[0], 0, SMALL),
                              render_face(w0[0], 0, replace(SMALL, seed=1)))
    # and within a world every item is its own draw
    assert not np.array_equal(render_face(w0[0], 0, SMALL), render_face(w0[0], 1, SMALL))


# --- identities and splits -----------------------------------------------------------------

def test_split_rule_and_proportions():
    world = sample_identities(PRESETS["default"])
    assert Counter(i.split for i in world) == {"train": 924, "val": 112, "test": 189}
    names = [i.name for i in world]
    assert len(set(names)) == len(names)
    assert names == sorted(names, key=lambda n: (fold(n).casefold(), n))     # VoxCeleb order
    assert [i.index for i in world] == list(range(len(world)))
    for ident in world:
        assert initial(ident.name) in SPLIT_LETTERS[ident.split], ident.name
        assert split_of_name(ident.name) == ident.split
    assert any(n != fold(n) for n in names)                     # accents survive
    assert any("'" in n for n in names) and all(" " in n for n in names)
    for split in ("train", "val", "test"):
        members_ = [i for i in world if i.split == split]
        share = sum(i.gender == "m" for i in members_) / len(members_)
        assert abs(share - 0.55) < 0.01
    for culture, lists in NAMES.items():            # every culture can fill every split
        for gender in "mf":
            for split, letters in SPLIT_LETTERS.items():
                assert any(initial(n) in letters for n in lists[gender]), (culture, gender, split)
    assert initial("Øystein Berg") == "O" and split_of_name("Åsa Dahl") == "val"
    assert split_of_name("Émile Roux") == "test"


def test_tiny_split_sizes_and_known(tiny):
    root, manifest = tiny
    table = manifest["identities"]
    assert Counter(i["split"] for i in table) == {"train": 30, "val": 4, "test": 6}
    n = {s: sum(i["split"] == s for i in table) for s in ("train", "val", "test")}
    assert manifest["splits"]["train"]["samples"] == n["train"] * TINY.utterances
    assert manifest["splits"]["known"]["samples"] == n["train"] * TINY.known
    assert manifest["splits"]["val"]["samples"] == n["val"] * TINY.utterances
    assert manifest["gallery"]["test"]["samples"] == n["test"] * TINY.faces
    assert len(manifest["splits"]["train"]["shards"]) >= 4


def test_shard_sizes():
    assert shard_sizes(0) == []
    assert len(shard_sizes(9240)) == 16 and sum(shard_sizes(9240)) == 9240
    assert max(shard_sizes(9240)) - min(shard_sizes(9240)) <= 1
    assert shard_sizes(5) == [5] and len(shard_sizes(100_000)) == 50


# --- shard contents ------------------------------------------------------------------------

def test_manifest_matches_shards(tiny):
    root, manifest = tiny
    assert read_manifest(root)["kind"] == "synthetic"
    table = manifest["identities"]
    seen_utterances = set()
    for group, splits in (("sample", manifest["splits"]), ("gallery", manifest["gallery"])):
        for split, entry in splits.items():
            total = 0
            for shard in entry["shards"]:
                samples = list(iter_tar(root / "shards" / shard["name"]))
                assert len(samples) == shard["samples"], shard
                total += len(samples)
                for s in samples:
                    meta = json.loads(s["json"])
                    ident = table[meta["identity"]]
                    assert (meta["name"], meta["gender"]) == (ident["name"], ident["gender"])
                    assert "." not in s["__key__"]
                    if group == "sample":
                        assert re.fullmatch(r"id\d{5}-u\d{4}", s["__key__"])
                        assert meta["split"] == split
                        assert ident["split"] == ("train" if split == "known" else split)
                        faces = sorted(k for k in s if k.startswith("face"))
                        assert faces == ["face0.png", "face1.png"]
                        assert s["face0.png"] != s["face1.png"]
                        seen_utterances.add(meta["utterance"])
                    else:
                        assert meta["split"] == ident["split"] == split and "png" in s
            assert total == entry["samples"]
    # known utterances are held out: none of them is also a training sample
    assert len(seen_utterances) == sum(v["samples"] for v in manifest["splits"].values())
    c = manifest["ceilings"]
    assert 0.5 < c["match_1to2_gender"] < c["match_1to2"] < 1 and c["trials"] == TINY.ceiling_trials
    assert manifest["source"]["seed"] == 0 and manifest["source"]["preset"] == "tiny"


def test_audio_in_shards(tiny):
    root, manifest = tiny
    shard = manifest["splits"]["test"]["shards"][0]["name"]
    for s in iter_tar(root / "shards" / shard):
        audio, sr = sf.read(io.BytesIO(s["flac"]), dtype="float32")
        assert sr == 16_000 and audio.ndim == 1
        assert TINY.seconds[0] <= len(audio) / sr <= TINY.seconds[1]
        assert np.isfinite(audio).all() and 0.01 < audio.std() and np.abs(audio).max() <= 1
        face = decode_image(s["face0.png"])
        assert face.shape == (64, 64, 3)


# --- audio ---------------------------------------------------------------------------------

def autocorrelation_pitch(x: np.ndarray, sr: int = 16_000) -> float:
    """Median pitch over loud, periodic 40 ms frames."""
    estimates = []
    for start in range(0, len(x) - 640, 320):
        frame = x[start:start + 640] * np.hanning(640)
        if frame.std() < 0.3 * x.std():
            continue
        ac = np.fft.irfft(np.abs(np.fft.rfft(frame, 1280)) ** 2)[:640]
        lag = sr // 400 + int(np.argmax(ac[sr // 400: sr // 60]))
        if ac[lag] > 0.5 * ac[0]:
            estimates.append(sr / lag)
    return float(np.median(estimates))


def test_pitch_tracks_the_identity():
    world = sample_identities(TINY)[:12]
    est = np.array([autocorrelation_pitch(render_utterance(i, 0, TINY, clean=True)) for i in world])
    true = np.array([i.voice.f0 for i in world])
    # intonation moves the median a little; octave errors or a wrong pitch would not pass
    assert np.all(np.abs(np.log(est / true)) < 0.15), (est, true)
    assert np.corrcoef(np.log(est), np.log(true))[0, 1] > 0.95


def test_vocal_tract_matches_the_iir_cascade():
    """The overlap-add formant filter equals Klatt's resonator cascade for fixed formants."""
    from scipy import fft
    from scipy.signal import sosfilt
    from voice2face.synth.audio import (BANDWIDTHS, _cascade_response, _fft_size, _frames,
                                        _overlap_add)

    sr, hop = 16_000, 320
    x = np.random.default_rng(0).standard_normal(sr)
    formants = np.array([700.0, 1220.0, 2600.0, 3500.0, 4500.0])
    r = np.exp(-np.pi * BANDWIDTHS / sr)
    c = 2 * r * np.cos(2 * np.pi * formants / sr)
    sos = np.stack([1 - c + r * r, 0 * c, 0 * c, 1 + 0 * c, -c, r * r], 1)
    reference = sosfilt(sos, x)
    blocks, nfft = sr // hop, _fft_size(hop)
    response = _cascade_response(np.tile(formants, (blocks, 1)), np.tile(BANDWIDTHS, (blocks, 1)),
                                 nfft, sr)
    y = _overlap_add(fft.irfft(fft.rfft(_frames(x, blocks, hop), nfft) * response, nfft), hop, sr)
    middle = slice(2000, -2000)        # the reference starts from rest, the frames do not
    # single precision and the 20 ms left for ringing put the errors ~40 dB down
    assert np.abs(y - reference)[middle].max() < 2e-2 * reference.std()
    assert np.corrcoef(y[middle], reference[middle])[0, 1] > 0.9995


def band_spectrum(x: np.ndarray) -> np.ndarray:
    """Log power in 32 bands, 100 Hz – 7 kHz, level-normalised."""
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16_000)
    edges = np.geomspace(100, 7000, 33)
    bands = np.array([power[(freqs >= lo) & (freqs < hi)].mean()
                      for lo, hi in zip(edges, edges[1:])])
    logs = np.log(bands)
    return logs - logs.mean()


def test_two_speakers_differ():
    config = replace(TINY, seconds=(3.0, 3.0))
    world = sample_identities(config)
    man = next(i for i in world if i.gender == "m" and i.voice.f0 < 120)
    woman = next(i for i in world if i.gender == "f" and i.voice.f0 > 200)
    spec = {(who.index, u): band_spectrum(render_utterance(who, u, config, clean=True))
            for who in (man, woman) for u in range(3)}
    within = np.mean([np.linalg.norm(spec[w, 0] - spec[w, u]) for w in (man.index, woman.index)
                      for u in (1, 2)])
    between = np.mean([np.linalg.norm(spec[man.index, u] - spec[woman.index, v])
                       for u in range(3) for v in range(3)])
    assert between > 1.5 * within
    x = render_utterance(man, 0, config)
    assert len(x) == 48_000 and x.dtype == np.float32 and np.isfinite(x).all()
    assert not np.array_equal(x, render_utterance(man, 0, config, clean=True))


# --- faces ---------------------------------------------------------------------------------

def test_faces_shape_and_identity():
    world = sample_identities(TINY)[:10]
    big = render_face(world[0], 0, replace(TINY, face_size=128))
    assert big.shape == (128, 128, 3) and big.dtype == np.uint8
    images = np.array([[render_face(i, f, TINY) for f in range(3)] for i in world])
    assert images.shape == (10, 3, 64, 64, 3) and images.dtype == np.uint8
    assert images.std() > 20                              # not blank
    x = images[:, :, 12:52, 12:52].reshape(10, 3, -1).astype(float)   # the face, not the backdrop
    dist = lambda a, b: np.sqrt(((a - b) ** 2).mean())
    within = [dist(x[i, a], x[i, b]) for i in range(10) for a in range(3) for b in range(a)]
    between = [dist(x[i, a], x[j, b]) for i in range(10) for j in range(i) for a in range(3)
               for b in range(3)]
    assert min(within) > 5                                # every image is its own
    assert np.mean(within) < 0.9 * np.mean(between)


# --- the Bayes ceiling ---------------------------------------------------------------------

def exact_ceilings(z: np.ndarray, genders: np.ndarray, sigma: np.ndarray) -> tuple[float, float]:
    """Enumerate every (speaker, imposter) trial and integrate over the voice exactly.

    With o ~ N(z_i, diag(sigma^2)), the Bayes decision is right when
    ||u||^2 < ||u - d||^2 for u = (o - z_i) / sigma ~ N(0, I) and d = (z_j - z_i) / sigma,
    i.e. when u . d / |d| < |d| / 2: probability Phi(|d| / 2).
    """
    n = len(z)
    accuracy = norm.cdf(np.linalg.norm((z[:, None] - z[None]) / sigma, axis=-1) / 2)
    any_ = np.mean([np.mean([accuracy[i, j] for j in range(n) if j != i]) for i in range(n)])
    same = [np.mean([accuracy[i, j] for j in range(n) if j != i and genders[j] == genders[i]])
            for i in range(n) if (genders == genders[i]).sum() > 1]
    return float(any_), float(np.mean(same))


def test_ceiling_monte_carlo_matches_exact():
    world = sample_identities(TINY)
    test = [i for i in world if i.split == "test"]
    z = np.stack([i.shared for i in test])
    genders = np.array([i.gender for i in test])
    sigma = np.asarray(TINY.voice_noise)
    exact_any, exact_same = exact_ceilings(z, genders, sigma)
    mc = match_ceilings(z, genders, sigma, 200_000, np.random.default_rng(5))
    assert abs(mc["match_1to2"] - exact_any) < 4 * mc["stderr"] + 1e-3
    assert abs(mc["match_1to2_gender"] - exact_same) < 4 * mc["stderr_gender"] + 1e-3
    # the world's own numbers are the same Monte Carlo with its seed
    ceil = world_ceilings(world, TINY)
    assert abs(ceil["match_1to2"] - exact_any) < 4 * ceil["stderr"] + 1e-3

    # a brute-force check of the closed form itself, on one pair: a fine grid over the
    # voice offset along the two directions that matter (the rest integrates to one)
    d = (z[1] - z[0]) / sigma
    u = np.linspace(-8, 8, 1601)
    a, b = np.meshgrid(u, u, indexing="ij")
    e1 = d / np.linalg.norm(d)
    e2 = np.linalg.svd(e1[None])[2][1]
    pts = a[..., None] * e1 + b[..., None] * e2
    right = ((pts ** 2).sum(-1) < ((pts - d) ** 2).sum(-1))
    density = np.exp(-(a ** 2 + b ** 2) / 2) / (2 * math.pi) * (u[1] - u[0]) ** 2
    assert abs((right * density).sum() - norm.cdf(np.linalg.norm(d) / 2)) < 2e-3


def test_default_world_is_calibrated():
    """The default world's ceilings sit near the best published VoxCeleb 1:2 results."""
    c = world_ceilings(sample_identities(PRESETS["default"]), PRESETS["default"])
    assert 0.84 < c["match_1to2"] < 0.90 and 0.75 < c["match_1to2_gender"] < 0.81, c


# --- the output folder ----------------------------------------------------------------------

SMALL_ARGS = ["--preset", "tiny", "--identities", "12", "--utterances", "2", "--known", "1",
              "--faces", "2", "--workers", "1", "--quiet"]


def tree_state(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_out_holding_another_world_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "world"
    assert cli.main([*SMALL_ARGS, "--out", str(out)]) == 0
    (out / "pretrained").mkdir()
    (out / "pretrained" / "face.ckpt").write_bytes(b"a judge of this world")
    assert cli.main([*SMALL_ARGS, "--out", str(out)]) == 0  # the same world: no flag needed
    assert (out / "pretrained" / "face.ckpt").is_file()
    capsys.readouterr()

    before = tree_state(out)
    assert cli.main([*SMALL_ARGS, "--seed", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert f"--out {out} holds another world (seed " in line and "-> 5" in line
    assert "--overwrite" in line and "pretrained/" in line
    assert tree_state(out) == before  # nothing touched

    assert cli.main([*SMALL_ARGS, "--seed", "5", "--overwrite", "--out", str(out)]) == 0
    assert read_manifest(out)["source"]["seed"] == 5
    assert not (out / "pretrained").exists()  # nets of the old world are gone with it

    # a folder of other things, and a file
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli.main([*SMALL_ARGS, "--out", str(other)]) == 2
    assert "files that are not a world (notes.txt)" in capsys.readouterr().err
    assert not (other / "shards").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for layout in ("shards", "voxceleb"):
        assert cli.main([*SMALL_ARGS, "--layout", layout, "--out", str(a_file)]) == 2
        err = capsys.readouterr().err
        assert f"--out {a_file} is a file; expected a folder" in err and "Traceback" not in err


def test_ctrl_c_says_nothing_was_written(tmp_path, capsys, monkeypatch):
    import voice2face.synth.generate as G
    calls = {"n": 0}
    real = G._utterance_job

    def interrupted_on_the_fifth(job):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(G, "_utterance_job", interrupted_on_the_fifth)
    out = tmp_path / "world"
    assert cli.main([*SMALL_ARGS, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("voice2face synth: interrupted; no world was written")
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tmp"))
    # "run the same command again to write it": over what the interrupted run left
    calls["n"] = -10**9
    assert cli.main([*SMALL_ARGS, "--out", str(out)]) == 0
    assert (out / "manifest.json").is_file()


# enough samples for several shards per split
RESUME_ARGS = ["--preset", "tiny", "--identities", "20", "--utterances", "3", "--known", "1",
               "--faces", "2", "--workers", "1", "--quiet"]


def test_an_interrupted_run_resumes_at_the_last_finished_shard(tmp_path, capsys, monkeypatch):
    import voice2face.synth.generate as G
    whole = tmp_path / "whole"
    assert cli.main([*RESUME_ARGS, "--out", str(whole)]) == 0
    manifest = read_manifest(whole)
    assert len(manifest["splits"]["train"]["shards"]) >= 3

    calls = {"utterances": 0, "faces": 0, "stop": 30}
    real_utterance, real_faces = G._utterance_job, G._faces_job

    def utterance(job):
        calls["utterances"] += 1
        if calls["utterances"] == calls["stop"]:
            raise KeyboardInterrupt
        return real_utterance(job)

    def faces(index):
        calls["faces"] += 1
        return real_faces(index)

    monkeypatch.setattr(G, "_utterance_job", utterance)
    monkeypatch.setattr(G, "_faces_job", faces)
    out = tmp_path / "world"
    assert cli.main([*RESUME_ARGS, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the finished shards are kept" in err
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tmp"))
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    sizes = {s["name"]: s["samples"] for section in ("splits", "gallery")
             for entry in manifest[section].values() for s in entry["shards"]}
    done_samples = sum(sizes[n] for n in finished if not n.startswith("gallery-"))
    assert any(n.startswith("gallery-") for n in finished) and 0 < done_samples < 29
    assert len(finished) < len(sizes)

    def resume() -> None:
        calls.update(utterances=0, faces=0, stop=-1)
        assert cli.main([*RESUME_ARGS, "--out", str(out)]) == 0
        assert read_manifest(out) == manifest and members(out) == members(whole)

    resume()
    assert (f"{len(finished)} of {len(sizes)} shards already written; writing the other "
            f"{len(sizes) - len(finished)}") in capsys.readouterr().out
    total = sum(v["samples"] for v in manifest["splits"].values())
    assert calls["utterances"] == total - done_samples  # only the unfinished shards' samples
    for name, mtime in finished.items():  # the finished ones were not rewritten
        assert (out / "shards" / name).stat().st_mtime_ns == mtime, name

    # a complete world again: nothing rendered; a damaged shard or a lost record: that shard
    resume()
    assert calls == {"utterances": 0, "faces": 0, "stop": -1}
    train = [s["name"] for s in manifest["splits"]["train"]["shards"]]
    with open(out / "shards" / train[0], "r+b") as f:
        f.truncate(1000)
    (out / G.STATE / f"{train[1]}.json").unlink()
    resume()
    assert calls["utterances"] == sizes[train[0]] + sizes[train[1]]


def test_sigint_with_worker_processes_prints_no_traceback(tmp_path):
    """A real Ctrl-C reaches every process of the group: the workers must stay quiet."""
    import os
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "world"
    proc = subprocess.Popen([sys.executable, "-m", "voice2face.cli", "synth", "--preset", "tiny",
                             "--identities", "300", "--workers", "2", "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    # the shard folder is made before the worker pool starts; rendering 300 identities then
    # takes tens of seconds, so a signal a second later lands while the workers are busy
    deadline = time.time() + 120
    while not (out / "shards").is_dir() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    assert proc.poll() is None, "the world was written before the signal could be sent"
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: to the whole group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted; no world was written" in err
    assert not (out / "manifest.json").exists()


def test_a_full_disk_during_synth_is_one_line_and_the_rerun_finishes(tmp_path, monkeypatch,
                                                                      capsys):
    import errno

    import datamodules.shards as shards
    real, written = shards.ShardWriter.write, []

    def filling(self, sample):
        written.append(1)
        if len(written) > 30:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, sample)
    monkeypatch.setattr(shards.ShardWriter, "write", filling)
    out = tmp_path / "world"
    assert cli.main(["--preset", "tiny", "--out", str(out), "--quiet", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device" in err[0] and "Traceback" not in err[0]
    monkeypatch.undo()
    assert cli.main(["--preset", "tiny", "--out", str(out), "--quiet", "--workers", "0"]) == 0
    read_manifest(out)
    assert not list((out / "shards").glob("*.tmp"))


def head_layers(size_or_age: str, values, draws: int = 12):
    """Counterfactual heads: the same private traits and the same photo (expression, pose)
    drawn with only ``size_or_age`` changed; the head layer's alpha and RGB, ``[V, D, H, W]``."""
    from voice2face.synth.faces import SUPERSAMPLE, _draw_head
    from voice2face.synth.world import AGE_MEAN, face_traits

    out = []
    for v in values:
        row = []
        for d in range(draws):
            gender = "mf"[d % 2]
            age, size = (AGE_MEAN, v) if size_or_age == "size" else (v, 0.0)
            traits = face_traits(gender, age, size, "anglo", np.random.default_rng(d))
            row.append(np.asarray(_draw_head(traits, gender, SUPERSAMPLE * 64,
                                             np.random.default_rng(100 + d)), float))
        out.append(row)
    return np.array(out)


def test_faces_show_size_above_the_photos_scale_jitter():
    # one unit of size grows the head (its drawn area above the eyes, which the shoulders and
    # the canvas's edge do not reach) by more than the photo's scale jitter can (at most 3 %
    # either way: an area ratio of (1.03 / 0.97)^2 = 1.13)
    drawn = head_layers("size", [-1.0, 0.0, 1.0])[..., 3] > 0
    area = drawn[..., : int(0.47 * drawn.shape[-1]), :].sum(axis=(2, 3))
    assert (area[1] / area[0]).min() > 1.15 and (area[2] / area[1]).min() > 1.15


def test_faces_show_age_at_every_age():
    # the face's drawn age cues (wrinkles, eye bags, grey hair) change it more with every 15
    # years, from 20 to 80, not only in old age
    heads = head_layers("age", [20.0, 35.0, 50.0, 65.0, 80.0])[..., :3]
    steps = np.abs(np.diff(heads, axis=0)).mean(axis=(2, 3, 4))   # [4, draws]
    assert steps.min() > 0.5
    assert steps[0].mean() > 0.5 * steps[-1].mean()
