"""``voice2face generate``: every audio format it reads, several recordings of one speaker
fused into one face through the method contract, ``--grid``, and bad input (one line naming
the file, exit 2, no traceback). Audio files are made here, in tmp, with soundfile and PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from PIL import Image

from helpers import speechlike, train_quick
from voice2face import cli
from voice2face.generate import FORMATS, faces_from_codes, load_speech, voice_codes
from voice2face.methods import load_method

SR = 16_000


# --- audio files of every kind --------------------------------------------------------------

def resampled(wave: np.ndarray, sr: int) -> np.ndarray:
    return AF.resample(torch.from_numpy(wave), SR, sr).numpy() if sr != SR else wave


def stereo(f0: float, sr: int, seconds: float = 1.6, seed: int = 0) -> np.ndarray:
    """[n, 2]: the voice in one channel, a quieter copy in the other (downmix keeps it)."""
    wave = resampled(speechlike(seconds, f0, seed=seed), sr)
    return np.stack([wave, 0.5 * wave], 1)


def write_av(path: Path, audio: np.ndarray, sr: int, codec: str = "aac",
             container: str | None = None) -> Path:
    """``audio`` [n, channels] encoded with PyAV (AAC in an MP4/M4A container)."""
    import av
    layout = "stereo" if audio.shape[1] == 2 else "mono"
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout)
        planar = np.ascontiguousarray(audio.T.astype(np.float32))
        for i in range(0, planar.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(planar[:, i:i + 1024], format="fltp", layout=layout)
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def mp3_writable() -> bool:
    return "MP3" in sf.available_formats()


# (file name, how to write it): every format at another rate and with two channels
FORMAT_WRITERS = {
    "voice.wav": lambda p: sf.write(p, stereo(140, 44_100), 44_100, subtype="PCM_16"),
    "voice.flac": lambda p: sf.write(p, stereo(150, 8_000), 8_000),
    "voice.ogg": lambda p: sf.write(p, stereo(160, 48_000), 48_000, format="OGG",
                                    subtype="VORBIS"),
    "voice.mp3": lambda p: sf.write(p, stereo(170, 22_050), 22_050, format="MP3",
                                    subtype="MPEG_LAYER_III"),
    "voice.m4a": lambda p: write_av(p, stereo(180, 44_100), 44_100, container="ipod"),
    "voice.mp4": lambda p: write_av(p, stereo(190, 32_000), 32_000, container="mp4"),
}


@pytest.mark.parametrize("name", sorted(FORMAT_WRITERS))
def test_every_format_decodes_to_the_speech_at_16k(name, tmp_path):
    if name.endswith(".mp3") and not mp3_writable():
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write MP3 "
                    f"(reading it needs libsndfile >= 1.1 too)")
    path = tmp_path / name
    FORMAT_WRITERS[name](str(path))
    speech = load_speech(path)
    assert speech.dtype == torch.float32 and speech.dim() == 1
    # 1.6 s of voice between 0.4 s silences: VAD keeps the voice and a little padding
    assert 1.4 < len(speech) / SR < 2.4, len(speech) / SR
    assert torch.isfinite(speech).all() and speech.abs().max() > 0.1


# --- a world and checkpoints ----------------------------------------------------------------

def quick(method: str, world: Path, runs: Path, *overrides: str) -> Path:
    return train_quick(method, world, runs, "trainer.max_steps=1", f"run.name={method}",
                       "trainer.val_check_interval=100", *overrides)


@pytest.fixture(scope="module")
def cgan(world, pretrained, runs) -> Path:
    # the speaker-recognition embedder: after the fixture's 6 steps it already tells these
    # clips apart, which fusion needs to show (the 6-step DIMNet of the cpu profile may not)
    return quick("cgan", world, runs, f"model.voice={pretrained / 'voice.ckpt'}")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Three recordings of one speaker, in three formats."""
    folder = tmp_path_factory.mktemp("clips")
    paths = [folder / "a.wav", folder / "b.flac", folder / "c.m4a"]
    sf.write(paths[0], speechlike(1.6, 140, seed=1), SR)
    sf.write(paths[1], stereo(145, 22_050, seed=2), 22_050)
    write_av(paths[2], stereo(150, 44_100, seed=3), 44_100, container="ipod")
    return paths


