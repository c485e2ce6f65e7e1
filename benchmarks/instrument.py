"""The instrument table of a synthetic world: what a voice reveals, seen through the judge.

    python benchmarks/instrument.py --data data/synth-default [--judge CKPT] [--voice CKPT]

Rows, each one face per test utterance scored against every single test gallery image as
``voice2face evaluate`` scores generated faces (``voice2face.evaluation.bounds``):

* **o-oracle**: the mean face of the speaker's observed vector o (the world's hidden one),
  the face a generator that knew o exactly would draw (``bounds.likelihood_faces``);
* **o-oracle, posterior mean**: the posterior-mean face of o instead, for comparison (it
  shrinks toward the mean and falls short of the ceiling even with exact read-outs);
* **voice-embedder oracle** (and its posterior-mean row): the same with o estimated from the
  pretrained voice embedder's utterance embedding by a ridge probe fitted on the training
  utterances, calibrated on the validation utterances (identities that neither the probe
  nor the embedder was fitted on: ``bounds.Calibration``), which also widens the posterior
  row's likelihood noise;
* **gender-only control**: the mean of the training faces of the speaker's gender;
* **real faces**: a held-out photo of the speaker (each test identity's gallery images in
  two halves, as evaluate's real-faces row);
* **chance** and the world's **ceiling** (the manifest's).

Columns: 1:2 matching, unstratified and same-gender, through the judge's embedding and in
attribute space (the judge's read-outs through the world's Bayes rule), and the read-outs'
agreement with the speakers' true attributes. Below the table: the read-outs' R² on the test
gallery and the voice probe's on the test utterances. Nothing is drawn at random (matching is
exhaustive, the data order fixed, the nets frozen), so the same inputs give the same table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import VoiceFaceDataModule  # noqa: E402
from voice2face.constants import default_judge, pretrained_dir  # noqa: E402
from voice2face.evaluation import bounds as B  # noqa: E402
from voice2face.evaluation.protocol import LOADER, halves  # noqa: E402
from voice2face.methods.base import data_info  # noqa: E402
from voice2face.methods.pretrained import load_judge, load_voice_embedder  # noqa: E402
from voice2face.synth.audit import ATTRIBUTES, LinearProbe, load_world, r_squared  # noqa: E402

# the voice probe's ridge: audit.readout's, which ``benchmarks/audit.py --voice`` reports
VOICE_RIDGE = 1e-2
COLUMNS = [  # (key, header)
    ("match_1to2", "1:2"), ("match_1to2_gender", "same-g"),
    ("attribute_match_1to2", "attr 1:2"), ("attribute_match_1to2_gender", "attr same-g"),
    ("attribute_gender_acc", "gender acc"), ("attribute_r2_age", "R² age"),
    ("attribute_r2_size", "R² size"),
]


def columns(batches, keys) -> dict[str, np.ndarray]:
    """The per-sample ``keys`` of every batch, concatenated."""
    out = {k: [] for k in keys}
    for batch in batches:
        for k in keys:
            out[k].append(batch[k])
    return {k: torch.cat(v).numpy() for k, v in out.items()}


@torch.no_grad()
def judge_pass(judge, dm, split: str) -> dict[str, np.ndarray]:
    """Judge embeddings of every gallery image of ``split`` with their labels."""
    return columns(({"emb": judge.embed(b["face"]), **b} for b in
                    dm.gallery_dataloader(split, **LOADER)),
                   ("emb", "identity", "gender", "index"))


@torch.no_grad()
def voice_pass(voice, dm, split: str) -> dict[str, np.ndarray]:
    """Voice embeddings of every utterance of ``split`` (whole utterances, unit length: what
    the GAN and the CAE read) with their labels."""
    return columns(({"emb": voice(b["mel"], b["mel_lengths"]), **b} for b in
                    dm.eval_dataloader(split, **LOADER)),
                   ("emb", "identity", "gender", "index"))


def instrument(data: Path, judge_path: Path, voice_path: Path, batch_size: int = 64,
               workers: int = 0) -> dict:
    """The table's rows and the read-outs' and voice probe's R²."""
    dm = VoiceFaceDataModule(data, eval_batch_size=batch_size, num_workers=workers)
    judge = load_judge(judge_path, data_info(dm))
    voice = load_voice_embedder(voice_path)
    _, config, identities = load_world(data)
    z = np.stack([i.shared for i in identities])
    o = np.array([i.voice.observed for i in identities])
    sigma = np.asarray(config.voice_noise, float)

    train, test = judge_pass(judge, dm, "train"), judge_pass(judge, dm, "test")
    prior_z, prior_emb = z[train["identity"]], train["emb"]
    readout = B.fit_readout(prior_emb, prior_z)

    utter = {s: voice_pass(voice, dm, s) for s in ("train", "val", "test")}
    probe = LinearProbe(VOICE_RIDGE).fit(utter["train"]["emb"], o[utter["train"]["identity"]])
    calibration = B.Calibration.fit(probe.predict(utter["val"]["emb"]),
                                    o[utter["val"]["identity"]])
    t = utter["test"]
    o_hat = probe.predict(t["emb"])
    o_voice = calibration(o_hat)

    gallery = (test["emb"], test["identity"], test["gender"])
    speaker = (t["identity"], t["gender"])
    probes = {
        "o-oracle": B.likelihood_faces(o[t["identity"]], prior_z, prior_emb),
        "o-oracle, posterior mean": B.posterior_faces(o[t["identity"]], prior_z, prior_emb,
                                                      sigma),
        "voice-embedder oracle": B.likelihood_faces(o_voice, prior_z, prior_emb),
        "voice-embedder oracle, post. mean": B.posterior_faces(o_voice, prior_z, prior_emb,
                                                               calibration.noise(sigma)),
        "gender-only control": B.gender_faces(t["gender"], train["gender"], prior_emb),
    }
    rows = {name: B.score_probes(p, *speaker, z[t["identity"]], *gallery, readout, sigma,
                                 probe_index=t["index"], gallery_index=test["index"])
            for name, p in probes.items()}
    half = halves(torch.as_tensor(test["identity"]), torch.as_tensor(test["index"])).numpy()
    rows["real faces (held-out photo)"] = B.score_probes(
        test["emb"][half], test["identity"][half], test["gender"][half],
        z[test["identity"][half]], test["emb"][~half], test["identity"][~half],
        test["gender"][~half], readout, sigma, probe_index=test["index"][half],
        gallery_index=test["index"][~half])
    share_male = float(t["gender"].mean())
    rows["chance"] = {"match_1to2": 0.5, "match_1to2_gender": 0.5, "attribute_match_1to2": 0.5,
                      "attribute_match_1to2_gender": 0.5,
                      "attribute_gender_acc": max(share_male, 1 - share_male),
                      "attribute_r2_age": 0.0, "attribute_r2_size": 0.0}
    ceiling = {k: float(v) for k, v in dm.manifest["ceilings"].items() if k.startswith("match_")}
    rows["ceiling (synthetic world)"] = {**ceiling, **{f"attribute_{k}": v
                                                       for k, v in ceiling.items()}}
    return {"rows": rows, "readout_r2": B.readout_r2(readout, test["emb"], z[test["identity"]]),
            "voice_r2": dict(zip(ATTRIBUTES, r_squared(o_hat, o[t["identity"]]).tolist())),
            "sigma": sigma.tolist(), "sigma_voice": calibration.noise(sigma).tolist(),
            "counts": {"test_utterances": len(t["identity"]), "test_gallery": len(gallery[1]),
                       "train_gallery": len(train["identity"]),
                       "probe_fit_utterances": len(utter["train"]["identity"])}}


