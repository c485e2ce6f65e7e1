"""`voice2face prepare` on small fake trees in VoxCeleb's and VGGFace's own layouts.

The trees hold what real downloads hold in small numbers: names with spaces, accents and
apostrophes spelt differently on the two sides, identities on one side only, corrupt,
empty, silent and too-short audio, stereo 44.1 kHz WAV, VoxCeleb2 AAC, grey-scale and
corrupt images.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from datamodules import VoiceFaceDataModule, read_manifest
from datamodules.shards import decode_audio, decode_image, iter_tar
from helpers import speechlike
from voice2face.prepare import meta as M
from voice2face.prepare import run as R
from voice2face.prepare.audio import (AudioSettings, prepare_utterance, read_audio, speech_frames,
                                      syllabic_modulation_db, trim_silence)
from voice2face.prepare.faces import FaceSettings, load_face
from voice2face.prepare.plan import Inputs
from voice2face.prepare.report import NO_SPEECH, PrepareError, Skip
from voice2face.splits import split_of_name

SR = 16_000
# fast settings for tiny trees: short clips are fine, small shards make several per split
CONFIG = R.PrepareConfig(audio=AudioSettings(min_seconds=0.5), faces=FaceSettings(size=32),
                         known=2, shard_size=4)


# --- fake inputs ---------------------------------------------------------------------------------

def write_wav(path: Path, wave: np.ndarray, sr: int = SR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sr, subtype="PCM_16")


def write_m4a(path: Path, wave: np.ndarray, sr: int = SR) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=sr, layout="mono")
        for i in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, i:i + 1024].astype(np.float32),
                                               format="fltp", layout="mono")
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_image(path: Path, rng, size=(40, 52), grey=False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if grey else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


# (VoxCeleb1 ID, name in vox1_meta.csv, gender, nationality, face folder or None, utterances)
PEOPLE = [
    ("id10001", "Fiona_O'Brien", "f", "Ireland", "Fiona_O’Brien", 6),        # curly apostrophe
    ("id10002", "Renée_Zellweger", "f", "USA", "Renee Zellweger", 4),       # accent, space
    ("id10003", "Abbie_Ames", "f", "UK", "Abbie_Ames", 3),                  # val, grey faces
    ("id10004", "Céline_Dion", "f", "Canada", unicodedata.normalize("NFD", "Céline_Dion"), 3),
    ("id10005", "Derek_St._Clair", "m", "UK", None, 2),                     # voices, no faces
    ("id10006", "Gary_Wells", "m", "USA", "Gary_Wells", 0),                 # faces, no voices
    ("id10007", "Henry_Hale", "m", "UK", "Henry_Hale", 3),                  # one usable face
    ("id10008", "Björn_Berg", "m", "Sweden", "Björn_Berg", 3),              # val
    ("id10009", "Tom_D'Amico", "m", "Italy", "Tom_DAmico", 4),              # no apostrophe
]


def make_tree(root: Path) -> dict:
    """VoxCeleb1 + VoxCeleb2 + VGG_ALL_FRONTAL in their layouts; returns what tests check."""
    rng = np.random.default_rng(0)
    wav, faces = root / "vox1" / "wav", root / "VGG_ALL_FRONTAL"
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    bad = {}
    for n, (sid, name, gender, nat, folder, utts) in enumerate(PEOPLE):
        meta.append(f"{sid}\t{name}\t{gender}\t{nat}\t{'dev' if n % 3 else 'test'}")
        f0 = 120 + 15 * n if gender == "m" else 200 + 10 * n
        for u in range(utts):
            path = wav / sid / f"yt{u // 2}_{n}" / f"{u + 1:05d}.wav"
            if sid == "id10001" and u == 0:  # stereo at 44.1 kHz, as some rips are
                w = speechlike(1.0, f0, 44_100, seed=u)
                write_wav(path, np.stack([w, 0.5 * w], axis=1), 44_100)
            else:
                write_wav(path, speechlike(0.8 + 0.1 * u, f0, seed=100 * n + u))
        if folder is not None:
            for i in range(4 if sid != "id10007" else 1):
                write_image(faces / folder / f"{i:08d}.jpg", rng, grey=sid == "id10003")
    meta.append("id10010\tZack_Lane\tm\tUSA\tdev")  # in the meta, on neither side
    (root / "vox1").mkdir(parents=True, exist_ok=True)
    (root / "vox1" / "vox1_meta.csv").write_text("\n".join(meta) + "\n", encoding="utf-8")

    # bad files among Fiona's utterances, and a face that does not decode
    fiona = wav / "id10001" / "ytbad"
    bad["corrupt"] = fiona / "00100.wav"
    bad["corrupt"].parent.mkdir(parents=True)
    bad["corrupt"].write_bytes(b"RIFF\x00\x00garbage" * 10)
    bad["empty"] = fiona / "00101.wav"
    bad["empty"].write_bytes(b"")
    bad["silent"] = fiona / "00102.wav"
    write_wav(bad["silent"], np.zeros(SR, np.float32))
    bad["short"] = fiona / "00103.wav"
    write_wav(bad["short"], speechlike(0.1, 200, seed=7, silence=0.1))
    bad["image"] = faces / "Renee Zellweger" / "broken.jpg"
    bad["image"].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    bad["henry_bad"] = faces / "Henry_Hale" / "zz.png"
    bad["henry_bad"].write_bytes(b"")
    # one side only: a face folder for a name in no meta file, an audio folder not in the meta
    for i in range(2):
        write_image(faces / "Zoë_Quinn" / f"{i}.png", rng)
    write_wav(wav / "id10099" / "yt" / "00001.wav", speechlike(0.8, 150, seed=3))

    # VoxCeleb2: names through VGGFace2 IDs; id00012 is Fiona, id00013 nobody we have
    aac = root / "vox2" / "dev" / "aac"
    for u in range(2):
        write_m4a(aac / "id00012" / "ytv2" / f"{u + 1:05d}.m4a", speechlike(0.9, 210, seed=50 + u))
    write_m4a(aac / "id00013" / "ytv2" / "00001.m4a", speechlike(0.9, 130, seed=60))
    bad["corrupt_m4a"] = aac / "id00012" / "ytv2" / "00003.m4a"
    bad["corrupt_m4a"].write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(range(256)) * 4)
    (root / "vox2" / "vox2_meta.csv").write_text(
        "VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \nid00012 ,n000012 ,f ,dev \n"
        "id00013 ,n000013 ,m ,dev \n")
    (root / "vox2" / "identity_meta.csv").write_text(
        'Class_ID, Name, Sample_Num, Flag, Gender\nn000012, "Fiona_O\'Brien", 300, 1, f\n'
        'n000013, "Someone_Else", 200, 1, m\n')
    return bad


def inputs(tree: Path, vox2: bool = True, **kw) -> Inputs:
    return Inputs(vox1=(tree / "vox1",), faces=tree / "VGG_ALL_FRONTAL",
                  vox2=(tree / "vox2",) if vox2 else (), **kw)


def shard_contents(root: Path) -> dict[str, dict]:
    """Every shard's samples as {key: {member: bytes}}, by shard name, from the manifest."""
    m = read_manifest(root)
    out = {}
    for section in ("splits", "gallery"):
        for entry in m[section].values():
            for shard in entry["shards"]:
                out[shard["name"]] = {s["__key__"]: {k: v for k, v in s.items()
                                                    if not k.startswith("__")}
                                      for s in iter_tar(root / "shards" / shard["name"])}
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    bad = make_tree(root)
    return root, bad


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory):
    """One uninterrupted in-process run over the fake tree."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    report = R.prepare(inputs(tree[0]), out, CONFIG, workers=0, log=lambda s: None)
    return out, report


# --- meta files and names ------------------------------------------------------------------------

def test_names_match_across_spellings():
    assert M.name_key("Fiona_O'Brien") == M.name_key("Fiona O’Brien") == M.name_key("fiona obrien")
    assert M.name_key("Renée_Zellweger") == M.name_key("Renee Zellweger")
    assert M.name_key("Céline_Dion") == M.name_key(unicodedata.normalize("NFD", "Céline Dion"))
    assert M.name_key("Øystein Berg") == M.name_key("Oystein_Berg")
    assert M.display_name("A.J._Buckley") == "A.J. Buckley"
    assert [split_of_name(n) for n in ("Åsa Berg", "Björn", "Céline", "Émile", "Fred", "Zoë",
                                         "14th Dalai Lama")] == \
        ["val", "val", "test", "test", "train", "train", "train"]


def test_meta_readers_and_their_errors(tmp_path):
    good = tmp_path / "vox1_meta.csv"
    good.write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
                    "id10001\tA.J._Buckley\tm\tIreland\tdev\t\n\n")  # trailing tab, blank line
    assert M.read_vox1_meta(good)["id10001"] == M.Speaker("id10001", "A.J. Buckley", "m",
                                                          "Ireland", "dev")
    missing = tmp_path / "nope.csv"
    with pytest.raises(PrepareError, match=str(missing)):
        M.read_vox1_meta(missing)
    commas = tmp_path / "commas.csv"
    commas.write_text("VoxCeleb1 ID,VGGFace1 ID,Gender,Nationality,Set\nid10001,A,m,UK,dev\n")
    with pytest.raises(PrepareError, match=f"{commas}.*not a VoxCeleb1 meta file"):
        M.read_vox1_meta(commas)
    short = tmp_path / "short.csv"
    short.write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\nid10001\tA\tm\n")
    with pytest.raises(PrepareError, match=f"{short}, line 2"):
        M.read_vox1_meta(short)
    gender = tmp_path / "gender.csv"
    gender.write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\nid1\tA\tx\tUK\tdev\n")
    with pytest.raises(PrepareError, match="gender 'x'"):
        M.read_vox1_meta(gender)
    # a VoxCeleb1 meta file passed where VoxCeleb2's is expected
    with pytest.raises(PrepareError, match="not a VoxCeleb2 meta file"):
        M.read_vox2_meta(good)
    vgg2 = tmp_path / "identity_meta.csv"
    vgg2.write_text('Class_ID, Name, Sample_Num, Flag, Gender\n'
                    'n000001, "14th_Dalai_Lama", 424, 0, m\nn000002, Smith, John, 10, 1, m\n')
    assert M.read_vggface2_names(vgg2) == {"n000001": "14th Dalai Lama", "n000002": "Smith, John"}
    split = tmp_path / "split.txt"
    split.write_text("# name or id, then the split\nAbbie Ames\ttest\nid10001 val\nFiona_O'Brien,train\n")
    assert M.read_split_file(split) == {M.name_key("Abbie Ames"): "test", "id10001": "val",
                                        M.name_key("Fiona O'Brien"): "train"}
    split.write_text("Abbie Ames holdout\n")
    with pytest.raises(PrepareError, match=f"{split}, line 1"):
        M.read_split_file(split)


# --- one file ------------------------------------------------------------------------------------

def test_audio_is_mono_16k_trimmed_or_skipped(tree, tmp_path):
    root, bad = tree
    settings = AudioSettings(min_seconds=0.5)
    stereo = root / "vox1" / "wav" / "id10001" / "yt0_0" / "00001.wav"
    assert sf.info(str(stereo)).channels == 2 and sf.info(str(stereo)).samplerate == 44_100
    flac, seconds = prepare_utterance(stereo, settings)
    wave, sr = decode_audio(flac)
    assert sr == SR and wave.ndim == 1 and len(wave) == round(seconds * SR)
    # 1 s of speech between 0.4 s silences: the silences go, but for the padding kept (and
    # webrtcvad's own hangover of a few frames)
    assert 1.0 <= seconds <= 1.0 + 2 * settings.padding_ms / 1000 + 0.15 < 1.8
    untrimmed, _ = prepare_utterance(stereo, AudioSettings(vad=False, min_seconds=0))
    assert len(decode_audio(untrimmed)[0]) == pytest.approx(1.8 * SR, abs=2)
    # pauses are cut down to twice the padding
    gap = np.concatenate([speechlike(0.6, 150, silence=0), np.zeros(SR, np.float32),
                          speechlike(0.6, 150, silence=0)])
    trimmed = trim_silence(gap, AudioSettings(padding_ms=100))
    assert 1.1 * SR <= len(trimmed) <= (1.2 + 2 * 0.1 + 0.15) * SR < len(gap)

    expected = {"corrupt": "unreadable audio", "corrupt_m4a": "unreadable audio",
                "empty": "empty audio",
                "silent": "no speech after VAD", "short": "too short after VAD"}
    for name, reason in expected.items():
        with pytest.raises(Skip) as e:
            prepare_utterance(bad[name], settings)
        assert e.value.reason == reason, name
    m4a = root / "vox2" / "dev" / "aac" / "id00012" / "ytv2" / "00001.m4a"
    wave, sr = read_audio(m4a)
    assert sr == SR and wave.ndim == 1 and len(wave) >= 1.7 * SR


def steady_noise(kind: str, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """White or pink (1/f power) Gaussian noise at -20 dBFS."""
    w = np.random.default_rng(seed).standard_normal(int(seconds * SR))
    if kind == "pink":
        f = np.fft.rfftfreq(len(w), 1 / SR)
        w = np.fft.irfft(np.fft.rfft(w) / np.sqrt(np.maximum(f, f[1])), len(w))
    return (0.1 * w / w.std()).astype(np.float32)


def test_vad_refuses_steady_noise_that_webrtcvad_takes_for_speech(tmp_path):
    settings = AudioSettings()
    for kind in ("white", "pink"):
        for seed in range(3):
            noise = steady_noise(kind, seed=seed)
            assert speech_frames(noise, settings).mean() > 0.9  # webrtcvad alone: all speech
            assert syllabic_modulation_db(noise, SR) < 0.5, (kind, seed)
            with pytest.raises(Skip) as e:
                trim_silence(noise, settings)
            assert e.value.reason == NO_SPEECH
            assert "webrtcvad marks 3.0 s as speech" in e.value.detail
            assert "at syllable rates (2-8 Hz)" in e.value.detail and "steady noise" in e.value.detail
            write_wav(tmp_path / "noise.wav", noise)
            with pytest.raises(Skip) as e:
                prepare_utterance(tmp_path / "noise.wav", settings)
            assert e.value.reason == NO_SPEECH and "steady noise" in e.value.detail
    # voices keep a wide margin: the tests' speech-like signals, the synthetic world's
    # voices, and those with white noise 5 dB below them
    for seed in range(4):
        wave = trim_silence(speechlike(1.0 + 0.5 * seed, 120 + 40 * seed, seed=seed), settings)
        assert syllabic_modulation_db(wave, SR) > 5 * settings.min_modulation_db
    from voice2face.synth.audio import render_utterance
    from voice2face.synth.world import PRESETS, sample_identities
    world = PRESETS["tiny"]
    rng = np.random.default_rng(0)
    for ident in sample_identities(world)[:8]:
        voice = render_utterance(ident, 0, world)
        assert syllabic_modulation_db(trim_silence(voice, settings), SR) > 3 * settings.min_modulation_db
        noisy = voice + voice.std() * 10 ** (-5 / 20) * rng.standard_normal(len(voice))
        assert syllabic_modulation_db(trim_silence(noisy.astype(np.float32), settings), SR) \
            > settings.min_modulation_db


def test_faces_are_square_rgb_or_skipped(tree):
    root, bad = tree
    grey = root / "VGG_ALL_FRONTAL" / "Abbie_Ames" / "00000000.jpg"
    assert Image.open(grey).mode == "L" and Image.open(grey).size == (40, 52)
    face = load_face(grey, 32)
    assert face.shape == (32, 32, 3) and face.dtype == np.uint8
    assert (face[..., 0] == face[..., 1]).all()  # grey stays grey
    for name in ("image", "henry_bad"):
        with pytest.raises(Skip, match="undecodable image"):
            load_face(bad[name], 32)


# --- the whole run -------------------------------------------------------------------------------

def test_identity_intersection_split_and_counts(prepared):
    out, report = prepared
    m = read_manifest(out)
    table = {i["name"]: (i["split"], i["gender"], i["nationality"]) for i in m["identities"]}
    assert table == {
        "Abbie Ames": ("val", "f", "UK"), "Björn Berg": ("val", "m", "Sweden"),
        "Céline Dion": ("test", "f", "Canada"), "Fiona O'Brien": ("train", "f", "Ireland"),
        "Renée Zellweger": ("train", "f", "USA"), "Tom D'Amico": ("train", "m", "Italy")}
    assert [i["index"] for i in m["identities"]] == list(range(6))
    assert [i["name"] for i in m["identities"]] == sorted(table, key=M.sort_key)
    assert m["kind"] == "voxceleb" and m["face_size"] == 32 and m["sample_rate"] == SR

    # Fiona: 6 VoxCeleb1 + 2 VoxCeleb2 usable utterances (4 bad ones skipped); Renée 4, Tom 4.
    # 2 of each training identity's planned utterances are held out as known; one that turns
    # out unusable leaves fewer.
    samples = report["samples"]
    assert samples["train"] + samples["known"] == 8 + 4 + 4 and 4 <= samples["known"] <= 6
    assert (samples["val"], samples["test"]) == (3 + 3, 3)
    assert report["gallery"] == {"train": 4 + 4 + 4, "val": 4 + 4, "test": 4}
    for section, counts in (("splits", report["samples"]), ("gallery", report["gallery"])):
        for split, n in counts.items():
            entry = m[section][split]
            assert entry["samples"] == n == sum(s["samples"] for s in entry["shards"])
            assert all(s["samples"] <= CONFIG.shard_size for s in entry["shards"])
    fiona = next(i["index"] for i in m["identities"] if i["name"] == "Fiona O'Brien")
    assert m["source"]["speakers"][fiona] == ["id10001", "id00012"]


def test_report_lists_every_skip_with_path_and_reason(prepared, tree):
    out, report = prepared
    root, bad = tree
    on_disk = json.loads((out / R.REPORT).read_text())
    assert on_disk["summary"] == report["summary"]
    got = {(Path(s["path"]).relative_to(root).as_posix(), s["reason"]) for s in on_disk["skipped"]}
    rel = {k: v.relative_to(root).as_posix() for k, v in bad.items()}
    faces = "VGG_ALL_FRONTAL"
    assert got == {
        (rel["corrupt"], "unreadable audio"),
        (rel["corrupt_m4a"], "unreadable audio"),
        (rel["empty"], "empty audio"),
        (rel["silent"], "no speech after VAD"),
        (rel["short"], "too short after VAD"),
        (rel["image"], "undecodable image"),
        (rel["henry_bad"], "undecodable image"),
        (f"{faces}/Henry_Hale", "identity with too few usable faces"),
        ("vox1/wav/id10005", "identity with voices but no faces"),
        (f"{faces}/Gary_Wells", "identity with faces but no voices"),
        (f"{faces}/Zoë_Quinn", "identity with faces but no voices"),
        ("vox1/wav/id10099", "audio folder not in the meta file"),
        ("vox2/dev/aac/id00013", "VoxCeleb2 speaker not among the VoxCeleb1 ∩ faces identities"),
    }
    assert sum(report["summary"].values()) == len(got)
    assert report["summary"]["undecodable image"] == 2
    text = R.format_summary(report)
    assert "undecodable image" in text and "prepare_report.json" in text


def test_shards_hold_what_the_format_says(prepared):
    out, _ = prepared
    m = read_manifest(out)
    names = {i["index"]: i["name"] for i in m["identities"]}
    contents = shard_contents(out)
    samples = [(name, key, s) for name, shard in contents.items() if not name.startswith("gallery")
               for key, s in shard.items()]
    keys = [k for _, k, _ in samples]
    assert len(keys) == len(set(keys)) and all("." not in k for k in keys)
    for name, key, s in samples:
        meta = json.loads(s["json"])
        assert name.startswith(meta["split"] + "-") and meta["name"] == names[meta["identity"]]
        assert meta["utterance"].split("/")[0] in ("vox1", "vox2")
        wave, sr = decode_audio(s["flac"])
        assert sr == SR and len(wave) >= CONFIG.audio.min_seconds * SR
        faces = [decode_image(s[f"face{i}.png"]) for i in range(2)]
        assert all(f.shape == (32, 32, 3) for f in faces)
        assert not np.array_equal(faces[0], faces[1])  # two different images of the speaker
    # training samples are shuffled across shards, not written identity after identity
    order = [json.loads(s["json"])["identity"] for e in m["splits"]["train"]["shards"]
             for s in contents[e["name"]].values()]
    assert order != sorted(order)
    # no temporary files or caches are left behind
    assert not list(out.rglob("*.tmp")) and not (out / R.STATE / "faces").exists()


def test_prepared_shards_load_in_the_datamodule(prepared):
    out, _ = prepared
    dm = VoiceFaceDataModule(out, batch_size=4, crop_seconds=0.5, shuffle_buffer=1)
    assert dm.num_train_identities == 3 and dm.face_size == 32
    batch = next(iter(dm.train_dataloader()))
    assert batch["mel"].shape[:2] == (4, 64) and batch["faces"].shape == (4, 2, 3, 32, 32)
    assert set(batch["label"].tolist()) <= {0, 1, 2}
    for split in ("val", "test"):
        batch = next(iter(dm.eval_dataloader(split)))
        assert batch["face"].shape[1:] == (3, 32, 32) and (batch["label"] == -1).all()
    gallery = next(iter(dm.gallery_dataloader("val")))
    assert gallery["face"].shape == (4, 3, 32, 32)


def test_resumes_after_an_interrupted_run(tree, prepared, tmp_path, monkeypatch):
    reference, _ = prepared
    out = tmp_path / "data"
    calls = {"n": 0}
    real = R.prepare_utterance

    def dies_on_the_tenth(path, settings):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt  # the user's ^C, mid-shard
        return real(path, settings)

    monkeypatch.setattr(R, "prepare_utterance", dies_on_the_tenth)
    with pytest.raises(KeyboardInterrupt):
        R.prepare(inputs(tree[0]), out, CONFIG, workers=0, log=lambda s: None)
    assert not (out / "manifest.json").exists()
    assert not list((out / "shards").glob("*.tmp"))  # the half-written shard is gone
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    assert finished  # some shards were complete before the interruption

    calls["n"] = -10**9  # the rerun is not interrupted
    R.prepare(inputs(tree[0]), out, CONFIG, workers=0, log=lambda s: None)
    for name, mtime in finished.items():  # kept, not rewritten
        assert (out / "shards" / name).stat().st_mtime_ns == mtime
    assert shard_contents(out) == shard_contents(reference)
    assert json.loads((out / R.REPORT).read_text())["summary"] == \
        json.loads((reference / R.REPORT).read_text())["summary"]
    m, ref = read_manifest(out), read_manifest(reference)
    assert (m["identities"], m["splits"], m["gallery"]) == \
        (ref["identities"], ref["splits"], ref["gallery"])

    # a deleted shard (and manifest) is written again, and only that one
    (out / "shards" / "train-000001.tar").unlink()
    (out / "manifest.json").unlink()
    calls["n"] = 0
    R.prepare(inputs(tree[0]), out, CONFIG, workers=0, log=lambda s: None)
    assert shard_contents(out) == shard_contents(reference)
    marker = json.loads(R.marker_path(out, "train-000001.tar").read_text())
    assert calls["n"] == marker["samples"] + len(marker["skipped"])  # its planned utterances


def test_rerun_with_other_settings_rewrites_and_drops_stale_shards(tree, tmp_path):
    out = tmp_path / "data"
    R.prepare(inputs(tree[0]), out, CONFIG, workers=0, log=lambda s: None)
    bigger = R.PrepareConfig(**{**CONFIG.__dict__, "shard_size": 100})
    R.prepare(inputs(tree[0]), out, bigger, workers=0, log=lambda s: None)
    m = read_manifest(out)
    listed = {s["name"] for section in ("splits", "gallery") for e in m[section].values()
              for s in e["shards"]}
    assert {p.name for p in (out / "shards").iterdir()} == listed
    assert all(e["samples"] == sum(s["samples"] for s in e["shards"]) for e in m["splits"].values())
    assert {p.name.removesuffix(".json") for p in (out / R.STATE / "shards").iterdir()} >= listed


def test_worker_pool_writes_the_same_shards(tree, prepared, tmp_path):
    out = tmp_path / "data"
    R.prepare(inputs(tree[0]), out, CONFIG, workers=2, log=lambda s: None)
    assert shard_contents(out) == shard_contents(prepared[0])


def test_split_file_and_vox1_only(tree, tmp_path):
    root, _ = tree
    split = tmp_path / "split.txt"
    split.write_text("Fiona O’Brien\tval\nid10002 test\nAbbie_Ames train\n")
    out = tmp_path / "data"
    report = R.prepare(inputs(root, vox2=False, split_file=split), out, CONFIG, workers=0,
                       log=lambda s: None)
    m = read_manifest(out)
    assert {i["name"]: i["split"] for i in m["identities"]} == {
        "Fiona O'Brien": "val", "Renée Zellweger": "test", "Abbie Ames": "train"}
    assert report["samples"] == {"train": 1, "known": 2, "val": 6, "test": 4}
    assert report["summary"]["identity not in the split file"] == 4  # Henry too
    assert "VoxCeleb2 speaker not among the VoxCeleb1 ∩ faces identities" not in report["summary"]


def test_cli_stops_at_once_on_missing_or_malformed_inputs(tree, tmp_path, capsys):
    root, _ = tree
    base = ["--vox1", str(root / "vox1"), "--faces", str(root / "VGG_ALL_FRONTAL"),
            "--out", str(tmp_path / "data"), "--workers", "0", "--no-progress"]
    cases = [
        (["--faces", str(tmp_path / "nofaces")], "face folder .*nofaces does not exist"),
        (["--vox1", str(tmp_path / "novox")], "VoxCeleb1 folder .*novox does not exist"),
        (["--vox1-meta", str(tmp_path / "none.csv")], "none.csv does not exist"),
        (["--vox1-meta", str(root / "vox2" / "vox2_meta.csv")], "vox2_meta.csv is not a VoxCeleb1"),
        (["--vox2", str(root / "vox2"), "--vggface2-meta", str(tmp_path / "x.csv")],
         "x.csv does not exist"),
        (["--face-size", "2"], "face size"),
        (["--out", str(root / "vox1" / "vox1_meta.csv")], "--out .*vox1_meta.csv is a file"),
        (["--out", str(root / "vox1" / "vox1_meta.csv" / "data")], "vox1_meta.csv is a file"),
        (["--faces", str(root / "vox1" / "vox1_meta.csv")], "vox1_meta.csv is a file; expected"),
    ]
    for extra, message in cases:
        argv = base + extra
        if extra[0] == "--vox1":  # replace, not add
            argv = extra + base[2:]
        assert R.main(argv) == 2
        assert __import__("re").search(message, capsys.readouterr().err), message
    assert not (tmp_path / "data").exists()  # nothing was written

    # the same command with good inputs runs and summarises
    assert R.main(base + ["--face-size", "32", "--shard-size", "4", "--min-seconds", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "identities: 6" in printed and "undecodable image" in printed
    # an output folder holding something else is refused
    other = tmp_path / "other"
    (other / "shards").mkdir(parents=True)
    assert R.main(base[:4] + ["--out", str(other), "--workers", "0"]) == 2
    assert "not written by prepare" in capsys.readouterr().err


def test_dry_run_writes_nothing(tree, tmp_path, capsys):
    root, _ = tree
    out = tmp_path / "data"
    assert R.main(["--vox1", str(root / "vox1"), "--faces", str(root / "VGG_ALL_FRONTAL"),
                   "--vox2", str(root / "vox2"), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "7 identities with voices and faces" in printed and not out.exists()


# --- the synthetic world in VoxCeleb's layout ----------------------------------------------------

def test_synthetic_world_in_voxceleb_layout_prepares_like_the_direct_shards(tmp_path):
    from voice2face.synth.layout import FACES_DIR, META, write_voxceleb_layout
    from voice2face.synth.generate import generate_world
    from voice2face.synth.world import preset

    config = preset("tiny", identities=12)
    direct = generate_world(tmp_path / "direct", config, workers=1, progress=False)
    counts = write_voxceleb_layout(tmp_path / "vox", config, workers=1, progress=False)
    assert counts["identities"] == 12 and (tmp_path / "vox" / META).is_file()
    assert all("_" in p.name and " " not in p.name for p in (tmp_path / "vox" / FACES_DIR).iterdir())

    settings = R.PrepareConfig(known=config.known, faces=FaceSettings(size=config.face_size),
                               faces_per_sample=config.faces_per_sample,
                               audio=AudioSettings(min_seconds=0.5))
    report = R.prepare(Inputs(vox1=(tmp_path / "vox",), faces=tmp_path / "vox" / FACES_DIR),
                       tmp_path / "prepared", settings, workers=0, log=lambda s: None)
    assert report["summary"] == {}
    prepared = read_manifest(tmp_path / "prepared")
    # the same identity table (names through underscores and back), splits and counts
    assert prepared["identities"] == direct["identities"]
    for section in ("splits", "gallery"):
        for split, entry in direct[section].items():
            assert prepared[section][split]["samples"] == entry["samples"], (section, split)
            assert len(prepared[section][split]["shards"]) == len(entry["shards"]), (section, split)
    # and batches of the same shapes and kinds
    batches = []
    for root in (tmp_path / "direct", tmp_path / "prepared"):
        dm = VoiceFaceDataModule(root, batch_size=4, crop_seconds=1.0, shuffle_buffer=1)
        train, test = next(iter(dm.train_dataloader())), next(iter(dm.eval_dataloader("test")))
        # evaluation utterances keep their own lengths: compare all but the time axis
        batches.append({**{f"train/{k}": (v.shape, v.dtype) for k, v in train.items()
                           if isinstance(v, torch.Tensor)},
                        **{f"test/{k}": (v.shape[:2], v.dtype) for k, v in test.items()
                           if isinstance(v, torch.Tensor)}})
        assert dm.num_train_identities == sum(i["split"] == "train" for i in direct["identities"])
    assert batches[0] == batches[1]


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tree, tmp_path, monkeypatch, capsys):
    root, _ = tree
    out = tmp_path / "data"
    calls = {"n": 0}
    real = R.prepare_utterance

    def dies_on_the_tenth(path, settings):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(path, settings)

    monkeypatch.setattr(R, "prepare_utterance", dies_on_the_tenth)
    argv = ["--vox1", str(root / "vox1"), "--faces", str(root / "VGG_ALL_FRONTAL"),
            "--out", str(out), "--workers", "0", "--no-progress", "--shard-size", "4",
            "--min-seconds", "0.5"]
    assert R.main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "interrupted" in line and f"kept in {out}" in line and "same command again" in line
    kept = list((out / "shards").glob("*.tar"))
    assert kept and not (out / "manifest.json").exists()
    calls["n"] = -10**9  # and the same command does continue
    assert R.main(argv) == 0 and (out / "manifest.json").is_file()
    assert "already written" in capsys.readouterr().out


def test_a_real_ctrl_c_with_worker_processes(tree, tmp_path, capsys):
    """SIGINT to the whole process group, as a terminal sends it, while worker processes
    write shards: one line, no traceback from any worker, and the rerun continues."""
    import os
    import signal
    import subprocess
    import sys
    import time
    root, _ = tree
    out = tmp_path / "data"
    argv = ["--vox1", str(root / "vox1"), "--faces", str(root / "VGG_ALL_FRONTAL"),
            "--out", str(out), "--workers", "2", "--no-progress", "--shard-size", "4",
            "--min-seconds", "0.5"]
    # each utterance slowed down (the forked workers inherit the patch), so that the run is
    # still busy when its first shard is finished
    script = ("import sys, time\n"
              "import voice2face.prepare.run as R\n"
              "real = R.prepare_utterance\n"
              "def slow(path, settings):\n"
              "    time.sleep(0.3)\n"
              "    return real(path, settings)\n"
              "R.prepare_utterance = slow\n"
              "sys.exit(R.main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not list((out / "shards").glob("*.tar")) and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "prepare finished before the signal could be sent"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    line = err.strip().splitlines()[-1]
    assert "interrupted" in line and f"kept in {out}" in line and "same command again" in line
    assert not (out / "manifest.json").exists()
    assert R.main([*argv[:7], "0", *argv[8:]]) == 0 and (out / "manifest.json").is_file()
    assert "already written" in capsys.readouterr().out
