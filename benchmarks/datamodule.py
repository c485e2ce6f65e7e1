"""Training throughput of VoiceFaceDataModule against decode-only reading of the same shards.

    python benchmarks/datamodule.py [--data DIR] [--batches N] [--batch-size B]

"full" is what a method receives: FLAC decode, random crop, log-mel, face decode and flip,
collation. "decode-only" reads the same shards with the same loader and only decodes FLAC
and images, so the gap is the cost of features and batching. Without --data, a synthetic
world is generated into a temporary folder (default preset if data/synth-default is absent).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from datamodules import VoiceFaceDataModule  # noqa: E402
from datamodules.shards import decode_audio, decode_image  # noqa: E402


def decode_only(raw, rng):
    wave, _ = decode_audio(raw["flac"])
    faces = [torch.from_numpy(decode_image(raw[k]).copy()) for k in raw if k.startswith("face")]
    return {"key": raw["__key__"], "face": faces[0], "faces": torch.stack(faces),
            "samples": wave.size}


def rate(dm: VoiceFaceDataModule, workers: int, batches: int, decode=None) -> float:
    dm.num_workers = workers
    ds = dm.train_dataset()
    if decode is not None:
        ds.decode = decode
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    it = iter(loader)
    next(it)  # worker start-up and the first shuffle buffer fill are not throughput
    start, n = time.perf_counter(), 0
    for _, batch in zip(range(batches), it):
        n += len(batch["key"])
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/synth-default")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crop-seconds", type=float, default=2.0)
    args = p.parse_args()
    root = Path(args.data)
    if not (root / "manifest.json").is_file():
        from voice2face.synth.cli import main as synth
        root = Path(tempfile.mkdtemp()) / "world"
        synth(["--preset", "default", "--out", str(root)])
    dm = VoiceFaceDataModule(root, batch_size=args.batch_size, crop_seconds=args.crop_seconds,
                             shuffle_buffer=100)
    print(f"data {root} ({dm.manifest['splits']['train']['samples']} training samples), "
          f"batch {args.batch_size}, crop {args.crop_seconds} s, {args.batches} batches, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'workers':>7}  {'full samples/s':>14}  {'decode-only samples/s':>21}")
    for workers in (0, 1, 2):
        full = rate(dm, workers, args.batches)
        raw = rate(dm, workers, args.batches, decode=decode_only)
        print(f"{workers:>7}  {full:>14.0f}  {raw:>21.0f}")


if __name__ == "__main__":
    main()