def format_table(result: dict) -> str:
    """The rows as a text table, then the read-outs' and the voice probe's R²."""
    lines = [f"{'':34s}" + "".join(f"{h:>12s}" for _, h in COLUMNS)]
    for name, row in result["rows"].items():
        lines.append(f"{name:34s}" + "".join(f"{row[k]:12.3f}" if k in row else f"{'—':>12s}"
                                             for k, _ in COLUMNS))
    r2 = "  ".join(f"{k.rsplit('_', 1)[1]} {v:.3f}" for k, v in result["readout_r2"].items())
    voice = "  ".join(f"{k} {v:.3f}" for k, v in result["voice_r2"].items())
    lines += ["", f"read-outs' R² on single test gallery faces: {r2}",
              f"voice probe's R² of o on test utterances: {voice}; sigma "
              f"{np.round(result['sigma'], 3).tolist()} widened to "
              f"{np.round(result['sigma_voice'], 3).tolist()}"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/synth-default")
    p.add_argument("--judge", default=None, help="default: DATA/pretrained/face.ckpt")
    p.add_argument("--voice", default=None, help="default: DATA/pretrained/dimnet.ckpt")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    a = p.parse_args()
    data = Path(a.data)
    judge = Path(a.judge) if a.judge else default_judge(data)
    voice = Path(a.voice) if a.voice else pretrained_dir(data) / "dimnet.ckpt"
    result = instrument(data, judge, voice, a.batch_size, a.workers)
    print(f"judge {judge}, voice embedder {voice}, world {data}: {result['counts']}")
    print(format_table(result))


if __name__ == "__main__":
    main()
