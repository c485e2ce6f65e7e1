"""How much of a face's shared attributes the judge sees: the limit it puts on any generator.

    python benchmarks/judge_attributes.py --data data/synth-default [--judge CKPT]

In a synthetic world a voice reveals at most the shared attributes ``z = (gender, age,
size)`` of its speaker, so the best a generator can do is draw *a* face with the speaker's
``z``: someone else's face with the right attributes. This script measures what the judge
makes of such a face, on real images:

* **probe R²**: a ridge regression from the judge's embedding of a real face to ``z``,
  fitted on the training gallery, scored on the test gallery (per attribute);
* **attribute twins**: each test identity's probe is the real faces (mean judge embedding)
  of the *training* identity whose ``z`` is nearest to its own (in the world's ``sigma``
  units, same gender), and 1:2 matching is scored against the test identities' mean real
  faces, as evaluation scores generated faces: unstratified and same-gender. It is what a
  generator that knew ``z`` exactly and drew a perfect face of it would score through this
  judge (with ``o`` it would score less: the ceiling's noise comes on top).

It reads the hidden attributes from the world's generator, so it works on synthetic worlds
only; it measures the judge and trains nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import VoiceFaceDataModule  # noqa: E402
from voice2face.methods.base import data_info  # noqa: E402
from voice2face.methods.pretrained import load_judge  # noqa: E402
from voice2face.synth.audit import LinearProbe, load_world, r_squared  # noqa: E402
from voice2face.synth.ceiling import accuracy_from_distances  # noqa: E402


@torch.no_grad()
def gallery_embeddings(judge, dm, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Judge embeddings of every gallery image of ``split``, and their identity indices."""
    emb, ids = [], []
    for batch in dm.gallery_dataloader(split):
        emb.append(judge.embed(batch["face"]))
        ids.append(batch["identity"])
    return torch.cat(emb).numpy(), torch.cat(ids).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/synth-default")
    p.add_argument("--judge", default=None, help="default: DATA/pretrained/face.ckpt")
    a = p.parse_args()
    dm = VoiceFaceDataModule(a.data, num_workers=0)
    judge = load_judge(a.judge or Path(a.data) / "pretrained" / "face.ckpt", data_info(dm))
    _, config, identities = load_world(a.data)
    z = np.stack([i.shared for i in identities])
    sigma = np.asarray(config.voice_noise, float)

    emb = {s: gallery_embeddings(judge, dm, s) for s in ("train", "test")}
    probe = LinearProbe().fit(emb["train"][0], z[emb["train"][1]])
    r2 = r_squared(probe.predict(emb["test"][0]), z[emb["test"][1]])

    def means(e, ids):
        keys = np.unique(ids)
        m = np.stack([e[ids == k].mean(0) for k in keys])
        return keys, m / np.linalg.norm(m, axis=1, keepdims=True)

    train_ids, train_mean = means(*emb["train"])
    test_ids, test_mean = means(*emb["test"])
    genders = np.array([identities[i].gender for i in test_ids])
    d = (((z[test_ids][:, None] - z[train_ids][None]) / sigma) ** 2).sum(-1)
    d[genders[:, None] != np.array([identities[i].gender for i in train_ids])[None]] = np.inf
    twins = train_mean[d.argmin(1)]
    twin = accuracy_from_distances(-(twins @ test_mean.T), np.arange(len(test_ids)), genders)

    print(f"judge {a.judge or Path(a.data) / 'pretrained' / 'face.ckpt'} on {a.data}")
    print(f"probe R² of z from real test faces: gender {r2[0]:.3f}  age {r2[1]:.3f}  "
          f"size {r2[2]:.3f}")
    print(f"{'probe':44s} {'1:2':>6s} {'1:2 same gender':>16s}")
    print(f"{'attribute twin (nearest-z training identity)':44s} {twin['match_1to2']:6.3f} "
          f"{twin['match_1to2_gender']:16.3f}")


if __name__ == "__main__":
    main()
