"""``voice2face generate --ckpt CKPT AUDIO... --out face.png``: a face from recordings.

Each audio file is decoded as ``voice2face prepare`` decodes VoxCeleb (``prepare.audio``):
WAV, FLAC, OGG and MP3 with soundfile (libsndfile >= 1.1 reads MP3), M4A/MP4/AAC and other
containers with PyAV; any sample rate and channel count, mixed down to mono and resampled to
the 16 kHz the methods are trained at, then turned into the same normalised log-mel features
as the training data (``datamodules.features``). Silences are trimmed with the voice
activity detector ``voice2face prepare`` uses (which refuses steady noise: what it keeps
must rise and fall in loudness at syllable rates), and what is left must be as long as the
shortest utterance prepare keeps (1 s): that is the whole utterance the method sees.
Any method that generates faces (``gan``, ``cgan``, ``cae``, ``regression``, ...) can be
used; the conditional GAN draws its noise from ``--seed`` (the same noise for every face of
one command, so faces differ only by their voices).

Several files of one speaker are fused into one face: each file is encoded on its own
(``encode_voices``), the codes are fused (``fuse_codes``: the mean of the unit voice
embeddings, or of the regression's predicted features, renormalised) and the fused code is
rendered (``faces_from_codes``). ``--grid PATH`` also writes the face of each file beside
the fused one, each column titled. Both are written in the format their extension names
(``.png``, ``.jpg``/``.jpeg``, ``.webp`` where Pillow writes it); another extension, a
folder, or a path under a file is refused before anything is loaded.

A method that morphs a proposal face toward the voice (``needs_proposal``, the CAE) takes it
from ``--proposal face.png`` (any size: centre-cropped to a square and resized to the
method's face size), or, without one, from the gallery of training faces of the data the
checkpoint was trained on: the image at a position drawn from ``--seed`` (so the same seed
gives the same proposal; the output line names it). That folder must still hold the data
the checkpoint was trained on (its identity table's fingerprint), else ``--proposal`` is
needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from voice2face.constants import SAMPLE_RATE
from voice2face.errors import UserError, check_output_path, int_in, reports_errors

FORMATS = "WAV, FLAC, OGG, MP3, M4A/MP4/AAC or another format FFmpeg reads"


class AudioError(UserError, ValueError):
    """An audio file that cannot be used."""


def load_audio(path: str | Path) -> torch.Tensor:
    """Mono float waveform at 16 kHz of an audio file, decoded as ``voice2face prepare``
    decodes (``prepare.audio.read_audio``); ``AudioError`` names the file."""
    from voice2face.prepare.audio import read_audio, resample
    from voice2face.prepare.report import EMPTY_AUDIO, Skip
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"audio file {path} is a folder; expected an audio file ({FORMATS})")
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    try:
        wave, sr = read_audio(path)
    except Skip as e:
        if e.reason == EMPTY_AUDIO:
            raise AudioError(f"audio file {path} holds no samples ({e.detail})") from None
        raise AudioError(f"cannot decode audio file {path}: {e.detail or e.reason} (expected "
                         f"{FORMATS})") from None
    return torch.from_numpy(np.ascontiguousarray(resample(wave, sr, SAMPLE_RATE)))


def load_speech(path: str | Path) -> torch.Tensor:
    """The speech of an audio file at 16 kHz, its silences trimmed as ``voice2face prepare``
    trims the training data; ``AudioError`` when it holds no speech or too little."""
    from voice2face.prepare.audio import AudioSettings, trim_silence
    from voice2face.prepare.report import Skip
    wave = load_audio(path)
    settings = AudioSettings()
    total = len(wave) / SAMPLE_RATE
    try:
        speech = trim_silence(wave.numpy(), settings)
    except Skip as e:
        if e.detail:  # webrtcvad found "speech" that is steady noise
            raise AudioError(f"audio file {path}: no speech found by voice activity "
                             f"detection: {e.detail}; expected a recording of a voice") from None
        raise AudioError(f"audio file {path}: no speech found by voice activity detection "
                         f"(webrtcvad, aggressiveness {settings.aggressiveness}) in its "
                         f"{total:.1f} s; expected a recording of a voice with at least "
                         f"{settings.min_seconds:g} s of speech") from None
    seconds = len(speech) / SAMPLE_RATE
    if seconds < settings.min_seconds:
        raise AudioError(f"audio file {path}: {seconds:.2f} s of speech ({total:.2f} s with "
                         f"silences); the methods need at least {settings.min_seconds:g} s, the "
                         f"shortest utterance they are trained and evaluated on")
    return torch.from_numpy(np.ascontiguousarray(speech))


class ImageError(UserError):
    """An image file that cannot be used as a proposal face."""


def load_face_image(path: str | Path, size: int) -> torch.Tensor:
    """A face ``[3, size, size]`` in [-1, 1] from an image file: centre-cropped to a square,
    resized (bicubic) when its side differs; ``ImageError`` names the file."""
    from PIL import Image, UnidentifiedImageError

    from datamodules.features import face_to_tensor
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"proposal image {path} is a folder; expected an image file")
    if not path.is_file():
        raise ImageError(f"proposal image {path} does not exist")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"cannot read proposal image {path}: {e} (expected a PNG, JPEG or "
                         f"another format Pillow reads)") from e
    w, h = im.size
    side = min(w, h)
    if w != h:
        im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side,
                      (h - side) // 2 + side))
    if side != size:
        im = im.resize((size, size), Image.BICUBIC)
    return face_to_tensor(np.asarray(im))


def default_proposal(data_root: str | Path, seed: int = 0,
                     fingerprint: str | None = None) -> tuple[torch.Tensor, str]:
    """A proposal face from the training gallery of ``data_root``: the image at a position
    drawn from ``seed``; with a description of it for the output line. With
    ``fingerprint`` (the checkpoint's data), an ``ImageError`` unless ``data_root`` still
    holds that data."""
    import random

    from datamodules import VoiceFaceDataModule
    from voice2face.methods.base import data_info
    dm = VoiceFaceDataModule(data_root, audio=False)
    found = data_info(dm)["fingerprint"]
    if fingerprint is not None and found != fingerprint:
        raise ImageError(f"no --proposal given, and {data_root}, where the checkpoint was "
                         f"trained, now holds other data (identity table {found}; the "
                         f"checkpoint's is {fingerprint}): its training gallery is not the "
                         f"one the method learnt from; give a face with --proposal")
    gallery = dm.eval_dataset("train", gallery=True)
    i = random.Random(seed).randrange(len(gallery))
    sample = gallery[i]
    name = {x["index"]: x["name"] for x in dm.identities}.get(sample["identity"], "?")
    return sample["face"], f"training gallery image {i} of {data_root} ({name}, {sample['key']})"


def voice_codes(method, waves: list[torch.Tensor]) -> torch.Tensor:
    """The method's codes ``[N, D]`` of N 16 kHz waveforms, one utterance each
    (``encode_voices``)."""
    from datamodules.features import AudioFeatures
    from voice2face.methods import Voices
    extract = AudioFeatures(spectrogram=method.needs_spectrogram)
    codes = []
    with torch.no_grad():
        for wave in waves:
            features = extract(wave)
            mel, spec = features["mel"][None], features.get("spec")
            voices = Voices(mel, torch.tensor([mel.shape[-1]]),
                            None if spec is None else spec[None])
            codes.append(method.encode_voices(voices))
    return torch.cat(codes)


def faces_from_codes(method, codes: torch.Tensor, seed: int = 0,
                     proposal: torch.Tensor | None = None) -> torch.Tensor:
    """Faces ``[N, 3, S, S]`` in [-1, 1] from codes ``[N, D]``, each drawn with the noise of
    ``seed`` (the same for every face) and, for a method that needs one, the proposal face
    ``[3, S, S]``."""
    if method.needs_proposal and proposal is None:
        raise ValueError(f"{method.label} generates from a voice and a proposal face; "
                         f"give a proposal face")
    faces = []
    with torch.no_grad():
        for code in codes:
            torch.manual_seed(seed)
            faces.append(method.faces_from_codes(code[None], None if proposal is None
                                                 else proposal[None])[0])
    return torch.stack(faces)


# image formats by extension (Pillow's names); WEBP where this Pillow was built with it
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def image_formats() -> dict[str, str]:
    from PIL import features
    return {ext: f for ext, f in IMAGE_FORMATS.items() if f != "WEBP" or features.check("webp")}


def check_image_path(option: str, path: Path) -> str:
    """The Pillow format to write ``path`` in, from its extension; a ``UserError`` naming
    the extension and those it can write, or a path it cannot write."""
    check_output_path(option, path)
    formats = image_formats()
    ext = path.suffix.lower()
    if ext not in formats:
        what = f"cannot write {path.suffix!r} images" if path.suffix else "no extension"
        raise UserError(f"{option} {path}: {what}; the extension names the format, one of "
                        f"{', '.join(formats)}")
    return formats[ext]


def save_image(image, path: Path, format: str) -> None:
    """``image`` to ``path`` in ``format``, atomically (``atomic.write_bytes``): an
    interrupted write or a full disk leaves no half image."""
    import io

    from voice2face.atomic import write_bytes
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"quality": 95} if format in ("JPEG", "WEBP") else {}))
    write_bytes(path, buffer.getbuffer())


@reports_errors("voice2face generate")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice2face generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="+", help="audio files of one speaker (WAV, FLAC, OGG, "
                        "MP3, M4A, ...), any sample rate and channels; several are fused into "
                        "one face")
    parser.add_argument("--ckpt", required=True, help="checkpoint of a face-generating method")
    extensions = ", ".join(image_formats())
    parser.add_argument("--out", default="face.png", help="image to write, in the format its "
                        f"extension names ({extensions}; default face.png)")
    parser.add_argument("--grid", metavar="IMAGE", help="also write the face of each audio file "
                        f"beside the fused one, titled, to this image ({extensions})")
    parser.add_argument("--size", type=int_in(1, 4096), help="resize the face to SIZE pixels")
    parser.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0,
                        help="noise of conditional methods")
    parser.add_argument("--proposal", metavar="IMAGE",
                        help="the face to morph toward the voice, for methods that take one "
                             "(cae); default: one from the training gallery, drawn by --seed")
    parser.add_argument("--decoder", help="replace the method's face decoder with this checkpoint "
                        "(methods with a `decoder` part: regression)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out_format = check_image_path("--out", out)
    grid_path = Path(args.grid) if args.grid else None
    if grid_path is not None:
        grid_format = check_image_path("--grid", grid_path)
        if grid_path.resolve() == out.resolve():
            raise UserError(f"--grid {grid_path} is also --out; give the grid a file of its own")

    from PIL import Image

    from datamodules import DataFormatError
    from datamodules.features import tensor_to_face
    from voice2face.grid import titled_row
    from voice2face.methods import generating_methods, load_method
    method = load_method(args.ckpt, expect=generating_methods())
    if args.decoder:
        method.replace_part("decoder", args.decoder)
    method.check_ready()
    waves = [load_speech(a) for a in args.audio]
    proposal, where = None, ""
    if method.needs_proposal:
        size = method.data_info["face_size"]
        if args.proposal:
            proposal, where = load_face_image(args.proposal, size), args.proposal
        else:
            root = method.data_info["root"]
            try:
                proposal, where = default_proposal(root, args.seed,
                                                   method.data_info.get("fingerprint"))
            except DataFormatError as e:
                raise ImageError(f"no --proposal given and no training gallery to take "
                                 f"one from ({e}); give a face with --proposal") from e
    elif args.proposal:
        raise ImageError(f"{method.label} generates from the voice alone; it takes no "
                         f"--proposal")

    codes = voice_codes(method, waves)
    fused = faces_from_codes(method, method.fuse_codes(codes), args.seed, proposal)[0]

    def image_of(face: torch.Tensor) -> Image.Image:
        image = Image.fromarray(tensor_to_face(face))
        return image.resize((args.size, args.size), Image.BICUBIC) if args.size else image

    image = image_of(fused)
    save_image(image, out, out_format)
    speech = " + ".join(f"{len(w) / SAMPLE_RATE:.1f}" for w in waves)
    source = (args.audio[0] if len(waves) == 1
              else f"{len(waves)} files of one speaker, their voice codes fused")
    print(f"voice2face: wrote {out} ({image.size[0]}x{image.size[1]}) from {source} "
          f"({speech} s of speech)" + (f", proposal {where}" if where else ""))
    if grid_path is not None:
        singles = faces_from_codes(method, codes, args.seed, proposal) if len(waves) > 1 else fused[None]
        columns = [fused, *singles]
        titles = [f"fused ({len(waves)} files)", *(Path(a).name for a in args.audio)]
        if proposal is not None:
            columns, titles = [proposal, *columns], ["proposal", *titles]
        save_image(titled_row([image_of(c) for c in columns], titles), grid_path, grid_format)
        print(f"voice2face: wrote {grid_path}: the fused face, then the face of each file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
