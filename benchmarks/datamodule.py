"""Can the input pipeline keep a GPU busy? Samples/s per DataLoader worker process, and the
workers each method's ``paper`` step needs at a stated GPU rate.

    python benchmarks/datamodule.py [--data DIR] [--gpu-rate 3000] [--samples 1500]

1. **Per-sample costs** (CPU time of one thread, in this process): FLAC decode, the 2 s
   crop's log-mel and complex STFT, the faces' PNG decode, the same log-mel on a whole batch
   of crops (torchaudio on this CPU: an upper bound of its cost on the accelerator), and the
   accelerator's flops and memory traffic for it at the stated GPU rate.
2. **Per worker**: one worker process feeding the training stream, for every distinct data
   setting of the methods' ``paper`` profiles (batch size, crop, STFT, audio or faces only),
   in samples per second of wall time and per CPU second of the worker (on a shared machine
   the first drops with the others' load; the second is what a worker with a core of its
   own delivers). "worker": features computed on the worker (``features="worker"``);
   "device": waveform crops shipped for ``datamodules.features.device_features`` to run on
   the accelerator (``features="device"``, where the DataModule has it); "decode-only": a
   fixed reference, the whole FLAC decoded and cropped and the faces decoded, nothing else.
3. **Workers per GPU**: ``ceil(gpu rate / per-worker CPU-second rate)`` for each method. The
   GPU rate is an assumption (``--gpu-rate``) until a method's step is measured on the
   accelerator.

Without --data: data/synth-default if it exists, else a 200-identity world of the default
preset (same clip lengths and face size) in a temporary folder.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from datamodules import VoiceFaceDataModule  # noqa: E402
from datamodules.features import AudioFeatures, face_to_tensor, random_crop  # noqa: E402
from datamodules.shards import decode_audio, decode_image, iter_tar  # noqa: E402
from voice2face.constants import SAMPLE_RATE  # noqa: E402

HAS_DEVICE_FEATURES = "features" in inspect.signature(VoiceFaceDataModule).parameters


def decode_only(raw, rng, crop: int):
    """FLAC decode, random crop and face decode: what any worker must do."""
    wave, _ = decode_audio(raw["flac"])
    wave = torch.from_numpy(np.ascontiguousarray(random_crop(wave, crop, rng)))
    faces = torch.stack([face_to_tensor(decode_image(raw[k]))
                         for k in sorted(raw) if k.startswith("face")])
    return {"key": raw["__key__"], "wave": wave, "face": faces[0], "faces": faces}


def timed(fn, repeats: int) -> float:
    """CPU seconds per call (one thread: unaffected by others' load), best of three rounds."""
    best = math.inf
    for _ in range(3):
        start = time.process_time()
        for _ in range(repeats):
            fn()
        best = min(best, (time.process_time() - start) / repeats)
    return best


def per_sample_costs(root: Path, crop_seconds: float, batch: int, gpu_rate: float) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    shard = root / "shards" / "train-000000.tar"
    raws = [r for _, r in zip(range(50), iter_tar(shard))]
    waves = [decode_audio(r["flac"])[0] for r in raws]
    crop = int(crop_seconds * SAMPLE_RATE)
    rng = np.random.default_rng(0)
    crops = [torch.from_numpy(np.ascontiguousarray(random_crop(w, crop, rng))) for w in waves]
    mel, spec = AudioFeatures(), AudioFeatures(spectrogram=True)
    n = len(raws)
    flac = timed(lambda: [decode_audio(r["flac"]) for r in raws], 1) / n
    try:  # decoding only the crop's window (after issue 23)
        from datamodules.voiceface import decode_crop
        flac_crop = timed(lambda: [decode_crop(r["flac"], crop, rng) for r in raws], 1) / n
    except ImportError:
        flac_crop = math.nan
    faces = timed(lambda: [face_to_tensor(decode_image(r[k])) for r in raws
                           for k in r if k.startswith("face")], 1) / n
    m = timed(lambda: [mel(c) for c in crops], 1) / n
    ms = timed(lambda: [spec(c) for c in crops], 1) / n
    stacked = torch.stack((crops * (batch // n + 1))[:batch])
    batched = timed(lambda: mel(stacked), 2) / batch
    batched_spec = timed(lambda: spec(stacked), 2) / batch
    seconds = np.mean([len(w) for w in waves]) / SAMPLE_RATE
    print(f"\nper-sample costs, one thread ({n} samples of {shard.name}, utterances "
          f"{seconds:.1f} s on average, crops {crop_seconds} s):")
    for name, t in (("FLAC decode (whole utterance)", flac),
                    ("FLAC decode (the crop's window only)", flac_crop),
                    ("face PNG decode (all faces)", faces),
                    ("log-mel of the crop, per sample", m),
                    ("log-mel + STFT of the crop, per sample", ms),
                    (f"log-mel, batch of {batch} crops, per sample", batched),
                    (f"log-mel + STFT, batch of {batch}, per sample", batched_spec)):
        print(f"  {name:<44} {1e3 * t:7.3f} ms")
    print(f"  features are {m / (flac + faces):.2f}x the decoding (log-mel), "
          f"{ms / (flac + faces):.2f}x (log-mel + STFT)")
    # on the accelerator: real FFTs (~2.5 N log2 N flops), the mel matmul, and the memory
    # traffic of the framed signal, the complex spectrum and its power, all fp32
    frames = 1 + (crop - 512) // 160
    flops = frames * (2.5 * 512 * 9 + 2 * 257 * 64 + 257 * 4)
    nbytes = 4 * (crop + frames * (512 + 2 * 257 * 2 + 257 + 64 * 2))
    print(f"  on the accelerator, per sample: {flops / 1e6:.1f} MFLOP and {nbytes / 1e6:.1f} MB "
          f"moved (log-mel); at {gpu_rate:.0f} samples/s, {flops * gpu_rate / 1e9:.0f} GFLOP/s "
          f"and {nbytes * gpu_rate / 1e9:.1f} GB/s (an H100: ~50 TFLOP/s fp32, ~3000 GB/s)")
    torch.set_num_threads(threads)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _loader(dm: VoiceFaceDataModule, workers: int, decode=None) -> DataLoader:
    """The training loader of ``dm`` with ``workers`` persistent processes; ``decode``: the same
    shards, shuffling and collation with another decoder."""
    ds = dm.train_dataset()
    if decode is not None:
        ds.decode = functools.partial(decode, crop=int(dm.crop_seconds * dm.manifest["sample_rate"]))
    return DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=True,
                      prefetch_factor=4)


def _take(loader: DataLoader, it, samples: int):
    """Batches of ``loader`` until ``samples`` were taken (epochs after epochs, on the same
    persistent workers); the iterator in hand and how many were taken."""
    n = 0
    while n < samples:
        for batch in it:
            n += len(batch["key"])
            if n >= samples:
                break
        else:
            it = iter(loader)
    return it, n


def per_worker_rate(dm: VoiceFaceDataModule, samples: int, decode=None) -> tuple[float, float]:
    """Samples per second of wall time and per CPU second of the one worker process, after
    its start-up and first batch. On a shared machine the wall rate drops with the load; the
    CPU rate is what a worker with a core of its own delivers."""
    dm.num_workers = 1
    loader = _loader(dm, 1, decode)
    it = iter(loader)
    next(it)
    pid = it._workers[0].pid
    start, cpu = time.perf_counter(), cpu_seconds(pid)
    it, n = _take(loader, it, samples)
    # the worker has prefetched a few batches more than were taken: count them as its work
    ahead = (it._send_idx - it._rcvd_idx) * dm.batch_size
    return n / (time.perf_counter() - start), (n + ahead) / (cpu_seconds(pid) - cpu)


def pipeline_rate(dm: VoiceFaceDataModule, workers: int, samples: int, decode=None) -> float:
    """Training samples per second of wall time that ``workers`` loader processes deliver
    together, after their start-up and first batches."""
    loader = _loader(dm, workers, decode)
    it = iter(loader)
    for _ in range(workers):  # every worker past its start-up
        next(it)
    start = time.perf_counter()
    _, n = _take(loader, it, samples)
    return n / (time.perf_counter() - start)


def settings_of_methods() -> dict[tuple, list[str]]:
    """The paper profile's data settings, and the methods that share each."""
    from voice2face.config import load_config
    from voice2face.methods import METHODS
    out: dict[tuple, list[str]] = {}
    for name in sorted(METHODS):
        cfg = load_config(name, ["profile=paper"])
        d = cfg.data
        audio = bool(d.audio and METHODS[name].reads_training_audio(cfg))
        key = (int(d.batch_size), float(d.crop_seconds), bool(d.spectrogram and audio), audio)
        out.setdefault(key, []).append(name)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/synth-default")
    p.add_argument("--gpu-rate", type=float, default=3000.0,
                   help="assumed training samples/s of one GPU's paper step (default: %(default)s)")
    p.add_argument("--samples", type=int, default=1500, help="samples timed per measurement")
    p.add_argument("--workers", type=int, nargs="*", default=[],
                   help="also the whole pipeline with this many loader workers together (the "
                        "GAN's paper setting), e.g. --workers 8 16")
    args = p.parse_args()
    root = Path(args.data)
    if not (root / "manifest.json").is_file():
        from voice2face.synth.cli import main as synth
        root = Path(tempfile.mkdtemp()) / "world"
        synth(["--preset", "default", "--identities", "200", "--out", str(root), "--quiet"])
    probe = VoiceFaceDataModule(root)
    train = probe.manifest["splits"]["train"]
    print(f"data {root}: {train['samples']} training samples in {len(train['shards'])} shards; "
          f"face size {probe.face_size}; {torch.get_num_threads()} torch threads in this process, "
          f"1 in each worker")
    per_sample_costs(root, 2.0, 128, args.gpu_rate)

    settings = settings_of_methods()
    modes = ["worker", "decode-only"] + (["device"] if HAS_DEVICE_FEATURES else [])
    print(f"\nsamples/s of ONE worker process ({args.samples} samples per measurement), "
          f"paper-profile data settings; per second of wall time / per CPU second of the worker "
          f"(the wall rate drops when the machine is shared):")
    print(f"  {'batch':>5} {'crop':>4} {'stft':>5} {'audio':>5}  "
          + "  ".join(f"{m:>15}" for m in modes) + "  methods")
    rates: dict[tuple, dict[str, tuple[float, float]]] = {}
    for key, methods in settings.items():
        batch, crop, stft, audio = key
        r = rates[key] = {}
        for mode in modes:
            kw = dict(batch_size=batch, crop_seconds=crop, spectrogram=stft, audio=audio,
                      shuffle_buffer=100)
            if mode == "device":
                kw["features"] = "device"
            dm = VoiceFaceDataModule(root, **kw)
            decode = decode_only if mode == "decode-only" and audio else None
            r[mode] = per_worker_rate(dm, args.samples, decode)
        print(f"  {batch:>5} {crop:>4} {str(stft):>5} {str(audio):>5}  "
              + "  ".join(f"{r[m][0]:>7.0f} / {r[m][1]:>5.0f}" for m in modes)
              + "  " + ", ".join(methods))

    print(f"\nworkers (each with a core) per GPU to feed the paper step at an ASSUMED "
          f"{args.gpu_rate:.0f} samples/s per GPU (--gpu-rate; not measured), "
          f"ceil(GPU rate / per-worker CPU-second rate):")
    shown = [m for m in modes if m != "decode-only"]
    print(f"  {'method':<13}" + "".join(f"{m:>9}" for m in shown))
    for key, methods in settings.items():
        for name in methods:
            print(f"  {name:<13}" + "".join(f"{math.ceil(args.gpu_rate / rates[key][m][1]):>9}"
                                            for m in shown))

    if args.workers:
        shards = len(train["shards"])
        print(f"\ntraining samples/s of N loader workers together, batch 128, 2 s crops, "
              f"features on the workers ({shards} training shards; a worker beyond them idles):")
        print(f"  {'workers':>7} {'full':>8} {'decode-only':>12}")
        for n in args.workers:
            dm = VoiceFaceDataModule(root, batch_size=128, crop_seconds=2.0, shuffle_buffer=100,
                                     num_workers=n)
            full = pipeline_rate(dm, n, args.samples * max(1, n // 2))
            raw = pipeline_rate(dm, n, args.samples * max(1, n // 2), decode_only)
            print(f"  {n:>7} {full:>8.0f} {raw:>12.0f}")


if __name__ == "__main__":
    main()
