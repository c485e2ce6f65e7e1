"""A minimal dataset in the shard format, for tests of the readers themselves.

Audio is a sine at an identity-specific pitch plus noise, faces are flat colour fields:
enough to check I/O, batching and splitting without the synthetic world generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.shards import (ShardWriter, encode_flac, encode_png, make_gallery_item,
                                make_sample, write_manifest)

SPLIT_OF_LETTER = {**{c: "val" for c in "AB"}, **{c: "test" for c in "CDE"}}


def fake_identities(n_train=6, n_val=3, n_test=4):
    names = ([f"Fred{i}" for i in range(n_train)] + [f"Anna{i}" for i in range(n_val)]
             + [f"Carl{i}" for i in range(n_test)])
    return [{"index": i, "name": n, "gender": "mf"[i % 2], "nationality": "Nowhere",
             "split": SPLIT_OF_LETTER.get(n[0], "train")} for i, n in enumerate(names)]


def write_fake_dataset(root: Path, utterances: int = 4, faces: int = 3, known: int = 1,
                       seconds: float = 0.6, face_size: int = 16, per_shard: int = 5,
                       seed: int = 0, identities=None) -> dict:
    rng = np.random.default_rng(seed)
    root = Path(root)
    identities = identities or fake_identities()
    sr = 16_000
    images = {ident["index"]: [encode_png(np.full((face_size, face_size, 3),
                                                  rng.integers(0, 256, 3), np.uint8))
                               for _ in range(faces)] for ident in identities}
    splits, gallery = {}, {}

    def sample_iter(split):
        for ident in identities:
            home = "train" if split in ("train", "known") else split
            if ident["split"] != home:
                continue
            n = known if split == "known" else utterances
            for u in range(n):
                t = np.arange(int(seconds * sr)) / sr
                audio = 0.3 * np.sin(2 * np.pi * (100 + 10 * ident["index"]) * t)
                audio += 0.01 * rng.standard_normal(t.size)
                meta = {"identity": ident["index"], "name": ident["name"],
                        "gender": ident["gender"], "split": split, "utterance": f"{split}{u}"}
                picks = rng.choice(faces, size=2, replace=False)
                yield make_sample(f"id{ident['index']:05d}-{split}-u{u:03d}",
                                  encode_flac(audio.astype(np.float32)),
                                  [images[ident["index"]][p] for p in picks], meta)

    for split in ("train", "known", "val", "test"):
        with ShardWriter(root / "shards", split, maxcount=per_shard) as w:
            for s in sample_iter(split):
                w.write(s)
        splits[split] = {"shards": w.entries, "samples": sum(e["samples"] for e in w.entries)}
    for split in ("train", "val", "test"):
        with ShardWriter(root / "shards", f"gallery-{split}", maxcount=per_shard) as w:
            for ident in identities:
                if ident["split"] != split:
                    continue
                for f, png in enumerate(images[ident["index"]]):
                    meta = {"identity": ident["index"], "name": ident["name"],
                            "gender": ident["gender"], "split": split, "face": str(f)}
                    w.write(make_gallery_item(f"id{ident['index']:05d}-f{f:03d}", png, meta))
        gallery[split] = {"shards": w.entries, "samples": sum(e["samples"] for e in w.entries)}
    manifest = {"kind": "fake", "sample_rate": sr, "face_size": face_size, "faces_per_sample": 2,
                "identities": identities, "splits": splits, "gallery": gallery, "source": {}}
    write_manifest(root, manifest)
    return manifest
