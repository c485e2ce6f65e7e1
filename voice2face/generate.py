"""``voice2face generate --ckpt CKPT AUDIO --out face.png``: a face from a recording.

The audio file is decoded with soundfile (WAV, FLAC, OGG, ...), mixed down to mono,
resampled to the 16 kHz the methods are trained at, and turned into the same normalised
log-mel features as the training data (``datamodules.features``). Silences are trimmed with
the voice activity detector ``voice2face prepare`` uses, and what is left must be as long as
the shortest utterance prepare keeps (1 s): that is the whole utterance the method sees.
Any method that generates faces (``gan``, ``cgan``, ...) can be used; the conditional GAN
draws its noise from ``--seed``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from voice2face.errors import UserError, reports_errors

SAMPLE_RATE = 16_000


class AudioError(UserError, ValueError):
    """An audio file that cannot be used."""


def load_audio(path: str | Path) -> torch.Tensor:
    """Mono float waveform at 16 kHz of an audio file; ``AudioError`` names the file."""
    import soundfile as sf
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt or unknown data
        raise AudioError(f"cannot decode audio file {path}: {e} (expected WAV, FLAC, OGG or "
                         f"another format libsndfile reads)") from e
    if audio.size == 0:
        raise AudioError(f"audio file {path} holds no samples")
    wave = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=1)))
    if not torch.isfinite(wave).all():
        raise AudioError(f"audio file {path} holds NaN or infinite samples")
    if sr != SAMPLE_RATE:
        import torchaudio.functional as AF
        wave = AF.resample(wave, sr, SAMPLE_RATE)
    return wave


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
    except Skip:
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


def _int_in(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected {low}..{high}")
        return value
    return parse


def generate_face(method, wave: torch.Tensor, seed: int = 0,
                  proposal: torch.Tensor | None = None) -> torch.Tensor:
    """One face ``[3, S, S]`` in [-1, 1] from a 16 kHz waveform (and, for a method that
    needs one, a proposal face ``[3, S, S]``)."""
    from datamodules.features import AudioFeatures
    from voice2face.methods import Voices
    if method.needs_proposal and proposal is None:
        raise ValueError(f"{method.label} generates from a voice and a proposal face; "
                         f"give a proposal face")
    mel = AudioFeatures()(wave)["mel"][None]
    torch.manual_seed(seed)
    with torch.no_grad():
        return method.generate_faces(Voices(mel, torch.tensor([mel.shape[-1]])),
                                     None if proposal is None else proposal[None])[0]


@reports_errors("voice2face generate")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice2face generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", help="audio file (WAV, FLAC, ...), any sample rate")
    parser.add_argument("--ckpt", required=True, help="checkpoint of a face-generating method")
    parser.add_argument("--out", default="face.png", help="PNG to write (default face.png)")
    parser.add_argument("--size", type=_int_in(1, 4096), help="resize the face to SIZE pixels")
    parser.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=0,
                        help="noise of conditional methods")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; expected the PNG file to write "
                        f"(e.g. --out {out / 'face.png'})")

    from PIL import Image

    from datamodules.features import tensor_to_face
    from voice2face.methods import generating_methods, load_method
    wave = load_speech(args.audio)
    method = load_method(args.ckpt, expect=generating_methods())
    image = Image.fromarray(tensor_to_face(generate_face(method, wave, args.seed)))
    if args.size:
        image = image.resize((args.size, args.size), Image.BICUBIC)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    print(f"voice2face: wrote {out} ({image.size[0]}x{image.size[1]}) from {args.audio} "
          f"({len(wave) / SAMPLE_RATE:.1f} s of speech)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
