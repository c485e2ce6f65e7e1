"""Files per second per worker of `voice2face prepare`'s two per-file steps.

    python benchmarks/prepare.py [--files N] [--seconds S] [--image-size PX]
    python benchmarks/prepare.py --vox1 DIR --faces DIR [--files N]      # real files

"audio" is decode -> downmix -> resample to 16 kHz -> webrtcvad trimming -> FLAC, for WAV
(VoxCeleb1) and AAC in .m4a (VoxCeleb2); "images" is decode -> crop -> resize to 64 -> PNG.
Each step runs in this process on one torch thread, as in a prepare worker, so the rates
are per worker; a run over the whole dataset takes about files / (rate x workers) when
the disk keeps up. Without --vox1/--faces, files like VoxCeleb's are generated first:
16 kHz mono utterances of --seconds (VoxCeleb1 averages 8.2 s) and JPEG photos of
--image-size pixels.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from voice2face.prepare.audio import AudioSettings, prepare_utterance  # noqa: E402
from voice2face.prepare.faces import FACE_SUFFIXES, FaceSettings, prepare_face  # noqa: E402
from voice2face.constants import SAMPLE_RATE as SR  # noqa: E402
from voice2face.prepare.report import Skip  # noqa: E402


def voiced(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Speech-like audio: a pitch-varying harmonic tone in syllable bursts, with pauses."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    tone = sum(np.sin(k * phase) / k for k in range(1, 12))
    bursts = (np.sin(2 * np.pi * 3.5 * t) > -0.3) * (np.sin(2 * np.pi * 0.25 * t) > -0.8)
    x = tone * bursts + 0.01 * rng.standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def write_m4a(path: Path, wave: np.ndarray) -> None:
    import av

    with av.open(str(path), "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=SR, layout="mono")
        for i in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, i:i + 1024], format="fltp", layout="mono")
            frame.sample_rate = SR
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def generate(folder: Path, files: int, seconds: float, image_size: int) -> dict[str, list[Path]]:
    rng = np.random.default_rng(0)
    out = {"audio (wav)": [], "audio (m4a)": [], "images (jpg)": []}
    for i in range(files):
        wave = voiced(seconds * rng.uniform(0.6, 1.4), rng)
        wav, m4a, jpg = folder / f"{i:05d}.wav", folder / f"{i:05d}.m4a", folder / f"{i:05d}.jpg"
        sf.write(str(wav), wave, SR, subtype="PCM_16")
        write_m4a(m4a, wave)
        # a smooth photo-like image: JPEG of noise would be unrepresentatively slow to decode
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((image_size, image_size), Image.Resampling.BICUBIC).save(
            jpg, quality=90)
        out["audio (wav)"].append(wav)
        out["audio (m4a)"].append(m4a)
        out["images (jpg)"].append(jpg)
    return out


def real_files(vox1: Path | None, faces: Path | None, n: int) -> dict[str, list[Path]]:
    out = {}
    if vox1 is not None:
        wav = vox1 / "wav" if (vox1 / "wav").is_dir() else vox1
        out["audio (wav)"] = sorted(p for _, p in zip(range(n), wav.rglob("*.wav")))
    if faces is not None:
        out["images"] = sorted(p for _, p in zip(range(n * 10), faces.rglob("*"))
                               if p.suffix.lower() in FACE_SUFFIXES)[:n]
    return out


def rate(step, paths: list[Path]) -> tuple[float, int]:
    step(paths[0])  # first call: lazy imports and allocations are not throughput
    skipped, start = 0, time.perf_counter()
    for p in paths:
        try:
            step(p)
        except Skip:
            skipped += 1
    return len(paths) / (time.perf_counter() - start), skipped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=40, help="files per kind")
    p.add_argument("--seconds", type=float, default=8.2, help="mean generated utterance length")
    p.add_argument("--image-size", type=int, default=256, help="side of the generated photos")
    p.add_argument("--vox1", type=Path, help="time real VoxCeleb1 files instead")
    p.add_argument("--faces", type=Path, help="time real face images instead")
    args = p.parse_args()
    torch.set_num_threads(1)  # as in a prepare worker

    audio, faces = AudioSettings(), FaceSettings()
    steps = {"audio": lambda f: prepare_utterance(f, audio), "images": lambda f: prepare_face(f, faces)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.vox1 or args.faces:
            files = real_files(args.vox1, args.faces, args.files)
        else:
            print(f"generating {args.files} utterances of ~{args.seconds} s (WAV and M4A) and "
                  f"{args.files} {args.image_size}px JPEGs ...")
            files = generate(Path(tmp), args.files, args.seconds, args.image_size)
        for kind, paths in files.items():
            if not paths:
                print(f"{kind:<14} no files found")
                continue
            per_s, skipped = rate(steps[kind.split()[0]], paths)
            note = f", {skipped} skipped" if skipped else ""
            print(f"{kind:<14} {per_s:7.1f} files/s per worker ({len(paths)} files{note})")


if __name__ == "__main__":
    main()
