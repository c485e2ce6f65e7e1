"""What single utterances of a synthetic world reveal, read out through the Bayes rule.

    python benchmarks/audit.py --data data/synth-default
    python benchmarks/audit.py --data data/synth-default --voice data/synth-default/pretrained/voice.ckpt

Prints the world's Bayes ceiling, the Bayes rule with the true observed vectors of the test
voices (this draw of their identity-level offsets), the audio-only oracle of
``voice2face synth --audit`` (explicit pitch, tract-length and perturbation measurements),
and with ``--voice`` a linear probe from the voice embedding of a ``voice`` or ``dimnet``
checkpoint: the 1:2 accuracy a method reading that embedding linearly can attain.
Each row: 1:2 accuracy unstratified and with same-gender imposters, R² per attribute.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import soundfile as sf
import torch

from voice2face.synth.audit import (_map, _measure_flac, audit_measurements, format_rows,
                                    load_world, read_split, readout_world)


def embed(checkpoint: str, flacs: list[bytes], batch: int = 32) -> np.ndarray:
    """Unit voice embeddings of whole utterances (what the GAN reads), one at a time per
    length group so that padding never matters."""
    from datamodules.features import AudioFeatures
    from voice2face.methods.pretrained import load_voice_embedder

    net = load_voice_embedder(checkpoint)
    features = AudioFeatures(n_mels=net.config["n_mels"])
    mels = [features(torch.from_numpy(sf.read(io.BytesIO(f), dtype="float32")[0]))["mel"]
            for f in flacs]
    out = []
    with torch.no_grad():
        for k in range(0, len(mels), batch):
            chunk = mels[k:k + batch]
            lengths = torch.tensor([m.shape[-1] for m in chunk])
            padded = torch.zeros(len(chunk), chunk[0].shape[0], int(lengths.max()))
            for j, m in enumerate(chunk):
                padded[j, :, :m.shape[-1]] = m
            out.append(net(padded, lengths).numpy())
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/synth-default")
    p.add_argument("--voice", action="append", default=[],
                   help="a voice/dimnet checkpoint whose embedding to probe (repeatable)")
    p.add_argument("--fit-per-identity", type=int, default=3,
                   help="training utterances per training identity to fit the readouts on")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-oracle", action="store_true", help="only the embedding probes")
    args = p.parse_args()

    manifest, config, identities = load_world(args.data)
    train = read_split(args.data, manifest, "train", args.fit_per_identity)
    test = read_split(args.data, manifest, "test", None)
    train_ids, test_ids = [i for i, _ in train], [i for i, _ in test]
    rows = {}
    if not args.no_oracle:
        start = time.perf_counter()
        measured = _map(_measure_flac, [f for _, f in train + test], args.workers)
        rows["audio-only oracle"] = audit_measurements(
            measured[:len(train)], train_ids, measured[len(train):], test_ids, identities, config)
        print(f"oracle: {len(measured)} utterances measured in {time.perf_counter() - start:.0f} s")
    for ckpt in args.voice:
        start = time.perf_counter()
        emb = embed(ckpt, [f for _, f in train + test])
        rows[f"probe: {ckpt.split('/')[-1]}"] = readout_world(
            emb[:len(train)], train_ids, emb[len(train):], test_ids, identities, config)
        print(f"{ckpt}: {len(emb)} utterances embedded in {time.perf_counter() - start:.0f} s")
    first = next(iter(rows.values()))
    print(f"world {args.data} (seed {config.seed}); readouts fitted on {first['utterances']['fit']} "
          f"training utterances, scored on {first['utterances']['test']} test utterances")
    print(format_rows(rows, first["ceiling"]))


if __name__ == "__main__":
    main()