def generate(*args: str) -> int:
    return cli.main(["generate", *map(str, args)])


def face_of(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# --- fusion -------------------------------------------------------------------------------

def test_several_recordings_are_fused_into_one_face(cgan, clips, tmp_path, capsys):
    out = tmp_path / "fused.png"
    assert generate("--ckpt", cgan, *clips, "--out", out, "--seed", 5) == 0
    line = capsys.readouterr().out
    assert "3 files of one speaker, their voice codes fused" in line and str(out) in line

    # the same face by hand, through the contract: mean of the unit voice embeddings,
    # renormalised, rendered with the noise of --seed
    method = load_method(cgan)
    codes = voice_codes(method, [load_speech(c) for c in clips])
    assert codes.shape == (3, method.voice.config["dim"])
    assert torch.allclose(codes.norm(dim=-1), torch.ones(3), atol=1e-5)
    fused = method.fuse_codes(codes)
    mean = codes.mean(0, keepdim=True)
    assert torch.allclose(fused, mean / mean.norm(), atol=1e-6)
    expected = faces_from_codes(method, fused, seed=5)[0]
    from datamodules.features import tensor_to_face
    assert np.abs(face_of(out) - tensor_to_face(expected).astype(np.int16)).max() <= 1

    # one file is its own "fusion": the command renders its code as it is
    assert generate("--ckpt", cgan, clips[0], "--out", tmp_path / "0.png", "--seed", 5) == 0
    assert np.array_equal(face_of(tmp_path / "0.png"), tensor_to_face(faces_from_codes(
        method, method.fuse_codes(codes[:1]), seed=5)[0]))

    # the fused code is none of the single ones. Compared as codes, in float: whether a
    # generator trained for a few steps turns a small change of code into another 8-bit image
    # is luck of one processor's arithmetic (the rendering itself is checked above and below)
    assert (codes @ fused[0]).max() < 1 - 1e-6, codes @ fused[0]


def test_fused_codes_render_faces_unlike_the_single_ones(cgan):
    """A generator whose output certainly follows its input (freshly initialised from a seed,
    not a briefly trained one) renders the fusion of three orthogonal codes as a face unlike
    each of theirs, with the same noise of ``--seed``: fusion reaches the image."""
    method = load_method(cgan)
    dim = method.voice.config["dim"]
    torch.manual_seed(0)
    generator = method.face_generator  # the moving average where the profile keeps one
    for module in generator.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: the batch below sets the statistics
    # BatchNorm's statistics those of random unit codes: with a fresh net's unit variances
    # the signal would shrink layer by layer to nearly the same face for every code
    with torch.no_grad():
        generator.train()(torch.nn.functional.normalize(torch.randn(64, dim), dim=-1))
    generator.eval()
    codes = torch.eye(dim)[:3]
    fused = method.fuse_codes(codes)
    assert torch.allclose(fused[0, :3], torch.full((3,), 3 ** -0.5))
    faces = faces_from_codes(method, torch.cat([fused, codes]), seed=5)
    for single in faces[1:]:
        assert (faces[0] - single).abs().mean() > 0.01
    # and the noise of --seed is the same for every face: the same code, the same face
    again = faces_from_codes(method, torch.cat([codes[:1], codes[:1]]), seed=5)
    assert torch.equal(again[0], again[1])


def test_grid_puts_each_files_face_beside_the_fused_one(cgan, clips, tmp_path, capsys):
    grid, out = tmp_path / "grid.png", tmp_path / "face.png"
    assert generate("--ckpt", cgan, *clips, "--out", out, "--grid", grid, "--size", 32) == 0
    assert str(grid) in capsys.readouterr().out
    image = Image.open(grid).convert("RGB")
    assert image.size[1] >= 32 + 14  # titles above 32-pixel faces
    # four columns of faces (fused + 3 files), each at least 32 px wide with a 4 px gap
    assert image.size[0] >= 4 * 32 + 5 * 4
    # the first column is the fused face, the --out image
    pixels = np.asarray(image, dtype=np.int16)
    fused = face_of(out)
    found = [(y, x) for y in range(0, pixels.shape[0] - 31) for x in range(0, 40)
             if np.array_equal(pixels[y:y + 32, x:x + 32], fused)]
    assert found, "the fused face is not in the grid's first column"


@pytest.fixture(scope="module")
def cae(world, pretrained, runs) -> Path:
    return quick("cae", world, runs)


def test_the_cae_fuses_voices_onto_one_proposal(cae, clips, tmp_path, capsys):
    proposal = tmp_path / "p.png"
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(proposal)
    grid = tmp_path / "grid.png"
    assert generate("--ckpt", cae, *clips[:2], "--proposal", proposal, "--out",
                    tmp_path / "f.png", "--grid", grid) == 0
    assert f"proposal {proposal}" in capsys.readouterr().out
    assert Image.open(grid).size[0] >= 4 * 16  # proposal, fused, two files


# --- bad input: one line naming the file, exit 2 --------------------------------------------

def error_line(capsys, *args) -> str:
    assert generate(*args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("voice2face generate: ")
    return lines[0]


def test_bad_audio_files_are_named(cgan, clips, tmp_path, capsys):
    missing = tmp_path / "missing.wav"
    line = error_line(capsys, "--ckpt", cgan, clips[0], missing)
    assert line.endswith(f"audio file {missing} does not exist")
    line = error_line(capsys, "--ckpt", cgan, tmp_path)
    assert f"audio file {tmp_path} is a folder" in line
    for name in ("notes.wav", "notes.m4a", "notes.txt", "notes.mp3"):
        text = tmp_path / name
        text.write_text("not audio at all\n" * 20)
        line = error_line(capsys, "--ckpt", cgan, clips[0], text)
        assert f"cannot decode audio file {text}" in line and FORMATS in line, line
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    assert f"audio file {empty} holds no samples" in error_line(capsys, "--ckpt", cgan, empty)
    # an MP4 with no audio stream (a video, say)
    import av
    video = tmp_path / "video.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8),
                                               format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    line = error_line(capsys, "--ckpt", cgan, video)
    assert f"cannot decode audio file {video}: no audio stream" in line
    # too short: the line says how long it must be (no speech at all is test_evaluate's)
    short = tmp_path / "short.m4a"
    write_av(short, stereo(150, 44_100, seconds=0.3)[:, :1], 44_100, container="ipod")
    line = error_line(capsys, "--ckpt", cgan, clips[0], short)
    assert str(short) in line and "s of speech" in line and "need at least 1 s" in line


def test_checkpoints_of_methods_without_faces_or_of_another_kind(world, pretrained, runs, clips,
                                                                 tmp_path, capsys):
    for name in ("voice", "face", "decoder"):
        line = error_line(capsys, "--ckpt", pretrained / f"{name}.ckpt", clips[0])
        assert str(pretrained / f"{name}.ckpt") in line and "expected 'cae' or" in line, line
    dimnet = quick("dimnet", world, runs)
    line = error_line(capsys, "--ckpt", dimnet, clips[0])
    assert "a checkpoint of method 'dimnet', expected" in line
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    line = error_line(capsys, "--ckpt", other, clips[0])
    assert f"{other}: not a voice2face checkpoint" in line
    text = tmp_path / "text.ckpt"
    text.write_text("hello")
    assert f"{text}: not a readable PyTorch checkpoint" in error_line(capsys, "--ckpt", text,
                                                                      clips[0])
    missing = tmp_path / "none.ckpt"
    assert f"checkpoint {missing} does not exist" in error_line(capsys, "--ckpt", missing,
                                                                clips[0])


def test_grid_and_out_must_differ_and_be_files(cgan, clips, tmp_path, capsys):
    out = tmp_path / "face.png"
    line = error_line(capsys, "--ckpt", cgan, clips[0], "--out", out, "--grid", out)
    assert f"--grid {out} is also --out" in line
    line = error_line(capsys, "--ckpt", cgan, clips[0], "--grid", tmp_path)
    assert f"--grid {tmp_path} is a folder" in line
    assert not out.exists()


# --- output formats and paths, checked before any work ----------------------------------------

@pytest.fixture
def no_generation(monkeypatch):
    """A checkpoint that must not be loaded: the refusals come before any work."""
    import voice2face.methods as methods

    def loaded(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded")
    monkeypatch.setattr(methods, "load_method", loaded)


def test_the_extension_names_the_image_format(cgan, clips, tmp_path, capsys):
    from voice2face.generate import image_formats
    grid = tmp_path / "grid.webp" if ".webp" in image_formats() else tmp_path / "grid.jpeg"
    assert generate("--ckpt", cgan, clips[0], "--out", tmp_path / "face.jpg", "--grid", grid) == 0
    assert Image.open(tmp_path / "face.jpg").format == "JPEG"
    assert Image.open(grid).format == ("WEBP" if grid.suffix == ".webp" else "JPEG")
    assert generate("--ckpt", cgan, clips[0], "--out", tmp_path / "FACE.PNG") == 0
    assert Image.open(tmp_path / "FACE.PNG").format == "PNG"
    assert not list(tmp_path.glob("*.tmp"))


def test_unwritable_formats_and_paths_are_refused_before_any_work(cgan, clips, tmp_path, capsys,
                                                                  no_generation):
    for option, name in [("--out", "face.gif"), ("--out", "face.bmp"), ("--grid", "grid.tiff")]:
        path = tmp_path / name
        line = error_line(capsys, "--ckpt", cgan, clips[0], option, path)
        assert line.startswith(f"voice2face generate: {option} {path}: cannot write "
                               f"'{path.suffix}' images") and ".png, .jpg, .jpeg" in line, line
    line = error_line(capsys, "--ckpt", cgan, clips[0], "--out", tmp_path / "face")
    assert f"--out {tmp_path / 'face'}: no extension" in line
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for option in ("--out", "--grid"):
        path = a_file / "deeper" / "face.png"
        line = error_line(capsys, "--ckpt", cgan, clips[0], option, path)
        assert line.endswith(f"{option} {path}: {a_file} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_steady_noise_is_not_speech(cgan, tmp_path, capsys):
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.wav"
    sf.write(noise, 0.1 * rng.standard_normal(3 * SR), SR)
    line = error_line(capsys, "--ckpt", cgan, noise, "--out", tmp_path / "face.png")
    assert f"audio file {noise}: no speech found by voice activity detection" in line
    assert "webrtcvad marks 3.0 s as speech" in line and "steady noise, not a voice" in line
    assert not (tmp_path / "face.png").exists()


def test_the_default_proposal_must_come_from_the_checkpoints_data(world, cae, clips, tmp_path,
                                                                   capsys):
    import json
    import shutil
    # the folder the checkpoint was trained on, since replaced by another world
    moved = tmp_path / "world"
    shutil.copytree(world, moved, ignore=shutil.ignore_patterns("pretrained"))
    ckpt = torch.load(cae, map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["data"]["root"] = str(moved)
    ckpt["voice2face"]["data"]["root"] = str(moved)
    moved_ckpt = tmp_path / "cae.ckpt"
    torch.save(ckpt, moved_ckpt)
    out = tmp_path / "face.png"
    assert generate("--ckpt", moved_ckpt, clips[0], "--out", out) == 0  # the same data
    assert "proposal training gallery image" in capsys.readouterr().out
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["identities"][0]["name"] = "Fredrika Other"
    (moved / "manifest.json").write_text(json.dumps(manifest))
    out.unlink()
    line = error_line(capsys, "--ckpt", moved_ckpt, clips[0], "--out", out)
    assert "no --proposal given" in line and str(moved) in line and "other data" in line
    assert ckpt["hyper_parameters"]["data"]["fingerprint"] in line and "--proposal" in line
    assert not out.exists()


def test_a_corrupt_mp3_is_one_line_without_the_decoders_notes(cgan, tmp_path, capfd):
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + np.random.default_rng(0).bytes(20_000))
    assert generate("--ckpt", cgan, bad, "--out", tmp_path / "f.png") == 2
    err = capfd.readouterr().err  # the file descriptor too: libmpg123 writes there itself
    assert err.strip().splitlines() == [err.strip()], err
    assert f"cannot decode audio file {bad}: libsndfile cannot decode it as MP3" in err
    assert "does not exist" not in err and "Note:" not in err and "Traceback" not in err
