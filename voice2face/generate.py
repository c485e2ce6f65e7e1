"""``voice2face generate --ckpt CKPT AUDIO --out face.png``: a face from a recording.

The audio file is decoded with soundfile (WAV, FLAC, OGG, ...), mixed down to mono,
resampled to the 16 kHz the methods are trained at, and turned into the same normalised
log-mel features as the training data (``datamodules.features``); the whole recording is
one utterance. Any method that generates faces (``gan``, ``cgan``, ...) can be used; the
conditional GAN draws its noise from ``--seed``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16_000


class AudioError(ValueError):
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


def generate_face(method, wave: torch.Tensor, seed: int = 0,
                  proposal: torch.Tensor | None = None) -> torch.Tensor:
    """One face ``[3, S, S]`` in [-1, 1] from a 16 kHz waveform (and, for a method that
    needs one, a proposal face ``[3, S, S]``)."""
    from datamodules.features import AudioFeatures
    from voice2face.methods import Voices
    if method.needs_proposal and proposal is None:
        raise ValueError(f"{method.label} generates from a voice and a proposal face; "
                         f"give a proposal face")
    features = AudioFeatures(spectrogram=method.needs_spectrogram)(wave)
    mel, spec = features["mel"][None], features.get("spec")
    torch.manual_seed(seed)
    with torch.no_grad():
        voices = Voices(mel, torch.tensor([mel.shape[-1]]), None if spec is None else spec[None])
        return method.generate_faces(voices, None if proposal is None else proposal[None])[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice2face generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", help="audio file (WAV, FLAC, ...), any sample rate")
    parser.add_argument("--ckpt", required=True, help="checkpoint of a face-generating method")
    parser.add_argument("--out", default="face.png", help="PNG to write (default face.png)")
    parser.add_argument("--size", type=int, help="resize the face to SIZE pixels")
    parser.add_argument("--decoder", help="replace the method's face decoder with this checkpoint "
                        "(methods with a `decoder` part: regression)")
    parser.add_argument("--seed", type=int, default=0, help="noise of conditional methods")
    args = parser.parse_args(argv)

    from PIL import Image

    from datamodules.features import tensor_to_face
    from voice2face.methods import CheckpointError, generating_methods, load_method
    try:
        wave = load_audio(args.audio)
        method = load_method(args.ckpt, expect=generating_methods())
        if args.decoder:
            method.replace_part("decoder", args.decoder)
        method.check_ready()
    except (AudioError, CheckpointError) as e:
        print(f"voice2face generate: {e}", file=sys.stderr)
        return 2
    image = Image.fromarray(tensor_to_face(generate_face(method, wave, args.seed)))
    if args.size:
        image = image.resize((args.size, args.size), Image.BICUBIC)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    print(f"voice2face: wrote {out} ({image.size[0]}x{image.size[1]}) from {args.audio} "
          f"({len(wave) / SAMPLE_RATE:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
