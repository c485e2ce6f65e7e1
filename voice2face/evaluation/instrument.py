"""The instrument table of a synthetic world (issue 26): what a voice reveals, seen through the
judge, as the bounds and controls that ``voice2face results`` and ``benchmarks/instrument.py``
print.

Rows, each one face per test utterance scored against every single test gallery image as
``voice2face evaluate`` scores generated faces (the probes and both instruments:
``voice2face.evaluation.bounds``):

* **o-oracle** (``o_oracle``): the mean face of the speaker's observed vector o (the world's
  hidden one), the face a generator that knew o exactly would draw (``likelihood_faces``);
* **o-oracle, posterior mean** (``o_oracle_posterior``): the posterior-mean face of o
  instead, for comparison (it shrinks toward the mean and falls short of the ceiling even
  with exact read-outs);
* **voice-embedder oracle** (``voice_oracle``, and ``voice_oracle_posterior``): the same
  with o estimated from the pretrained voice embedder's utterance embedding by a ridge probe
  fitted on the training utterances, calibrated on the validation utterances (identities
  that neither the probe nor the embedder was fitted on: ``Calibration``), which also widens
  the posterior row's likelihood noise. A generator that reads this embedder sees no more of
  the voice than the embedding holds, so this is the bound it can reach through the judge;
* **posterior samples** (``o_oracle_sample``, ``voice_oracle_sample``): one real training
  face drawn from p(face | o) per utterance, with o the world's or the voice embedder's
  estimate (``posterior_sample_faces``, seeded by ``SAMPLE_SEED``), what a generator that
  sampled real-looking faces, private traits and all, would show;
* **private traits** (``o_oracle_traits``, ``voice_oracle_traits``): the o-oracle's and
  the voice-embedder oracle's faces, each with the private traits of a random training face
  (``with_private_traits``, the same draws for both), what a generator that sets the
  attributes from the voice and draws the rest at random would show;
* **gender-only control** (``gender_only``): the mean of the training faces of the speaker's
  gender;
* **real faces** (``real_faces``): a held-out photo of the speaker (each test identity's
  gallery images in two halves, evaluate's real-faces row: the same computation, so the
  same judge-embedding numbers);
* **chance** and the world's **ceiling** (the manifest's).

Columns (``COLUMNS``): 1:2 matching, unstratified and same-gender, through the judge's
embedding and in attribute space (the judge's read-outs through the world's Bayes rule), and
the read-outs' agreement with the speakers' true attributes, and the Fréchet distance of
the probes (normalised: a face's judge embedding is) to the reference half of the test
gallery, as ``evaluate`` measures a method's faces. Beside the rows: the read-outs'
R² on the test gallery and the voice probe's on the test utterances. Matching is
exhaustive, the data order fixed, the nets frozen and the posterior samples seeded, so the
same inputs give the same table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voice2face.evaluation import bounds as B
from voice2face.evaluation.protocol import LOADER, halves
from voice2face.methods.base import data_info
from voice2face.methods.pretrained import load_judge, load_voice_embedder
from voice2face.synth.audit import ATTRIBUTES, HiddenAttributes, LinearProbe, r_squared

# the voice probe's ridge: audit.readout's, which ``benchmarks/audit.py --voice`` reports
VOICE_RIDGE = 1e-2
ROWS = {  # key: label, in the table's order
    "o_oracle": "o-oracle",
    "o_oracle_posterior": "o-oracle, posterior mean",
    "voice_oracle": "voice-embedder oracle",
    "voice_oracle_posterior": "voice-embedder oracle, post. mean",
    "o_oracle_sample": "o-oracle, posterior sample",
    "voice_oracle_sample": "voice-embedder oracle, post. sample",
    "o_oracle_traits": "o-oracle, private traits",
    "voice_oracle_traits": "voice-embedder oracle, private traits",
    "gender_only": "gender-only control",
    "real_faces": "real faces (held-out photo)",
    "chance": "chance",
    "ceiling": "ceiling (synthetic world)",
}
# the row whose judge-embedding 1:2 is the bound a generator on the voice embedder can reach
BOUND = "voice_oracle"
COLUMNS = [  # (key in a row, short header, header)
    ("match_1to2", "1:2", "1:2 (judge)"),
    ("match_1to2_gender", "same-g", "1:2 same gender (judge)"),
    ("attribute_match_1to2", "attr 1:2", "1:2 (attributes)"),
    ("attribute_match_1to2_gender", "attr same-g", "1:2 same gender (attributes)"),
    ("attribute_gender_acc", "gender acc", "gender acc (attributes)"),
    ("attribute_r2_age", "R² age", "R² age (attributes)"),
    ("attribute_r2_size", "R² size", "R² size (attributes)"),
    ("frechet", "Fréchet", "Fréchet (judge)"),
]
# the posterior samples' generator
SAMPLE_SEED = 0


def columns(batches, keys) -> dict[str, np.ndarray]:
    """The per-sample ``keys`` of every batch, concatenated."""
    out = {k: [] for k in keys}
    for batch in batches:
        for k in keys:
            out[k].append(batch[k].cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


@torch.no_grad()
def judge_pass(judge, dm, split: str, device="cpu") -> dict[str, np.ndarray]:
    """Judge embeddings of every gallery image of ``split`` with their labels."""
    return columns(({"emb": judge.embed(b["face"].to(device)), **b} for b in
                    dm.gallery_dataloader(split, **LOADER)),
                   ("emb", "identity", "gender", "index"))


@torch.no_grad()
def voice_pass(voice, dm, split: str, device="cpu") -> dict[str, np.ndarray]:
    """Voice embeddings of every utterance of ``split`` (whole utterances, unit length: what
    the GAN and the CAE read) with their labels."""
    return columns(({"emb": voice(b["mel"].to(device), b["mel_lengths"].to(device)), **b}
                    for b in dm.eval_dataloader(split, **LOADER)),
                   ("emb", "identity", "gender", "index"))


def instrument(dm, judge, voice, world: HiddenAttributes, device="cpu",
               frontier: Sequence[int] = ()) -> dict[str, Any]:
    """The instrument of the data ``dm`` (a ``VoiceFaceDataModule``) through ``judge`` (a
    frozen ``FaceEncoder``), with o estimated from ``voice`` (a frozen ``VoiceEmbedder``):
    ``{"rows": {ROWS key: {COLUMNS key: value}}, "readout_r2", "voice_r2", "sigma",
    "sigma_voice", "counts"}``. With ``frontier``, also ``"frontier": {k: row}``: the
    voice-embedder oracle's faces as the mean of k posterior samples for each k, the way
    from real-looking faces (k = 1) to the posterior mean, whose matching and Fréchet
    distance trade against each other."""
    judge, voice = judge.to(device).eval(), voice.to(device).eval()
    z, o, sigma = world.z, world.o, world.sigma
    train, test = judge_pass(judge, dm, "train", device), judge_pass(judge, dm, "test", device)
    prior_z, prior_emb = z[train["identity"]], train["emb"]
    readout = B.fit_readout(prior_emb, prior_z)

    utter = {s: voice_pass(voice, dm, s, device) for s in ("train", "val", "test")}
    probe = LinearProbe(VOICE_RIDGE).fit(utter["train"]["emb"], o[utter["train"]["identity"]])
    calibration = B.Calibration.fit(probe.predict(utter["val"]["emb"]),
                                    o[utter["val"]["identity"]])
    t = utter["test"]
    o_hat = probe.predict(t["emb"])
    o_voice = calibration(o_hat)

    gallery = (test["emb"], test["identity"], test["gender"])
    speaker = (t["identity"], t["gender"])
    o_true, sigma_voice = o[t["identity"]], calibration.noise(sigma)
    face_of = {"o": B.likelihood_faces(o_true, prior_z, prior_emb),
               "voice": B.likelihood_faces(o_voice, prior_z, prior_emb)}
    probes = {
        "o_oracle": face_of["o"],
        "o_oracle_posterior": B.posterior_faces(o_true, prior_z, prior_emb, sigma),
        "voice_oracle": face_of["voice"],
        "voice_oracle_posterior": B.posterior_faces(o_voice, prior_z, prior_emb, sigma_voice),
        "o_oracle_sample": B.posterior_sample_faces(o_true, prior_z, prior_emb, sigma,
                                                    np.random.default_rng(SAMPLE_SEED)),
        "voice_oracle_sample": B.posterior_sample_faces(o_voice, prior_z, prior_emb, sigma_voice,
                                                        np.random.default_rng(SAMPLE_SEED)),
        **{f"{who}_oracle_traits": B.with_private_traits(face_of[who], prior_z, prior_emb,
                                                         np.random.default_rng(SAMPLE_SEED))
           for who in ("o", "voice")},
        "gender_only": B.gender_faces(t["gender"], train["gender"], prior_emb),
    }
    # evaluate's halves: the real-faces row's probes, and the other half, the real side of
    # every row's Fréchet distance
    half = halves(torch.as_tensor(test["identity"]), torch.as_tensor(test["index"])).numpy()
    reference = test["emb"][~half]
    rows = {name: B.score_probes(p, *speaker, z[t["identity"]], *gallery, readout, sigma,
                                 probe_index=t["index"], gallery_index=test["index"],
                                 reference_emb=reference)
            for name, p in probes.items()}
    rows["real_faces"] = B.score_probes(
        test["emb"][half], test["identity"][half], test["gender"][half],
        z[test["identity"][half]], test["emb"][~half], test["identity"][~half],
        test["gender"][~half], readout, sigma, probe_index=test["index"][half],
        gallery_index=test["index"][~half], reference_emb=reference)
    share_male = float(t["gender"].mean())
    rows["chance"] = {"match_1to2": 0.5, "match_1to2_gender": 0.5, "attribute_match_1to2": 0.5,
                      "attribute_match_1to2_gender": 0.5,
                      "attribute_gender_acc": max(share_male, 1 - share_male),
                      "attribute_r2_age": 0.0, "attribute_r2_size": 0.0}
    ceiling = {k: float(v) for k, v in (dm.manifest.get("ceilings") or {}).items()
               if k.startswith("match_")}
    if ceiling:
        rows["ceiling"] = {**ceiling, **{f"attribute_{k}": v for k, v in ceiling.items()}}
    out = {"rows": rows}
    if frontier:
        out["frontier"] = {k: B.score_probes(
            B.posterior_sample_faces(o_voice, prior_z, prior_emb, sigma_voice,
                                     np.random.default_rng(SAMPLE_SEED), draws=k),
            *speaker, z[t["identity"]], *gallery, readout, sigma, probe_index=t["index"],
            gallery_index=test["index"], reference_emb=reference) for k in frontier}
    return {**out, "readout_r2": B.readout_r2(readout, test["emb"], z[test["identity"]]),
            "voice_r2": dict(zip(ATTRIBUTES, r_squared(o_hat, o_true).tolist())),
            "sigma": sigma.tolist(), "sigma_voice": sigma_voice.tolist(),
            "counts": {"test_utterances": len(t["identity"]), "test_gallery": len(gallery[1]),
                       "train_gallery": len(train["identity"]),
                       "probe_fit_utterances": len(utter["train"]["identity"])}}


def measure(data: str | Path, judge: str | Path, voice: str | Path, *, batch_size: int = 64,
            workers: int = 0, device: str = "cpu", frontier: Sequence[int] = ()
            ) -> dict[str, Any]:
    """``instrument`` of the synthetic world in ``data`` through the judge checkpoint
    ``judge`` (trained on that data) with the voice embedder checkpoint ``voice``, and the
    seconds it took (``"seconds"``). A ``ValueError`` for data that is not a synthetic world."""
    from datamodules import VoiceFaceDataModule

    started = time.time()
    world = HiddenAttributes.of_world(data)
    dm = VoiceFaceDataModule(data, eval_batch_size=batch_size, num_workers=workers)
    result = instrument(dm, load_judge(judge, data_info(dm)), load_voice_embedder(voice), world,
                        device, frontier)
    return {**result, "seconds": round(time.time() - started, 1)}
